import { connect } from 'node:net';
import { expect } from 'chai';
import { TestSystem } from '../helpers/system.js';
import { post } from '../helpers/http.js';
import { Rng } from '../helpers/rng.js';
import { parseMetrics } from '../helpers/metrics.js';

/**
 * Generated malformed requests against a real gateway and worker: mutations of
 * valid bodies (types, ranges, nesting, lengths, broken and truncated JSON,
 * bad bytes, BOMs, duplicate and prototype keys, content types), header abuse
 * and method and path abuse, sent as raw bytes. Structure-aware mutations
 * start from a valid body using most fields of the API and change one node at
 * any depth so the body is surely invalid (a type the schema refuses there, a
 * required field removed, an unknown key in a closed object, a value out of
 * its enum, range, length or count, a node wrapped in an array or object),
 * written with noise that keeps the value (key order, whitespace, \u escapes,
 * number notation). Nesting goes up to 100,000 deep at spots where nothing
 * nested is allowed; invalid UTF-8 goes into values that are refused anyway
 * and into headers; valid bodies go to the POST routes with other methods.
 * Every answer must be a 4xx (or, for what Node's HTTP parser drops, a closed
 * connection), never a 5xx, a 2xx or a hang. The cases come from a seeded
 * PRNG: set HOSTILE_SEED to replay a run, HOSTILE_COUNT to change how many
 * cases are generated (1,200 by default; `npm run test:faults` runs 10,000).
 */

// ---------------------------------------------------------------- PRNG

// ---------------------------------------------------------------- cases

interface Case {
  id: number;
  category: string;
  note: string;
  bytes: Buffer;
  /** Ends the request stream after sending (the body is shorter than announced). */
  halfClose?: boolean;
}

interface Outcome {
  /** HTTP status of the first response, or null when the connection closed without one. */
  status: number | null;
  /** True when the answer is Node's own parser-level response (no JSON body). */
  parserLevel: boolean;
  /** The body, for app-level answers. */
  body: string;
  timedOut: boolean;
  error: string | null;
}

const MODEL = 'sim';
const CONTEXT = 4096;
const MAX_BODY = 256 * 1024;
const MAX_PROMPT_CHARS = 50_000;
const DEPTH = 10_000;

const j = (v: unknown) => JSON.stringify(v);
type Pairs = [key: string, raw: string][];
const obj = (pairs: Pairs) => `{${pairs.map(([k, v]) => `${j(k)}:${v}`).join(',')}}`;
function set(pairs: Pairs, key: string, raw: string): Pairs {
  const out = pairs.filter(([k]) => k !== key);
  out.push([key, raw]);
  return out;
}

const WORDS = ['hello', 'there', 'once', 'upon', 'a', 'time', 'fox', 'story'];

function validChat(r: Rng): Pairs {
  const pairs: Pairs = [
    ['model', j(MODEL)],
    ['messages', j([{ role: 'user', content: `${r.pick(WORDS)} ${r.pick(WORDS)}` }])],
    ['max_tokens', j(r.between(1, 8))],
  ];
  if (r.chance(0.5)) pairs.push(['temperature', j(r.pick([0, 0.5, 1]))]);
  if (r.chance(0.5)) pairs.push(['stream', j(r.chance(0.5))]);
  if (r.chance(0.3)) pairs.push(['stop', j(['END'])]);
  return pairs;
}

function validCompletion(r: Rng): Pairs {
  const pairs: Pairs = [
    ['model', j(MODEL)],
    ['prompt', j(r.pick(WORDS))],
    ['max_tokens', j(r.between(1, 8))],
  ];
  if (r.chance(0.5)) pairs.push(['stream', j(r.chance(0.5))]);
  return pairs;
}

type Kind = 'chat' | 'completion';
const pathOf = (k: Kind) => (k === 'chat' ? '/v1/chat/completions' : '/v1/completions');

/** Fields and values that make a body invalid, by field. Each value is raw JSON text. */
const NUMERIC: Record<string, { kinds: Kind[]; negative: string[]; huge: string[] }> = {
  temperature: { kinds: ['chat', 'completion'], negative: ['-0.5', '-1e-9', '-2'], huge: ['1e308', '1e999', '-1e999', '3'] },
  top_p: { kinds: ['chat', 'completion'], negative: ['-0.1', '-1'], huge: ['1e308', '1e999', '1.0001'] },
  max_tokens: {
    kinds: ['chat', 'completion'],
    negative: ['-1', '-100000', '0'],
    huge: ['1e308', '1e999', '18446744073709551616', '9007199254740993', String(CONTEXT), '1.5'],
  },
  n: { kinds: ['chat', 'completion'], negative: ['-1', '0'], huge: ['2', '1e308', '1e999', '18446744073709551616'] },
  presence_penalty: { kinds: ['chat', 'completion'], negative: ['-2.0001', '-9'], huge: ['2.5', '1e999', '-1e999'] },
  frequency_penalty: { kinds: ['chat', 'completion'], negative: ['-3', '-1e308'], huge: ['1e308', '1e999'] },
  seed: {
    kinds: ['chat', 'completion'],
    negative: ['-1e308', '-1e999'],
    huge: ['1e308', '1e999', '18446744073709551616', '0.5'],
  },
  max_completion_tokens: { kinds: ['chat'], negative: ['-5', '0'], huge: ['1e999', '18446744073709551616', String(CONTEXT)] },
  top_logprobs: { kinds: ['chat'], negative: ['-1'], huge: ['3', '1e999'] },
  best_of: { kinds: ['completion'], negative: ['-1', '0'], huge: ['2', '1e999'] },
};
const STRINGS: Record<string, Kind[]> = {
  model: ['chat', 'completion'],
  user: ['chat', 'completion'],
  service_tier: ['chat', 'completion'],
};
const BOOLS: Record<string, Kind[]> = {
  stream: ['chat', 'completion'],
  store: ['chat', 'completion'],
  parallel_tool_calls: ['chat'],
  echo: ['completion'],
};
const NAN_LIKE = ['NaN', 'Infinity', '-Infinity', '1e3', '0x10', '', ' 1', '1_000', '٣', 'null', 'undefined', '1/0'];

const deepArray = () => '['.repeat(DEPTH) + ']'.repeat(DEPTH);
const deepObject = () => '{"a":'.repeat(DEPTH) + '1' + '}'.repeat(DEPTH);

/** Positions (indices) just after a structural character outside strings. */
function structuralPositions(text: string): { after: number[]; quotes: number[]; structural: number[] } {
  const after: number[] = [];
  const quotes: number[] = [];
  const structural: number[] = [];
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') {
        inString = false;
        quotes.push(i);
      }
      continue;
    }
    if (c === '"') {
      inString = true;
      quotes.push(i);
    } else if ('{}[]:,'.includes(c)) {
      structural.push(i);
      after.push(i + 1);
    }
  }
  return { after, quotes, structural };
}

