/** The scheduler's in-memory schedule (due-index.ts, entry-schedule.ts): no files involved. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DueIndex } from '../src/delivery/due-index.js';
import { dueRecipients, entrySchedule } from '../src/delivery/entry-schedule.js';
import type { QueueEntry, QueueRecipient } from '../src/delivery/queue.js';

const T = 1_800_000_000_000;

function rcpt(address: string, over: Partial<QueueRecipient> = {}): QueueRecipient {
  const domain = address.slice(address.indexOf('@') + 1);
  return { address, domain, status: 'pending', attempts: 0, nextAttempt: T, ...over };
}

function entry(id: string, recipients: QueueRecipient[], createdAt = T): QueueEntry {
  return { version: 1, id, createdAt, from: 'a@ours.onion', size: 1, origin: 'submission', recipients };
}

const ID = (n: number): string => n.toString(16).toUpperCase().padStart(16, '0');

test('entry schedule: per-domain due times, sweeps for bounces, reports, warnings and removal', () => {
  const e = entry(ID(1), [
    rcpt('a@x.onion', { nextAttempt: T + 500 }),
    rcpt('b@x.onion', { nextAttempt: T + 100, attempts: 1, lastAttempt: T }),
    rcpt('c@y.onion', { status: 'delivered', nextAttempt: null }),
  ]);
  const s = entrySchedule(e, 3_600_000);
  assert.deepEqual(
    s.pending.map((p) => [p.domain, p.next]),
    [
      ['x.onion', T + 500],
      ['x.onion', T + 100],
    ],
  );
  assert.equal(s.sweepAt, T + 3_600_000, 'a recipient tried once and not warned: the delay warning is due then');
  assert.equal(entrySchedule(e, null).sweepAt, null, 'no delay warnings: no sweep yet');
  assert.equal(entrySchedule(entry(ID(2), [rcpt('a@x.onion', { status: 'failed', nextAttempt: null })]), null).sweepAt, 0, 'a bounce to send');
  assert.equal(entrySchedule(entry(ID(3), [rcpt('a@x.onion', { status: 'delivered', nextAttempt: null })]), null).sweepAt, 0, 'done: to be removed');
  assert.equal(entrySchedule(entry(ID(4), [rcpt('a@x.onion', { status: 'delivered', nextAttempt: null, successAction: 'relayed', successReported: false })]), null).sweepAt, 0);
  assert.deepEqual(dueRecipients(e, 'x.onion', T + 100, null), ['b@x.onion']);
  assert.deepEqual(dueRecipients(e, 'x.onion', T + 100, T + 50), ['a@x.onion', 'b@x.onion'], 'flushed: what was not tried since is due');
  assert.deepEqual(dueRecipients(e, 'x.onion', T + 50, T - 1), ['a@x.onion'], 'b was tried after that flush: its own schedule applies');
});

test('due index: nothing due is one look at the heap; due entries come out by domain, oldest first', () => {
  const index = new DueIndex();
  for (let i = 0; i < 1000; i++) index.set(ID(i), entrySchedule(entry(ID(i), [rcpt(`u@d${i % 10}.onion`, { nextAttempt: T + 60_000 + i })], T + i), null));
  index.set(ID(5000), entrySchedule(entry(ID(5000), [rcpt('u@now.onion'), rcpt('v@later.onion', { nextAttempt: T + 10 })], T - 5), null));
  index.set(ID(5001), entrySchedule(entry(ID(5001), [rcpt('w@now.onion')], T - 9), null));
  assert.equal(index.size, 1002);
  index.promote(T);
  assert.deepEqual(index.readyDomains(), ['now.onion']);
  assert.deepEqual(index.take('now.onion', 10), [ID(5001), ID(5000)], 'the older entry first');
  assert.deepEqual(index.readyDomains(), []);
  assert.equal(index.nextAt(), T + 10);
  index.promote(T + 10);
  assert.deepEqual(index.take('later.onion', 10), [ID(5000)]);
  assert.equal(index.nextAt(), T + 60_000);

  // What a worker took and did not attempt comes back when it is released.
  index.release(ID(5001));
  index.promote(T + 20);
  assert.deepEqual(index.take('now.onion', 10), [ID(5001)]);

  // An attempt's outcome replaces the entry's times; a removal forgets it.
  index.set(ID(5001), entrySchedule(entry(ID(5001), [rcpt('w@now.onion', { attempts: 1, lastAttempt: T + 20, nextAttempt: T + 30 })], T - 9), null));
  index.delete(ID(5000));
  index.promote(T + 30);
  assert.deepEqual(index.take('now.onion', 10), [ID(5001)]);
  assert.deepEqual(index.readyDomains(), []);

  // A flush makes every waiting recipient due at once; `take` hands them out in bounded batches.
  assert.equal(index.flush(undefined, T + 40), 1000, "the waiting recipients (not those due already)");
  index.promote(T + 40);
  assert.equal(index.readyDomains().length, 11);
  assert.equal(index.take('d3.onion', 60).length, 60);
  assert.equal(index.take('d3.onion', 60).length, 40);
  assert.deepEqual(index.take('d3.onion', 60), []);
});

test('due index: many changes to the same entries keep one live item each (the heap is compacted)', () => {
  const index = new DueIndex();
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 200; i++) {
      index.set(ID(i), entrySchedule(entry(ID(i), [rcpt(`u@d${i % 3}.onion`, { attempts: round, lastAttempt: T + round, nextAttempt: T + 1000 + round * 10 + i })]), null));
    }
  }
  assert.equal(index.nextAt(), T + 1000 + 49 * 10);
  index.promote(T + 1_000_000);
  const out = ['d0.onion', 'd1.onion', 'd2.onion'].flatMap((d) => index.take(d, 1000));
  assert.equal(out.length, 200, 'each entry once, whatever the number of stale heap items');
  assert.equal(new Set(out).size, 200);
  assert.equal(index.nextAt(), null);
});
