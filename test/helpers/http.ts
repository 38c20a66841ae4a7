import { connect, type Socket } from 'node:net';
/** One parsed SSE event: its `data` payload (and `id`, when sent). */
export interface SseEvent {
  data: string;
  id?: string;
}

/** Parses a complete SSE body into events. */
export function parseSse(body: string): SseEvent[] {
  const out: SseEvent[] = [];
  for (const block of body.split('\n\n')) {
    if (!block.trim()) continue;
    const ev: SseEvent = { data: '' };
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('data: ')) data.push(line.slice(6));
      else if (line.startsWith('id: ')) ev.id = line.slice(4);
    }
    if (data.length === 0) continue;
    ev.data = data.join('\n');
    out.push(ev);
  }
  return out;
}

export interface ChatChunk {
  id: string;
  object: string;
  model: string;
  choices: { index: number; delta?: { content?: string; role?: string }; text?: string; finish_reason: string | null }[];
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | null;
}

/** Joins the text of streamed chat or completion chunks. */
export function streamedText(events: SseEvent[]): string {
  let text = '';
  for (const e of events) {
    if (e.data === '[DONE]') continue;
    const c = JSON.parse(e.data) as ChatChunk;
    for (const ch of c.choices) text += ch.delta?.content ?? ch.text ?? '';
  }
  return text;
}

/** POSTs JSON (or a raw string) and returns status, headers and body text. */
export async function post(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Headers; text: string }> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

/**
 * A client that sends a streaming chat request, reads the response head (for
 * the request id), then reads nothing more: its socket is paused, so the
 * kernel's buffers fill and the gateway's writes stop draining.
 */
export function slowReader(url: string, body: unknown): Promise<{ rid: string; socket: Socket; closed: Promise<void> }> {
  const u = new URL(url);
  const json = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(u.port), u.hostname);
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    let head = '';
    socket.on('error', () => {}); // the gateway drops the connection on purpose
    socket.once('connect', () => {
      socket.write(
        `POST /v1/chat/completions HTTP/1.1\r\nHost: ${u.host}\r\nContent-Type: application/json\r\n` +
          `Content-Length: ${Buffer.byteLength(json)}\r\n\r\n${json}`,
      );
    });
    const onData = (chunk: Buffer) => {
      head += chunk.toString('latin1');
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.off('data', onData);
      socket.pause(); // from here on, read nothing
      const rid = /^x-request-id: (\S+)$/im.exec(head.slice(0, end))?.[1];
      if (!/^HTTP\/1\.1 200/.test(head) || !rid) reject(new Error(`unexpected response: ${head.slice(0, 300)}`));
      else resolve({ rid, socket, closed });
    };
    socket.on('data', onData);
  });
}