/** A copy of valid JSON text that is surely not valid JSON any more. */
function breakJson(r: Rng, text: string): { text: string; note: string } {
  const pos = structuralPositions(text);
  switch (r.int(7)) {
    case 0: {
      const i = r.pick(pos.quotes);
      return { text: text.slice(0, i) + text.slice(i + 1), note: `quote at ${i} removed` };
    }
    case 1: {
      const i = r.pick(pos.structural);
      return { text: text.slice(0, i) + text.slice(i + 1), note: `'${text[i]}' at ${i} removed` };
    }
    case 2: {
      const i = r.pick(pos.after);
      const junk = r.pick([',', ':', '}', ']', '@', "'", 'x', '//c', '/*c*/', 'NaN', 'undefined', '\u0000', '\\', '#']);
      return { text: text.slice(0, i) + junk + text.slice(i), note: `${j(junk)} inserted at ${i}` };
    }
    case 3:
      return { text: text.replace(/"/g, "'"), note: 'single quotes' };
    case 4:
      return { text: text.slice(0, -1) + ',}', note: 'trailing comma' };
    case 5:
      return { text: text + r.pick(['x', '{}', '[]', '0', '"a"', ',', '}']), note: 'trailing garbage' };
    default:
      return { text: text.replace(/"([a-z_]+)":/g, '$1:'), note: 'unquoted keys' };
  }
}

/** Valid JSON text cut short (any strict prefix of an object is invalid). */
function truncate(r: Rng, text: string): { text: string; note: string } {
  const at = r.int(text.length);
  return { text: text.slice(0, at), note: `cut at ${at} of ${text.length}` };
}

const BAD_UTF8 = [
  [0xff],
  [0xc3, 0x28],
  [0xc0, 0xaf],
  [0xed, 0xa0, 0x80],
  [0xf8, 0x88, 0x80, 0x80, 0x80],
  [0xe2, 0x82],
  [0x80],
  [0xfe, 0xff],
  [0xf4, 0x90, 0x80, 0x80],
];

const BAD_CONTENT_TYPES = [
  'text/plain',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x',
  'application/xml',
  ';;;',
  '',
  'application/json; charset=utf-16',
  'application/json; charset=klingon',
  'application/json; charset=latin1',
  'application/json; charset=utf-32',
  'application/json; charset=cesu8',
  `application/${'x'.repeat(5000)}`,
  'application/json; charset="utf-8"; charset=utf-16',
  '*/*',
  'application/json\u0000',
];

/** Content types whose charset alone makes a valid body unreadable (unsupported, or decoding it garbles it). */
const CHARSET_ONLY = [
  'application/json; charset=utf-16',
  'application/json; charset=klingon',
  'application/json; charset=latin1',
  'application/json; charset=utf-32',
  'application/json; charset=cesu8',
];

/** Builds the raw bytes of one HTTP/1.1 request. */
function request(
  method: string,
  path: string,
  body: Buffer | string,
  o: { contentType?: string | null; headers?: [string, string][]; contentLength?: string | null; version?: string } = {},
): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const headers: [string, string][] = [
    ['Host', '127.0.0.1'],
    ['Connection', 'close'],
  ];
  if (o.contentType !== null) headers.push(['Content-Type', o.contentType ?? 'application/json']);
  if (o.contentLength !== null) headers.push(['Content-Length', o.contentLength ?? String(b.length)]);
  headers.push(...(o.headers ?? []));
  const head = `${method} ${path} ${o.version ?? 'HTTP/1.1'}\r\n${headers.map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), b]);
}

type Gen = (r: Rng) => Omit<Case, 'id' | 'category'>;

/** Body mutations on the two JSON routes. */
const bodyGens: Record<string, Gen> = {
  'wrong-type': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const base = kind === 'chat' ? validChat(r) : validCompletion(r);
    const table: [string, string[]][] = [
      ...Object.entries(NUMERIC)
        .filter(([, f]) => f.kinds.includes(kind))
        .map(([k]): [string, string[]] => [k, ['"1"', 'true', '[]', '{}', '"hot"', '[1]']]),
      ...Object.entries(STRINGS)
        .filter(([, ks]) => ks.includes(kind))
        .map(([k]): [string, string[]] => [k, ['1', 'true', '[]', '{}', `[${j(MODEL)}]`]]),
      ...Object.entries(BOOLS)
        .filter(([, ks]) => ks.includes(kind))
        .map(([k]): [string, string[]] => [k, ['1', '0', '"true"', '[]', '{}', '"yes"']]),
      ['stream_options', ['1', '"x"', '[]', 'true', '{"include_usage":"yes"}']],
      ['stop', ['1', 'true', '{}', '[1]', '[null]', '[[]]']],
    ];
    if (kind === 'chat') {
      table.push(['messages', ['1', '"hi"', '{}', 'true', 'null', '[1]', '["hi"]', '[[]]']]);
      table.push(['response_format', ['1', '"text"', '[]', 'true']]);
      table.push(['modalities', ['"text"', '[1]', '{}']]);
    } else {
      table.push(['prompt', ['1', 'true', '{}', 'null', '[1]', '[]', '[["a"]]']]);
    }
    const [field, values] = r.pick(table);
    const v = r.pick(values);
    return { note: `${kind} ${field} = ${v}`, bytes: request('POST', pathOf(kind), obj(set(base, field, v))) };
  },
  'huge-number': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const base = kind === 'chat' ? validChat(r) : validCompletion(r);
    const [field, f] = r.pick(Object.entries(NUMERIC).filter(([, f]) => f.kinds.includes(kind)));
    const v = r.pick(f.huge);
    return { note: `${kind} ${field} = ${v}`, bytes: request('POST', pathOf(kind), obj(set(base, field, v))) };
  },
  'nan-like-string': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const base = kind === 'chat' ? validChat(r) : validCompletion(r);
    const [field] = r.pick(Object.entries(NUMERIC).filter(([, f]) => f.kinds.includes(kind)));
    const v = j(r.pick(NAN_LIKE));
    return { note: `${kind} ${field} = ${v}`, bytes: request('POST', pathOf(kind), obj(set(base, field, v))) };
  },
  'nan-literal': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const base = kind === 'chat' ? validChat(r) : validCompletion(r);
    const [field] = r.pick(Object.entries(NUMERIC).filter(([, f]) => f.kinds.includes(kind)));
    const v = r.pick(['NaN', 'Infinity', '-Infinity', 'undefined', '0x10', '+1', '.5', '01']);
    return { note: `${kind} ${field} = ${v} (bare)`, bytes: request('POST', pathOf(kind), obj(set(base, field, v))) };
  },
  negative: (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const base = kind === 'chat' ? validChat(r) : validCompletion(r);
    const [field, f] = r.pick(Object.entries(NUMERIC).filter(([, f]) => f.kinds.includes(kind)));
    const v = r.pick(f.negative);
    return { note: `${kind} ${field} = ${v}`, bytes: request('POST', pathOf(kind), obj(set(base, field, v))) };
  },
  'deep-nesting': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const base = kind === 'chat' ? validChat(r) : validCompletion(r);
    const deep = r.chance(0.5) ? deepArray() : deepObject();
    const shape = deep.startsWith('[[') ? 'array' : 'object';
    const spots =
      kind === 'chat'
        ? ['messages', 'content', 'stop', 'metadata', 'stream_options', 'response_format', 'tools', 'logit_bias', 'deep']
        : ['prompt', 'stop', 'metadata', 'stream_options', 'logit_bias', 'deep'];
    const spot = r.pick(spots);
    const body =
      spot === 'content' ? obj(set(base, 'messages', `[{"role":"user","content":${deep}}]`)) : obj(set(base, spot, deep));
    return { note: `${kind} ${spot} = ${shape} nested ${DEPTH} deep`, bytes: request('POST', pathOf(kind), body) };
  },
  'long-string': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const base = kind === 'chat' ? validChat(r) : validCompletion(r);
    const long = (n: number) => j('x'.repeat(n));
    const choices: [string, () => Pairs][] = [
      ['model', () => set(base, 'model', long(r.between(257, 100_000)))],
      ['user', () => set(base, 'user', long(r.between(513, 100_000)))],
      ['service_tier', () => set(base, 'service_tier', long(r.between(33, 10_000)))],
      ['stop', () => set(base, 'stop', r.chance(0.5) ? long(r.between(513, 10_000)) : `[${long(r.between(513, 10_000))}]`)],
      ['unknown key', () => [...base, ['k'.repeat(r.between(1_000, 100_000)), '1']]],
      ['metadata value', () => set(base, 'metadata', `{"k":${long(r.between(513, 10_000))}}`)],
      ['prompt over MAX_PROMPT_CHARS', () => set(base, kind === 'chat' ? 'messages' : 'prompt', longPrompt(kind))],
      ['body over MAX_BODY_BYTES', () => set(base, kind === 'chat' ? 'messages' : 'prompt', hugePrompt(kind))],
    ];
    if (kind === 'chat') {
      choices.push([
        'name',
        () => set(base, 'messages', `[{"role":"user","content":"x","name":${long(r.between(257, 10_000))}}]`),
      ]);
      choices.push([
        'tool_call_id',
        () => set(base, 'messages', `[{"role":"tool","content":"x","tool_call_id":${long(r.between(257, 10_000))}}]`),
      ]);
    }
    function longPrompt(k: Kind): string {
      const n = r.between(MAX_PROMPT_CHARS + 1, MAX_BODY - 1000);
      return k === 'chat' ? `[{"role":"user","content":${long(n)}}]` : long(n);
    }
    function hugePrompt(k: Kind): string {
      const n = r.between(MAX_BODY + 1, 2 * MAX_BODY);
      return k === 'chat' ? `[{"role":"user","content":${long(n)}}]` : long(n);
    }
    const [what, make] = r.pick(choices);
    return { note: `${kind} long ${what}`, bytes: request('POST', pathOf(kind), obj(make())) };
  },
  'broken-json': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const b = breakJson(r, obj(kind === 'chat' ? validChat(r) : validCompletion(r)));
    return { note: `${kind} ${b.note}`, bytes: request('POST', pathOf(kind), b.text) };
  },
  truncated: (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const t = truncate(r, obj(kind === 'chat' ? validChat(r) : validCompletion(r)));
    return { note: `${kind} ${t.note}`, bytes: request('POST', pathOf(kind), t.text) };
  },
  'invalid-utf8': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const text = obj(kind === 'chat' ? validChat(r) : validCompletion(r));
    const bad = Buffer.from(r.pick(BAD_UTF8));
    const pos = structuralPositions(text);
    const modelAt = text.indexOf(`"${MODEL}"`) + 2; // inside the model name: an unknown model
    const keyAt = text.indexOf('"model"') + 3; // inside a key: an unknown field
    const where = r.pick(['outside strings', 'in the model name', 'in a key'] as const);
    const at = where === 'outside strings' ? r.pick(pos.after) : where === 'in the model name' ? modelAt : keyAt;
    const bytes = Buffer.concat([Buffer.from(text.slice(0, at)), bad, Buffer.from(text.slice(at))]);
    return { note: `${kind} bytes ${bad.toString('hex')} ${where} at ${at}`, bytes: request('POST', pathOf(kind), bytes) };
  },
  bom: (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const text = obj(kind === 'chat' ? validChat(r) : validCompletion(r));
    const BOM = '\uFEFF';
    const variant = r.int(5);
    if (variant === 0) {
      const b = breakJson(r, text);
      return { note: `${kind} BOM + ${b.note}`, bytes: request('POST', pathOf(kind), BOM + b.text) };
    }
    if (variant === 1) {
      const at = r.pick(structuralPositions(text).after);
      return {
        note: `${kind} BOM inside at ${at}`,
        bytes: request('POST', pathOf(kind), text.slice(0, at) + BOM + text.slice(at)),
      };
    }
    if (variant === 2) return { note: `${kind} two BOMs`, bytes: request('POST', pathOf(kind), BOM + BOM + text) };
    if (variant === 3) {
      return {
        note: `${kind} BOM in the model name`,
        bytes: request('POST', pathOf(kind), text.replace(`"${MODEL}"`, `"${MODEL}${BOM}"`)),
      };
    }
    const utf16 = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(text, 'utf16le')]);
    return { note: `${kind} UTF-16LE body with BOM, sent as UTF-8`, bytes: request('POST', pathOf(kind), utf16) };
  },
  'duplicate-keys': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const base = kind === 'chat' ? validChat(r) : validCompletion(r);
    // The last duplicate wins in JSON.parse: it is the invalid one.
    const [field, f] = r.pick(Object.entries(NUMERIC).filter(([, f]) => f.kinds.includes(kind)));
    const choices: [string, string, string][] = [
      [field, '1', r.pick(f.negative)],
      ['model', j(MODEL), j('no-such-model')],
      [kind === 'chat' ? 'messages' : 'prompt', kind === 'chat' ? j([{ role: 'user', content: 'x' }]) : j('x'), '[]'],
    ];
    const [key, first, last] = r.pick(choices);
    const pairs: Pairs = [...base.filter(([k]) => k !== key), [key, first], [key, last]];
    return { note: `${kind} ${key} twice, last ${last}`, bytes: request('POST', pathOf(kind), obj(pairs)) };
  },
  'prototype-keys': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const base = kind === 'chat' ? validChat(r) : validCompletion(r);
    const key = r.pick(['__proto__', 'constructor', 'prototype', '__defineGetter__', 'hasOwnProperty', 'toString', 'valueOf']);
    const value = r.pick(['{"polluted":true}', `{"model":${j(MODEL)}}`, '1', 'null', '[]', '{"__proto__":{"x":1}}']);
    const member = `${j(key)}:${value}`;
    const spots = [
      'top',
      'stream_options',
      'metadata',
      'logit_bias',
      ...(kind === 'chat' ? ['message', 'content part', 'response_format'] : []),
    ];
    const spot = r.pick(spots);
    // __proto__ with any value is refused everywhere; the other names are plain keys, refused where
    // the object is closed. In open objects (metadata, logit_bias) they get a value of the wrong type.
    const openValue = key === '__proto__' ? value : '{"polluted":true}';
    let body: string;
    if (spot === 'top') body = obj([...base, [key, value]]);
    else if (spot === 'stream_options') body = obj(set(base, 'stream_options', `{"include_usage":true,${member}}`));
    else if (spot === 'metadata') body = obj(set(base, 'metadata', `{${j(key)}:${openValue}}`));
    else if (spot === 'logit_bias') body = obj(set(base, 'logit_bias', `{${j(key)}:${openValue}}`));
    else if (spot === 'message') body = obj(set(base, 'messages', `[{"role":"user","content":"x",${member}}]`));
    else if (spot === 'content part') {
      body = obj(set(base, 'messages', `[{"role":"user","content":[{"type":"text","text":"x",${member}}]}]`));
    } else body = obj(set(base, 'response_format', `{"type":"text",${member}}`));
    return { note: `${kind} ${key}: ${value} in ${spot}`, bytes: request('POST', pathOf(kind), body) };
  },
  'content-type': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const text = obj(kind === 'chat' ? validChat(r) : validCompletion(r));
    const ct = r.pick(BAD_CONTENT_TYPES);
    // Any content type is read as JSON, so the body is broken as well, unless the charset alone breaks it.
    const charsetOnly = CHARSET_ONLY.includes(ct);
    const body = charsetOnly ? text : r.chance(0.5) ? breakJson(r, text).text : truncate(r, text).text;
    return {
      note: `${kind} content-type ${j(ct.slice(0, 60))}${charsetOnly ? '' : ' with a broken body'}`,
      bytes: request('POST', pathOf(kind), body, { contentType: ct }),
    };
  },
  'not-an-object': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const text = obj(kind === 'chat' ? validChat(r) : validCompletion(r));
    const body = r.pick([
      '[]',
      '[{}]',
      '"str"',
      '42',
      'true',
      'null',
      `[${text}]`,
      `"${text.replace(/"/g, '\\"')}"`,
      '-0',
      '1e999',
    ]);
    return { note: `${kind} body ${body.slice(0, 40)}`, bytes: request('POST', pathOf(kind), body) };
  },
  semantic: (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const base = kind === 'chat' ? validChat(r) : validCompletion(r);
    const common: [string, string][] = [
      ['model', j(r.pick(['nope', 'SIM', 'sim ', ' sim', 'sim/../sim', 'ﬁ', '%73im', 'sim\u0000', 'x'.repeat(200)]))],
      ['max_tokens', j(r.between(CONTEXT, 1_000_000))],
      ['n', j(r.between(2, 10))],
      ['logprobs', 'true'],
      ['stop', j(Array.from({ length: 17 }, (_, i) => `s${i}`))],
      ['stop', '[""]'],
      ['stream_options', '{"include_usage":true,"x":1}'],
      ['logit_bias', '{"50256":-100}'],
      ['metadata', j(Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v'])))],
    ];
    const chatOnly: [string, string][] = [
      ['messages', '[]'],
      ['messages', '[{"role":"wizard","content":"x"}]'],
      ['messages', '[{"content":"x"}]'],
      ['messages', '[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://x"}}]}]'],
      ['messages', '[{"role":"user","content":[{"type":"text"}]}]'],
      ['messages', '[{"role":"assistant","content":"x","tool_calls":[]}]'],
      ['tools', '[{"type":"function","function":{"name":"f"}}]'],
      ['tool_choice', '"auto"'],
      ['functions', '[{"name":"f"}]'],
      ['audio', '{"voice":"x"}'],
      ['response_format', '{"type":"json_object"}'],
      ['modalities', '["audio"]'],
      ['prompt', '"x"'],
    ];
    const completionOnly: [string, string][] = [
      ['prompt', '["a","b"]'],
      ['prompt', '[[1,2]]'],
      ['echo', 'true'],
      ['best_of', '2'],
      ['suffix', '"x"'],
      ['messages', '[{"role":"user","content":"x"}]'],
    ];
    const [field, v] = r.pick([...common, ...(kind === 'chat' ? chatOnly : completionOnly)]);
    return { note: `${kind} ${field} = ${v.slice(0, 60)}`, bytes: request('POST', pathOf(kind), obj(set(base, field, v))) };
  },
};

/** The plain route: POST /v1/chat/<model> with a text body and query options. */
const plainGens: Record<string, Gen> = {
  'plain-query': (r) => {
    const q = r.pick([
      'max_tokens=abc',
      'max_tokens=0',
      'max_tokens=-1',
      'max_tokens=1e999',
      `max_tokens=${CONTEXT}`,
      'max_tokens=1&max_tokens=2',
      'temperature=3',
      'temperature=NaN',
      'top_p=-1',
      'seed=1.5',
      `seed=${'9'.repeat(40)}`,
      'bogus=1',
      '__proto__=1',
      'constructor=x',
      `max_tokens=${'1'.repeat(5000)}`,
      'max_tokens=',
      'max_tokens[]=1',
      'max_tokens=%ZZ',
    ]);
    return {
      note: `plain ?${q.slice(0, 60)}`,
      bytes: request('POST', `/v1/chat/${MODEL}?${q}`, 'hello', { contentType: 'text/plain' }),
    };
  },
  'plain-body': (r) => {
    const body = r.pick(['', ' ', '\n\t ', 'x'.repeat(MAX_PROMPT_CHARS + 1), 'y'.repeat(MAX_BODY + 1)]);
    return {
      note: `plain body of ${body.length} chars`,
      bytes: request('POST', `/v1/chat/${MODEL}`, body, { contentType: 'text/plain' }),
    };
  },
  'plain-model': (r) => {
    const model = r.pick([
      'nope',
      '%ZZ',
      '%E0%A4%A',
      '..%2f..%2fetc%2fpasswd',
      '%00',
      'sim%00',
      'x'.repeat(8000),
      '%2e%2e',
      'SIM',
      'sim/extra',
    ]);
    return {
      note: `plain model ${model.slice(0, 40)}`,
      bytes: request('POST', `/v1/chat/${model}`, 'hello', { contentType: 'text/plain' }),
    };
  },
};

/** Headers Node's parser refuses or that the gateway answers with a 4xx. */
const headerGens: Record<string, Gen> = {
  'huge-header': (r) => {
    const n = r.between(17_000, 80_000);
    return {
      note: `one header of ${n} bytes`,
      bytes: request('POST', '/v1/chat/completions', '{}', { headers: [['X-Big', 'a'.repeat(n)]] }),
    };
  },
  'many-headers': (r) => {
    const n = r.pick([1500, 2100, 3000, 10_000]);
    const headers = Array.from({ length: n }, (_, i): [string, string] => [`x${i}`, 'v']);
    // Under the size limit the request goes on: the body is broken too.
    return { note: `${n} headers`, bytes: request('POST', '/v1/chat/completions', '{"model":', { headers }) };
  },
  'bad-content-length': (r) => {
    const cl = r.pick(['abc', '-1', '1.5', '99999999999999999999', '0x10', '', '+2', '2 2', '1,2']);
    return { note: `Content-Length: ${j(cl)}`, bytes: request('POST', '/v1/chat/completions', '{}', { contentLength: cl }) };
  },
  'content-length-mismatch': (r) => {
    const text = obj(validChat(r));
    if (r.chance(0.5)) {
      const extra = r.between(1, 1000);
      return {
        note: `Content-Length ${extra} bytes over the body, then end`,
        bytes: request('POST', '/v1/chat/completions', text, { contentLength: String(text.length + extra) }),
        halfClose: true,
      };
    }
    const cut = r.between(1, text.length - 1);
    return {
      note: `Content-Length ${cut} of a ${text.length}-byte body`,
      bytes: request('POST', '/v1/chat/completions', text, { contentLength: String(cut) }),
    };
  },
  'duplicate-content-length': (r) => {
    const a = r.between(0, 5);
    const b = r.chance(0.5) ? a : a + 1;
    return {
      note: `Content-Length ${a} and ${b}`,
      bytes: request('POST', '/v1/chat/completions', '{}'.padEnd(Math.max(a, b), ' '), {
        contentLength: null,
        headers: [
          ['Content-Length', String(a)],
          ['Content-Length', String(b)],
        ],
      }),
    };
  },
  'transfer-encoding': (r) => {
    const text = obj(validChat(r));
    const chunked = `${text.length.toString(16)}\r\n${text}\r\n0\r\n\r\n`;
    const variants: [string, string, [string, string][]][] = [
      ['TE gzip', text, [['Transfer-Encoding', 'gzip']]],
      ['TE chunked, gzip', chunked, [['Transfer-Encoding', 'chunked, gzip']]],
      ['TE identity', text, [['Transfer-Encoding', 'identity']]],
      [
        'TE chunked + Content-Length',
        chunked,
        [
          ['Transfer-Encoding', 'chunked'],
          ['Content-Length', '5'],
        ],
      ],
      ['bad chunk size', `zz\r\n${text}\r\n0\r\n\r\n`, [['Transfer-Encoding', 'chunked']]],
      ['huge chunk size', `ffffffffffffffffffff\r\n${text}\r\n0\r\n\r\n`, [['Transfer-Encoding', 'chunked']]],
      ['chunk size too small', `2\r\n${text}\r\n0\r\n\r\n`, [['Transfer-Encoding', 'chunked']]],
      ['TE with a space in the name', chunked, [['Transfer-Encoding ', 'chunked']]],
      ['TE folded', chunked, [['Transfer-Encoding', 'gzip\r\n chunked']]],
    ];
    const [note, body, headers] = r.pick(variants);
    return { note, bytes: request('POST', '/v1/chat/completions', body, { contentLength: null, headers }) };
  },
  'content-encoding': (r) => {
    const text = obj(validChat(r));
    const enc = r.pick(['gzip', 'deflate', 'br', 'made-up', 'gzip, gzip', 'x'.repeat(3000)]);
    return {
      note: `Content-Encoding ${enc.slice(0, 20)} on a plain body`,
      bytes: request('POST', '/v1/chat/completions', text, { headers: [['Content-Encoding', enc]] }),
    };
  },
  'bad-header-syntax': (r) => {
    const [note, headers]: [string, [string, string][]] = r.pick([
      ['space in a header name', [['Bad Name', 'x']]],
      ['NUL in a value', [['X-A', 'a\u0000b']]],
      ['CR in a value', [['X-A', 'a\rb']]],
      ['folded header', [['X-A', 'a\r\n b']]],
      ['empty header name', [['', 'x']]],
      ['non-ASCII name', [['X-É', 'x']]],
      ['colon-only line', [[':', '']]],
    ] as [string, [string, string][]][]);
    return { note, bytes: request('POST', '/v1/chat/completions', '{}', { headers }) };
  },
  'odd-framing': (r) => {
    const text = obj(validChat(r));
    const [note, bytes]: [string, Buffer] = r.pick([
      ['missing Host', Buffer.from(`POST /v1/chat/completions HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}`)],
      ['LF line ends', Buffer.from(`POST /v1/chat/completions HTTP/1.1\nHost: x\nConnection: close\nContent-Length: 2\n\n{}`)],
      ['Expect: foo', request('POST', '/v1/chat/completions', text, { headers: [['Expect', 'foo']] })],
      ['HTTP/1.2', request('POST', '/v1/chat/completions', '{}', { version: 'HTTP/1.2' })],
      ['HTTP/9.9', request('POST', '/v1/chat/completions', '{}', { version: 'HTTP/9.9' })],
      ['HTTP/2.0 with an empty body', request('POST', '/v1/chat/completions', '', { version: 'HTTP/2.0' })],
      ['HTTP/1.1x', request('POST', '/v1/chat/completions', '{}', { version: 'HTTP/1.1x' })],
      ['TLS hello', Buffer.from([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03])],
      ['binary garbage', Buffer.from(Array.from({ length: 64 }, () => r.int(256)))],
      ['X-Request-Timeout abc', request('POST', '/v1/chat/completions', text, { headers: [['X-Request-Timeout', 'abc']] })],
      ['X-Request-Timeout -5', request('POST', '/v1/chat/completions', text, { headers: [['X-Request-Timeout', '-5']] })],
      [
        'X-Request-Timeout twice',
        request('POST', '/v1/chat/completions', text, {
          headers: [
            ['X-Request-Timeout', '1'],
            ['X-Request-Timeout', '2'],
          ],
        }),
      ],
      [
        'X-Request-Timeout huge digits',
        request('POST', '/v1/chat/completions', text, { headers: [['X-Request-Timeout', '9'.repeat(400)]] }),
      ],
      [
        'Idempotency-Key too long',
        request('POST', '/v1/chat/completions', text, { headers: [['Idempotency-Key', 'k'.repeat(r.between(256, 8000))]] }),
      ],
      ['Idempotency-Key latin-1', request('POST', '/v1/chat/completions', text, { headers: [['Idempotency-Key', 'cl\u00e9']] })],
      [
        'Idempotency-Key twice',
        request('POST', '/v1/chat/completions', text, {
          headers: [
            ['Idempotency-Key', 'a'],
            ['Idempotency-Key', 'b'],
          ],
        }),
      ],
      [
        'Last-Event-ID garbage',
        request('POST', '/v1/chat/completions', text, {
          headers: [['Last-Event-ID', r.pick(['abc', '-1', '1.2.3', '9'.repeat(40)])]],
        }),
      ],
      [
        'X-Priority unknown',
        request('POST', '/v1/chat/completions', text, { headers: [['X-Priority', r.pick(['urgent', '1', '', 'HIGHEST'])]] }),
      ],
    ] as [string, Buffer][]);
    return { note, bytes };
  },
};

const METHODS = ['FOO', 'post', 'GETX', 'PROPFIND', 'MKCOL', 'LOCK', 'COPY', 'MOVE', 'SEARCH', 'PURGE', 'REPORT', 'M-SEARCH'];
const REST = ['DELETE', 'PUT', 'PATCH', 'OPTIONS', 'TRACE', 'GET', 'HEAD', 'CONNECT', 'LINK', 'UNLINK', 'QUERY', 'SOURCE'];

/** Methods and request targets. POSTs carry an empty body, so no variant can be a valid request. */
const pathGens: Record<string, Gen> = {
  'odd-method': (r) => {
    const method = r.chance(0.1) ? 'P'.repeat(r.between(100, 5000)) : r.pick([...METHODS, ...REST]);
    const path = r.pick(['/v1/chat/completions', '/v1/completions', `/v1/chat/${MODEL}`]);
    return { note: `${method.slice(0, 20)} ${path}`, bytes: request(method, path, '') };
  },
  'long-path': (r) => {
    const n = r.pick([2000, 8000, 15_000, 20_000, 100_000]);
    const path = r.pick(['/v1/models/', '/v1/chat/completions/', '/', '/v1/']) + 'a'.repeat(n);
    const method = r.pick(['GET', 'POST']);
    return { note: `${method} path of ${path.length} chars`, bytes: request(method, path, '') };
  },
  'percent-encoding': (r) => {
    const hex = '0123456789ABCDEFGZ%';
    const junk = Array.from({ length: r.between(1, 6) }, () => `%${r.pick([...hex])}${r.pick([...hex])}`).join('');
    const path =
      r.pick(['/v1/models/', '/v1/chat/', '/v1/', '/']) +
      r.pick([junk, `%${junk}`, `${junk}%`, '%', '%E0%A4%A', '%C0%AF', '%00', '%FF%FE']);
    const method = path.startsWith('/v1/chat/') ? 'POST' : r.pick(['GET', 'POST']);
    return { note: `${method} ${path}`, bytes: request(method, path, '') };
  },
  traversal: (r) => {
    const path = r.pick([
      '/../../../etc/passwd',
      '/v1/../../etc/passwd',
      '/v1/models/..%2f..%2fetc%2fpasswd',
      '/%2e%2e/%2e%2e/etc/passwd',
      '/v1/chat/completions/../../../etc/passwd',
      '/v1/models/../../../../proc/self/environ',
      '//v1//chat//completions',
      '/v1/chat/completions/.',
      '/v1/chat/./completions',
      '/V1/CHAT/COMPLETIONS',
      '/v1/models/%2e%2e%5c%2e%2e%5cwindows',
      'http://evil.example/v1/chat/completions',
      '*',
      '/v1/chat/completions;jsessionid=1',
      '/v1/chat/completions%00.json',
      '/v1/chat/completions?' + 'a=1&'.repeat(2000),
    ]);
    const method = r.pick(['GET', 'POST', 'OPTIONS']);
    return { note: `${method} ${path.slice(0, 60)}`, bytes: request(method, path, '') };
  },
};

// ---------------------------------------------------------------- structure-aware mutations

/** A JSON value as the generator builds it. */
type J = null | boolean | number | string | J[] | { [k: string]: J };
type JType = 'null' | 'boolean' | 'number' | 'string' | 'array' | 'object';
type Path = (string | number)[];

const typeOf = (v: J): JType => (v === null ? 'null' : Array.isArray(v) ? 'array' : (typeof v as JType));

/** A valid chat body using most of the fields the gateway accepts, nested ones included. */
function richChat(r: Rng): Record<string, J> {
  const message = (): Record<string, J> => {
    const m: Record<string, J> = { role: r.pick(['system', 'developer', 'user', 'user']) };
    m.content = r.chance(0.6)
      ? `${r.pick(WORDS)} ${r.pick(WORDS)}`
      : Array.from({ length: r.between(1, 3) }, (): J => ({ type: 'text', text: r.pick(WORDS) }));
    if (r.chance(0.2)) m.name = r.pick(['alice', 'bob']);
    return m;
  };
  const body: Record<string, J> = {
    model: MODEL,
    messages: [...Array.from({ length: r.between(0, 3) }, message), { role: 'user', content: r.pick(WORDS) }],
    max_tokens: r.between(1, 8),
  };
  const optional: [string, () => J][] = [
    ['temperature', () => r.pick([0, 0.7, 2])],
    ['top_p', () => r.pick([0, 0.9, 1])],
    ['stop', () => (r.chance(0.5) ? 'END' : ['END', 'STOP'])],
    ['seed', () => r.between(-1000, 1000)],
    ['stream', () => r.chance(0.5)],
    ['stream_options', () => ({ include_usage: r.chance(0.5) })],
    ['presence_penalty', () => r.pick([-2, 0, 1.5])],
    ['frequency_penalty', () => r.pick([-1, 0, 2])],
    ['n', () => 1],
    ['user', () => 'user-1'],
    ['metadata', () => ({ k: 'v', team: 'a' })],
    ['store', () => false],
    ['service_tier', () => r.pick(['auto', 'default', 'flex', 'priority'])],
    ['logprobs', () => false],
    ['response_format', () => ({ type: 'text' })],
    ['modalities', () => ['text']],
    ['parallel_tool_calls', () => r.chance(0.5)],
    ['tools', () => []],
    ['tool_choice', () => 'none'],
    ['max_completion_tokens', () => r.between(1, 8)],
    ['top_logprobs', () => 0],
    ['logit_bias', () => ({})],
  ];
  for (const [k, make] of optional) if (r.chance(0.35)) body[k] = make();
  return body;
}

/** A valid completion body with the completion API's own fields. */
function richCompletion(r: Rng): Record<string, J> {
  const body: Record<string, J> = {
    model: MODEL,
    prompt: r.chance(0.7) ? r.pick(WORDS) : [r.pick(WORDS)],
    max_tokens: r.between(1, 8),
  };
  const optional: [string, () => J][] = [
    ['temperature', () => r.pick([0, 1])],
    ['stop', () => ['\n']],
    ['stream', () => r.chance(0.5)],
    ['stream_options', () => ({ include_usage: true })],
    ['echo', () => false],
    ['best_of', () => 1],
    ['seed', () => 7],
    ['logit_bias', () => ({})],
    ['user', () => 'u'],
  ];
  for (const [k, make] of optional) if (r.chance(0.35)) body[k] = make();
  return body;
}

const NUMBERS = [
  'temperature',
  'top_p',
  'seed',
  'presence_penalty',
  'frequency_penalty',
  'max_tokens',
  'n',
  'max_completion_tokens',
  'top_logprobs',
  'best_of',
];

/** The JSON types the schema allows at `path` (a null set: a path the generator does not know). */
function allowedAt(kind: Kind, path: Path): Set<JType> | null {
  const T = (...t: JType[]) => new Set<JType>(t);
  const [a, b, c, d, e] = path;
  if (path.length === 1) {
    const k = String(a);
    if (k === 'model') return T('string');
    if (k === 'messages') return T('array');
    if (k === 'prompt') return T('string', 'array');
    if (NUMBERS.includes(k)) return T('number', 'null');
    if (k === 'stop') return T('string', 'array', 'null');
    if (['stream', 'store', 'parallel_tool_calls', 'echo'].includes(k)) return T('boolean', 'null');
    if (['stream_options', 'response_format', 'metadata', 'logit_bias'].includes(k)) return T('object', 'null');
    if (k === 'logprobs') return T('boolean', 'number', 'null');
    if (['user', 'service_tier', 'tool_choice'].includes(k)) return T('string', 'null');
    if (['modalities', 'tools'].includes(k)) return T('array', 'null');
    return null;
  }
  if (a === 'messages' && kind === 'chat') {
    if (path.length === 2) return T('object');
    if (c === 'role' || c === 'name') return path.length === 3 ? T('string') : null;
    if (c === 'refusal') return path.length === 3 ? T('string', 'null') : null;
    if (c === 'content') {
      if (path.length === 3) return T('string', 'array', 'null');
      if (path.length === 4) return T('object');
      if (path.length === 5 && (e === 'type' || e === 'text')) return T('string');
      void d;
    }
    return null;
  }
  if (path.length === 2) {
    if (a === 'stop' || a === 'modalities' || a === 'prompt') return T('string');
    if (a === 'stream_options' && b === 'include_usage') return T('boolean');
    if (a === 'metadata') return T('string');
    if (a === 'logit_bias') return T('number');
    if (a === 'response_format' && b === 'type') return T('string');
  }
  return null;
}

/** Every path in `v` (not the root), depth first. */
function pathsOf(v: J, prefix: Path = []): Path[] {
  const out: Path[] = [];
  if (Array.isArray(v)) v.forEach((x, i) => out.push([...prefix, i], ...pathsOf(x, [...prefix, i])));
  else if (v !== null && typeof v === 'object')
    for (const [k, x] of Object.entries(v)) out.push([...prefix, k], ...pathsOf(x, [...prefix, k]));
  return out;
}

function getAt(v: J, path: Path): J {
  let x: J = v;
  for (const k of path) x = (x as Record<string | number, J>)[k]!;
  return x;
}

function setAt(v: J, path: Path, value: J | undefined): void {
  const parent = getAt(v, path.slice(0, -1)) as Record<string | number, J>;
  const k = path.at(-1)!;
  if (value === undefined) {
    if (Array.isArray(parent)) parent.splice(Number(k), 1);
    else delete parent[k];
  } else parent[k] = value;
}

/** A value of JSON type `t`. */
function valueOf(r: Rng, t: JType): J {
  switch (t) {
    case 'null':
      return null;
    case 'boolean':
      return r.chance(0.5);
    case 'number':
      return r.pick([0, 1, -1, 0.5, 1e300, -1e-300, 123456789]);
    case 'string':
      return r.pick(['', 'x', '1', 'true', 'null', '[]', '{}', 'sim', '\u0000', '\ud83d\ude00']);
    case 'array':
      return r.pick([[], [1], ['x'], [null], [[]], [{}]] as J[]);
    default:
      return r.pick([{}, { a: 1 }, { type: 'text' }, { '': null }] as J[]);
  }
}

/** Closed objects: a key the schema does not name is refused there. Keys that look close to valid ones. */
const UNKNOWN_KEYS = [
  'Model',
  'MESSAGES',
  'max-tokens',
  'maxTokens',
  'temperature ',
  ' model',
  'stream\u0000',
  'x',
  '',
  'tools_choice',
  'ÿ',
  'roles',
];

/** Values each field refuses although their type is right (enum, range, length, count). */
function semanticBreak(r: Rng, kind: Kind, path: Path, v: J, body: Record<string, J>): J | undefined {
  const [a, , c, , e] = path;
  const long = (n: number) => 'y'.repeat(n);
  if (path.length === 1) {
    switch (a) {
      case 'temperature':
        return r.pick([-0.01, 2.01, 1e9]);
      case 'top_p':
        return r.pick([-0.5, 1.01]);
      case 'max_tokens':
        // Beside max_completion_tokens (which wins), a max_tokens the context cannot hold goes unused.
        return r.pick(body.max_completion_tokens === undefined ? [0, -3, 1.5, CONTEXT, 1_000_001] : [0, -3, 1.5, 1_000_001]);
      case 'max_completion_tokens':
        return r.pick([0, -3, 1.5, CONTEXT, 1_000_001]);
      case 'n':
      case 'best_of':
        return r.pick([0, 2, 1.5]);
      case 'seed':
        return r.pick([2 ** 54, -(2 ** 54), 0.25]);
      case 'presence_penalty':
      case 'frequency_penalty':
        return r.pick([-2.5, 2.5]);
      case 'top_logprobs':
        return r.pick([1, 5]);
      case 'logprobs':
        return r.pick([true, 3]);
      case 'messages':
        return [];
      case 'stop':
        return r.pick([long(513), Array.from({ length: 17 }, (_, i) => `s${i}`), [''], ['ok', long(600)]] as J[]);
      case 'service_tier':
        return r.pick(['turbo', long(33), 'highest']);
      case 'tool_choice':
        return r.pick(['auto', 'required', 'None']);
      case 'modalities':
        return r.pick([['audio'], ['text', 'text', 'text'], ['TEXT']] as J[]);
      case 'tools':
        return [{ type: 'function', function: { name: 'f' } }];
      case 'metadata':
        return r.chance(0.5) ? Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v'])) : { [long(65)]: 'v' };
      case 'logit_bias':
        return { '50256': -100 };
      case 'user':
        return long(513);
      case 'model':
        return r.pick(['', long(257), 'nope', `${MODEL} `]);
      case 'prompt':
        return kind === 'completion' ? r.pick([[], ['a', 'b'], [[1, 2]]] as J[]) : undefined;
      case 'echo':
        return true;
      case 'response_format':
        return r.pick([{ type: 'json_object' }, { type: 'text', json_schema: {} }] as J[]);
      case 'stream_options':
        return { include_usage: true, continuous_usage_stats: true };
    }
    return undefined;
  }
  if (a === 'messages' && kind === 'chat') {
    if (path.length === 3 && c === 'role') return r.pick(['User', 'USER', 'wizard', '', 'function', 'bot']);
    if (path.length === 3 && c === 'name') return long(257);
    if (path.length === 3 && c === 'content' && Array.isArray(v))
      return Array.from({ length: 1025 }, (): J => ({ type: 'text', text: 'x' }));
    if (path.length === 5 && e === 'type') return r.pick(['Text', 'image_url', 'input_audio', '']);
  }
  if (path.length === 2) {
    if (a === 'stop') return r.pick(['', long(513)]);
    if (a === 'modalities') return r.pick(['audio', 'Text']);
    if (a === 'metadata') return long(513);
    if (a === 'response_format') return r.pick(['json_schema', 'TEXT']);
    if (a === 'prompt') return undefined;
  }
  return undefined;
}

/**
 * Serializes JSON with changes that keep it equal as a value: keys in another
 * order, whitespace between tokens, characters written as \u escapes, numbers
 * in another notation. So the parser sees varied text for the same body.
 */
function serialize(r: Rng, v: J, noise: boolean): string {
  const ws = () => (noise && r.chance(0.2) ? r.pick([' ', '\n', '\t', '\r\n', '  ']) : '');
  const str = (s: string) => {
    if (!noise || !r.chance(0.3)) return j(s);
    return `"${[...s].map((ch) => (r.chance(0.3) || ch === '"' || ch === '\\' || ch < ' ' ? `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}` : ch)).join('')}"`;
  };
  const num = (n: number) => {
    if (!noise || !Number.isInteger(n) || Math.abs(n) > 1e15 || !r.chance(0.3)) return j(n);
    return r.pick([`${n}.0`, `${n}e0`, `${n}E+0`, `${n}.000`]);
  };
  const go = (x: J): string => {
    if (x === null || typeof x === 'boolean') return j(x);
    if (typeof x === 'number') return num(x);
    if (typeof x === 'string') return str(x);
    if (Array.isArray(x)) return `[${ws()}${x.map((y) => go(y)).join(`${ws()},${ws()}`)}${ws()}]`;
    const entries = Object.entries(x);
    if (noise && r.chance(0.5)) {
      for (let i = entries.length - 1; i > 0; i--) {
        const k = r.int(i + 1);
        [entries[i], entries[k]] = [entries[k]!, entries[i]!];
      }
    }
    return `{${ws()}${entries.map(([k, y]) => `${str(k)}${ws()}:${ws()}${go(y)}`).join(`${ws()},${ws()}`)}${ws()}}`;
  };
  return ws() + go(v) + ws();
}

