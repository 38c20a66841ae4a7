import { execFile } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { DockerfileParser, type Instruction } from 'dockerfile-ast';
import { parseAllDocuments } from 'yaml';

/**
 * What the deploy-*.test.ts files share: reading the repository, the
 * environment variables each service reads (from the sources), the Dockerfiles
 * parsed into stages, .dockerignore matching, and Kubernetes validation.
 */

export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const read = (path: string) => readFileSync(`${ROOT}${path}`, 'utf8');
export const exists = (path: string) => existsSync(`${ROOT}${path}`);
export const isDir = (path: string) => exists(path) && statSync(`${ROOT}${path}`).isDirectory();
const require = createRequire(import.meta.url);

// ---- environment variables the services read ----

export type Component = 'gateway' | 'worker' | 'controller';

/** The zod object of each process in shared/src/config/env.ts, the one place that validates variables. */
const ENV_SCHEMAS: Record<Component, string> = { gateway: 'gatewayEnv', worker: 'workerEnv', controller: 'controllerEnv' };

/** Property names of `const name = {...}` or `const name = z.object({...})…` in env.ts, with `...spread`s resolved. */
function envNames(): Record<Component, Set<string>> {
  const path = 'shared/src/config/env.ts';
  const file = ts.createSourceFile(path, read(path), ts.ScriptTarget.ES2022, true);
  const inits = new Map<string, ts.Expression>();
  const visit = (n: ts.Node) => {
    if (ts.isVariableDeclaration(n) && ts.isIdentifier(n.name) && n.initializer) inits.set(n.name.text, n.initializer);
    ts.forEachChild(n, visit);
  };
  visit(file);
  const objectOf = (e: ts.Expression): ts.ObjectLiteralExpression | null => {
    if (ts.isObjectLiteralExpression(e)) return e;
    if (ts.isCallExpression(e)) {
      const arg = e.arguments.find(ts.isObjectLiteralExpression);
      if (arg && ts.isPropertyAccessExpression(e.expression) && e.expression.name.text === 'object') return arg;
      // z.object({...}).strict() and the like: look at what the call is made on.
      if (ts.isPropertyAccessExpression(e.expression)) return objectOf(e.expression.expression);
    }
    return null;
  };
  const namesOf = (varName: string, seen = new Set<string>()): Set<string> => {
    const init = inits.get(varName);
    const obj = init && objectOf(init);
    if (!obj) throw new Error(`${path}: no object literal for ${varName}`);
    if (seen.has(varName)) return new Set();
    seen.add(varName);
    const out = new Set<string>();
    for (const p of obj.properties) {
      if (ts.isSpreadAssignment(p) && ts.isIdentifier(p.expression)) {
        for (const n of namesOf(p.expression.text, seen)) out.add(n);
      } else if (p.name && (ts.isIdentifier(p.name) || ts.isStringLiteral(p.name))) {
        out.add(p.name.text);
      }
    }
    return out;
  };
  return {
    gateway: namesOf(ENV_SCHEMAS.gateway),
    worker: namesOf(ENV_SCHEMAS.worker),
    controller: namesOf(ENV_SCHEMAS.controller),
  };
}

/** `env.NAME` reads in a source file (llmctl reads its variables this way). */
function sourceEnvReads(path: string): Set<string> {
  return new Set([...read(path).matchAll(/\benv\.([A-Z][A-Z0-9_]*)\b/g)].map((m) => m[1]!));
}

/**
 * Variables a container may set beyond its service's own, and who reads them.
 * Each entry is checked against its reader where the reader is in this
 * repository (see the tests).
 */
export const EXTRA_ENV: Record<string, string> = {
  NODE_ENV: 'Node.js libraries (Express serves plain error pages in production)',
};
/** Read by the vLLM process, which inherits the agent's environment (worker-agent/src/engines/vllm.ts). */
export const VLLM_ENV: Record<string, string> = {
  HOME: 'vLLM, PyTorch and Triton caches',
  HF_HOME: 'where vLLM downloads weights (huggingface_hub)',
  HF_TOKEN: 'gated models on the Hugging Face hub (huggingface_hub)',
};

export interface ImageInfo {
  component: Component;
  /** The image runs vLLM as the agent's child. */
  vllm: boolean;
}

/** What each image of docker/ runs: llmux/<name> is built from docker/<name>.Dockerfile. */
export const IMAGES: Record<string, ImageInfo> = {
  'llmux/gateway': { component: 'gateway', vllm: false },
  'llmux/controller': { component: 'controller', vllm: false },
  'llmux/worker-cpu': { component: 'worker', vllm: false },
  'llmux/worker-gpu': { component: 'worker', vllm: true },
};

/** The image name without tag or digest. */
export const imageName = (image: string) => image.replace(/@.*$/, '').replace(/:[^/:]*$/, '');

let cachedEnv: Record<Component, Set<string>> | null = null;

