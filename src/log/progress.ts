/**
 * A one-line progress counter for long CLI work (imports, a big queue), on standard error
 * when it is a terminal; nothing at all otherwise (pipes, files, cron mail stay clean).
 */
export class Progress {
  private last = 0;
  private readonly tty: boolean;
  private shown = false;

  constructor(private readonly out: NodeJS.WritableStream & { isTTY?: boolean; columns?: number }) {
    this.tty = out.isTTY === true;
  }

  /** `label`: what is being worked on; done/total counts; redraws at most every 100 ms unless forced. */
  update(label: string, done: number, total: number | null, force = false): void {
    if (!this.tty) return;
    const now = Date.now();
    if (!force && now - this.last < 100) return;
    this.last = now;
    const width = 24;
    let bar = '';
    if (total !== null && total > 0) {
      const filled = Math.min(width, Math.round((done / total) * width));
      bar = `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] `;
    }
    const count = total === null ? `${done}` : `${done}/${total}`;
    const cols = this.out.columns || 80;
    const line = `${bar}${count} ${label}`.slice(0, Math.max(10, cols - 1));
    this.out.write(`\r\x1b[K${line}`);
    this.shown = true;
  }

  /** Clears the line (before a normal message or at the end). */
  clear(): void {
    if (this.tty && this.shown) this.out.write('\r\x1b[K');
    this.shown = false;
  }
}
