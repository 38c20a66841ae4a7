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