/** Every variable a container of this image may set: its service's (env.ts), llmctl's in the controller image, vLLM's in the GPU image. */
export function allowedEnv(image: ImageInfo): Set<string> {
  cachedEnv ??= envNames();
  const names = new Set([...cachedEnv[image.component], ...Object.keys(EXTRA_ENV)]);
  if (image.component === 'controller') for (const n of sourceEnvReads('controller/src/cli/llmctl.ts')) names.add(n);
  if (image.vllm) for (const n of Object.keys(VLLM_ENV)) names.add(n);
  return names;
}

export { envNames as readEnvNames, sourceEnvReads };

// ---- Dockerfiles ----

export interface Stage {
  /** `FROM <image> AS <name>`: the name, null for an unnamed stage. */
  name: string | null;
  /** The base as written, `${ARG}` resolved with the ARG defaults. */
  base: string;
  instructions: Instruction[];
}

export interface Dockerfile {
  path: string;
  text: string;
  args: Map<string, string>;
  stages: Stage[];
}

export function parseDockerfile(path: string): Dockerfile {
  const text = read(path);
  const df = DockerfileParser.parse(text);
  const args = new Map<string, string>();
  for (const a of df.getInitialARGs()) {
    for (const p of a.getProperties()) args.set(p.getName(), p.getValue() ?? '');
  }
  const stages: Stage[] = [];
  for (const ins of df.getInstructions()) {
    if (ins.getKeyword() === 'FROM') {
      const words = ins.getArguments().map((a) => a.getValue());
      const asAt = words.findIndex((w) => w.toUpperCase() === 'AS');
      const base = words.find((w) => !w.startsWith('--'))!.replace(/\$\{(\w+)\}/g, (_m, n: string) => args.get(n) ?? '');
      stages.push({ name: asAt >= 0 ? words[asAt + 1]! : null, base, instructions: [] });
    } else if (stages.length > 0) {
      stages[stages.length - 1]!.instructions.push(ins);
    }
  }
  return { path, text, args, stages };
}

/** The flags of an instruction that takes them (`COPY --from=build`, `HEALTHCHECK --timeout=3s`). */
function flagsOf(ins: Instruction): Map<string, string> {
  const flagged = ins as Instruction & { getFlags?: () => { getName(): string; getValue(): string | null }[] };
  return new Map((flagged.getFlags?.() ?? []).map((f) => [f.getName(), f.getValue() ?? ''] as [string, string]));
}

/** An instruction's flags (`--from=build`) and its other words. */
export function argsOf(ins: Instruction): { flags: Map<string, string>; words: string[] } {
  return { flags: flagsOf(ins), words: ins.getArguments().map((x) => x.getValue()) };
}

/** The JSON (exec) form of CMD, ENTRYPOINT or HEALTHCHECK's CMD, as an array; null for the shell form. */
export function execForm(content: string): string[] | null {
  const trimmed = content.replace(/\\\r?\n/g, ' ').trim();
  if (!trimmed.startsWith('[')) return null;
  const parsed: unknown = JSON.parse(trimmed);
  return Array.isArray(parsed) && parsed.every((s) => typeof s === 'string') ? parsed : null;
}

/** HEALTHCHECK [--flags] CMD [...]: its flags and its command in exec form. */
export function healthcheckOf(ins: Instruction): { flags: Map<string, string>; cmd: string[] | null } {
  const content = (ins.getArgumentsContent() ?? '').replace(/\\\r?\n/g, ' ').trim();
  const m = /^CMD\s+([\s\S]*)$/i.exec(content);
  return { flags: flagsOf(ins), cmd: m ? execForm(m[1]!) : null };
}

/** Docker's duration strings (`10s`, `1m30s`) in seconds. */
export function durationSeconds(d: string): number {
  const units: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600 };
  const parts = [...d.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== d) throw new Error(`not a duration: ${d}`);
  return parts.reduce((s, p) => s + Number(p[1]) * units[p[2]!]!, 0);
}

// ---- .dockerignore ----

interface IgnoreRule {
  negate: boolean;
  re: RegExp;
}

/** Rules of a .dockerignore: Go filepath.Match patterns with `**`, the last matching rule wins, `!` re-includes. */
export function dockerignore(text: string): IgnoreRule[] {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const negate = l.startsWith('!');
      const pattern = (negate ? l.slice(1) : l).trim().replace(/^\/+/, '').replace(/\/+$/, '');
      let re = '';
      for (let i = 0; i < pattern.length; i++) {
        const c = pattern[i]!;
        if (c === '*' && pattern[i + 1] === '*') {
          // `**/` matches any number of folders, including none.
          re += pattern[i + 2] === '/' ? '(?:.*/)?' : '.*';
          i += pattern[i + 2] === '/' ? 2 : 1;
        } else if (c === '*') re += '[^/]*';
        else if (c === '?') re += '[^/]';
        else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
      }
      return { negate, re: new RegExp(`^${re}$`) };
    });
}

