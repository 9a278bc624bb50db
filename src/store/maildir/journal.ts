/**
 * A folder's change journal, in memory and bounded. Entries have strictly increasing,
 * unique modseqs. When it grows past the limit the oldest entries are dropped, so
 * `since()` for a modseq older than the first kept entry returns only what is left: a
 * caller that needs more (a session that slept through 10,000 changes) must resync from
 * the mailbox state itself (FETCH 1:* FLAGS / UID SEARCH), which IMAP clients do after
 * a reconnect anyway.
 */
import type { ChangeEntry } from '../types.js';

export const DEFAULT_JOURNAL_LIMIT = 10_000;

export class Journal {
  private entries: ChangeEntry[] = [];

  constructor(private readonly limit: number = DEFAULT_JOURNAL_LIMIT) {}

  add(entry: ChangeEntry): void {
    this.entries.push(entry);
    // Trim in chunks so that a busy folder does not shift the array on every change.
    if (this.entries.length > this.limit + Math.max(16, this.limit >> 3)) {
      this.entries.splice(0, this.entries.length - this.limit);
    }
  }

  /** Entries with modseq > `modseq`, ascending (copies). */
  since(modseq: number): ChangeEntry[] {
    let lo = 0;
    let hi = this.entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.entries[mid].modseq <= modseq) lo = mid + 1;
      else hi = mid;
    }
    return this.entries.slice(lo).map((e) => ({ ...e, ...(e.flags ? { flags: [...e.flags] } : {}) }));
  }

  /** Modseq of the oldest entry still kept (undefined when empty). */
  get firstModseq(): number | undefined {
    return this.entries[0]?.modseq;
  }

  get size(): number {
    return this.entries.length;
  }

  clear(): void {
    this.entries = [];
  }
}
