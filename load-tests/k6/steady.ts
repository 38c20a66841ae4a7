// Steady load: a constant arrival rate of non-streaming chat completions.
// k6 run -e BASE_URL=http://127.0.0.1:8000 -e MODEL=stories260K -e RATE=10 load-tests/k6/steady.ts
import http from 'k6/http';
import { check } from 'k6';
import type { Options } from 'k6/options';
import { chatBody, k6Headers, k6Settings } from '../src/k6-payloads.ts';

const s = k6Settings(__ENV);

export const options: Options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE ?? 10),
      timeUnit: '1s',
      duration: __ENV.DURATION ?? '1m',
      preAllocatedVUs: 20,
      maxVUs: 200,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<5000'],
    checks: ['rate>0.99'],
  },
};

export default function (): void {
  const res = http.post(`${s.baseUrl}/v1/chat/completions`, chatBody(s, __ITER, false), { headers: k6Headers(s) });
  check(res, {
    'status 200': (r) => r.status === 200,
    'a chat.completion with usage': (r) => {
      const b = r.json() as { object?: string; usage?: { completion_tokens?: number } } | null;
      return b?.object === 'chat.completion' && (b.usage?.completion_tokens ?? 0) > 0;
    },
  });
}