/** One mutation of a valid body that makes it surely invalid, and what it did. */
function mutate(r: Rng, kind: Kind, body: Record<string, J>): string {
  const paths = pathsOf(body);
  for (let attempt = 0; attempt < 50; attempt++) {
    const op = r.pick(['type', 'type', 'delete', 'unknown-key', 'semantic', 'semantic', 'wrap'] as const);
    if (op === 'delete') {
      const required = paths.filter(
        (p) =>
          (p.length === 1 && (p[0] === 'model' || p[0] === (kind === 'chat' ? 'messages' : 'prompt'))) ||
          (kind === 'chat' &&
            p[0] === 'messages' &&
            ((p.length === 3 && p[2] === 'role') || (p.length === 5 && (p[4] === 'type' || p[4] === 'text')))),
      );
      const p = r.pick(required);
      setAt(body, p, undefined);
      return `deleted required ${p.join('.')}`;
    }
    if (op === 'unknown-key') {
      // Closed objects: the body, a message, a content part, stream_options, response_format;
      // and logit_bias, which must be empty. (metadata is open: any key up to 16.)
      const closed: Path[] = [
        [],
        ...paths.filter(
          (p) =>
            typeOf(getAt(body, p)) === 'object' &&
            ((p.length === 1 && ['stream_options', 'response_format', 'logit_bias'].includes(String(p[0]))) ||
              (p[0] === 'messages' && (p.length === 2 || p.length === 4))),
        ),
      ];
      const p = r.pick(closed);
      const target = getAt(body, p) as Record<string, J>;
      const key = r.pick(UNKNOWN_KEYS.filter((k) => !(k in target)));
      target[key] = valueOf(r, r.pick(['null', 'boolean', 'number', 'string', 'array', 'object'] as JType[]));
      return `unknown key ${j(key)} in ${p.join('.') || 'the body'}`;
    }
    const p = r.pick(paths);
    const allowed = allowedAt(kind, p);
    if (!allowed) continue;
    if (op === 'type') {
      const t = r.pick((['null', 'boolean', 'number', 'string', 'array', 'object'] as JType[]).filter((x) => !allowed.has(x)));
      setAt(body, p, valueOf(r, t));
      return `${p.join('.')} became a ${t}`;
    }
    if (op === 'wrap') {
      const v = getAt(body, p);
      const w: J = r.chance(0.5) ? [v] : { value: v };
      if (allowed.has(typeOf(w))) continue;
      setAt(body, p, w);
      return `${p.join('.')} wrapped in a${Array.isArray(w) ? 'n array' : 'n object'}`;
    }
    const v = semanticBreak(r, kind, p, getAt(body, p), body);
    if (v === undefined) continue;
    setAt(body, p, v);
    return `${p.join('.')} out of bounds`;
  }
  body.model = 'no-such-model';
  return 'model unknown';
}

