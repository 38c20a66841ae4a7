import { expect } from 'chai';
import { ApiError, InvalidRequestError, loadGatewayConfig } from '@llmux/shared';
import {
  parseChatRequest,
  parseCompletionRequest,
  parsePlainRequest,
  QueueFullError,
  QueueMonitor,
  requestDeadline,
  retryAfterSeconds,
  type QueueSample,
} from '@llmux/gateway';

/** A queue whose readings the test sets, on a clock the test moves. */
function fakeQueue() {
  const state = { now: 1_000_000, sample: { waiting: 0, entriesRead: 0 } as QueueSample, reads: 0 };
  const monitor = new QueueMonitor(
    async () => {
      state.reads++;
      return { ...state.sample };
    },
    { now: () => state.now, refreshMs: 200, rateIntervalMs: 1000, alpha: 0.5 },
  );
  return { state, monitor };
}

async function refused(p: Promise<unknown>): Promise<ApiError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(ApiError);
    return err as ApiError;
  }
  throw new Error('expected a refusal');
}

describe('admission: Retry-After', () => {
  it('is ceil(queued / drain rate), clamped to 1..60', () => {
    expect(retryAfterSeconds(10, 5)).to.equal(2);
    expect(retryAfterSeconds(11, 5)).to.equal(3);
    expect(retryAfterSeconds(1, 1000)).to.equal(1);
    expect(retryAfterSeconds(10_000, 1)).to.equal(60);
  });

  it('is the upper bound while no drain rate is known, or the queue does not drain', () => {
    expect(retryAfterSeconds(5, null)).to.equal(60);
    expect(retryAfterSeconds(5, 0)).to.equal(60);
  });
});

describe('admission: QueueMonitor', () => {
  it('admits up to maxQueue counting its own admissions between readings, then answers 429 queue_full', async () => {
    const { state, monitor } = fakeQueue();
    state.sample = { waiting: 7, entriesRead: 100 };
    for (let i = 0; i < 3; i++) await monitor.admit('m', 10);
    expect(state.reads, 'one reading for a burst').to.equal(1);
    const err = await refused(monitor.admit('m', 10));
    expect(err).to.be.instanceOf(QueueFullError);
    expect(err.toBody().error).to.include({ type: 'rate_limit_error', code: 'queue_full' });
    expect(err.status).to.equal(429);
    expect(monitor.waiting('m')).to.equal(10);
  });

  it('replaces its own count by a newer reading, and gives back a released admission', async () => {
    const { state, monitor } = fakeQueue();
    await monitor.admit('m', 10);
    await monitor.admit('m', 10);
    expect(monitor.waiting('m')).to.equal(2);
    monitor.release('m');
    expect(monitor.waiting('m')).to.equal(1);
    // Workers took everything: the next reading shows an empty queue.
    state.sample = { waiting: 0, entriesRead: 1 };
    await monitor.refresh('m');
    expect(monitor.waiting('m')).to.equal(0);
  });

  it('reads the queue again only when its reading is older than refreshMs', async () => {
    const { state, monitor } = fakeQueue();
    await monitor.admit('m', 100);
    state.now += 100;
    await monitor.admit('m', 100);
    expect(state.reads).to.equal(1);
    state.now += 150;
    await monitor.admit('m', 100);
    await Promise.resolve();
    expect(state.reads).to.equal(2);
  });

  it('measures the drain rate from entries-read between readings at least a second apart', async () => {
    const { state, monitor } = fakeQueue();
    state.sample = { waiting: 50, entriesRead: 0 };
    await monitor.refresh('m');
    expect(monitor.drainRate('m')).to.equal(null);
    state.now += 400;
    state.sample = { waiting: 48, entriesRead: 2 };
    await monitor.refresh('m'); // too close to the last mark: no rate sample
    expect(monitor.drainRate('m')).to.equal(null);
    state.now += 600;
    state.sample = { waiting: 45, entriesRead: 5 };
    await monitor.refresh('m');
    expect(monitor.drainRate('m')).to.equal(5);
    state.now += 1000;
    state.sample = { waiting: 44, entriesRead: 6 };
    await monitor.refresh('m');
    expect(monitor.drainRate('m')).to.equal(3); // 0.5 * 1 + 0.5 * 5
    // Full at 44 + own admissions: Retry-After = ceil(44 / 3) = 15.
    const err = (await refused(monitor.admit('m', 10))) as QueueFullError;
    expect(err.retryAfterSeconds).to.equal(15);
  });

  it('ignores idle intervals and counter resets (Redis restarted)', async () => {
    const { state, monitor } = fakeQueue();
    state.sample = { waiting: 3, entriesRead: 10 };
    await monitor.refresh('m');
    state.now += 1000;
    state.sample = { waiting: 0, entriesRead: 20 };
    await monitor.refresh('m');
    expect(monitor.drainRate('m')).to.equal(10);
    state.now += 5000;
    await monitor.refresh('m'); // nothing waited, nothing delivered: says nothing about the rate
    expect(monitor.drainRate('m')).to.equal(10);
    state.now += 1000;
    state.sample = { waiting: 2, entriesRead: 1 };
    await monitor.refresh('m'); // counter went back: a new group
    expect(monitor.drainRate('m')).to.equal(10);
    state.now += 1000;
    state.sample = { waiting: 0, entriesRead: 7 };
    await monitor.refresh('m');
    expect(monitor.drainRate('m')).to.equal(8); // 0.5 * 6 + 0.5 * 10
  });

  it('a stuck queue drives Retry-After towards its bound', async () => {
    const { state, monitor } = fakeQueue();
    state.sample = { waiting: 10, entriesRead: 0 };
    await monitor.refresh('m');
    state.now += 1000;
    state.sample = { waiting: 10, entriesRead: 10 };
    await monitor.refresh('m');
    for (let i = 0; i < 8; i++) {
      state.now += 1000;
      await monitor.refresh('m');
    }
    const err = (await refused(monitor.admit('m', 10))) as QueueFullError;
    expect(err.retryAfterSeconds).to.equal(60);
  });
});

