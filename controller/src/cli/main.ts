#!/usr/bin/env node
import { runCli } from './llmctl.js';

/**
 * `llmctl`: the command-line client of a controller's admin API. The logic is
 * in llmctl.ts; this file wires it to the process.
 */
// grpc-js gives TLS the address's host as the server name, even an IP address
// (which Node flags as DEP0123); the warning means nothing to a user of llmctl.
const emitWarning = process.emitWarning.bind(process) as (...args: unknown[]) => void;
process.emitWarning = ((...args: unknown[]) => {
  const opts = args[1];
  const code = typeof opts === 'object' && opts !== null ? (opts as { code?: unknown }).code : args[2];
  if (code !== 'DEP0123') emitWarning(...args);
}) as typeof process.emitWarning;

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function onInterrupt(fn: () => void): () => void {
  process.on('SIGINT', fn);
  process.on('SIGTERM', fn);
  return () => {
    process.off('SIGINT', fn);
    process.off('SIGTERM', fn);
  };
}

runCli(process.argv.slice(2), {
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => process.stderr.write(s),
  env: process.env,
  readStdin,
  onInterrupt,
}).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`llmctl: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
