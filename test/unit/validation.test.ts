import { expect } from 'chai';
import { InvalidRequestError } from '@llmux/shared';
import {
  COMPLETIONS_DEFAULT_MAX_TOKENS,
  parseChatRequest,
  parseCompletionRequest,
  parsePlainRequest,
  type ParsedRequest,
} from '@llmux/gateway';

/** Runs `fn`, which must throw an InvalidRequestError, and returns that error. */
function refused(fn: () => unknown): InvalidRequestError {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown, 'expected an InvalidRequestError').to.be.instanceOf(InvalidRequestError);
  const err = thrown as InvalidRequestError;
  expect(err.status).to.equal(400);
  expect(err.type).to.equal('invalid_request_error');
  return err;
}

/** The object without its undefined-valued keys. */
const defined = (o: object) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));

const messages = [{ role: 'user', content: 'Once upon a time' }];
const chat = (extra: Record<string, unknown> = {}): ParsedRequest => parseChatRequest({ model: 'm', messages, ...extra });
const chatRefused = (extra: Record<string, unknown>) => refused(() => chat(extra));
const completion = (extra: Record<string, unknown> = {}): ParsedRequest =>
  parseCompletionRequest({ model: 'm', prompt: 'The cat', ...extra });
const completionRefused = (extra: Record<string, unknown>) => refused(() => completion(extra));