describe('admission: X-Request-Timeout', () => {
  const MAX = 600_000;

  it('defaults to REQUEST_TIMEOUT_MS', () => {
    expect(requestDeadline(undefined, MAX).timeoutMs).to.equal(MAX);
  });

  it('takes seconds, decimals allowed, capped at REQUEST_TIMEOUT_MS', () => {
    expect(requestDeadline('30', MAX).timeoutMs).to.equal(30_000);
    expect(requestDeadline(' 2.5 ', MAX).timeoutMs).to.equal(2500);
    expect(requestDeadline('0.0001', MAX).timeoutMs).to.equal(1);
    expect(requestDeadline('2.5', MAX).message).to.contain('X-Request-Timeout of 2.5 s');
    expect(requestDeadline('100000', MAX).timeoutMs).to.equal(MAX);
  });

  for (const bad of ['', 'abc', '-1', '0', '0.0', '1e3', '0x10', 'NaN', 'Infinity', '1,5', '1 2', '9'.repeat(20)]) {
    it(`refuses ${JSON.stringify(bad)} with a 400`, () => {
      expect(() => requestDeadline(bad, MAX)).to.throw(InvalidRequestError);
    });
  }

  it('refuses a repeated header', () => {
    expect(() => requestDeadline(['1', '2'], MAX)).to.throw(InvalidRequestError);
  });
});

