/**
 * The scheduler's in-memory view of the queue: for every entry, when each of its destination
 * domains is due and when it needs a sweep (entry-schedule.ts). Nothing here reads or writes
 * files; the caller feeds it entry states (queue-view.ts) and asks what is due.
 *
 * Times wait in a min-heap; `promote(now)` moves what has come due into per-domain "ready"
 * lists (and a sweep list), where it stays until a worker takes it. Looking for due work when
 * nothing is due is one comparison with the top of the heap, whatever the size of the queue.
 *
 * Heap items are never searched for: a change to an entry bumps its generation, pushes fresh
 * items and leaves the old ones to be skipped when they surface (the heap is rebuilt when
 * such stale items outnumber the live ones).
 */
import { domainTimes, sameSchedule, type EntrySchedule } from './entry-schedule.js';
import { MinHeap } from './min-heap.js';

interface HeapItem {
  at: number;
  createdAt: number;
  id: string;
  /** A domain's recipients, or null: the entry's sweep. */
  domain: string | null;
  gen: number;
}

interface IndexRecord {
  schedule: EntrySchedule;
  flushedAt: number | null;
  /** A sweep that failed waits until then. */
  sweepNotBefore: number;
  gen: number;
  /** Domain -> due time (derived from schedule and flushedAt). */
  times: Map<string, number>;
}

const earlier = (a: HeapItem, b: HeapItem): boolean => a.at < b.at || (a.at === b.at && a.createdAt < b.createdAt);

export class DueIndex {
  private readonly records = new Map<string, IndexRecord>();
  private readonly heap = new MinHeap<HeapItem>(earlier);
  /** Items of the current generations (the heap holds these, minus the ready ones, plus stale ones). */
  private current = 0;
  /** Domain -> ids due for it, in the order they came due. */
  private readonly ready = new Map<string, Set<string>>();
  private readonly readySweeps = new Set<string>();

  /** Entries known. */
  get size(): number {
    return this.records.size;
  }

  /** Entries with a recipient still to be attempted. */
  waiting(): number {
    let n = 0;
    for (const r of this.records.values()) if (r.schedule.pending.length > 0) n++;
    return n;
  }

  has(id: string): boolean {
    return this.records.has(id);
  }

  ids(): IterableIterator<string> {
    return this.records.keys();
  }

  flushedAt(id: string): number | null {
    return this.records.get(id)?.flushedAt ?? null;
  }

  /** Records an entry's (new) schedule. Returns false when it was already known as it is. */
  set(id: string, schedule: EntrySchedule): boolean {
    const old = this.records.get(id);
    if (old && sameSchedule(old.schedule, schedule)) return false;
    this.unready(id, old);
    const rec: IndexRecord = { schedule, flushedAt: old?.flushedAt ?? null, sweepNotBefore: 0, gen: (old?.gen ?? 0) + 1, times: new Map() };
    this.records.set(id, rec);
    this.schedule(id, rec, old);
    return true;
  }

  delete(id: string): void {
    const old = this.records.get(id);
    if (!old) return;
    this.unready(id, old);
    this.current -= this.itemCount(old);
    this.records.delete(id);
  }

  /**
   * Makes pending recipients due at `at`: those of `id`, or of every entry. Returns how many
   * recipients that concerns (those not yet due at `at`).
   */
  flush(id: string | undefined, at: number): number {
    let count = 0;
    const one = (key: string, rec: IndexRecord): void => {
      count += rec.schedule.pending.filter((p) => p.next > at).length;
      this.unready(key, rec);
      rec.flushedAt = at;
      rec.gen++;
      this.schedule(key, rec, rec);
    };
    if (id !== undefined) {
      const rec = this.records.get(id);
      if (rec) one(id, rec);
    } else {
      for (const [key, rec] of this.records) one(key, rec);
    }
    return count;
  }

