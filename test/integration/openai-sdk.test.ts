import { expect } from 'chai';
import OpenAI from 'openai';
import { TestSystem } from '../helpers/system.js';
import { testModel } from '../helpers/models.js';

/** The official OpenAI client, pointed at the gateway, over real HTTP. */
describe('the official openai client against the gateway', function () {
  let sys: TestSystem;
  let client: OpenAI;

  before(async function () {
    sys = await TestSystem.start({
      deployments: {
        models: [
          {
            name: 'tiny-random',
            source: await testModel('llama-2-tiny-random'),
            engine: { type: 'llamacpp', threads: 1, contextSize: 1024 },
            concurrency: 2,
          },
        ],
      },
    });
    client = new OpenAI({ baseURL: `${sys.url}/v1`, apiKey: 'not-needed', maxRetries: 0 });
  });

  after(async () => {
    await sys?.stop();
  });

  it('gets a streamed chat completion with correct usage', async () => {
    const stream = await client.chat.completions.create({
      model: 'tiny-random',
      messages: [{ role: 'user', content: 'Tell me a story' }],
      max_tokens: 25,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage: OpenAI.CompletionUsage | null | undefined;
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text.length).to.be.greaterThan(0);
    expect(finish).to.equal('length');
    expect(usage!.completion_tokens).to.equal(25);
    expect(usage!.prompt_tokens).to.be.greaterThan(0);
    expect(usage!.total_tokens).to.equal(usage!.prompt_tokens + 25);
  });

  it('gets a non-streamed chat completion whose usage matches the streamed one', async () => {
    const messages: OpenAI.ChatCompletionMessageParam[] = [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'Tell me a story' },
    ];
    const whole = await client.chat.completions.create({ model: 'tiny-random', messages, max_tokens: 20, temperature: 0 });
    expect(whole.object).to.equal('chat.completion');
    expect(whole.choices[0]!.message.content!.length).to.be.greaterThan(0);
    expect(whole.usage!.completion_tokens).to.equal(20);
    const stream = await client.chat.completions.create({
      model: 'tiny-random',
      messages,
      max_tokens: 20,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let prompt = 0;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) prompt = chunk.usage.prompt_tokens;
    }
    expect(text).to.equal(whole.choices[0]!.message.content);
    expect(prompt).to.equal(whole.usage!.prompt_tokens);
  });

  it('gets legacy completions, streamed and not', async () => {
    const whole = await client.completions.create({ model: 'tiny-random', prompt: 'Hello', max_tokens: 8, temperature: 0 });
    expect(whole.usage!.completion_tokens).to.equal(8);
    const stream = await client.completions.create({
      model: 'tiny-random',
      prompt: 'Hello',
      max_tokens: 8,
      temperature: 0,
      stream: true,
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
    expect(text).to.equal(whole.choices[0]!.text);
  });

  it('lists models', async () => {
    const page = await client.models.list();
    expect(page.data.map((m) => m.id)).to.deep.equal(['tiny-random']);
  });

  it('raises the SDK error classes for 404 and 400', async () => {
    const notFound = await client.chat.completions.create({ model: 'missing', messages: [{ role: 'user', content: 'x' }] }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(notFound).to.be.instanceOf(OpenAI.NotFoundError);
    expect((notFound as InstanceType<typeof OpenAI.NotFoundError>).code).to.equal('model_not_found');
    const bad = await client.chat.completions
      .create({ model: 'tiny-random', messages: [{ role: 'user', content: 'x' }], n: 3 })
      .then(
        () => null,
        (e: unknown) => e,
      );
    expect(bad).to.be.instanceOf(OpenAI.BadRequestError);
    expect((bad as InstanceType<typeof OpenAI.BadRequestError>).param).to.equal('n');
  });
});