describe('input limits', () => {
  const limits = { maxPromptChars: 100 };
  const chatRefused = (body: unknown) => {
    try {
      parseChatRequest(body, limits);
    } catch (err) {
      return err as InvalidRequestError;
    }
    throw new Error('expected a refusal');
  };

  it('refuses prompt text over MAX_PROMPT_CHARS across all messages', () => {
    const ok = [
      { role: 'system', content: 'x'.repeat(50) },
      { role: 'user', content: [{ type: 'text', text: 'y'.repeat(50) }] },
    ];
    expect(parseChatRequest({ model: 'm', messages: ok }, limits).model).to.equal('m');
    const err = chatRefused({ model: 'm', messages: [...ok, { role: 'user', content: 'z' }] });
    expect(err.code).to.equal('prompt_too_long');
    expect(err.param).to.equal('messages');
    expect(() => parseCompletionRequest({ model: 'm', prompt: 'p'.repeat(101) }, limits)).to.throw(/MAX_PROMPT_CHARS/);
    expect(() => parsePlainRequest('m', 'p'.repeat(101), {}, limits)).to.throw(/MAX_PROMPT_CHARS/);
  });

  it('refuses unknown message fields, prototype keys included, as OpenAI does', () => {
    for (const key of ['foo', '__proto__', 'constructor', 'prototype']) {
      const message = JSON.parse(`{"role":"user","content":"hi","${key}":{"role":"system"}}`) as unknown;
      const err = chatRefused({ model: 'm', messages: [message] });
      expect(err.message, key).to.match(/^Unrecognized request argument supplied: messages\[0\]\./);
    }
    const top = chatRefused(JSON.parse('{"model":"m","messages":[{"role":"user","content":"x"}],"__proto__":{"n":5}}'));
    expect(top.message).to.match(/^Unrecognized request argument supplied: __proto__/);
  });

  it('refuses a __proto__ key at any depth, open objects included', () => {
    const m = '"model":"m","messages":[{"role":"user","content":"x"}]';
    for (const [json, param] of [
      [`{${m},"response_format":{"type":"text","__proto__":{"a":1}}}`, 'response_format.__proto__'],
      [`{${m},"logit_bias":{"__proto__":1}}`, 'logit_bias.__proto__'],
      [`{${m},"metadata":{"__proto__":"x"}}`, 'metadata.__proto__'],
      [
        '{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a","__proto__":{}}]}]}',
        'messages[0].content[0].__proto__',
      ],
    ] as const) {
      const err = chatRefused(JSON.parse(json));
      expect(err.param, json).to.equal(param);
    }
    const deep = `{${m},"x":${'['.repeat(10_000)}{"__proto__":1}${']'.repeat(10_000)}}`;
    expect(chatRefused(JSON.parse(deep)).message).to.match(/^Unrecognized request argument supplied: x\[0\]/);
    expect(() => parseCompletionRequest(JSON.parse('{"model":"m","prompt":"p","stream_options":{"__proto__":{}}}'))).to.throw(
      /stream_options\.__proto__/,
    );
  });

  it('accepts the message fields OpenAI defines that carry nothing here', () => {
    const r = parseChatRequest({
      model: 'm',
      messages: [
        { role: 'assistant', content: 'a', refusal: null, tool_calls: null, name: 'bot' },
        { role: 'tool', content: 'b', tool_call_id: 'call_1' },
      ],
    });
    expect(r.params.messages).to.have.length(2);
  });

  it('bounds content parts, metadata, names and other strings', () => {
    const parts = Array.from({ length: 1025 }, () => ({ type: 'text', text: '' }));
    expect(chatRefused({ model: 'm', messages: [{ role: 'user', content: parts }] }).param).to.equal('messages[0].content');
    expect(
      chatRefused({ model: 'm', messages: [{ role: 'user', content: [{ type: 'text', text: 'a', extra: 1 }] }] }).param,
    ).to.equal('messages[0].content[0]');
    const meta = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v']));
    const base = { model: 'm', messages: [{ role: 'user', content: 'x' }] };
    expect(chatRefused({ ...base, metadata: meta }).param).to.equal('metadata');
    expect(chatRefused({ ...base, metadata: { k: 'v'.repeat(513) } }).param).to.equal('metadata.k');
    expect(chatRefused({ ...base, service_tier: 's'.repeat(33) }).param).to.equal('service_tier');
    expect(chatRefused({ ...base, model: 'm'.repeat(257) }).param).to.equal('model');
    expect(chatRefused({ ...base, response_format: { type: 'text', extra: 1 } }).param).to.equal('response_format');
    expect(chatRefused({ model: 'm', messages: [{ role: 'tool', content: 'x', tool_call_id: 'c'.repeat(257) }] }).param).to.equal(
      'messages[0].tool_call_id',
    );
    expect(() => parsePlainRequest('m', 'hi', { seed: '9'.repeat(40) })).to.throw(InvalidRequestError);
  });
});

describe('environment: gateway limits', () => {
  it('defaults MAX_OPEN_REQUESTS, MAX_BUFFERED_BYTES and MAX_PROMPT_CHARS', () => {
    expect(loadGatewayConfig({})).to.deep.include({
      maxOpenRequests: 10_000,
      maxBufferedBytes: 1_048_576,
      maxPromptChars: 1_000_000,
    });
  });

  it('reads them, and refuses bad values naming them', () => {
    expect(loadGatewayConfig({ MAX_OPEN_REQUESTS: '5', MAX_BUFFERED_BYTES: '4096', MAX_PROMPT_CHARS: '10' })).to.deep.include({
      maxOpenRequests: 5,
      maxBufferedBytes: 4096,
      maxPromptChars: 10,
    });
    expect(() => loadGatewayConfig({ MAX_OPEN_REQUESTS: '0' })).to.throw(/MAX_OPEN_REQUESTS/);
    expect(() => loadGatewayConfig({ MAX_BUFFERED_BYTES: '10' })).to.throw(/MAX_BUFFERED_BYTES/);
    expect(() => loadGatewayConfig({ MAX_PROMPT_CHARS: 'x' })).to.throw(/MAX_PROMPT_CHARS/);
  });
});
