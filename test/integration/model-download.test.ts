import { expect } from 'chai';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { ConfigError, createLogger } from '@llmux/shared';
import { parseHfSource, resolveModelSource } from '@llmux/worker-agent';
import { MODELS_DIR } from '../helpers/models.js';
import { rejection } from '../helpers/engines.js';

/** Every file (not folder) under `dir`, as paths relative to it. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => relative(dir, join(e.parentPath, e.name)));
}

describe('model sources: parseHfSource', () => {
  const HF = 'https://huggingface.co';

  it('builds the resolve URL and local file name', () => {
    expect(parseHfSource('hf:ggml-org/models/tinyllamas/stories260K.gguf', HF)).to.deep.equal({
      url: 'https://huggingface.co/ggml-org/models/resolve/main/tinyllamas/stories260K.gguf',
      file: 'stories260K.gguf',
      cachePath: join('hf', 'ggml-org', 'models', 'main', 'tinyllamas', 'stories260K.gguf'),
    });
  });

  it('takes a revision after @', () => {
    expect(parseHfSource('hf:aladar/llama-2-tiny-random-GGUF/llama-2-tiny-random.gguf@v1.2', HF)).to.deep.equal({
      url: 'https://huggingface.co/aladar/llama-2-tiny-random-GGUF/resolve/v1.2/llama-2-tiny-random.gguf',
      file: 'llama-2-tiny-random.gguf',
      cachePath: join('hf', 'aladar', 'llama-2-tiny-random-GGUF', 'v1.2', 'llama-2-tiny-random.gguf'),
    });
    expect(parseHfSource('hf:o/r/f.gguf@0123abcd', HF)!.url).to.equal('https://huggingface.co/o/r/resolve/0123abcd/f.gguf');
  });

  it('keeps a nested path in the URL and names the file by its last part', () => {
    const r = parseHfSource('hf:owner/repo/a/b/c/model-Q4_K_M.gguf', HF)!;
    expect(r.url).to.equal('https://huggingface.co/owner/repo/resolve/main/a/b/c/model-Q4_K_M.gguf');
    expect(r.file).to.equal('model-Q4_K_M.gguf');
  });

  it('escapes path parts and ignores trailing slashes of the endpoint', () => {
    expect(parseHfSource('hf:o/r/dir/a+b#1.gguf', 'http://127.0.0.1:9/mirror//')!.url).to.equal(
      'http://127.0.0.1:9/mirror/o/r/resolve/main/dir/a%2Bb%231.gguf',
    );
  });

  it('returns null for a plain path', () => {
    expect(parseHfSource('models/stories260K.gguf', HF)).to.equal(null);
    expect(parseHfSource('/abs/hf:x/y/z.gguf', HF)).to.equal(null);
  });

  for (const bad of [
    'hf:',
    'hf:owner',
    'hf:owner/repo',
    'hf:owner/repo/',
    'hf:owner//file.gguf',
    'hf:owner/repo/file.gguf@',
    'hf:owner/repo/my file.gguf',
    'hf:owner/repo/file.gguf@refs/pr/1',
  ]) {
    it(`throws ConfigError for ${JSON.stringify(bad)}`, () => {
      expect(() => parseHfSource(bad, HF)).to.throw(ConfigError);
    });
  }
});

describe('model sources: resolveModelSource against a local HTTP server', function () {
  const PATH = '/ggml-org/models/resolve/main/tinyllamas/stories260K.gguf';
  const SOURCE = 'hf:ggml-org/models/tinyllamas/stories260K.gguf';
  let original: Buffer;
  let server: Server;
  let endpoint: string;
  const requests: string[] = [];
  /** How the next request for PATH is answered: in full, or cut off halfway. */
  let mode: 'full' | 'truncated' = 'full';
  const dirs: string[] = [];
  const logger = createLogger('test', 'silent');

  const freshDir = async () => {
    const d = await mkdtemp(join(tmpdir(), 'llmux-models-'));
    dirs.push(d);
    return d;
  };

  /** A non-TTY stand-in for stderr that keeps what is written. */
  const progressSink = () => {
    const writes: string[] = [];
    const stream = {
      isTTY: false,
      write(chunk: string) {
        writes.push(String(chunk));
        return true;
      },
    } as unknown as NodeJS.WriteStream;
    return { stream, writes };
  };

  before(async () => {
    original = await readFile(join(MODELS_DIR, 'stories260K.gguf'));
    server = createServer((req: IncomingMessage, res: ServerResponse) => {
      requests.push(req.url ?? '');
      if (req.url !== PATH) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('Entry not found');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(original.length) });
      if (mode === 'truncated') {
        res.write(original.subarray(0, original.length >> 1), () => res.destroy());
        return;
      }
      res.end(original);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  beforeEach(() => {
    mode = 'full';
    requests.length = 0;
  });

  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('downloads an hf: source into the models folder, byte for byte, showing progress', async () => {
    const dir = await freshDir();
    const progress = progressSink();
    const path = await resolveModelSource(SOURCE, { modelsDir: dir, hfEndpoint: endpoint, logger, progress: progress.stream });
    const cached = join('hf', 'ggml-org', 'models', 'main', 'tinyllamas', 'stories260K.gguf');
    expect(path).to.equal(join(dir, cached));
    expect((await readFile(path)).equals(original)).to.equal(true);
    expect(await filesUnder(dir)).to.deep.equal([cached]);
    expect(requests).to.deep.equal([PATH]);
    // Not a TTY: whole lines, at most one per quarter, the last at 100%.
    expect(progress.writes.length).to.be.within(1, 4);
    for (const w of progress.writes) expect(w.endsWith('\n')).to.equal(true);
    expect(progress.writes.at(-1)).to.contain('stories260K.gguf').and.contain('100%');
  });

  it('does not download again when the file is already there', async () => {
    const dir = await freshDir();
    const opts = { modelsDir: dir, hfEndpoint: endpoint, logger, progress: progressSink().stream };
    const first = await resolveModelSource(SOURCE, opts);
    expect(requests).to.have.length(1);
    const second = await resolveModelSource(SOURCE, opts);
    expect(second).to.equal(first);
    expect(requests).to.have.length(1);
  });

  it('creates a missing models folder', async () => {
    const dir = join(await freshDir(), 'nested', 'models');
    const path = await resolveModelSource(SOURCE, {
      modelsDir: dir,
      hfEndpoint: endpoint,
      logger,
      progress: progressSink().stream,
    });
    expect((await readFile(path)).length).to.equal(original.length);
  });

  it('gives ConfigError for a 404 and leaves no partial file', async () => {
    const dir = await freshDir();
    const err = await rejection(
      resolveModelSource('hf:ggml-org/models/tinyllamas/missing.gguf', {
        modelsDir: dir,
        hfEndpoint: endpoint,
        logger,
        progress: progressSink().stream,
      }),
    );
    expect(err).to.be.instanceOf(ConfigError);
    expect(requests).to.deep.equal(['/ggml-org/models/resolve/main/tinyllamas/missing.gguf']);
    expect(await filesUnder(dir)).to.deep.equal([]);
  });

  it('leaves no partial file when the connection drops mid-download, and succeeds on retry', async () => {
    const dir = await freshDir();
    const opts = { modelsDir: dir, hfEndpoint: endpoint, logger, progress: progressSink().stream };
    mode = 'truncated';
    const err = await rejection(resolveModelSource(SOURCE, opts));
    expect(err).to.be.instanceOf(Error);
    expect(await filesUnder(dir)).to.deep.equal([]);
    mode = 'full';
    const path = await resolveModelSource(SOURCE, opts);
    expect((await readFile(path)).equals(original)).to.equal(true);
    expect(requests).to.have.length(2);
  });

  it('fails and leaves nothing behind when the endpoint does not answer', async () => {
    const dir = await freshDir();
    // A port that was just free: nothing listens there.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const port = (probe.address() as AddressInfo).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
    const err = await rejection(
      resolveModelSource(SOURCE, {
        modelsDir: dir,
        hfEndpoint: `http://127.0.0.1:${port}`,
        logger,
        progress: progressSink().stream,
      }),
    );
    expect(err).to.be.instanceOf(ConfigError);
    expect(await filesUnder(dir)).to.deep.equal([]);
  });

  it('uses a file of the same name placed directly in the models folder, without a request', async () => {
    const dir = await freshDir();
    await writeFile(join(dir, 'stories260K.gguf'), original);
    const path = await resolveModelSource(SOURCE, {
      modelsDir: dir,
      hfEndpoint: endpoint,
      logger,
      progress: progressSink().stream,
    });
    expect(path).to.equal(join(dir, 'stories260K.gguf'));
    expect(requests).to.deep.equal([]);
  });

  it('keeps same-named files of different repositories and revisions apart', async () => {
    const dir = await freshDir();
    const opts = { modelsDir: dir, hfEndpoint: endpoint, logger, progress: progressSink().stream };
    await resolveModelSource(SOURCE, opts);
    // The test server has no v2: what matters is that v2 was asked for, not served from main's copy.
    expect(await rejection(resolveModelSource(`${SOURCE}@v2`, opts))).to.be.instanceOf(ConfigError);
    expect(requests).to.deep.equal([PATH, PATH.replace('/main/', '/v2/')]);
  });

  it('lets two concurrent downloads of one source both succeed', async () => {
    const dir = await freshDir();
    const opts = { modelsDir: dir, hfEndpoint: endpoint, logger, progress: progressSink().stream };
    const [a, b] = await Promise.all([resolveModelSource(SOURCE, opts), resolveModelSource(SOURCE, opts)]);
    expect(a).to.equal(b);
    expect((await readFile(a)).equals(original)).to.equal(true);
    expect((await filesUnder(dir)).filter((f) => f.endsWith('.part'))).to.deep.equal([]);
  });

  it('resolves an existing plain path without any request', async () => {
    const file = join(MODELS_DIR, 'stories260K.gguf');
    const path = await resolveModelSource(file, { modelsDir: await freshDir(), hfEndpoint: endpoint, logger });
    expect(path).to.equal(file);
    expect(requests).to.deep.equal([]);
  });

  it('gives ConfigError for a plain path that does not exist', async () => {
    const dir = await freshDir();
    const err = await rejection(
      resolveModelSource(join(dir, 'nowhere', 'model.gguf'), { modelsDir: dir, hfEndpoint: endpoint, logger }),
    );
    expect(err).to.be.instanceOf(ConfigError);
    expect(requests).to.deep.equal([]);
  });
});
