import { createWriteStream } from 'node:fs';
import { access, mkdir, rename, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ConfigError, type Logger } from '@llmux/shared';

export interface ResolveOptions {
  /** Folder of local model files and downloads. */
  modelsDir: string;
  /** Base URL for `hf:` sources (`HF_ENDPOINT`). */
  hfEndpoint: string;
  logger: Logger;
  /** Where the progress bar is drawn. Default process.stderr. */
  progress?: NodeJS.WriteStream;
}

/**
 * Parses `hf:<owner>/<repo>/<path>[@<revision>]` into its download URL, its
 * file name, and the path under the models folder that a download goes to
 * (unique per owner, repo, revision and path). Returns null for a plain path.
 */
export function parseHfSource(source: string, endpoint: string): { url: string; file: string; cachePath: string } | null {
  if (!source.startsWith('hf:')) return null;
  const m = /^hf:([^/\s]+)\/([^/\s]+)\/([^@\s]+?)(?:@([^\s/]+))?$/.exec(source);
  if (!m) throw new ConfigError(`model source "${source}" is not of the form hf:<owner>/<repo>/<path/to/file.gguf>`);
  const [, owner, repo, path, revision] = m;
  const base = endpoint.replace(/\/+$/, '');
  const rev = revision ?? 'main';
  if (path!.split('/').some((p) => p === '..' || p === '.' || p === '')) {
    throw new ConfigError(`model source "${source}" has an empty, "." or ".." path segment`);
  }
  return {
    url: `${base}/${owner}/${repo}/resolve/${encodeURIComponent(rev)}/${path!.split('/').map(encodeURIComponent).join('/')}`,
    file: basename(path!),
    cachePath: join('hf', owner!, repo!, rev, path!),
  };
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/**
 * Turns a deployment's model source into a local file path. A plain path must
 * exist. For an `hf:` source, a file of the same name placed directly in
 * `modelsDir` is used as is (how offline machines are provisioned); else the
 * download cache `modelsDir/hf/<owner>/<repo>/<revision>/<path>` is used,
 * downloading into it with a progress bar when missing.
 */
export async function resolveModelSource(source: string, opts: ResolveOptions): Promise<string> {
  const hf = parseHfSource(source, opts.hfEndpoint);
  if (!hf) {
    const path = resolve(source);
    if (!(await exists(path))) throw new ConfigError(`model file ${path} does not exist (check the deployment's source)`);
    return path;
  }
  const dropped = resolve(opts.modelsDir, hf.file);
  if (await exists(dropped)) return dropped;
  const target = resolve(opts.modelsDir, hf.cachePath);
  if (await exists(target)) return target;
  await mkdir(dirname(target), { recursive: true });
  opts.logger.info({ url: hf.url, target }, 'downloading model');
  await download(hf.url, target, opts.progress ?? process.stderr);
  opts.logger.info({ target }, 'model downloaded');
  return target;
}

async function download(url: string, target: string, out: NodeJS.WriteStream): Promise<void> {
  let res: Response;
  try {
    res = await fetch(url, { redirect: 'follow' });
  } catch (err) {
    const cause = (err as Error & { cause?: Error }).cause?.message ?? (err as Error).message;
    throw new ConfigError(`cannot download ${url}: ${cause} (check the network or HF_ENDPOINT, or place the file in MODELS_DIR)`);
  }
  if (!res.ok || !res.body) {
    throw new ConfigError(`cannot download ${url}: HTTP ${res.status} (check the source, or place the file in MODELS_DIR)`);
  }
  const total = Number(res.headers.get('content-length') ?? 0);
  // A name of its own, so concurrent downloads of one file do not collide; the rename is atomic.
  const part = `${target}.${process.pid}.${randomBytes(4).toString('hex')}.part`;
  const bar = new ProgressBar(basename(target), total, out);
  const body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>);
  body.on('data', (chunk: Buffer) => bar.tick(chunk.length));
  try {
    await pipeline(body, createWriteStream(part));
    bar.done();
    await rename(part, target);
  } catch (err) {
    await rm(part, { force: true });
    throw err;
  }
}

/** A one-line progress bar on a TTY; a line per quarter elsewhere. */
class ProgressBar {
  private received = 0;
  private lastQuarter = 0;
  private lastDraw = 0;

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly out: NodeJS.WriteStream,
  ) {}

  tick(bytes: number): void {
    this.received += bytes;
    const now = Date.now();
    if (this.out.isTTY) {
      if (now - this.lastDraw < 100) return;
      this.lastDraw = now;
      this.out.write(`\r${this.render()}`);
    } else if (this.total > 0) {
      const quarter = Math.floor((this.received / this.total) * 4);
      if (quarter > this.lastQuarter) {
        this.lastQuarter = quarter;
        this.out.write(`${this.render()}\n`);
      }
    }
  }

  done(): void {
    if (this.out.isTTY) this.out.write(`\r${this.render()}\n`);
  }

  private render(): string {
    const mb = (n: number) => (n / 1e6).toFixed(1);
    if (!this.total) return `downloading ${this.label}: ${mb(this.received)} MB`;
    const frac = Math.min(1, this.received / this.total);
    const width = 30;
    const filled = Math.round(frac * width);
    return `downloading ${this.label} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${Math.round(frac * 100)}% ${mb(this.received)}/${mb(this.total)} MB`;
  }
}
