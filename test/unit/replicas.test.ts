import { expect } from 'chai';
import { EngineUnavailableError, type JobParams } from '@llmux/shared';
import { ReplicaSet, SimEngine } from '@llmux/worker-agent';

const params: JobParams = { kind: 'completion', prompt: 'x', maxTokens: 3 };
const sim = (capacity: number) => new SimEngine({ capacity, ttftMs: 0, itlMs: 0, outputTokens: null, contextSize: 4096 });

/** A real sim replica whose own load figure the test sets (as a vllm replica reports restarting with 1). */
class ReportingSim extends SimEngine {
  reported: number | null = null;
  load(): number | null {
    return this.reported;
  }
}

describe('ReplicaSet', () => {
  it('adds up capacity and spreads requests to the replica with the most room', async () => {
    const a = sim(2);
    const b = sim(4);
    const set = new ReplicaSet([a, b]);
    expect(set.capacity).to.equal(6);
    const ctl = new AbortController();
    const runs = Array.from({ length: 6 }, () => set.generate(params, () => {}, ctl.signal));
    const results = await Promise.all(runs);
    expect(results.every((r) => r.completionTokens === 3)).to.equal(true);
  });

  it('routes around a replica that cannot take work, and reports 1 when none can', async () => {
    const up = new ReportingSim({ capacity: 2, ttftMs: 0, itlMs: 0, outputTokens: null, contextSize: 4096 });
    const down = new ReportingSim({ capacity: 8, ttftMs: 0, itlMs: 0, outputTokens: null, contextSize: 4096 });
    down.reported = 1;
    up.reported = 0.25;
    const set = new ReplicaSet([up, down]);
    expect(set.capacity).to.equal(2);
    expect(set.load()).to.equal(0.25);
    const r = await set.generate(params, () => {}, new AbortController().signal);
    expect(r.completionTokens).to.equal(3);
    up.reported = 1;
    expect(set.capacity).to.equal(0);
    expect(set.load()).to.equal(1);
    const err = await set
      .generate(params, () => {}, new AbortController().signal)
      .then(
        () => null,
        (e: unknown) => e,
      );
    expect(err).to.be.instanceOf(EngineUnavailableError);
  });

  it('reports null load when no replica has a figure of its own', () => {
    expect(new ReplicaSet([sim(1), sim(1)]).load()).to.equal(null);
  });
});
