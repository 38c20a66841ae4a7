import { parseArgs } from 'node:util';
import { abortLoads, report } from './harness.js';
import { runSoak } from './soak.js';

/**
 * `npm run soak -- --minutes 10 [--sample-seconds 10] [--clients 8]`: runs
 * the soak (see soak.ts), prints a sample line every period, then the table,
 * the checks and the request accounting. Exits with 1 if a check failed.
 */
async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '10' },
      'sample-seconds': { type: 'string', default: '10' },
      clients: { type: 'string', default: '8' },
    },
  });
  const minutes = Number(values.minutes);
  const sampleSeconds = Number(values['sample-seconds']);
  const clients = Number(values.clients);
  if (!(minutes > 0) || !(sampleSeconds > 0) || !(clients > 0)) {
    console.error('usage: npm run soak -- [--minutes 10] [--sample-seconds 10] [--clients 8]');
    return 2;
  }
  const started = new Date();
  const r = await runSoak({ minutes, sampleSeconds, clients });
  console.log(`\nsoak started ${started.toISOString()}, ${r.settings}\n`);
  console.log(r.table);
  console.log('');
  for (const c of r.checks) console.log(`${c.ok ? 'ok  ' : 'FAIL'} ${c.what}: ${c.detail}`);
  report(`soak ${minutes} min`, r.account);
  return r.ok ? 0 : 1;
}

let stopping = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (stopping) return;
    stopping = true;
    console.error(`${sig}: stopping the soak`);
    // Ending the clients lets runSoak's finally stop the processes and Redis.
    void abortLoads();
  });
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