describe('request validation: chat completions', () => {
  it('accepts a minimal body with defaults', () => {
    const r = chat();
    expect(r.model).to.equal('m');
    expect(r.stream).to.equal(false);
    expect(r.includeUsage).to.equal(false);
    expect(r.maxTokens).to.equal(undefined);
    expect(defined(r.params)).to.deep.equal({ kind: 'chat', messages: [{ role: 'user', content: 'Once upon a time' }] });
  });

  it('maps the honoured sampling fields into job parameters', () => {
    const r = chat({
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: 40,
      temperature: 0.5,
      top_p: 0.9,
      seed: 7,
      presence_penalty: 0.1,
      frequency_penalty: -0.2,
    });
    expect(r.stream).to.equal(true);
    expect(r.includeUsage).to.equal(true);
    expect(r.maxTokens).to.equal(40);
    expect(r.params).to.include({ temperature: 0.5, topP: 0.9, seed: 7, presencePenalty: 0.1, frequencyPenalty: -0.2 });
  });

  it('prefers max_completion_tokens over max_tokens and treats null as absent', () => {
    expect(chat({ max_tokens: 10, max_completion_tokens: 20 }).maxTokens).to.equal(20);
    expect(chat({ max_tokens: 10, max_completion_tokens: null }).maxTokens).to.equal(10);
    const r = chat({ temperature: null, stop: null, seed: null });
    expect(r.params.temperature).to.equal(undefined);
    expect(r.params.stop).to.equal(undefined);
    expect(r.params.seed).to.equal(undefined);
  });

  it('joins content given as an array of text parts', () => {
    const r = parseChatRequest({
      model: 'm',
      messages: [
        { role: 'system', content: [{ type: 'text', text: 'Be brief.' }] },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'Hello, ' },
            { type: 'text', text: 'world' },
          ],
        },
        { role: 'assistant', content: null },
      ],
    });
    expect(r.params.messages).to.deep.equal([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hello, world' },
      { role: 'assistant', content: '' },
    ]);
  });

  it('names a missing model or messages in the error', () => {
    expect(refused(() => parseChatRequest({ messages })).param).to.equal('model');
    expect(refused(() => parseChatRequest({ model: 'm' })).param).to.equal('messages');
    expect(refused(() => parseChatRequest({ model: 'm', messages: [] })).param).to.equal('messages');
    expect(refused(() => parseChatRequest({ model: '', messages })).param).to.equal('model');
  });

  it('names the field of a wrongly typed or out-of-range value', () => {
    expect(chatRefused({ temperature: 'hot' }).param).to.equal('temperature');
    expect(chatRefused({ temperature: 2.5 }).param).to.equal('temperature');
    expect(chatRefused({ max_tokens: -1 }).param).to.equal('max_tokens');
    expect(chatRefused({ max_tokens: 0 }).param).to.equal('max_tokens');
    expect(chatRefused({ max_tokens: 1.5 }).param).to.equal('max_tokens');
    expect(chatRefused({ max_tokens: '12' }).param).to.equal('max_tokens');
    expect(chatRefused({ top_p: 1.1 }).param).to.equal('top_p');
    expect(chatRefused({ seed: 0.5 }).param).to.equal('seed');
    expect(chatRefused({ stream: 'yes' }).param).to.equal('stream');
  });

  it('names the path of a bad message', () => {
    expect(refused(() => parseChatRequest({ model: 'm', messages: [{ role: 'robot', content: 'x' }] })).param).to.equal(
      'messages[0].role',
    );
    expect(refused(() => parseChatRequest({ model: 'm', messages: ['hello'] })).param).to.equal('messages[0]');
  });

  it('refuses n > 1 but accepts n = 1', () => {
    expect(chatRefused({ n: 2 }).param).to.equal('n');
    expect(chat({ n: 1 }).model).to.equal('m');
  });

  it('refuses a non-empty tools list but accepts an empty one', () => {
    expect(chatRefused({ tools: [{ type: 'function', function: { name: 'f' } }] }).param).to.equal('tools');
    expect(chat({ tools: [] }).model).to.equal('m');
  });

  it('refuses other options it cannot honour, naming them', () => {
    expect(chatRefused({ logprobs: true }).param).to.equal('logprobs');
    expect(chatRefused({ logit_bias: { '50256': -100 } }).param).to.equal('logit_bias');
    expect(chatRefused({ response_format: { type: 'json_object' } }).param).to.equal('response_format');
    expect(chatRefused({ functions: [{ name: 'f' }] }).param).to.equal('functions');
    expect(
      refused(() => parseChatRequest({ model: 'm', messages: [{ role: 'assistant', content: 'x', tool_calls: [] }] })).param,
    ).to.equal('messages[0].tool_calls');
  });

  it('refuses an unknown top-level field as OpenAI does', () => {
    const err = chatRefused({ foo: 1 });
    expect(err.message.startsWith('Unrecognized request argument supplied: foo')).to.equal(true);
    expect(err.param).to.equal('foo');
  });

  it('refuses an unknown field of stream_options, naming its path', () => {
    const err = chatRefused({ stream_options: { include_usage: true, extra: 1 } });
    expect(err.message.startsWith('Unrecognized request argument supplied: stream_options.extra')).to.equal(true);
    expect(err.param).to.equal('stream_options.extra');
  });

  it('takes stop as a string or an array of up to 16 strings', () => {
    expect(chat({ stop: 'END' }).params.stop).to.deep.equal(['END']);
    expect(chat({ stop: ['a', 'b'] }).params.stop).to.deep.equal(['a', 'b']);
    const sixteen = Array.from({ length: 16 }, (_, i) => `s${i}`);
    expect(chat({ stop: sixteen }).params.stop).to.deep.equal(sixteen);
    expect(chatRefused({ stop: [...sixteen, 's16'] }).param).to.equal('stop');
    expect(chatRefused({ stop: [''] }).param).to.equal('stop[0]');
    expect(chatRefused({ stop: 5 }).param).to.equal('stop');
  });

  it('refuses image content parts and text parts without text', () => {
    const image = refused(() =>
      parseChatRequest({
        model: 'm',
        messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://example.com/a.png' } }] }],
      }),
    );
    expect(image.param).to.equal('messages[0].content[0]');
    const noText = refused(() => parseChatRequest({ model: 'm', messages: [{ role: 'user', content: [{ type: 'text' }] }] }));
    expect(noText.param).to.equal('messages[0].content[0]');
  });

  for (const [what, body] of [
    ['an array', [{ model: 'm', messages }]],
    ['null', null],
    ['a string', '{"model":"m"}'],
    ['a number', 42],
    ['undefined', undefined],
  ] as const) {
    it(`refuses a body that is ${what}`, () => {
      expect(refused(() => parseChatRequest(body)).param).to.equal(null);
      expect(refused(() => parseCompletionRequest(body)).param).to.equal(null);
    });
  }
});

