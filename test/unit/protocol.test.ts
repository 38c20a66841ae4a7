import { expect } from 'chai';
import {
  decodeEvent,
  decodeJob,
  encodeEvent,
  encodeJob,
  MalformedJobError,
  type DoneEvent,
  type ErrorEvent,
  type Job,
  type ReplyEvent,
  type TokensEvent,
} from '@llmux/shared';

const job: Job = {
  rid: 'chatcmpl-abc123',
  model: 'stories',
  gw: 'gw-1',
  params: {
    kind: 'chat',
    messages: [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hello "world"\n{}' },
    ],
    maxTokens: 64,
    temperature: 0.7,
    topP: 0.9,
    stop: ['\n\n', 'END'],
    seed: 42,
    presencePenalty: 0.5,
    frequencyPenalty: -0.5,
  },
  enqueuedAt: 1_700_000_000_000,
  deadline: 1_700_000_600_000,
  tenant: 'acme',
  priority: 'high',
  retainMs: 3_600_000,
};

/** Field/value pairs as a map, to edit one field of an encoded entry. */
function fieldsOf(pairs: string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (let i = 0; i < pairs.length; i += 2) m.set(pairs[i]!, pairs[i + 1]!);
  return m;
}
const pairsOf = (m: Map<string, string>): string[] => [...m].flat();

function withField(name: string, value: string | null): string[] {
  const m = fieldsOf(encodeJob(job));
  if (value === null) m.delete(name);
  else m.set(name, value);
  return pairsOf(m);
}

function malformed(fields: string[]): MalformedJobError {
  let thrown: unknown;
  try {
    decodeJob(fields);
  } catch (err) {
    thrown = err;
  }
  expect(thrown, 'expected a MalformedJobError').to.be.instanceOf(MalformedJobError);
  return thrown as MalformedJobError;
}

describe('protocol: jobs', () => {
  it('round-trips a chat job through its stream fields', () => {
    const fields = encodeJob(job);
    expect(fields.length % 2).to.equal(0);
    for (const f of fields) expect(f).to.be.a('string');
    expect(decodeJob(fields)).to.deep.equal(job);
  });

  it('round-trips a minimal completion job', () => {
    const j: Job = { ...job, params: { kind: 'completion', prompt: 'The cat', maxTokens: 1 } };
    expect(decodeJob(encodeJob(j))).to.deep.equal(j);
  });

  it('keeps plain, readable fields for redis-cli', () => {
    const m = fieldsOf(encodeJob(job));
    expect(m.get('rid')).to.equal(job.rid);
    expect(m.get('model')).to.equal('stories');
    expect(m.get('kind')).to.equal('chat');
    expect(m.get('ts')).to.equal(String(job.enqueuedAt));
    expect(JSON.parse(m.get('params')!)).to.deep.equal(job.params);
  });

  it('does not depend on field order', () => {
    const pairs: string[][] = [];
    const enc = encodeJob(job);
    for (let i = 0; i < enc.length; i += 2) pairs.push([enc[i]!, enc[i + 1]!]);
    expect(decodeJob(pairs.reverse().flat())).to.deep.equal(job);
  });

  for (const name of ['rid', 'model', 'gw', 'params', 'ts', 'deadline']) {
    it(`refuses an entry without ${name}`, () => {
      malformed(withField(name, null));
    });
  }

  it('refuses an empty rid, a non-numeric deadline and no fields at all', () => {
    malformed(withField('rid', ''));
    malformed(withField('deadline', 'soon'));
    malformed(withField('ts', '1.5'));
    malformed([]);
  });

  it('refuses params that are not JSON', () => {
    malformed(withField('params', '{"kind":"chat",'));
    malformed(withField('params', 'undefined'));
  });

  it('refuses params that fail the schema', () => {
    const bad = (p: unknown) => malformed(withField('params', JSON.stringify(p)));
    bad({ kind: 'chat', messages: [], maxTokens: 0 });
    bad({ kind: 'chat', messages: [], maxTokens: 1.5 });
    bad({ kind: 'embed', prompt: 'x', maxTokens: 4 });
    bad({ kind: 'completion', prompt: 'x' });
    bad({ kind: 'completion', prompt: 'x', maxTokens: 4, temperature: 3 });
    bad({ kind: 'chat', messages: [{ role: 'robot', content: 'x' }], maxTokens: 4 });
    bad({ kind: 'chat', messages: [{ role: 'user', content: 1 }], maxTokens: 4 });
    bad(null);
    bad('a string');
  });

  it('names the bad params field in the error', () => {
    const err = malformed(withField('params', JSON.stringify({ kind: 'completion', prompt: 'x', maxTokens: 0 })));
    expect(err.message).to.contain('params.maxTokens');
  });

  it('carries a trace context only when there is one, and drops a malformed one', () => {
    expect(fieldsOf(encodeJob(job)).has('traceparent'), 'tracing off: no field').to.equal(false);
    const tp = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    expect(decodeJob(encodeJob({ ...job, traceparent: tp })).traceparent).to.equal(tp);
    const bad = decodeJob(withField('traceparent', 'not-a-trace'));
    expect(bad.traceparent).to.equal(undefined);
    expect(bad.rid).to.equal(job.rid);
  });
});

