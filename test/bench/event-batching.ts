/**
 * Benchmark: how much Redis work token relay costs, with the worker's event
 * batching on (the defaults) and off (one event per token), side by side in
 * one run on the same machine. Real processes, real Redis, the llama.cpp
 * engine on a small real model.
 *
 *   npm run bench:batching [-- --requests 16 --tokens 400 --concurrency 8]
 */
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { TestSystem } from '../helpers/system.js';
import { testModel } from '../helpers/models.js';
import { parseSse } from '../helpers/http.js';

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '16' },
    tokens: { type: 'string', default: '400' },
    concurrency: { type: 'string', default: '8' },
  },
});
const REQUESTS = Number(values.requests);
const TOKENS = Number(values.tokens);
const CONCURRENCY = Number(values.concurrency);

async function commandStats(sys: TestSystem): Promise<Map<string, number>> {
  const info = await sys.redis.info('commandstats');
  const out = new Map<string, number>();
  for (const m of info.matchAll(/^cmdstat_(\w+):calls=(\d+)/gm)) out.set(m[1]!, Number(m[2]));
  return out;
}

interface Row {
  mode: string;
  tokens: number;
  xadds: number;
  scripts: number;
  commands: number;
  seconds: number;
}

async function run(mode: string, workerEnv: NodeJS.ProcessEnv): Promise<Row> {
  const sys = await TestSystem.start({
    deployments: {
      models: [
        {
          name: 'tiny-random',
          source: await testModel('llama-2-tiny-random'),
          engine: { type: 'llamacpp', threads: 1, contextSize: 1024 },
          concurrency: CONCURRENCY,
        },
      ],
    },
    workers: [{ env: { ...workerEnv, LOG_LEVEL: 'warn' } }],
    gatewayEnv: { LOG_LEVEL: 'warn' },
  });
  try {
    const before = await commandStats(sys);
    const t0 = process.hrtime.bigint();
    let next = 0;
    let tokens = 0;
    const lane = async () => {
      while (next < REQUESTS) {
        next++;
        const res = await fetch(`${sys.url}/v1/completions`, {
          method: 'POST',
          body: JSON.stringify({
            model: 'tiny-random',
            prompt: 'Hi',
            max_tokens: TOKENS,
            stream: true,
            stream_options: { include_usage: true },
          }),
        });
        const events = parseSse(await res.text());
        const usage = JSON.parse(events.at(-2)!.data) as { usage: { completion_tokens: number } };
        tokens += usage.usage.completion_tokens;
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, lane));
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const after = await commandStats(sys);
    let commands = 0;
    for (const [k, v] of after) commands += v - (before.get(k) ?? 0);
    const delta = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);
    return { mode, tokens, xadds: delta('xadd'), scripts: delta('evalsha') + delta('eval'), commands, seconds };
  } finally {
    await sys.stop();
  }
}

const rows = [
  await run('batched (FLUSH_INTERVAL_MS=15, MAX_BATCH_TOKENS=32)', { FLUSH_INTERVAL_MS: '15', MAX_BATCH_TOKENS: '32' }),
  await run('per token (MAX_BATCH_TOKENS=1)', { FLUSH_INTERVAL_MS: '0', MAX_BATCH_TOKENS: '1' }),
];

console.log(`\nevent batching: ${REQUESTS} streams x ${TOKENS} tokens, ${CONCURRENCY} at once, llama.cpp on llama-2-tiny-random`);
console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, node ${process.version}\n`);
// Redis counts the commands a script runs as well as the script call itself.
console.log(
  '| mode | tokens | XADDs | tokens per XADD | script calls | Redis commands (incl. inside scripts) | per 1k tokens | tokens/s |',
);
console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const r of rows) {
  console.log(
    `| ${r.mode} | ${r.tokens} | ${r.xadds} | ${(r.tokens / r.xadds).toFixed(1)} | ${r.scripts} | ${r.commands} | ` +
      `${((r.commands / r.tokens) * 1000).toFixed(0)} | ${(r.tokens / r.seconds).toFixed(0)} |`,
  );
}
const [b, p] = rows as [Row, Row];
console.log(
  `\nper-token mode issues ${(p.commands / p.tokens / (b.commands / b.tokens)).toFixed(1)}x the Redis commands per token of batched mode.`,
);