/** Nesting of `depth` levels; arrays (2 bytes a level) go deepest within the body limit. */
function nest(r: Rng, depth: number): { text: string; shape: string } {
  const shape = r.pick(['array', 'object', 'mixed', 'proto']);
  if (shape === 'array') return { text: '['.repeat(depth) + ']'.repeat(depth), shape };
  const d = Math.min(depth, 20_000);
  if (shape === 'object') return { text: '{"a":'.repeat(d) + 'null' + '}'.repeat(d), shape };
  if (shape === 'proto')
    return { text: '{"__proto__":'.repeat(Math.min(d, 10_000)) + '{}' + '}'.repeat(Math.min(d, 10_000)), shape };
  return { text: '[{"a":'.repeat(d) + '1' + '}]'.repeat(d), shape };
}

const structureGens: Record<string, Gen> = {
  'structure-mutation': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const body = kind === 'chat' ? richChat(r) : richCompletion(r);
    const note = mutate(r, kind, body);
    return { note: `${kind}: ${note}`, bytes: request('POST', pathOf(kind), serialize(r, body, r.chance(0.5))) };
  },
  'deep-mixed': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const body = kind === 'chat' ? richChat(r) : richCompletion(r);
    const depth = r.pick([64, 1_000, 20_000, 100_000]);
    const { text, shape } = nest(r, depth);
    // Spots where nothing nested is allowed, at several depths of the valid body.
    const MARK = j('__DEEP__');
    const spots: [string, () => void][] = [
      ['metadata.k', () => (body.metadata = { k: '__DEEP__' })],
      ['logit_bias.k', () => (body.logit_bias = { k: '__DEEP__' })],
      ['stream_options.include_usage', () => (body.stream_options = { include_usage: '__DEEP__' })],
      ['stop.0', () => (body.stop = ['__DEEP__'])],
      ['tools.0', () => (body.tools = ['__DEEP__'])],
      ['unknown key', () => (body.deep = '__DEEP__')],
      ['model', () => (body.model = '__DEEP__')],
    ];
    if (kind === 'chat') {
      spots.push([
        'messages.0.content.0.text',
        () => ((body.messages as J[])[0] = { role: 'user', content: [{ type: 'text', text: '__DEEP__' }] }),
      ]);
      spots.push(['messages.0.name', () => ((body.messages as J[])[0] = { role: 'user', content: 'x', name: '__DEEP__' })]);
      spots.push(['messages.0', () => ((body.messages as J[])[0] = '__DEEP__')]);
      spots.push(['response_format.type', () => (body.response_format = { type: '__DEEP__' })]);
    } else spots.push(['prompt.0', () => (body.prompt = ['__DEEP__'])]);
    const [where, place] = r.pick(spots);
    place();
    const raw = serialize(r, body, false).replace(MARK, text);
    return { note: `${kind} ${where} = ${shape} nested ${depth} deep`, bytes: request('POST', pathOf(kind), raw) };
  },
  'invalid-utf8-value': (r) => {
    const kind: Kind = r.pick(['chat', 'completion']);
    const body = kind === 'chat' ? richChat(r) : richCompletion(r);
    const bad = Buffer.from(r.pick(BAD_UTF8));
    // Each value is refused whatever the bytes decode to (U+FFFD or anything else).
    const spots: [string, J, string][] = [
      ['service_tier', 'bo@@gus', 'service_tier'],
      ['stop', ['@@'.padEnd(600, 'z')], 'stop.0 over 512'],
      ['metadata', { ['k@@'.padEnd(70, 'k')]: 'v' }, 'metadata key over 64'],
      ['model', 'si@@m', 'model'],
      ['user', '@@'.padEnd(600, 'u'), 'user over 512'],
    ];
    if (kind === 'chat') {
      spots.push(['messages', [{ role: 'us@@er', content: 'x' }], 'role']);
      spots.push(['messages', [{ role: 'user', content: [{ type: 'te@@xt', text: 'x' }] }], 'content part type']);
      spots.push(['response_format', { type: 'te@@xt' }, 'response_format.type']);
      spots.push(['modalities', ['te@@xt'], 'modalities.0']);
      spots.push(['tool_choice', 'no@@ne', 'tool_choice']);
    } else spots.push(['echo', 'tr@@ue', 'echo as a string']);
    const [key, value, what] = r.pick(spots);
    body[key] = value;
    const text = serialize(r, body, false);
    const at = text.indexOf('@@');
    const bytes = Buffer.concat([Buffer.from(text.slice(0, at)), bad, Buffer.from(text.slice(at + 2))]);
    return { note: `${kind} bytes ${bad.toString('hex')} in ${what}`, bytes: request('POST', pathOf(kind), bytes) };
  },
};

