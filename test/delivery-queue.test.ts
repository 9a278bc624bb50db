/** The outbound queue spool on a real file system. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OutboundQueue, QueueError } from '../src/delivery/queue.js';

function tmp(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'onionpost-queue-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const RAW = Buffer.from('Received: x\r\nFrom: a@b.onion\r\nSubject: hi\r\n\r\nbody \xff bytes\r\n', 'latin1');

test('enqueue writes one entry (message + state), visible to list/get only when complete', async (t) => {
  const dir = path.join(tmp(t), 'queue');
  const q = new OutboundQueue({ dir });
  const before = Date.now();
  const e = await q.enqueue({ from: 'alice@ours.onion', recipients: ['Bob@Other.ONION', 'carol@other.onion', 'bob@other.onion'], raw: RAW, origin: 'submission' });
  assert.match(e.id, /^[0-9A-F]{16}$/);
  assert.equal(e.size, RAW.length);
  assert.deepEqual(
    e.recipients.map((r) => [r.address, r.domain, r.status, r.attempts]),
    [
      ['Bob@other.onion', 'other.onion', 'pending', 0],
      ['carol@other.onion', 'other.onion', 'pending', 0],
    ],
    'domains lower-cased, duplicates (case-insensitive) dropped',
  );
  assert.ok(e.recipients.every((r) => r.nextAttempt !== null && r.nextAttempt >= before && r.nextAttempt <= Date.now()));

  // On disk: entries/<id>/{message,state.json}, both 0600; nothing left in tmp/.
  const entryDir = path.join(dir, 'entries', e.id);
  assert.deepEqual(readdirSync(entryDir).sort(), ['message', 'state.json']);
  assert.ok(readFileSync(path.join(entryDir, 'message')).equals(RAW));
  assert.equal(statSync(path.join(entryDir, 'message')).mode & 0o777, 0o600);
  assert.deepEqual(JSON.parse(readFileSync(path.join(entryDir, 'state.json'), 'utf8')), e);
  assert.deepEqual(readdirSync(path.join(dir, 'tmp')), []);
  assert.deepEqual(await q.get(e.id), e);
  assert.ok((await q.readMessage(e.id))!.equals(RAW));

  // A half-written entry (crash before the rename) is never listed, and a fresh queue
  // (restart) removes it once it is old.
  const half = path.join(dir, 'tmp', 'ABCDEF0123456789.dead');
  mkdirSync(half);
  writeFileSync(path.join(half, 'message'), 'partial');
  const stale = new Date(Date.now() - 3600_000);
  utimesSync(half, stale, stale);
  const fresh = path.join(dir, 'tmp', '0123456789ABCDEF.busy');
  mkdirSync(fresh);
  assert.deepEqual((await q.list()).map((x) => x.id), [e.id]);
  const restarted = new OutboundQueue({ dir });
  assert.deepEqual((await restarted.list()).map((x) => x.id), [e.id]);
  assert.ok(!existsSync(half), 'stale tmp leftover removed');
  assert.ok(existsSync(fresh), 'a recent tmp dir (maybe being written) is left alone');
});

test('update and due(): per-recipient state, nextAttempt scheduling; remove', async (t) => {
  const q = new OutboundQueue({ dir: tmp(t) });
  const now = Date.now();
  const a = await q.enqueue({ from: '', recipients: ['x@a.onion', 'y@b.onion'], raw: RAW, origin: 'relay' });
  const b = await q.enqueue({ from: 'z@ours.onion', recipients: ['w@c.onion'], raw: RAW, notBefore: now + 60_000 });
  assert.deepEqual((await q.due(now + 1000)).map((e) => e.id), [a.id]);
  assert.deepEqual((await q.due(now + 61_000)).map((e) => e.id).sort(), [a.id, b.id].sort());

  const updated = await q.update(a.id, (e) => ({
    recipients: e.recipients.map((r) =>
      r.domain === 'a.onion'
        ? { ...r, status: 'delivered' as const, attempts: 1, nextAttempt: null, lastAttempt: now }
        : { ...r, attempts: 1, nextAttempt: now + 300_000, lastAttempt: now, lastError: '451 4.3.0 try later' },
    ),
  }));
  assert.equal(updated.from, '');
  assert.equal(updated.origin, 'relay');
  assert.deepEqual(await q.get(a.id), updated, 'the update is on disk');
  assert.deepEqual((await q.due(now + 1000)).map((e) => e.id), [], 'nothing due: y@b.onion waits 5 minutes');
  assert.deepEqual((await q.due(now + 300_001)).map((e) => e.id).sort(), [a.id, b.id].sort());
  assert.deepEqual(readdirSync(path.join(q.dir, 'entries', a.id)).sort(), ['message', 'state.json'], 'no temp files left');

  // Invalid state is refused and the old state stays.
  await assert.rejects(
    q.update(a.id, { recipients: [{ address: 'x@a.onion', domain: 'a.onion', status: 'delivered', attempts: 1, nextAttempt: 5 }] }),
    (e: unknown) => e instanceof QueueError && e.code === 'invalid',
  );
  assert.deepEqual(await q.get(a.id), updated);
  await assert.rejects(q.update('FFFFFFFFFFFFFFFF', { recipients: [] }), (e: unknown) => e instanceof QueueError && e.code === 'not-found');

  // Concurrent updates of one entry are serialized (none is lost).
  await Promise.all(
    [1, 2, 3, 4, 5].map(() => q.update(b.id, (e) => ({ recipients: e.recipients.map((r) => ({ ...r, attempts: r.attempts + 1 })) }))),
  );
  assert.equal((await q.get(b.id))!.recipients[0]!.attempts, 5);

  await q.remove(a.id);
  assert.equal(await q.get(a.id), null);
  assert.equal(await q.readMessage(a.id), null);
  await q.remove(a.id); // again: not an error
  assert.deepEqual((await q.list()).map((e) => e.id), [b.id]);
  assert.deepEqual(readdirSync(path.join(q.dir, 'tmp')), []);
});

test('bad input: ids that could escape the directory, recipients that are not addresses', async (t) => {
  const q = new OutboundQueue({ dir: tmp(t) });
  for (const id of ['../x', 'abc', '0123456789abcdef', '0123456789ABCDEF/..']) {
    await assert.rejects(q.enqueue({ id, from: '', recipients: ['a@b.onion'], raw: RAW }), (e: unknown) => e instanceof QueueError && e.code === 'invalid', id);
    assert.equal(await q.get(id), null);
  }
  for (const rcpt of ['nodomain', '@b.onion', 'a@', 'a b@c.onion', 'a@b.onion\r\nX']) {
    await assert.rejects(q.enqueue({ from: '', recipients: [rcpt], raw: RAW }), (e: unknown) => e instanceof QueueError && e.code === 'invalid', rcpt);
  }
  await assert.rejects(q.enqueue({ from: '', recipients: [], raw: RAW }), (e: unknown) => e instanceof QueueError);
  const e = await q.enqueue({ id: '00000000000000AA', from: '', recipients: ['a@b.onion'], raw: RAW });
  await assert.rejects(q.enqueue({ id: e.id, from: '', recipients: ['a@b.onion'], raw: RAW }), (err: unknown) => err instanceof QueueError && err.code === 'exists');
  // An unreadable entry is skipped by list(), not fatal.
  writeFileSync(path.join(q.dir, 'entries', e.id, 'state.json'), '{ not json');
  assert.deepEqual(await q.list(), []);
});

test('a write failure rejects and leaves nothing visible', async (t) => {
  const q = new OutboundQueue({ dir: tmp(t) });
  await q.open();
  // tmp/ replaced by a regular file: every write fails for real (also for root).
  rmSync(path.join(q.dir, 'tmp'), { recursive: true });
  writeFileSync(path.join(q.dir, 'tmp'), 'not a directory');
  await assert.rejects(q.enqueue({ from: '', recipients: ['a@b.onion'], raw: RAW }), (e: unknown) => e instanceof QueueError && e.code === 'io');
  assert.deepEqual(await q.list(), []);
  assert.deepEqual(readdirSync(path.join(q.dir, 'entries')), []);
});

test('DSN requests (RFC 3461) are kept with the entry and survive updates; entries written without them still read', async (t) => {
  const q = new OutboundQueue({ dir: tmp(t) });
  const e = await q.enqueue({
    from: 'alice@ours.onion',
    recipients: [{ address: 'bob@b.onion', notify: ['SUCCESS', 'FAILURE'], orcpt: 'rfc822;Bob+x@b.onion' }, { address: 'carol@b.onion', notify: ['NEVER'] }, 'dave@b.onion'],
    raw: RAW,
    ret: 'HDRS',
    envid: 'id 1',
  });
  const fresh = new OutboundQueue({ dir: q.dir });
  const read = (await fresh.get(e.id))!;
  assert.equal(read.ret, 'HDRS');
  assert.equal(read.envid, 'id 1');
  assert.deepEqual(
    read.recipients.map((r) => [r.address, r.notify, r.orcpt]),
    [
      ['bob@b.onion', ['SUCCESS', 'FAILURE'], 'rfc822;Bob+x@b.onion'],
      ['carol@b.onion', ['NEVER'], undefined],
      ['dave@b.onion', undefined, undefined],
    ],
  );
  const updated = await q.update(e.id, (cur) => ({ recipients: cur.recipients.map((r) => ({ ...r, attempts: 1 })) }));
  assert.equal(updated.ret, 'HDRS');
  assert.deepEqual(updated.recipients[0]!.notify, ['SUCCESS', 'FAILURE']);

  // A state.json as earlier versions wrote it: no DSN fields at all.
  const old = {
    version: 1,
    id: '00000000000000BB',
    createdAt: 1_700_000_000_000,
    from: 'alice@ours.onion',
    size: RAW.length,
    origin: 'submission',
    recipients: [{ address: 'bob@b.onion', domain: 'b.onion', status: 'pending', attempts: 2, nextAttempt: 1_700_000_060_000, lastError: '451 later' }],
  };
  mkdirSync(path.join(q.dir, 'entries', old.id));
  writeFileSync(path.join(q.dir, 'entries', old.id, 'message'), RAW);
  writeFileSync(path.join(q.dir, 'entries', old.id, 'state.json'), JSON.stringify(old));
  const legacy = (await q.get(old.id))!;
  assert.deepEqual(legacy, old, 'read as it is: the defaults apply (FAILURE and DELAY notices, RET FULL)');
  assert.ok((await q.list()).some((x) => x.id === old.id));

  // Nonsense in the DSN fields makes an entry invalid (it is never half understood).
  for (const bad of [{ ret: 'SOME' }, { envid: 'a\r\nb' }, { recipients: [{ ...old.recipients[0], notify: ['NEVER', 'SUCCESS'] }] }, { recipients: [{ ...old.recipients[0], orcpt: 'no-type' }] }]) {
    writeFileSync(path.join(q.dir, 'entries', old.id, 'state.json'), JSON.stringify({ ...old, ...bad }));
    await assert.rejects(q.get(old.id), (err: unknown) => err instanceof QueueError && err.code === 'invalid', JSON.stringify(bad));
  }
  await assert.rejects(q.enqueue({ from: '', recipients: [{ address: 'x@b.onion', orcpt: 'rfc822;' }], raw: RAW }), (err: unknown) => err instanceof QueueError && err.code === 'invalid');
});

test('onChange hears every durable write and removal of this object; readMany reads many with progress', async (t) => {
  const q = new OutboundQueue({ dir: tmp(t) });
  const heard: string[] = [];
  const stop = q.onChange((c) => heard.push(c.kind === 'written' ? `written ${c.entry.id} ${c.entry.recipients[0]!.attempts}` : `removed ${c.id}`));
  const a = await q.enqueue({ from: '', recipients: ['x@a.onion'], raw: RAW });
  assert.ok(await q.get(a.id), 'on disk before it is announced');
  await q.update(a.id, (e) => ({ recipients: e.recipients.map((r) => ({ ...r, attempts: 1 })) }));
  await q.remove(a.id);
  await q.remove(a.id);
  assert.deepEqual(heard, [`written ${a.id} 0`, `written ${a.id} 1`, `removed ${a.id}`, `removed ${a.id}`]);

  // Another object on the same directory (another process): its writes are not heard here.
  await new OutboundQueue({ dir: q.dir }).enqueue({ id: '00000000000000CC', from: '', recipients: ['x@a.onion'], raw: RAW });
  assert.equal(heard.length, 4);
  stop();
  await q.enqueue({ from: '', recipients: ['x@a.onion'], raw: RAW });
  assert.equal(heard.length, 4, 'unsubscribed');

  for (let i = 0; i < 40; i++) await q.enqueue({ from: '', recipients: [`n${i}@b.onion`], raw: RAW });
  writeFileSync(path.join(q.dir, 'entries', '00000000000000CC', 'state.json'), 'garbage');
  const ids = await q.ids();
  assert.equal(ids.length, 42);
  const seen: number[] = [];
  const { entries, unreadable } = await q.readMany({ onProgress: (done, total) => seen.push(done, total), concurrency: 4 });
  assert.equal(entries.length, 41);
  assert.deepEqual(unreadable, ['00000000000000CC']);
  assert.deepEqual(seen.slice(-2), [42, 42]);
  assert.deepEqual((await q.readMany({ ids: ids.slice(0, 3) })).entries.map((e) => e.id).sort(), ids.slice(0, 3).filter((id) => id !== '00000000000000CC').sort());
});
