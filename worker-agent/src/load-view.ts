/**
 * One worker's view of its peers' load for one model, fed by the model's load
 * channel. A score is a worker's current utilisation (Infinity when full);
 * peers that stop reporting fall out after `ttlMs`.
 */
export class LoadView {
  private readonly peers = new Map<string, { score: number; at: number }>();

  constructor(
    private readonly self: string,
    private readonly ttlMs: number,
  ) {}

  update(worker: string, score: number): void {
    if (worker === this.self) return;
    this.peers.set(worker, { score, at: Date.now() });
  }

  remove(worker: string): void {
    this.peers.delete(worker);
  }

  /** Whether no live peer is less loaded than `score`. */
  isLeast(score: number): boolean {
    const now = Date.now();
    for (const [id, p] of this.peers) {
      if (now - p.at > this.ttlMs) {
        this.peers.delete(id);
        continue;
      }
      if (p.score < score - 1e-9) return false;
    }
    return true;
  }
}

/** Wire format of a load message: `<worker id> <score>`; `inf` when full. */
export function encodeLoad(worker: string, score: number): string {
  return `${worker} ${Number.isFinite(score) ? score.toFixed(6) : 'inf'}`;
}

export function decodeLoad(msg: string): { worker: string; score: number } | null {
  const i = msg.lastIndexOf(' ');
  if (i <= 0) return null;
  const raw = msg.slice(i + 1);
  const score = raw === 'inf' ? Infinity : Number(raw);
  if (Number.isNaN(score)) return null;
  return { worker: msg.slice(0, i), score };
}
