// Streaming: many concurrent streams, with a threshold on time to first token.
// The plain route sends its headers with the first token, so k6's time to first byte
// (http_req_waiting) on it is the time to first token.
// k6 run -e BASE_URL=http://127.0.0.1:8000 -e MODEL=stories260K -e VUS=100 load-tests/k6/streaming.ts
import http from 'k6/http';
import { check } from 'k6';
import type { Options } from 'k6/options';
import { chatBody, k6Headers, k6Settings, plainBody, plainUrl, sseComplete } from '../src/k6-payloads.ts';

const s = k6Settings(__ENV);

export const options: Options = {
  scenarios: {
    streams: {
      executor: 'constant-vus',
      vus: Number(__ENV.VUS ?? 100),
      duration: __ENV.DURATION ?? '1m',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    'http_req_waiting{route:plain}': ['p(95)<500', 'p(99)<1000'],
    checks: ['rate>0.99'],
  },
};

export default function (): void {
  const plain = http.post(plainUrl(s), plainBody(__ITER), {
    headers: { ...k6Headers(s), 'content-type': 'text/plain' },
    tags: { route: 'plain' },
  });
  check(plain, { 'plain 200 with text': (r) => r.status === 200 && typeof r.body === 'string' && r.body.length > 0 });
  const sse = http.post(`${s.baseUrl}/v1/chat/completions`, chatBody(s, __ITER, true), {
    headers: k6Headers(s),
    tags: { route: 'sse' },
  });
  check(sse, { 'sse complete': (r) => r.status === 200 && typeof r.body === 'string' && sseComplete(r.body) });
}
