// Ramp: virtual users grow to a peak and back, streaming chat completions.
// k6 run -e BASE_URL=http://127.0.0.1:8000 -e MODEL=stories260K -e PEAK=50 load-tests/k6/ramp.ts
import http from 'k6/http';
import { check } from 'k6';
import type { Options } from 'k6/options';
import { chatBody, k6Headers, k6Settings, sseComplete } from '../src/k6-payloads.ts';

const s = k6Settings(__ENV);
const peak = Number(__ENV.PEAK ?? 50);

export const options: Options = {
  scenarios: {
    ramp: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: '30s', target: peak },
        { duration: '1m', target: peak },
        { duration: '30s', target: 0 },
      ],
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
  },
};

export default function (): void {
  const res = http.post(`${s.baseUrl}/v1/chat/completions`, chatBody(s, __ITER, true), { headers: k6Headers(s) });
  check(res, {
    'status 200': (r) => r.status === 200,
    'stream complete': (r) => typeof r.body === 'string' && sseComplete(r.body),
  });
}
