/**
 * Keeps a DueIndex (due-index.ts) in step with the spool, so that the scheduler never has to
 * read entries to learn what is due:
 *
 * - load(): at start, one pass over the spool (every entry read once, several at once);
 * - the queue's own writes (enqueue, attempt outcomes, bounces, removal) arrive through
 *   OutboundQueue.onChange() as they happen;
 * - writes by other processes arrive as request files naming the entry (wake.ts):
 *   refresh(id) reads that one entry; reconcile() compares the directory listing with the
 *   index and reads only the entries it does not know (a request without an id, and a
 *   periodic safety net);
 * - read(id) is how the scheduler reads an entry it works on; what it finds updates the index.
 *
 * Reads race with writes of this process: a read that started before a change notice for the
 * same entry is not applied (the notice carried the newer state).
 */
import type { Logger } from '../log/logger.js';
import { DueIndex } from './due-index.js';
import { entrySchedule } from './entry-schedule.js';
import type { OutboundQueue, QueueChange, QueueEntry } from './queue.js';

export interface QueueViewOptions {
  /** null: no delay warnings (they need no sweep then). */
  delayWarningMs: number | null;
  logger: Logger;
}

export class QueueView {
  readonly index = new DueIndex();
  private unsubscribe: (() => void) | null = null;
  /** One set per read in progress: the ids changed by this process since it began. */
  private readonly readsInFlight = new Set<Set<string>>();
  /** Ids known to be unreadable (logged once). */
  private readonly unreadable = new Set<string>();

  constructor(
    private readonly queue: OutboundQueue,
    private readonly options: QueueViewOptions,
  ) {}

  /** Subscribes to the queue's changes and reads every entry once. */
  async load(onProgress?: (done: number, total: number) => void): Promise<void> {
    this.unsubscribe ??= this.queue.onChange((change) => this.apply(change));
    await this.reconcile(onProgress);
  }

  close(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
  }

  /** Reads one entry (it changed elsewhere, or a worker needs it); null when it is gone. */
  async read(id: string): Promise<QueueEntry | null> {
    return this.guarded(async (changed) => {
      let entry: QueueEntry | null;
      try {
        entry = await this.queue.get(id);
      } catch (err) {
        if (!this.unreadable.has(id)) this.options.logger.error({ id, err: (err as Error).message }, 'unreadable queue entry; left alone');
        this.unreadable.add(id);
        if (!changed.has(id)) this.index.delete(id);
        return null;
      }
      this.unreadable.delete(id);
      if (!changed.has(id)) this.note(id, entry);
      return entry;
    });
  }

  /**
   * Compares the entries directory with the index: entries it does not know are read,
   * entries gone from the directory are forgotten. Returns the counts.
   */
  async reconcile(onProgress?: (done: number, total: number) => void): Promise<{ added: number; removed: number }> {
    return this.guarded(async (changed) => {
      const names = await this.queue.ids();
      const present = new Set(names);
      let removed = 0;
      for (const id of [...this.index.ids()]) {
        if (present.has(id) || changed.has(id)) continue;
        this.index.delete(id);
        removed++;
      }
      // Unreadable entries are not in the index: they are tried again (and logged) each time.
      const unknown = names.filter((n) => !this.index.has(n));
      const { entries, unreadable } = await this.queue.readMany({ ids: unknown, onProgress });
      this.unreadable.clear();
      for (const id of unreadable) this.unreadable.add(id);
      let added = 0;
      for (const e of entries) {
        if (changed.has(e.id)) continue;
        this.note(e.id, e);
        added++;
      }
      return { added, removed };
    });
  }

  private apply(change: QueueChange): void {
    const id = change.kind === 'written' ? change.entry.id : change.id;
    for (const set of this.readsInFlight) set.add(id);
    if (change.kind === 'written') this.note(id, change.entry);
    else this.index.delete(id);
  }

  private note(id: string, entry: QueueEntry | null): void {
    if (entry) this.index.set(id, entrySchedule(entry, this.options.delayWarningMs));
    else this.index.delete(id);
  }

  /** Runs a read with the set of ids this process changes meanwhile. */
  private async guarded<T>(fn: (changed: ReadonlySet<string>) => Promise<T>): Promise<T> {
    const changed = new Set<string>();
    this.readsInFlight.add(changed);
    try {
      return await fn(changed);
    } finally {
      this.readsInFlight.delete(changed);
    }
  }
}
