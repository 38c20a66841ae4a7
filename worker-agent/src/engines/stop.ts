/**
 * Finds stop sequences in streamed text. Text that could still turn into a
 * stop sequence is held back until the next chunk decides it, so a stop never
 * reaches the client, even when it spans chunks. Matching runs on the decoded
 * text, not on single tokens, so stops with spaces work with every tokenizer.
 */
export class StopMatcher {
  private held = '';
  /** True once a stop sequence has been seen; nothing more is emitted. */
  stopped = false;

  constructor(private readonly stops: readonly string[]) {}

  /** Returns the text that is safe to emit now. */
  push(text: string): string {
    if (this.stopped) return '';
    if (this.stops.length === 0) return text;
    const buf = this.held + text;
    let cut = -1;
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      this.stopped = true;
      this.held = '';
      return buf.slice(0, cut);
    }
    let keep = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, buf.length); k > keep; k--) {
        if (buf.endsWith(s.slice(0, k))) {
          keep = k;
          break;
        }
      }
    }
    this.held = buf.slice(buf.length - keep);
    return buf.slice(0, buf.length - keep);
  }

  /** At the end of generation, held-back text turned out to be plain text. */
  flush(): string {
    const h = this.held;
    this.held = '';
    return this.stopped ? '' : h;
  }
}