  /** Schedules an entry again as it is (after a worker held it, or a sweep was put off). */
  release(id: string): void {
    const rec = this.records.get(id);
    if (!rec) return;
    this.unready(id, rec);
    rec.gen++;
    this.schedule(id, rec, rec);
  }

  /** Puts an entry's sweep off until `at` (it failed; try again later). */
  postponeSweep(id: string, at: number): void {
    const rec = this.records.get(id);
    if (!rec) return;
    rec.sweepNotBefore = at;
    this.release(id);
  }

  /** Moves everything due at `now` into the ready lists. */
  promote(now: number): void {
    for (let top = this.heap.peek(); top && top.at <= now; top = this.heap.peek()) {
      this.heap.pop();
      const rec = this.records.get(top.id);
      if (!rec || rec.gen !== top.gen) continue;
      if (top.domain === null) {
        this.readySweeps.add(top.id);
        continue;
      }
      let set = this.ready.get(top.domain);
      if (!set) this.ready.set(top.domain, (set = new Set()));
      set.add(top.id);
    }
  }

  /** Domains with due entries, in the order they came due. */
  readyDomains(): string[] {
    return [...this.ready.keys()];
  }

  /** Takes up to `limit` due entries of `domain` (not in `skip`) off its ready list. */
  take(domain: string, limit: number, skip?: ReadonlySet<string>): string[] {
    const set = this.ready.get(domain);
    if (!set) return [];
    const out: string[] = [];
    for (const id of set) {
      if (out.length >= limit) break;
      if (skip?.has(id)) continue;
      out.push(id);
      set.delete(id);
    }
    if (set.size === 0) this.ready.delete(domain);
    return out;
  }

  /** Takes every entry whose sweep is due. */
  takeSweeps(): string[] {
    const out = [...this.readySweeps];
    this.readySweeps.clear();
    return out;
  }

  /** The earliest time something is due that is not ready yet, or null. */
  nextAt(): number | null {
    for (let top = this.heap.peek(); top; top = this.heap.peek()) {
      const rec = this.records.get(top.id);
      if (rec && rec.gen === top.gen) return top.at;
      this.heap.pop(); // stale
    }
    return null;
  }

  private itemCount(rec: IndexRecord): number {
    return rec.times.size + (rec.schedule.sweepAt === null ? 0 : 1);
  }

  /** Pushes the items of `rec`'s current generation (`old`: the items it replaces). */
  private schedule(id: string, rec: IndexRecord, old: IndexRecord | undefined): void {
    if (old) this.current -= this.itemCount(old);
    rec.times = domainTimes(rec.schedule.pending, rec.flushedAt);
    for (const item of this.itemsOf(id, rec)) this.heap.push(item);
    this.current += this.itemCount(rec);
    if (this.heap.size > 2 * this.current + 1024) this.compact();
  }

  private *itemsOf(id: string, rec: IndexRecord): Generator<HeapItem> {
    const createdAt = rec.schedule.createdAt;
    for (const [domain, at] of rec.times) yield { at, createdAt, id, domain, gen: rec.gen };
    const sweep = rec.schedule.sweepAt;
    if (sweep !== null) yield { at: Math.max(sweep, rec.sweepNotBefore), createdAt, id, domain: null, gen: rec.gen };
  }

  /** Removes `id` from the ready lists (its items are about to be replaced). */
  private unready(id: string, rec: IndexRecord | undefined): void {
    if (!rec) return;
    for (const domain of rec.times.keys()) {
      const set = this.ready.get(domain);
      if (set?.delete(id) && set.size === 0) this.ready.delete(domain);
    }
    this.readySweeps.delete(id);
  }

  /** Rebuilds the heap from the current generations (what is ready stays ready). */
  private compact(): void {
    const items: HeapItem[] = [];
    for (const [id, rec] of this.records) {
      for (const item of this.itemsOf(id, rec)) {
        const ready = item.domain === null ? this.readySweeps.has(id) : this.ready.get(item.domain)?.has(id) === true;
        if (!ready) items.push(item);
      }
    }
    this.heap.reset(items);
  }
}
