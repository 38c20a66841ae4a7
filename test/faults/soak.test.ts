import { expect } from 'chai';
import { abortLoads, report } from './harness.js';
import { runSoak } from './soak.js';

/** The soak of `npm run soak`, one minute long, sampled every 5 s. */
describe('faults: soak (1 minute)', function () {
  this.timeout(180_000);

  after(async () => {
    await abortLoads();
  });

  it('memory, keys and pending entries stay flat under constant load; every request completes exactly', async () => {
    const r = await runSoak({ minutes: 1, sampleSeconds: 5, log: () => {} });
    console.log(`      soak: ${r.settings}`);
    for (const line of r.table.split('\n')) console.log(`      ${line}`);
    for (const c of r.checks) console.log(`      ${c.ok ? 'ok  ' : 'FAIL'} ${c.what}: ${c.detail}`);
    report('soak 1 min', r.account);
    expect(r.checks.filter((c) => !c.ok).map((c) => `${c.what}: ${c.detail}`)).to.deep.equal([]);
  });
});
