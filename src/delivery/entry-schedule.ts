/**
 * When a queue entry needs the scheduler, derived from its state alone (pure functions):
 *
 * - per destination domain, when its pending recipients are due (the earliest nextAttempt);
 * - when it needs a sweep (bounce, delay warning, success report, or removal once done).
 *
 * A flush ("retry now", `onionpost queue flush`) is a time, not a write: a pending recipient
 * not attempted since `flushedAt` is due at `flushedAt`. Its next attempt records a later
 * lastAttempt, and its normal schedule applies again.
 */
import type { QueueEntry, QueueRecipient } from './queue.js';

/** What the scheduler keeps in memory of a pending recipient. */
export interface PendingTimes {
  domain: string;
  /** nextAttempt (epoch ms). */
  next: number;
  /** lastAttempt (epoch ms), or -Infinity when never tried. */
  last: number;
}

export interface EntrySchedule {
  createdAt: number;
  pending: PendingTimes[];
  /** When a sweep is due (epoch ms; 0: now), or null when none is needed yet. */
  sweepAt: number | null;
}

function isPending(r: QueueRecipient): r is QueueRecipient & { nextAttempt: number } {
  return r.status === 'pending' && r.nextAttempt !== null;
}

/** The schedule of `entry`; `delayWarningMs` null: no delay warnings. */
export function entrySchedule(entry: QueueEntry, delayWarningMs: number | null): EntrySchedule {
  const pending: PendingTimes[] = [];
  let sweepAt: number | null = null;
  let done = true;
  for (const r of entry.recipients) {
    if (r.status === 'pending') {
      done = false;
      // (A pending recipient without nextAttempt is never attempted, as before.)
      if (isPending(r)) pending.push({ domain: r.domain, next: r.nextAttempt, last: r.lastAttempt ?? -Infinity });
      if (delayWarningMs !== null && !r.warned && r.attempts > 0) {
        const at = entry.createdAt + delayWarningMs;
        sweepAt = sweepAt === null ? at : Math.min(sweepAt, at);
      }
    } else if ((r.status === 'failed' && !r.bounced) || (r.status === 'delivered' && r.successAction && !r.successReported)) {
      sweepAt = 0;
    }
  }
  if (done) sweepAt = 0;
  return { createdAt: entry.createdAt, pending, sweepAt };
}

/** When a pending recipient is due, given the entry's flush time (null: none). */
export function dueAt(p: PendingTimes, flushedAt: number | null): number {
  return flushedAt !== null && p.last < flushedAt ? Math.min(p.next, flushedAt) : p.next;
}

/** Per domain, the earliest due time of its pending recipients. */
export function domainTimes(pending: readonly PendingTimes[], flushedAt: number | null): Map<string, number> {
  const out = new Map<string, number>();
  for (const p of pending) {
    const at = dueAt(p, flushedAt);
    const cur = out.get(p.domain);
    if (cur === undefined || at < cur) out.set(p.domain, at);
  }
  return out;
}

/** The addresses of `domain` in `entry` that are due at `now`. */
export function dueRecipients(entry: QueueEntry, domain: string, now: number, flushedAt: number | null): string[] {
  const out: string[] = [];
  for (const r of entry.recipients) {
    if (r.domain !== domain || !isPending(r)) continue;
    if (dueAt({ domain, next: r.nextAttempt, last: r.lastAttempt ?? -Infinity }, flushedAt) <= now) out.push(r.address);
  }
  return out;
}

/** Same schedule (nothing for the scheduler to redo). */
export function sameSchedule(a: EntrySchedule, b: EntrySchedule): boolean {
  if (a.createdAt !== b.createdAt || a.sweepAt !== b.sweepAt || a.pending.length !== b.pending.length) return false;
  return a.pending.every((p, i) => {
    const q = b.pending[i]!;
    return p.domain === q.domain && p.next === q.next && p.last === q.last;
  });
}
