import { expect } from 'chai';
import { readdirSync } from 'node:fs';
import { validate as lintDockerfile } from 'dockerfile-utils';
import {
  EXTRA_ENV,
  IMAGES,
  ROOT,
  VLLM_ENV,
  allowedEnv,
  argsOf,
  dockerignore,
  durationSeconds,
  execForm,
  exists,
  healthcheckOf,
  ignored,
  isDir,
  parseDockerfile,
  read,
  runHealthcheck,
  type Dockerfile,
  type Stage,
} from './deploy-support.js';

/**
 * The container images (docker/*.Dockerfile), checked without a Docker engine
 * (none is at hand, so no image is built or run here): each Dockerfile lints
 * clean, every file it copies from the build context exists and is not left
 * out by .dockerignore, every file it copies from another stage was put there
 * by that stage, the runtime stage holds what the entry point loads, runs as a
 * numeric non-root user and has a HEALTHCHECK whose command is run here
 * against a stub server.
 */

const IGNORE = '.dockerignore';
const rules = dockerignore(read(IGNORE));
const rootPackage = JSON.parse(read('package.json')) as { workspaces: string[]; scripts: Record<string, string> };
const WORKSPACES = rootPackage.workspaces;

interface WorkspacePackage {
  name: string;
  main: string;
  dependencies?: Record<string, string>;
}
const pkgOf = (ws: string) => JSON.parse(read(`${ws}/package.json`)) as WorkspacePackage;
const wsByName = new Map(WORKSPACES.map((ws) => [pkgOf(ws).name, ws]));

/** A workspace and the workspaces it depends on, transitively. */
function withDependencies(ws: string, out = new Set<string>()): Set<string> {
  if (out.has(ws)) return out;
  out.add(ws);
  for (const dep of Object.keys(pkgOf(ws).dependencies ?? {})) {
    const other = wsByName.get(dep);
    if (other) withDependencies(other, out);
  }
  return out;
}

/** How the controller finds the entry module of a package it forks (controller/src/controller.ts): main.js next to its main. */
const entryOf = (ws: string) =>
  `${ws}/${pkgOf(ws)
    .main.replace(/^\.\//, '')
    .replace(/index\.js$/, 'main.js')}`;

/** Folders a workspace reads at run time besides its compiled code. */
const RUNTIME_FILES: Record<string, { path: string; why: string; images?: string[] }[]> = {
  shared: [
    { path: 'shared/lua', why: 'the Lua scripts, read by shared/src/redis/scripts.ts' },
    { path: 'shared/proto', why: 'the admin API proto, read by controller/src/admin/proto.ts', images: ['llmux/controller'] },
  ],
};

const DOCKERFILES = readdirSync(`${ROOT}docker`)
  .filter((f) => f.endsWith('.Dockerfile'))
  .sort();

const imageOf = (file: string) => `llmux/${file.replace(/\.Dockerfile$/, '')}`;
const words = (ins: { getKeyword(): string; getArgumentsContent(): string | null }) =>
  `${ins.getKeyword()} ${ins.getArgumentsContent() ?? ''}`.replace(/\\\r?\n/g, ' ');
const finalStage = (df: Dockerfile) => df.stages[df.stages.length - 1]!;
const workdirOf = (stage: Stage) => {
  let dir = '/';
  for (const ins of stage.instructions) {
    if (ins.getKeyword() === 'WORKDIR') dir = ins.getArgumentsContent()!.trim().replace(/\/+$/, '') || '/';
  }
  return dir;
};
const envOf = (stage: Stage) => {
  const env = new Map<string, string>();
  for (const ins of stage.instructions) {
    if (ins.getKeyword() !== 'ENV') continue;
    for (const [, k, v] of (ins.getArgumentsContent() ?? '').replace(/\\\r?\n/g, ' ').matchAll(/([A-Z_][A-Z0-9_]*)=(\S+)/g)) {
      env.set(k!, v!);
    }
  }
  return env;
};

