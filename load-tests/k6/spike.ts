// Spike: a sudden burst far above capacity. Refusals must be fast 429s or 503s with Retry-After, never timeouts.
// k6 run -e BASE_URL=http://127.0.0.1:8000 -e MODEL=stories260K -e SPIKE_RATE=200 load-tests/k6/spike.ts
import http from 'k6/http';
import { check } from 'k6';
import type { Options } from 'k6/options';
import { chatBody, k6Headers, k6Settings } from '../src/k6-payloads.ts';

const s = k6Settings(__ENV);
const spike = Number(__ENV.SPIKE_RATE ?? 200);

// A refusal is an expected answer here; only other statuses and network errors count as failed.
http.setResponseCallback(http.expectedStatuses(200, 429, 503));

export const options: Options = {
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: 5,
      timeUnit: '1s',
      preAllocatedVUs: 50,
      maxVUs: 1000,
      stages: [
        { duration: '20s', target: 5 },
        { duration: '5s', target: spike },
        { duration: '20s', target: spike },
        { duration: '5s', target: 5 },
        { duration: '20s', target: 5 },
      ],
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    // Refusals are answered at once.
    'http_req_duration{status:429}': ['p(99)<200'],
    checks: ['rate>0.999'],
  },
};

export default function (): void {
  const res = http.post(`${s.baseUrl}/v1/chat/completions`, chatBody(s, __ITER, false), { headers: k6Headers(s) });
  check(res, {
    'served or refused': (r) => r.status === 200 || r.status === 429 || r.status === 503,
    'a refusal says when to retry': (r) => r.status === 200 || r.headers['Retry-After'] !== undefined,
  });
}
