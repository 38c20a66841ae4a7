import { burst, leavingClients } from '../faults/client-scenarios.js';

/**
 * The fast part of the fault suite (`npm run test:faults` runs these at full
 * size, with the rest): clients leaving at random moments, and a burst of ten
 * times capacity.
 */
describe('client faults (small; the fault suite runs them at full size)', function () {
  this.timeout(90_000);

  it('clients leaving at random moments: every engine slot freed, every per-request key expiring', async () => {
    await leavingClients({ requests: 80, clients: 8, maxTokens: 120 });
  });

  it('a burst of 10x capacity: fast 429s with Retry-After, no timeouts, admitted p99 within the SLO', async () => {
    await burst({ waves: 1 });
  });
});