describe('container images (docker/*.Dockerfile)', () => {
  it('are the gateway, the controller, and the CPU and GPU worker agents', () => {
    expect(DOCKERFILES.map(imageOf)).to.have.members(Object.keys(IMAGES));
  });

  describe(IGNORE, () => {
    it('leaves models, node_modules, build output and test artifacts out of the build context', () => {
      for (const path of [
        'models/stories260K.gguf',
        'node_modules/express/package.json',
        'shared/node_modules/x',
        'shared/dist/index.js',
        'gateway/tsconfig.tsbuildinfo',
        'test/unit/deploy-images.test.ts',
        'test/artifacts/report.json',
        '.git/HEAD',
        'load-tests/src/cli.ts',
      ]) {
        expect(ignored(rules, path), path).to.equal(true);
      }
    });

    it('keeps what the images build from', () => {
      for (const path of [
        'package.json',
        'package-lock.json',
        '.npmrc',
        'tsconfig.base.json',
        'shared/src/index.ts',
        'shared/lua',
      ]) {
        expect(ignored(rules, path), path).to.equal(false);
      }
      for (const ws of WORKSPACES) expect(ignored(rules, `${ws}/package.json`), `${ws}/package.json`).to.equal(false);
    });
  });

  for (const file of DOCKERFILES) {
    const path = `docker/${file}`;
    const image = imageOf(file);
    describe(path, () => {
      const df = parseDockerfile(path);
      const named = new Map(df.stages.filter((s) => s.name).map((s) => [s.name!, s]));
      const runtime = finalStage(df);
      const cmd = execForm(runtime.instructions.find((i) => i.getKeyword() === 'CMD')?.getArgumentsContent() ?? '');
      const script = cmd?.find((w) => /\/dist\/.*\.js$/.test(w)) ?? '';
      const ws = script.split('/')[0]!;

      it('lints clean (dockerfile-utils)', () => {
        const problems = lintDockerfile(df.text).map((d) => `line ${d.range.start.line + 1}: ${d.message}`);
        expect(problems).to.deep.equal([]);
      });

      it("copies from the build context only files that exist and that .dockerignore keeps, and from other stages only earlier stages' files", () => {
        df.stages.forEach((stage, index) => {
          for (const ins of stage.instructions.filter((i) => ['COPY', 'ADD'].includes(i.getKeyword()))) {
            const { flags, words: w } = argsOf(ins);
            const sources = w.slice(0, -1);
            expect(sources, words(ins)).to.have.length.above(0);
            const from = flags.get('from');
            if (from === undefined) {
              for (const src of sources) {
                const rel = src.replace(/^\.\//, '').replace(/\/+$/, '');
                expect(exists(rel), `${words(ins)}: ${rel} exists`).to.equal(true);
                expect(ignored(rules, rel), `${words(ins)}: ${rel} is in the build context (${IGNORE})`).to.equal(false);
              }
              continue;
            }
            const source = named.get(from);
            expect(source, `${words(ins)}: --from names a stage of this file`).to.not.equal(undefined);
            expect(df.stages.indexOf(source!), `${words(ins)}: an earlier stage`).to.be.below(index);
            // A stage that only names an image (FROM node AS node) provides that image's files.
            if (source!.instructions.length === 0) continue;
            const dir = workdirOf(source!);
            for (const src of sources) {
              expect(src.startsWith(`${dir}/`), `${words(ins)}: under ${from}'s WORKDIR ${dir}`).to.equal(true);
              const rel = src.slice(dir.length + 1).replace(/\/+$/, '');
              const runs = source!.instructions.filter((i) => i.getKeyword() === 'RUN').map(words);
              const copies = source!.instructions
                .filter((i) => i.getKeyword() === 'COPY')
                .flatMap((i) => argsOf(i).words.slice(0, -1));
              if (rel === 'node_modules') {
                expect(
                  runs.some((r) => /\bnpm ci\b/.test(r)),
                  `${words(ins)}: ${from} runs npm ci`,
                ).to.equal(true);
              } else if (/^[\w-]+\/dist$/.test(rel)) {
                const w = rel.split('/')[0]!;
                expect(exists(`${w}/tsconfig.json`), `${w} is a TypeScript project`).to.equal(true);
                expect(
                  runs.some((r) => new RegExp(`\\btsc -b\\b[^&]*\\s${w}(\\s|$)`).test(r)),
                  `${words(ins)}: ${from} builds ${w} with tsc -b`,
                ).to.equal(true);
              } else {
                expect(exists(rel), `${words(ins)}: ${rel} exists in the repository`).to.equal(true);
                expect(
                  copies.some((c) => rel === c.replace(/\/+$/, '') || rel.startsWith(`${c.replace(/\/+$/, '')}/`)),
                  `${words(ins)}: ${from} copied ${rel} in`,
                ).to.equal(true);
              }
            }
          }
        });
      });

      it('installs every workspace manifest before npm ci, with optional dependencies left out', () => {
        for (const stage of df.stages) {
          const ci = stage.instructions.findIndex((i) => i.getKeyword() === 'RUN' && /\bnpm ci\b/.test(words(i)));
          if (ci < 0) continue;
          expect(words(stage.instructions[ci]!), `${stage.name}: npm ci`).to.match(/--omit=optional/);
          const before = stage.instructions.slice(0, ci).filter((i) => i.getKeyword() === 'COPY');
          const copied = before.flatMap((i) => argsOf(i).words.slice(0, -1));
          for (const f of ['package.json', 'package-lock.json', ...WORKSPACES.map((w) => `${w}/package.json`)]) {
            expect(copied, `${stage.name}: ${f} before npm ci`).to.include(f);
          }
        }
      });

      it('runs the entry point of its package, as the controller and npm start launch it', () => {
        expect(cmd, 'CMD in exec form').to.be.an('array');
        expect(cmd![0]).to.equal('node');
        expect(WORKSPACES, `${script}: a workspace's`).to.include(ws);
        expect(script).to.equal(entryOf(ws));
        expect(exists(script.replace(/\/dist\//, '/src/').replace(/\.js$/, '.ts')), `${script} is built from src`).to.equal(true);
        if (ws === 'controller') expect(rootPackage.scripts.start).to.equal(cmd!.join(' '));
        const info = IMAGES[image]!;
        expect(ws).to.equal(info.component === 'worker' ? 'worker-agent' : info.component);
      });

      it('has a multi-stage build whose runtime stage holds only package manifests, compiled code, runtime files and production node_modules', () => {
        expect(df.stages.length, 'stages').to.be.at.least(3);
        const copies = runtime.instructions.filter((i) => ['COPY', 'ADD'].includes(i.getKeyword()));
        for (const ins of copies) {
          const { flags, words: w } = argsOf(ins);
          expect(flags.has('from'), `${words(ins)}: from a stage, not the build context`).to.equal(true);
          const from = named.get(flags.get('from')!)!;
          if (from.instructions.length === 0) continue; // a file of a base image (the Node.js binary)
          for (const src of w.slice(0, -1)) {
            const rel = src.slice(workdirOf(from).length + 1);
            const ok =
              rel === 'node_modules' ||
              rel === 'package.json' ||
              /^[\w-]+\/(package\.json|dist)$/.test(rel) ||
              Object.values(RUNTIME_FILES)
                .flat()
                .some((r) => r.path === rel);
            expect(ok, `${words(ins)}: ${rel}`).to.equal(true);
          }
        }
        const deps = named.get('deps');
        expect(deps, 'a deps stage').to.not.equal(undefined);
        const install = deps!.instructions.map(words).find((r) => /\bnpm ci\b/.test(r)) ?? '';
        expect(install, 'production dependencies only').to.match(/--omit=dev/);
        expect(install, `of ${pkgOf(ws).name} only`).to.include(`--workspace=${pkgOf(ws).name}`);
      });

      it('copies the compiled code, manifest and runtime files of its package and of each workspace it depends on', () => {
        const dests = new Set(
          runtime.instructions
            .filter((i) => i.getKeyword() === 'COPY')
            .map((i) => argsOf(i).words.slice(-1)[0]!.replace(/\/+$/, '')),
        );
        for (const w of withDependencies(ws)) {
          expect(dests, `${w}/package.json`).to.include(w);
          expect(dests, `${w}/dist`).to.include(`${w}/dist`);
          for (const r of RUNTIME_FILES[w] ?? []) {
            if (!r.images || r.images.includes(image)) expect(dests, `${r.path}: ${r.why}`).to.include(r.path);
          }
        }
        expect(dests, 'node_modules').to.include('node_modules');
      });

      it('runs as a numeric non-root user', () => {
        const users = runtime.instructions.filter((i) => i.getKeyword() === 'USER').map((i) => i.getArgumentsContent()!.trim());
        expect(users, 'USER in the runtime stage').to.have.length.above(0);
        const last = users[users.length - 1]!;
        const [uid, gid] = last.split(':');
        expect(uid, 'numeric uid (Kubernetes runAsNonRoot checks it)').to.match(/^\d+$/);
        expect(Number(uid), 'uid').to.be.above(0);
        if (gid !== undefined) expect(Number(gid), 'gid').to.be.above(0);
        const userAt = runtime.instructions.findIndex((i) => i.getKeyword() === 'USER');
        const after = runtime.instructions.slice(userAt).filter((i) => i.getKeyword() === 'RUN');
        expect(after.map(words), 'nothing runs as root after USER').to.deep.equal([]);
      });

      it('starts under tini, installed in the same stage, so SIGTERM reaches the process and orphans are reaped', () => {
        const entrypoint = execForm(
          runtime.instructions.find((i) => i.getKeyword() === 'ENTRYPOINT')?.getArgumentsContent() ?? '',
        );
        expect(entrypoint).to.deep.equal(['tini', '--']);
        expect(runtime.instructions.map(words).some((r) => /^RUN .*apt-get install[^&]*\btini\b/.test(r))).to.equal(true);
      });

      it('sets only environment variables its processes read', () => {
        const allowed = allowedEnv(IMAGES[image]!);
        for (const name of envOf(runtime).keys()) expect(allowed.has(name), `ENV ${name}`).to.equal(true);
      });

      describe('HEALTHCHECK', () => {
        const hc = runtime.instructions.filter((i) => i.getKeyword() === 'HEALTHCHECK');
        const { flags, cmd: probe } = hc.length === 1 ? healthcheckOf(hc[0]!) : { flags: new Map<string, string>(), cmd: null };
        const env = envOf(runtime);
        const info = IMAGES[image]!;
        const portVar = info.component === 'gateway' ? 'PORT' : 'METRICS_PORT';
        const path = info.component === 'controller' ? '/metrics' : '/healthz';

        it(`probes ${path} on ${portVar}, with a timeout and a start period`, () => {
          expect(hc, 'one HEALTHCHECK in the runtime stage').to.have.length(1);
          expect(probe, 'CMD in exec form').to.be.an('array');
          expect(probe!.join(' ')).to.include(`process.env.${portVar}`);
          expect(probe!.join(' ')).to.include(path);
          expect(durationSeconds(flags.get('timeout') ?? '30s')).to.be.at.most(5);
          expect(flags.has('start-period'), '--start-period').to.equal(true);
          // The port the process listens on by default in this image is the one exposed.
          const port = env.get(portVar);
          expect(port, `ENV ${portVar}`).to.match(/^\d+$/);
          const exposed = runtime.instructions
            .filter((i) => i.getKeyword() === 'EXPOSE')
            .map((i) => i.getArgumentsContent()!.trim());
          expect(exposed).to.include(port);
          expect(env.get(info.component === 'gateway' ? 'HOST' : 'METRICS_HOST'), 'bound beyond loopback').to.equal('0.0.0.0');
        });

        it('exits 0 when the endpoint answers 200 and 1 when it answers 503', async () => {
          const at = (port: number) => ({ [portVar]: String(port) });
          const up = await runHealthcheck(probe!, 200, at);
          expect(up.code).to.equal(0);
          expect(up.paths).to.deep.equal([path]);
          const down = await runHealthcheck(probe!, 503, at);
          expect(down.code).to.equal(1);
        });
      });
    });
  }

  describe('the checks themselves', () => {
    it('dockerfile-utils reports a broken Dockerfile', () => {
      const problems = lintDockerfile('FROM node:20-bookworm-slim\nCOPY\nHEALTHCHECK --interval=5 CMD\nUSR 1000\n');
      expect(problems.length).to.be.above(0);
    });

    it('.dockerignore rules: the last match wins and ! re-includes', () => {
      const r = dockerignore('**/dist\nload-tests\n!load-tests/package.json\n# comment\n*.md\n');
      expect(ignored(r, 'a/b/dist/x.js')).to.equal(true);
      expect(ignored(r, 'dist')).to.equal(true);
      expect(ignored(r, 'load-tests/src/x.ts')).to.equal(true);
      expect(ignored(r, 'load-tests/package.json')).to.equal(false);
      expect(ignored(r, 'README.md')).to.equal(true);
      expect(ignored(r, 'docs/README.md')).to.equal(false);
      expect(ignored(r, 'distant/x')).to.equal(false);
    });

    it('a HEALTHCHECK command that probes the wrong port fails', async () => {
      const wrong = [
        'node',
        '-e',
        "fetch('http://127.0.0.1:1/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))",
      ];
      expect((await runHealthcheck(wrong, 200, () => ({}))).code).to.equal(1);
    });

    it('the runtime folders the images copy exist', () => {
      for (const r of Object.values(RUNTIME_FILES).flat()) expect(isDir(r.path), r.path).to.equal(true);
    });

    it("the readers of the variables allowed beyond the services' own read them", () => {
      // vLLM's variables reach it because the engine starts it with the agent's environment.
      expect(read('worker-agent/src/engines/vllm.ts')).to.match(/env: \{ \.\.\.process\.env\b/);
      expect(Object.keys(VLLM_ENV)).to.include.members(['HF_HOME', 'HOME']);
      // NODE_ENV: Express, which the gateway runs on, reads it.
      expect(read('node_modules/express/lib/application.js')).to.include('process.env.NODE_ENV');
      expect(Object.keys(EXTRA_ENV)).to.deep.equal(['NODE_ENV']);
    });
  });
});