describe('protocol: reply events', () => {
  const tokens: TokensEvent = { rid: 'r1', seq: 0, type: 'tokens', text: 'Once upon\n a "time" ✓ 😀', n: 5 };
  const done: DoneEvent = { rid: 'r1', seq: 6, type: 'done', finish: 'length', promptTokens: 12, completionTokens: 64 };
  const stopped: DoneEvent = { ...done, finish: 'stop', completionTokens: 3 };
  const error: ErrorEvent = { rid: 'r1', seq: 2, type: 'error', status: 504, code: 'deadline_exceeded', message: 'too slow' };

  for (const ev of [tokens, done, stopped, error] as ReplyEvent[]) {
    it(`round-trips a ${ev.type} event${ev.type === 'done' ? ` (${ev.finish})` : ''}`, () => {
      const fields = encodeEvent(ev);
      for (const f of fields) expect(f).to.be.a('string');
      expect(decodeEvent(fields)).to.deep.equal(ev);
    });
  }

  it('round-trips a tokens event with empty text', () => {
    const ev: TokensEvent = { rid: 'r2', seq: 3, type: 'tokens', text: '', n: 1 };
    expect(decodeEvent(encodeEvent(ev))).to.deep.equal(ev);
  });

  it('looks fields up by name, not position', () => {
    const fields = encodeEvent(done);
    const pairs: string[][] = [];
    for (let i = 0; i < fields.length; i += 2) pairs.push([fields[i]!, fields[i + 1]!]);
    expect(decodeEvent(pairs.reverse().flat())).to.deep.equal(done);
  });

  const edit = (ev: ReplyEvent, name: string, value: string | null): string[] => {
    const m = fieldsOf(encodeEvent(ev));
    if (value === null) m.delete(name);
    else m.set(name, value);
    return pairsOf(m);
  };

  it('returns null for an entry without a rid', () => {
    expect(decodeEvent(edit(tokens, 'rid', null))).to.equal(null);
    expect(decodeEvent(edit(tokens, 'rid', ''))).to.equal(null);
  });

  it('returns null for a missing, negative or fractional seq', () => {
    expect(decodeEvent(edit(tokens, 'seq', null))).to.equal(null);
    expect(decodeEvent(edit(tokens, 'seq', '-1'))).to.equal(null);
    expect(decodeEvent(edit(tokens, 'seq', '1.5'))).to.equal(null);
    expect(decodeEvent(edit(tokens, 'seq', 'x'))).to.equal(null);
  });

  it('returns null for an unknown or missing type', () => {
    expect(decodeEvent(edit(tokens, 'type', 'token'))).to.equal(null);
    expect(decodeEvent(edit(tokens, 'type', null))).to.equal(null);
  });

  it('returns null for a done event with a bad finish reason', () => {
    expect(decodeEvent(edit(done, 'finish', 'eos'))).to.equal(null);
    expect(decodeEvent(edit(done, 'finish', null))).to.equal(null);
  });

  it('returns null for garbage', () => {
    expect(decodeEvent([])).to.equal(null);
    expect(decodeEvent(['hello'])).to.equal(null);
    expect(decodeEvent(['a', 'b', 'c', 'd'])).to.equal(null);
  });

  it('defaults an error event with a non-numeric status to 500', () => {
    const ev = decodeEvent(edit(error, 'status', 'bad'));
    expect(ev).to.deep.equal({ ...error, status: 500 });
  });
});