describe('request validation: legacy completions', () => {
  it('accepts a minimal body and defaults max_tokens to 16', () => {
    const r = completion();
    expect(r.model).to.equal('m');
    expect(r.stream).to.equal(false);
    expect(r.maxTokens).to.equal(COMPLETIONS_DEFAULT_MAX_TOKENS);
    expect(COMPLETIONS_DEFAULT_MAX_TOKENS).to.equal(16);
    expect(defined(r.params)).to.deep.equal({ kind: 'completion', prompt: 'The cat' });
  });

  it('honours max_tokens, stop and sampling fields', () => {
    const r = completion({ max_tokens: 5, stop: '\n', temperature: 0, stream: true });
    expect(r.maxTokens).to.equal(5);
    expect(r.stream).to.equal(true);
    expect(r.params).to.deep.include({ stop: ['\n'], temperature: 0 });
  });

  it('accepts a prompt array of one string', () => {
    expect(completion({ prompt: ['The dog'] }).params.prompt).to.equal('The dog');
  });

  it('refuses batched prompts and token-array prompts', () => {
    expect(completionRefused({ prompt: ['a', 'b'] }).param).to.equal('prompt');
    expect(completionRefused({ prompt: [[1, 2, 3]] }).param).to.equal('prompt');
    expect(completionRefused({ prompt: [1, 2, 3] }).param).to.equal('prompt');
    expect(completionRefused({ prompt: [] }).param).to.equal('prompt');
  });

  it('names a missing prompt or model', () => {
    expect(refused(() => parseCompletionRequest({ model: 'm' })).param).to.equal('prompt');
    expect(refused(() => parseCompletionRequest({ prompt: 'x' })).param).to.equal('model');
  });

  it('refuses chat-only fields, best_of > 1 and echo', () => {
    const err = completionRefused({ messages });
    expect(err.message.startsWith('Unrecognized request argument supplied: messages')).to.equal(true);
    expect(completionRefused({ best_of: 2 }).param).to.equal('best_of');
    expect(completionRefused({ echo: true }).param).to.equal('echo');
    expect(completionRefused({ suffix: 'x' }).param).to.equal('suffix');
    expect(completionRefused({ n: 3 }).param).to.equal('n');
  });
});

describe('request validation: plain route', () => {
  it('takes the body as the user message and streams', () => {
    const r = parsePlainRequest('stories', 'Once upon a time', {});
    expect(r).to.deep.equal({
      model: 'stories',
      stream: true,
      includeUsage: false,
      maxTokens: undefined,
      params: {
        kind: 'chat',
        messages: [{ role: 'user', content: 'Once upon a time' }],
        temperature: undefined,
        topP: undefined,
        seed: undefined,
      },
    });
  });

  it('coerces sampling options from query strings', () => {
    const r = parsePlainRequest('m', 'hi', { max_tokens: '64', temperature: '0', top_p: '0.5', seed: '3' });
    expect(r.maxTokens).to.equal(64);
    expect(r.params).to.deep.include({ temperature: 0, topP: 0.5, seed: 3 });
    expect(parsePlainRequest('m', 'hi', undefined).maxTokens).to.equal(undefined);
  });

  it('refuses bad query values, naming them', () => {
    expect(refused(() => parsePlainRequest('m', 'hi', { max_tokens: 'abc' })).param).to.equal('max_tokens');
    expect(refused(() => parsePlainRequest('m', 'hi', { max_tokens: '0' })).param).to.equal('max_tokens');
    expect(refused(() => parsePlainRequest('m', 'hi', { temperature: '3' })).param).to.equal('temperature');
  });

  it('refuses unknown query parameters', () => {
    const err = refused(() => parsePlainRequest('m', 'hi', { top_k: '3' }));
    expect(err.message.startsWith('Unrecognized request argument supplied: top_k')).to.equal(true);
    expect(err.param).to.equal('top_k');
  });

  it('refuses an empty or non-text body', () => {
    for (const body of ['', '   \n', undefined, null, { prompt: 'x' }, Buffer.from('hi')]) {
      expect(refused(() => parsePlainRequest('m', body, {})).param).to.equal(null);
    }
  });
});