/** Whether a path of the build context is left out: a rule matches it or one of its parent folders. */
export function ignored(rules: IgnoreRule[], path: string): boolean {
  const parts = path.replace(/^\.\//, '').replace(/\/+$/, '').split('/');
  let out = false;
  for (const rule of rules) {
    for (let i = 1; i <= parts.length; i++) {
      if (rule.re.test(parts.slice(0, i).join('/'))) {
        out = !rule.negate;
        break;
      }
    }
  }
  return out;
}

// ---- running a HEALTHCHECK command against a stub server ----

/** Runs `cmd` with `env` against a local server answering `status` on every path; resolves with its exit code and the paths asked for. */
export async function runHealthcheck(
  cmd: string[],
  status: number,
  env: (port: number) => NodeJS.ProcessEnv,
): Promise<{ code: number | null; paths: string[] }> {
  const paths: string[] = [];
  const server = createServer((req, res) => {
    paths.push(req.url ?? '');
    res.writeHead(status).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  try {
    const code = await new Promise<number | null>((resolve) => {
      const child = execFile(cmd[0]!, cmd.slice(1), { env: { PATH: process.env.PATH, ...env(port) }, timeout: 10_000 }, (err) => {
        if (!err) return resolve(0);
        const code = (err as { code?: unknown }).code;
        resolve(typeof code === 'number' ? code : null);
      });
      child.stdin?.end();
    });
    return { code, paths };
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

// ---- YAML ----

/** Every document of a YAML file (merge keys on, as Compose reads them); throws on a syntax error. */
export function yamlDocuments(path: string): unknown[] {
  return parseAllDocuments(read(path), { merge: true }).map((d) => {
    if (d.errors.length > 0) throw new Error(`${path}: ${d.errors[0]!.message}`);
    return d.toJS() as unknown;
  });
}

// ---- Kubernetes ----

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata?: { name?: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: Record<string, unknown>;
  [key: string]: unknown;
}

/** The module of kubernetes-models (or of a third-party package of it) that holds an apiVersion's models. */
function modelModule(apiVersion: string): string {
  return apiVersion.startsWith('keda.sh/') ? `@kubernetes-models/keda/${apiVersion}` : `kubernetes-models/${apiVersion}`;
}

interface ModelClass {
  new (data: unknown): { validate(): void };
}

/**
 * Validates an object against the JSON schema of its kind, generated from the
 * Kubernetes OpenAPI specification (kubernetes-models) or from the CRD
 * (@kubernetes-models/keda): types, required fields, enums. Resolves with the
 * problems, empty when valid; an apiVersion or kind without a model is a problem.
 */
export async function schemaProblems(o: K8sObject): Promise<string[]> {
  let mod: Record<string, unknown>;
  try {
    mod = (await import(modelModule(o.apiVersion))) as Record<string, unknown>;
  } catch {
    return [`no schema for apiVersion ${o.apiVersion}`];
  }
  const Model = mod[o.kind] as ModelClass | undefined;
  if (typeof Model !== 'function') return [`no schema for ${o.kind} in ${o.apiVersion}`];
  try {
    new Model(o).validate();
    return [];
  } catch (err) {
    return [(err as Error).message];
  }
}

/**
 * Unknown fields, which the JSON schemas allow but `kubectl apply` refuses
 * (strict field validation): each object is type-checked as an object literal
 * of its kind's TypeScript interface, from the same packages, so TypeScript's
 * excess property check names any field the kind does not have. Returns the
 * problems per object, in order.
 */
export function unknownFieldProblems(objects: K8sObject[]): string[][] {
  const file = `${ROOT}__k8s_objects.ts`;
  let src = '';
  const starts: number[] = [];
  objects.forEach((o, i) => {
    src += `import type { I${o.kind} as T${i} } from '${modelModule(o.apiVersion)}';\n`;
  });
  objects.forEach((o, i) => {
    starts.push(src.length);
    src += `export const o${i}: T${i} = ${JSON.stringify(o, null, 1)};\n`;
  });
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    skipLibCheck: true,
    types: [],
    lib: ['lib.es2022.d.ts'],
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  const fileExists = host.fileExists.bind(host);
  host.getSourceFile = (name, lang, ...rest) =>
    name === file ? ts.createSourceFile(name, src, lang) : getSourceFile(name, lang, ...rest);
  host.fileExists = (name) => name === file || fileExists(name);
  const program = ts.createProgram([file], options, host);
  const out: string[][] = objects.map(() => []);
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const message = ts.flattenDiagnosticMessageText(d.messageText, ' ');
    if (d.file?.fileName !== file || d.start === undefined) {
      out.forEach((o) => o.push(message));
      continue;
    }
    let i = starts.length - 1;
    while (i > 0 && starts[i]! > d.start) i--;
    out[i]!.push(message);
  }
  return out;
}

/** The validator packages and their versions, for test titles. */
export const K8S_PACKAGES = ['kubernetes-models', '@kubernetes-models/keda']
  .map((p) => `${p}@${(require(`${p}/package.json`) as { version: string }).version}`)
  .join(', ');