const headerUtf8Gens: Record<string, Gen> = {
  'invalid-utf8-header': (r) => {
    const text = obj(validChat(r));
    const bad = Buffer.from(r.pick(BAD_UTF8));
    const [name, value]: [string, string] = r.pick([
      ['X-Request-Timeout', '1@@'],
      ['X-Request-Timeout', '@@'],
      ['X-Priority', 'high@@'],
      ['X-Priority', '@@low'],
      ['Idempotency-Key', 'key-@@'],
      ['Last-Event-ID', '1@@'],
      ['Content-Type', 'application/json; charset=@@'],
      ['Content-Encoding', 'gz@@ip'],
    ] as [string, string][]);
    // The head is latin-1 text; the raw bytes go in where @@ is. (A second Content-Type would be ignored: Node keeps the first.)
    const raw =
      name === 'Content-Type'
        ? request('POST', '/v1/chat/completions', text, { contentType: value })
        : request('POST', '/v1/chat/completions', text, { headers: [[name, value]] });
    const at = raw.indexOf('@@');
    return {
      note: `${name} with bytes ${bad.toString('hex')}`,
      bytes: Buffer.concat([raw.subarray(0, at), bad, raw.subarray(at + 2)]),
    };
  },
};

const methodGens: Record<string, Gen> = {
  'method-swap': (r) => {
    // A valid body on a POST route, sent with another method: only the method is wrong.
    const route = r.pick(['chat', 'completion', 'plain'] as const);
    const method = r.pick(['GET', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD', 'TRACE', 'LINK']);
    const path = route === 'plain' ? `/v1/chat/${MODEL}` : pathOf(route);
    const body = route === 'plain' ? 'hello' : obj(route === 'chat' ? validChat(r) : validCompletion(r));
    return { note: `${method} ${path} with a valid body`, bytes: request(method, path, body) };
  },
};

/** Category weights: how the generated cases spread. */
const GENERATORS: [string, Gen, number][] = [
  ...Object.entries(bodyGens).map(([k, g]): [string, Gen, number] => [`body/${k}`, g, k === 'long-string' ? 3 : 4]),
  ...Object.entries(structureGens).map(([k, g]): [string, Gen, number] => [`body/${k}`, g, k === 'structure-mutation' ? 12 : 3]),
  ...Object.entries(plainGens).map(([k, g]): [string, Gen, number] => [`plain/${k}`, g, 2]),
  ...Object.entries({ ...headerGens, ...headerUtf8Gens }).map(([k, g]): [string, Gen, number] => [`header/${k}`, g, 2]),
  ...Object.entries({ ...pathGens, ...methodGens }).map(([k, g]): [string, Gen, number] => [`path/${k}`, g, 3]),
];

function generate(seed: number, count: number): Case[] {
  const r = new Rng(seed);
  const total = GENERATORS.reduce((n, [, , w]) => n + w, 0);
  const cases: Case[] = [];
  for (let id = 0; id < count; id++) {
    // Every category at least once, then by weight.
    let entry = GENERATORS[id];
    if (!entry) {
      let x = r.next() * total;
      entry = GENERATORS.find(([, , w]) => (x -= w) < 0) ?? GENERATORS[0]!;
    }
    const [category, gen] = entry;
    cases.push({ id, category, ...gen(r) });
  }
  return cases;
}

// ---------------------------------------------------------------- transport

/** Sends raw bytes and reads until the server closes (requests carry `Connection: close`). */
function send(port: number, c: Case, timeoutMs = 15_000): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let error: string | null = null;
    let done = false;
    const finish = (timedOut: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const raw = Buffer.concat(chunks).toString('latin1');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(raw);
      const headEnd = raw.indexOf('\r\n\r\n');
      const head = headEnd >= 0 ? raw.slice(0, headEnd) : raw;
      const json = /^content-type: application\/json/im.test(head);
      resolve({
        status: m ? Number(m[1]) : null,
        parserLevel: m !== null && !json,
        body: headEnd >= 0 ? Buffer.from(raw.slice(headEnd + 4), 'latin1').toString('utf8') : '',
        timedOut,
        error,
      });
    };
    const timer = setTimeout(() => finish(true), timeoutMs);
    socket.on('data', (d: Buffer) => chunks.push(d));
    // A reset after the answer (the server closed with unread bytes) is fine; the answer was read.
    socket.on('error', (err: NodeJS.ErrnoException) => (error = err.code ?? err.message));
    socket.on('close', () => finish(false));
    socket.once('connect', () => {
      socket.write(c.bytes, () => {
        if (c.halfClose) socket.end();
      });
    });
  });
}

