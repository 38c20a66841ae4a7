import { parseSimServerArgs, USAGE, UsageError } from './options.js';
import { SimServer } from './server.js';

/**
 * Entrypoint: `npm run sim-server -- --port 9000 ...`, or
 * `node worker-agent/dist/sim-server/main.js serve <model> --host H --port P`
 * in place of `vllm serve`. Prints one line when it listens; exits cleanly on
 * SIGTERM and SIGINT.
 */
async function main(): Promise<void> {
  let opts;
  try {
    opts = parseSimServerArgs(process.argv.slice(2));
  } catch (err) {
    if (err instanceof UsageError) {
      if (err.message) process.stderr.write(`sim-server: ${err.message}\n`);
      process.stderr.write(`${USAGE}\n`);
      process.exit(err.message ? 2 : 0);
    }
    throw err;
  }
  const sim = new SimServer(opts);
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    void sim.close().then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // Forked with an IPC channel: follow the parent down.
  if (process.send) process.on('disconnect', stop);
  const { url } = await sim.listen();
  process.stdout.write(`sim-server listening on ${url}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`sim-server: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