async function pool<T, R>(items: T[], width: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

/** The gateway's V8 heap in use and its resident memory, from its own /metrics. */
async function memory(url: string): Promise<{ heap: number; rss: number }> {
  const m = parseMetrics(await (await fetch(`${url}/metrics`)).text());
  return { heap: m.sample('llmux_nodejs_heap_size_used_bytes'), rss: m.sample('llmux_process_resident_memory_bytes') };
}

// ---------------------------------------------------------------- the suite

describe('hostile input (generated malformed requests against a real gateway and worker)', function () {
  const SEED = Number(process.env.HOSTILE_SEED ?? Math.floor(Math.random() * 2 ** 31));
  const COUNT = Number(process.env.HOSTILE_COUNT ?? 1200);
  let sys: TestSystem;
  let port = 0;

  before(async function () {
    sys = await TestSystem.start({
      deployments: {
        models: [{ name: MODEL, engine: { type: 'sim', ttftMs: 0, itlMs: 1, contextSize: CONTEXT }, concurrency: 4 }],
      },
      gatewayEnv: { MAX_BODY_BYTES: String(MAX_BODY), MAX_PROMPT_CHARS: String(MAX_PROMPT_CHARS), LOG_LEVEL: 'warn' },
    });
    port = Number(new URL(sys.url).port);
  });

  after(async () => {
    await sys?.stop();
  });

  const valid = () =>
    post(`${sys.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 });

  it(`answers every malformed request with a 4xx and stays up (HOSTILE_SEED=${SEED})`, async function () {
    this.timeout(600_000);
    // Warm up with other cases of the same kinds, so the baseline includes the heap that such
    // traffic makes V8 grow to (it keeps it; without a forced GC, RSS does not shrink back).
    for (let i = 0; i < 20; i++) expect((await valid()).status).to.equal(200);
    await pool(generate(SEED ^ 0x5bd1e995, 600), 16, (c) => send(port, c));
    const baseline = await memory(sys.url);

    const cases = generate(SEED, COUNT);
    const outcomes = await pool(cases, 16, (c) => send(port, c));

    const byStatus = new Map<string, number>();
    const byCategory = new Map<string, Map<string, number>>();
    const failures: string[] = [];
    let parserLevel = 0;
    let closed = 0;
    cases.forEach((c, i) => {
      const o = outcomes[i]!;
      const key = o.timedOut ? 'timeout' : o.status === null ? 'closed' : String(o.status);
      byStatus.set(key, (byStatus.get(key) ?? 0) + 1);
      const cat = byCategory.get(c.category) ?? new Map<string, number>();
      cat.set(key, (cat.get(key) ?? 0) + 1);
      byCategory.set(c.category, cat);
      if (o.parserLevel) parserLevel++;
      const describe = () =>
        `#${c.id} ${c.category}: ${c.note} -> ${key}${o.error ? ` (${o.error})` : ''} ${o.body.slice(0, 160)}\n` +
        `    request: ${j(c.bytes.subarray(0, 300).toString('latin1'))}${c.bytes.length > 300 ? ` … (${c.bytes.length} bytes)` : ''}`;
      if (o.timedOut) failures.push(`no answer: ${describe()}`);
      else if (o.status === null) {
        closed++;
        // Only what Node's parser cannot read as a request may be dropped without an answer.
        if (!c.category.startsWith('path/odd-method') && !c.category.startsWith('header/odd-framing')) {
          failures.push(`closed without an answer: ${describe()}`);
        }
      } else if (o.status < 400 || o.status >= 500) failures.push(`status ${o.status}: ${describe()}`);
      else if (!o.parserLevel && !c.bytes.subarray(0, 5).equals(Buffer.from('HEAD '))) {
        // The gateway's own answers are OpenAI error bodies (a HEAD answer has no body).
        try {
          const e = (JSON.parse(o.body) as { error: { message: string; type: string } }).error;
          if (!e.message || !e.type) failures.push(`error body without message or type: ${describe()}`);
        } catch {
          failures.push(`answer is not an OpenAI error body: ${describe()}`);
        }
      }
    });

    const after = await memory(sys.url);
    // A large run leaves V8's heap grown by its largest bodies (nesting 100,000 deep makes as many
    // arrays) and full of garbage; idle, V8's memory reducer collects it. Bounded poll of the heap in
    // use until it is near the baseline: a leak never gets there.
    const NEAR_HEAP = 16 * 1024 * 1024;
    let settled = after;
    const settleBy = Date.now() + 60_000;
    while (settled.heap - baseline.heap >= NEAR_HEAP && Date.now() < settleBy) {
      await new Promise((r) => setTimeout(r, 1000));
      settled = await memory(sys.url);
    }
    const table = [...byStatus.entries()].sort().map(([k, n]) => `${k}: ${n}`);
    console.log(`      hostile input: seed ${SEED}, ${cases.length} requests; ${table.join(', ')}`);
    console.log(`      Node parser-level answers: ${parserLevel}, closed without an answer: ${closed}`);
    for (const [cat, m] of [...byCategory.entries()].sort()) {
      console.log(`        ${cat.padEnd(32)} ${[...m.entries()].map(([k, n]) => `${k}:${n}`).join(' ')}`);
    }
    const mib = (m: { heap: number; rss: number }) =>
      `heap ${(m.heap / 2 ** 20).toFixed(1)} MiB, RSS ${(m.rss / 2 ** 20).toFixed(1)} MiB`;
    console.log(`      gateway memory: baseline ${mib(baseline)}; after ${mib(after)}; settled ${mib(settled)}`);
    if (failures.length > 0) {
      throw new Error(
        `${failures.length} of ${cases.length} hostile requests were not answered with a 4xx ` +
          `(replay with HOSTILE_SEED=${SEED} HOSTILE_COUNT=${COUNT}):\n${failures.slice(0, 25).join('\n')}`,
      );
    }
    expect(cases.length).to.be.at.least(1000);
    expect(byStatus.get('500') ?? 0).to.equal(0);

    // Still alive, healthy and serving, with its memory near where it started.
    expect(sys.gateway.running, 'gateway process alive').to.equal(true);
    expect((await fetch(`${sys.url}/healthz`)).status).to.equal(200);
    expect(
      settled.heap - baseline.heap,
      `gateway heap in use ${mib(baseline)} -> ${mib(after)}, then ${mib(settled)}`,
    ).to.be.below(NEAR_HEAP);
    const ok = await valid();
    expect(ok.status, ok.text).to.equal(200);
    // Nothing hostile was admitted: the worker ran the 21 valid requests and nothing else.
    const worker = sys.workers[0]!;
    await worker.waitForLogs((l) => l.msg === 'request done', 21);
    expect(worker.logs.filter((l) => l.msg === 'request done' || l.msg === 'request cancelled before start')).to.have.length(21);
  });
});
