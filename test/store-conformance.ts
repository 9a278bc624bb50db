/**
 * The MailStore contract (src/store/types.ts) as executable tests. Every adapter runs this
 * suite: `runStoreConformance('maildir', async () => ({ store, cleanup }))`.
 *
 * Each test gets a fresh store from `makeStore` (an empty storage) and closes it after.
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { DEFAULT_FOLDERS, StoreError, type ChangeEvent, type MailStore, type StoreError as StoreErrorType } from '../src/store/types.js';

export interface StoreUnderTest {
  store: MailStore;
  cleanup(): Promise<void>;
}

const USER = 'alice@conformance.onion';
const OTHER = 'bob@conformance.onion';

export function message(subject: string, body = 'Hello.\r\n'): Buffer {
  return Buffer.from(
    `From: Alice <alice@example.onion>\r\nTo: bob@example.onion\r\nSubject: ${subject}\r\n` +
      `Message-ID: <${subject.replace(/\W/g, '')}.${Math.random().toString(36).slice(2)}@example.onion>\r\n` +
      `Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n${body}`,
  );
}

function isStoreError(code: StoreErrorType['code']): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof Error, `expected an Error, got ${String(err)}`);
    assert.equal(err.name, 'StoreError', `expected StoreError ${code}, got ${err.name}: ${err.message}`);
    assert.equal((err as StoreError).code, code, `expected code ${code}, got ${(err as StoreError).code}: ${err.message}`);
    return true;
  };
}

function sorted(list: readonly string[]): string[] {
  return [...list].sort();
}

export function runStoreConformance(name: string, makeStore: () => Promise<StoreUnderTest>): void {
  describe(`MailStore conformance: ${name}`, () => {
    let store: MailStore;
    let cleanup: () => Promise<void>;
    let events: ChangeEvent[];

    beforeEach(async () => {
      ({ store, cleanup } = await makeStore());
      events = [];
      store.on('change', (e) => events.push(e));
      await store.ensureUser(USER);
    });

    afterEach(async () => {
      await store.close();
      await cleanup();
    });

    async function open(path: string) {
      const snap = await store.openMailbox(USER, path);
      assert.ok(snap, `mailbox ${path} should exist`);
      return snap;
    }

    // ---------------------------------------------------------------- users & folders

    describe('folders', () => {
      it('ensureUser creates the default folders, subscribed, with special use, INBOX first', async () => {
        const list = await store.listMailboxes(USER);
        assert.equal(list[0]?.path, 'INBOX');
        for (const def of DEFAULT_FOLDERS) {
          const info = list.find((m) => m.path === def.path);
          assert.ok(info, `${def.path} listed`);
          assert.equal(info.subscribed, true, `${def.path} subscribed`);
          assert.equal(info.specialUse, def.specialUse);
        }
      });

      it('ensureUser is idempotent and keeps messages', async () => {
        await store.append(USER, 'INBOX', message('keep me'));
        await store.ensureUser(USER);
        const list = await store.listMailboxes(USER);
        assert.equal(list.filter((m) => m.path === 'INBOX').length, 1);
        assert.equal((await open('INBOX')).uids.length, 1);
      });

      it('users are separate', async () => {
        await store.ensureUser(OTHER);
        await store.createMailbox(USER, 'Private');
        await store.append(USER, 'INBOX', message('for alice'));
        assert.equal((await store.listMailboxes(OTHER)).some((m) => m.path === 'Private'), false);
        const snap = await store.openMailbox(OTHER, 'INBOX');
        assert.equal(snap?.uids.length, 0);
      });

      it('createMailbox creates, refuses duplicates, creates missing parents', async () => {
        await store.createMailbox(USER, 'Projects');
        await assert.rejects(store.createMailbox(USER, 'Projects'), isStoreError('ALREADYEXISTS'));
        await assert.rejects(store.createMailbox(USER, 'INBOX'), isStoreError('ALREADYEXISTS'));
        await store.createMailbox(USER, 'Deep/er/est');
        const paths = (await store.listMailboxes(USER)).map((m) => m.path);
        for (const p of ['Projects', 'Deep', 'Deep/er', 'Deep/er/est']) assert.ok(paths.includes(p), `${p} listed`);
        const created = (await store.listMailboxes(USER)).find((m) => m.path === 'Projects');
        assert.equal(created?.subscribed, false);
        assert.equal(created?.specialUse, undefined);
      });

      it('INBOX is case-insensitive', async () => {
        const a = await open('inbox');
        const b = await open('INBOX');
        assert.equal(a.id, b.id);
        assert.equal(a.path, 'INBOX');
      });

      it('Unicode names round-trip', async () => {
        for (const p of ['Entwürfe', '日本語', 'Ünïcödé/子供', 'a & b']) {
          await store.createMailbox(USER, p);
          assert.ok((await store.listMailboxes(USER)).some((m) => m.path === p), `${p} listed`);
          const snap = await open(p);
          assert.equal(snap.path, p);
          await store.append(USER, p, message(p));
          assert.equal((await open(p)).uids.length, 1);
        }
      });

      it('refuses invalid names with CANNOT', async () => {
        for (const bad of ['', '/', 'a//b', '/lead', 'trail/', 'tab\there', 'nl\nhere', 'nul\u0000', '..', 'a/../b', 'star*', 'pct%']) {
          await assert.rejects(store.createMailbox(USER, bad), isStoreError('CANNOT'), JSON.stringify(bad));
        }
      });

      it('setSubscribed toggles the flag', async () => {
        await store.createMailbox(USER, 'Lists');
        await store.setSubscribed(USER, 'Lists', true);
        assert.equal((await store.listMailboxes(USER)).find((m) => m.path === 'Lists')?.subscribed, true);
        await store.setSubscribed(USER, 'Lists', false);
        assert.equal((await store.listMailboxes(USER)).find((m) => m.path === 'Lists')?.subscribed, false);
        await store.setSubscribed(USER, 'Sent', false);
        assert.equal((await store.listMailboxes(USER)).find((m) => m.path === 'Sent')?.subscribed, false);
      });

      it('renameMailbox moves children and messages; ids keep working', async () => {
        await store.createMailbox(USER, 'Old');
        await store.createMailbox(USER, 'Old/Child');
        const a = await store.append(USER, 'Old', message('in old'), { flags: ['\\Seen'] });
        const b = await store.append(USER, 'Old/Child', message('in child'));
        const before = await open('Old');
        await store.renameMailbox(USER, 'Old', 'New');
        const paths = (await store.listMailboxes(USER)).map((m) => m.path);
        assert.ok(!paths.includes('Old') && !paths.includes('Old/Child'), 'old names gone');
        assert.ok(paths.includes('New') && paths.includes('New/Child'), 'new names present');
        assert.equal(await store.openMailbox(USER, 'Old'), null);
        const after = await open('New');
        assert.deepEqual(after.uids, before.uids);
        assert.equal(after.uidValidity, before.uidValidity);
        // The id obtained before the rename still addresses the mailbox.
        const [meta] = await store.getMessages(a.mailboxId, [a.uid]);
        assert.deepEqual(meta?.flags, ['\\Seen']);
        assert.ok((await store.readMessage(a.mailboxId, a.uid))?.includes('in old'));
        const child = await open('New/Child');
        assert.ok((await store.readMessage(child.id, b.uid))?.includes('in child'));
        await store.append(USER, 'New', message('after rename'));
        assert.equal((await open('New')).uids.length, 2);
      });

      it('renameMailbox errors', async () => {
        await store.createMailbox(USER, 'A');
        await store.createMailbox(USER, 'B');
        await assert.rejects(store.renameMailbox(USER, 'Missing', 'X'), isStoreError('NONEXISTENT'));
        await assert.rejects(store.renameMailbox(USER, 'A', 'B'), isStoreError('ALREADYEXISTS'));
        await assert.rejects(store.renameMailbox(USER, 'INBOX', 'X'), isStoreError('CANNOT'));
        await assert.rejects(store.renameMailbox(USER, 'A', 'A/Inside'), isStoreError('CANNOT'));
        await assert.rejects(store.renameMailbox(USER, 'A', 'bad//name'), isStoreError('CANNOT'));
      });

      it('renameMailbox into a new hierarchy creates the parents', async () => {
        await store.createMailbox(USER, 'Flat');
        await store.renameMailbox(USER, 'Flat', 'Archive/2026/Flat');
        const paths = (await store.listMailboxes(USER)).map((m) => m.path);
        assert.ok(paths.includes('Archive/2026') && paths.includes('Archive/2026/Flat'));
      });

      it('deleteMailbox removes the mailbox but not its children', async () => {
        await store.createMailbox(USER, 'Parent/Kid');
        const kid = await store.append(USER, 'Parent/Kid', message('kid'));
        const p = await store.append(USER, 'Parent', message('parent'));
        await store.deleteMailbox(USER, 'Parent');
        assert.equal(await store.openMailbox(USER, 'Parent'), null);
        assert.equal(await store.mailboxStatus(USER, 'Parent'), null);
        await assert.rejects(store.getMessages(p.mailboxId, [p.uid]), isStoreError('NONEXISTENT'));
        const paths = (await store.listMailboxes(USER)).map((m) => m.path);
        assert.ok(!paths.includes('Parent'));
        assert.ok(paths.includes('Parent/Kid'));
        assert.ok((await store.readMessage(kid.mailboxId, kid.uid))?.includes('kid'));
        await assert.rejects(store.deleteMailbox(USER, 'Parent'), isStoreError('NONEXISTENT'));
        await assert.rejects(store.deleteMailbox(USER, 'INBOX'), isStoreError('CANNOT'));
        await assert.rejects(store.append(USER, 'Parent', message('x')), isStoreError('TRYCREATE'));
      });

      it('a re-created mailbox gets a new UIDVALIDITY', async () => {
        await store.createMailbox(USER, 'Again');
        const first = await open('Again');
        await store.deleteMailbox(USER, 'Again');
        await store.createMailbox(USER, 'Again');
        const second = await open('Again');
        assert.notEqual(second.uidValidity, first.uidValidity);
        assert.notEqual(second.id, first.id);
      });
    });

    // ---------------------------------------------------------------- open / status / append

    describe('messages', () => {
      it('openMailbox of a missing mailbox is null; an empty one is sane', async () => {
        assert.equal(await store.openMailbox(USER, 'Nope'), null);
        assert.equal(await store.mailboxStatus(USER, 'Nope'), null);
        const snap = await open('Sent');
        assert.ok(snap.uidValidity > 0 && snap.uidValidity <= 0xffffffff);
        assert.equal(snap.uidNext, 1);
        assert.deepEqual(snap.uids, []);
        assert.ok(snap.highestModseq >= 1);
        assert.equal(typeof snap.id, 'string');
        assert.ok(snap.id.length > 0);
        assert.deepEqual(await store.changesSince(snap.id, snap.highestModseq), []);
      });

      it('append stores durably-visible messages with ascending UIDs', async () => {
        const raw1 = message('one');
        const raw2 = message('two');
        const r1 = await store.append(USER, 'INBOX', raw1);
        const r2 = await store.append(USER, 'INBOX', raw2);
        const snap = await open('INBOX');
        assert.equal(r1.mailboxId, snap.id);
        assert.equal(r1.uidValidity, snap.uidValidity);
        assert.ok(r2.uid > r1.uid);
        assert.deepEqual(snap.uids, [r1.uid, r2.uid]);
        assert.equal(snap.uidNext, r2.uid + 1);
        assert.deepEqual(await store.readMessage(snap.id, r1.uid), raw1);
        assert.deepEqual(await store.readMessage(snap.id, r2.uid), raw2);
        const metas = await store.getMessages(snap.id, [r2.uid, r1.uid, 9999]);
        assert.deepEqual(
          metas.map((m) => m.uid),
          [r1.uid, r2.uid],
        );
        assert.equal(metas[0].size, raw1.length);
        assert.deepEqual(metas[0].flags, []);
        assert.ok(metas[0].modseq >= 1 && metas[0].modseq <= snap.highestModseq);
      });

      it('deliver stores into INBOX; the next look gives it a UID, unseen, after earlier mail', async () => {
        const first = await store.append(USER, 'INBOX', message('appended'));
        const raw = message('delivered');
        const lf = Buffer.from('Subject: delivered lf\n\nx\n');
        await Promise.all([store.deliver(USER, raw), store.deliver(USER, lf)]);
        const snap = await open('INBOX');
        assert.equal(snap.uids.length, 3);
        assert.equal(snap.uids[0], first.uid);
        const metas = await store.getMessages(snap.id, snap.uids);
        const bodies = await Promise.all(snap.uids.slice(1).map((uid) => store.readMessage(snap.id, uid)));
        assert.deepEqual(
          bodies.map((b) => b?.toString()).sort(),
          [raw.toString(), 'Subject: delivered lf\r\n\r\nx\r\n'].sort(),
        );
        for (const m of metas.slice(1)) {
          assert.deepEqual(m.flags, []);
          assert.ok(Math.abs(m.internalDate.getTime() - Date.now()) < 60_000);
        }
        assert.equal((await store.mailboxStatus(USER, 'INBOX'))?.unseen, 3);
        assert.ok(snap.uidNext > Math.max(...snap.uids));
      });

      it('deliver to a user without mail storage is TRYCREATE', async () => {
        await assert.rejects(store.deliver('nobody-here', message('x')), isStoreError('TRYCREATE'));
      });

      it('append to a missing mailbox is TRYCREATE', async () => {
        await assert.rejects(store.append(USER, 'Missing', message('x')), isStoreError('TRYCREATE'));
      });

      it('append keeps flags, keywords and the internal date', async () => {
        const date = new Date('2024-02-29T12:34:56Z');
        const r = await store.append(USER, 'Drafts', message('draft'), {
          flags: ['\\Draft', '\\seen', '$Forwarded', 'Work', '\\Recent'],
          internalDate: date,
        });
        const [meta] = await store.getMessages(r.mailboxId, [r.uid]);
        assert.deepEqual(sorted(meta.flags), sorted(['\\Draft', '\\Seen', '$Forwarded', 'Work']));
        assert.equal(Math.floor(meta.internalDate.getTime() / 1000), date.getTime() / 1000);
        const snap = await open('Drafts');
        assert.deepEqual(sorted(snap.keywords), sorted(['$Forwarded', 'Work']));
      });

      it('append without a date uses the current time', async () => {
        const before = Date.now();
        const r = await store.append(USER, 'INBOX', message('now'));
        const [meta] = await store.getMessages(r.mailboxId, [r.uid]);
        assert.ok(Math.abs(meta.internalDate.getTime() - before) < 5_000);
      });

      it('append refuses malformed flags', async () => {
        await assert.rejects(store.append(USER, 'INBOX', message('x'), { flags: ['\\Bogus'] }), isStoreError('CANNOT'));
        await assert.rejects(store.append(USER, 'INBOX', message('x'), { flags: ['two words'] }), isStoreError('CANNOT'));
        assert.equal((await open('INBOX')).uids.length, 0);
      });

      it('bare-LF messages are served with CRLF and the CRLF size', async () => {
        const lf = Buffer.from('Subject: lf\n\nline 1\nline 2\n');
        const r = await store.append(USER, 'INBOX', lf);
        const body = await store.readMessage(r.mailboxId, r.uid);
        assert.equal(body?.toString(), 'Subject: lf\r\n\r\nline 1\r\nline 2\r\n');
        const [meta] = await store.getMessages(r.mailboxId, [r.uid]);
        assert.equal(meta.size, body?.length);
        const status = await store.mailboxStatus(USER, 'INBOX');
        assert.equal(status?.size, body?.length);
      });

      it('binary and 8-bit content comes back byte for byte', async () => {
        const raw = Buffer.concat([Buffer.from('Subject: bin\r\nContent-Type: application/octet-stream\r\n\r\n'), Buffer.from([0, 1, 2, 0xff, 0xfe, 0x0d, 0x0a, 0x80]), Buffer.from('\r\n')]);
        const r = await store.append(USER, 'INBOX', raw);
        assert.deepEqual(await store.readMessage(r.mailboxId, r.uid), raw);
      });

      it('readMessage of an unknown UID is null; unknown mailbox ids are NONEXISTENT', async () => {
        const snap = await open('INBOX');
        assert.equal(await store.readMessage(snap.id, 12345), null);
        assert.deepEqual(await store.getMessages(snap.id, [12345]), []);
        await assert.rejects(store.getMessages('no-such-mailbox', [1]), isStoreError('NONEXISTENT'));
        await assert.rejects(store.readMessage('no-such-mailbox', 1), isStoreError('NONEXISTENT'));
      });

      it('mailboxStatus counts messages, unseen and size', async () => {
        const a = message('a');
        const b = message('bb');
        await store.append(USER, 'INBOX', a, { flags: ['\\Seen'] });
        const rb = await store.append(USER, 'INBOX', b);
        const status = await store.mailboxStatus(USER, 'INBOX');
        assert.ok(status);
        assert.equal(status.messages, 2);
        assert.equal(status.unseen, 1);
        assert.equal(status.uidNext, rb.uid + 1);
        assert.equal(status.size, a.length + b.length);
        const snap = await open('INBOX');
        assert.equal(status.uidValidity, snap.uidValidity);
        assert.equal(status.highestModseq, snap.highestModseq);
      });

      it('concurrent appends get distinct ascending UIDs', async () => {
        const n = 40;
        const results = await Promise.all(Array.from({ length: n }, (_, i) => store.append(USER, 'INBOX', message(`c${i}`))));
        const uids = results.map((r) => r.uid);
        assert.equal(new Set(uids).size, n);
        const snap = await open('INBOX');
        assert.deepEqual(snap.uids, [...uids].sort((x, y) => x - y));
        for (const r of results.slice(0, 5)) assert.ok(await store.readMessage(r.mailboxId, r.uid));
      });

      it('usage sums all mailboxes', async () => {
        const a = message('usage a');
        const b = message('usage b', 'x'.repeat(1000));
        await store.append(USER, 'INBOX', a);
        await store.append(USER, 'Archive', b);
        assert.equal(await store.usage(USER), a.length + b.length);
      });
    });

    // ---------------------------------------------------------------- flags

    describe('flags', () => {
      it('add / remove / set, with keywords', async () => {
        const r = await store.append(USER, 'INBOX', message('flags'));
        const id = r.mailboxId;
        let res = await store.storeFlags(id, [r.uid], { action: 'add', flags: ['\\Seen', '\\Flagged', 'Todo'] });
        assert.equal(res.changed.length, 1);
        assert.deepEqual(sorted(res.changed[0].flags), sorted(['\\Seen', '\\Flagged', 'Todo']));
        res = await store.storeFlags(id, [r.uid], { action: 'remove', flags: ['\\Flagged', 'todo'] });
        assert.deepEqual(res.changed[0].flags, ['\\Seen']);
        res = await store.storeFlags(id, [r.uid], { action: 'set', flags: ['\\Answered', '$Label1'] });
        assert.deepEqual(sorted(res.changed[0].flags), sorted(['\\Answered', '$Label1']));
        const [meta] = await store.getMessages(id, [r.uid]);
        assert.deepEqual(sorted(meta.flags), sorted(['\\Answered', '$Label1']));
        assert.equal(meta.modseq, res.changed[0].modseq);
        assert.ok((await open('INBOX')).keywords.includes('$Label1'));
      });

      it('all system flags survive', async () => {
        const r = await store.append(USER, 'INBOX', message('sys'));
        const all = ['\\Seen', '\\Answered', '\\Flagged', '\\Deleted', '\\Draft'];
        await store.storeFlags(r.mailboxId, [r.uid], { action: 'set', flags: all });
        const [meta] = await store.getMessages(r.mailboxId, [r.uid]);
        assert.deepEqual(sorted(meta.flags), sorted(all));
      });

      it('a change bumps modseq; a no-op does not', async () => {
        const r = await store.append(USER, 'INBOX', message('modseq'));
        const [m0] = await store.getMessages(r.mailboxId, [r.uid]);
        const res1 = await store.storeFlags(r.mailboxId, [r.uid], { action: 'add', flags: ['\\Seen'] });
        assert.ok(res1.changed[0].modseq > m0.modseq);
        const snap1 = await open('INBOX');
        const res2 = await store.storeFlags(r.mailboxId, [r.uid], { action: 'add', flags: ['\\Seen'] });
        assert.deepEqual(res2.changed, []);
        const snap2 = await open('INBOX');
        assert.equal(snap2.highestModseq, snap1.highestModseq);
      });

      it('unchangedSince refuses messages modified later', async () => {
        const a = await store.append(USER, 'INBOX', message('a'));
        const b = await store.append(USER, 'INBOX', message('b'));
        const [ma] = await store.getMessages(a.mailboxId, [a.uid]);
        await store.storeFlags(b.mailboxId, [b.uid], { action: 'add', flags: ['\\Flagged'] });
        const [mb] = await store.getMessages(b.mailboxId, [b.uid]);
        const limit = Math.max(ma.modseq, mb.modseq - 1);
        const res = await store.storeFlags(a.mailboxId, [a.uid, b.uid], { action: 'add', flags: ['\\Seen'], unchangedSince: limit });
        assert.deepEqual(res.modified, [b.uid]);
        assert.deepEqual(
          res.changed.map((m) => m.uid),
          [a.uid],
        );
        const [after] = await store.getMessages(b.mailboxId, [b.uid]);
        assert.deepEqual(after.flags, ['\\Flagged']);
      });

      it('unknown UIDs are ignored', async () => {
        const r = await store.append(USER, 'INBOX', message('x'));
        const res = await store.storeFlags(r.mailboxId, [r.uid + 100], { action: 'add', flags: ['\\Seen'] });
        assert.deepEqual(res, { changed: [], modified: [] });
      });
    });

    // ---------------------------------------------------------------- expunge / copy / move

    describe('expunge, copy, move', () => {
      it('expunge removes only \\Deleted messages (among the given UIDs)', async () => {
        const rs = [];
        for (let i = 0; i < 4; i++) rs.push(await store.append(USER, 'INBOX', message(`e${i}`)));
        const id = rs[0].mailboxId;
        await store.storeFlags(id, [rs[0].uid, rs[1].uid, rs[2].uid], { action: 'add', flags: ['\\Deleted'] });
        assert.deepEqual(await store.expunge(id, [rs[1].uid, rs[3].uid], 'session-1'), [rs[1].uid]);
        assert.deepEqual((await open('INBOX')).uids, [rs[0].uid, rs[2].uid, rs[3].uid]);
        assert.deepEqual(await store.expunge(id, undefined, 'session-1'), [rs[0].uid, rs[2].uid]);
        assert.deepEqual((await open('INBOX')).uids, [rs[3].uid]);
        assert.equal(await store.readMessage(id, rs[0].uid), null);
        const status = await store.mailboxStatus(USER, 'INBOX');
        assert.equal(status?.messages, 1);
        // UIDs are never reused.
        const next = await store.append(USER, 'INBOX', message('after'));
        assert.ok(next.uid > rs[3].uid);
      });

      it('copyMessages gives new UIDs in the target and keeps flags, dates and bytes', async () => {
        const date = new Date('2023-05-01T08:00:00Z');
        const raw = message('copy me');
        const a = await store.append(USER, 'INBOX', raw, { flags: ['\\Seen', 'Keep'], internalDate: date });
        const b = await store.append(USER, 'INBOX', message('copy me too'));
        await store.append(USER, 'Archive', message('already there'));
        const res = await store.copyMessages(a.mailboxId, [b.uid, a.uid, 999], 'Archive', 'session-1');
        const target = await open('Archive');
        assert.equal(res.uidValidity, target.uidValidity);
        assert.deepEqual(res.sourceUids, [a.uid, b.uid]);
        assert.equal(res.destinationUids.length, 2);
        assert.ok(res.destinationUids[0] < res.destinationUids[1]);
        assert.deepEqual(target.uids.slice(-2), res.destinationUids);
        const [meta] = await store.getMessages(target.id, [res.destinationUids[0]]);
        assert.deepEqual(sorted(meta.flags), sorted(['\\Seen', 'Keep']));
        assert.equal(meta.internalDate.getTime(), date.getTime());
        assert.deepEqual(await store.readMessage(target.id, res.destinationUids[0]), raw);
        // The source is unchanged, and the copies are independent of it.
        assert.deepEqual((await open('INBOX')).uids, [a.uid, b.uid]);
        await store.storeFlags(target.id, [res.destinationUids[0]], { action: 'set', flags: [] });
        const [src] = await store.getMessages(a.mailboxId, [a.uid]);
        assert.deepEqual(sorted(src.flags), sorted(['\\Seen', 'Keep']));
      });

      it('copy into the same mailbox works', async () => {
        const a = await store.append(USER, 'INBOX', message('dup'));
        const res = await store.copyMessages(a.mailboxId, [a.uid], 'INBOX');
        assert.equal(res.destinationUids.length, 1);
        assert.ok(res.destinationUids[0] > a.uid);
        assert.equal((await open('INBOX')).uids.length, 2);
      });

      it('copy / move to a missing mailbox is TRYCREATE and changes nothing', async () => {
        const a = await store.append(USER, 'INBOX', message('stay'));
        await assert.rejects(store.copyMessages(a.mailboxId, [a.uid], 'Nowhere'), isStoreError('TRYCREATE'));
        await assert.rejects(store.moveMessages(a.mailboxId, [a.uid], 'Nowhere'), isStoreError('TRYCREATE'));
        assert.deepEqual((await open('INBOX')).uids, [a.uid]);
      });

      it('moveMessages moves and journals EXPUNGE with the origin', async () => {
        const a = await store.append(USER, 'INBOX', message('move 1'), { flags: ['\\Flagged'] });
        const b = await store.append(USER, 'INBOX', message('move 2'));
        const c = await store.append(USER, 'INBOX', message('stays'));
        const before = await open('INBOX');
        const res = await store.moveMessages(a.mailboxId, [a.uid, b.uid], 'Trash', 'session-9');
        assert.deepEqual(res.sourceUids, [a.uid, b.uid]);
        const trash = await open('Trash');
        assert.deepEqual(trash.uids, res.destinationUids);
        assert.deepEqual((await open('INBOX')).uids, [c.uid]);
        const [moved] = await store.getMessages(trash.id, [res.destinationUids[0]]);
        assert.deepEqual(moved.flags, ['\\Flagged']);
        const changes = await store.changesSince(before.id, before.highestModseq);
        const expunges = changes.filter((e) => e.command === 'EXPUNGE');
        assert.deepEqual(
          expunges.map((e) => e.uid),
          [a.uid, b.uid],
        );
        for (const e of expunges) assert.equal(e.origin, 'session-9');
        const targetChanges = await store.changesSince(trash.id, 0);
        assert.deepEqual(
          targetChanges.filter((e) => e.command === 'EXISTS').map((e) => e.uid),
          res.destinationUids,
        );
      });
    });

    // ---------------------------------------------------------------- journal & events

    describe('journal and events', () => {
      it('changesSince reports EXISTS / FETCH / EXPUNGE in modseq order with origins', async () => {
        const start = await open('INBOX');
        const a = await store.append(USER, 'INBOX', message('j1'), { origin: 'S1' });
        const b = await store.append(USER, 'INBOX', message('j2'));
        await store.storeFlags(a.mailboxId, [a.uid], { action: 'add', flags: ['\\Deleted', 'Tag'], origin: 'S2' });
        await store.expunge(a.mailboxId, undefined, 'S3');
        const changes = await store.changesSince(start.id, start.highestModseq);
        assert.deepEqual(
          changes.map((c) => [c.command, c.uid, c.origin]),
          [
            ['EXISTS', a.uid, 'S1'],
            ['EXISTS', b.uid, undefined],
            ['FETCH', a.uid, 'S2'],
            ['EXPUNGE', a.uid, 'S3'],
          ],
        );
        const fetch = changes[2];
        assert.deepEqual(sorted(fetch.flags ?? []), sorted(['\\Deleted', 'Tag']));
        for (let i = 1; i < changes.length; i++) assert.ok(changes[i].modseq > changes[i - 1].modseq, 'strictly ascending');
        const end = await open('INBOX');
        assert.equal(end.highestModseq, changes[changes.length - 1].modseq);
        assert.deepEqual(await store.changesSince(start.id, end.highestModseq), []);
        const tail = await store.changesSince(start.id, changes[1].modseq);
        assert.deepEqual(
          tail.map((c) => c.command),
          ['FETCH', 'EXPUNGE'],
        );
      });

      it("a snapshot's highestModseq covers every change reflected in its uids", async () => {
        await store.append(USER, 'INBOX', message('s1'));
        await store.append(USER, 'INBOX', message('s2'));
        const snap = await open('INBOX');
        assert.deepEqual(await store.changesSince(snap.id, snap.highestModseq), []);
        const metas = await store.getMessages(snap.id, snap.uids);
        for (const m of metas) assert.ok(m.modseq <= snap.highestModseq);
      });

      it("emits 'change' for append, flags, expunge, copy and move", async () => {
        const inbox = await open('INBOX');
        const archive = await open('Archive');
        const tick = () => new Promise((r) => setImmediate(r));
        const a = await store.append(USER, 'INBOX', message('ev'));
        await tick();
        assert.ok(events.some((e) => e.mailboxId === inbox.id && e.path === 'INBOX' && e.user === USER), 'append');
        events.length = 0;
        await store.storeFlags(a.mailboxId, [a.uid], { action: 'add', flags: ['\\Seen'] });
        await tick();
        assert.ok(events.some((e) => e.mailboxId === inbox.id), 'flags');
        events.length = 0;
        await store.copyMessages(a.mailboxId, [a.uid], 'Archive');
        await tick();
        assert.ok(events.some((e) => e.mailboxId === archive.id && e.path === 'Archive'), 'copy target');
        events.length = 0;
        await store.moveMessages(a.mailboxId, [a.uid], 'Archive');
        await tick();
        assert.ok(events.some((e) => e.mailboxId === archive.id), 'move target');
        assert.ok(events.some((e) => e.mailboxId === inbox.id), 'move source');
        events.length = 0;
        const b = await store.append(USER, 'INBOX', message('ev2'), { flags: ['\\Deleted'] });
        events.length = 0;
        await store.expunge(b.mailboxId);
        await tick();
        assert.ok(events.some((e) => e.mailboxId === inbox.id), 'expunge');
        events.length = 0;
        await store.storeFlags(b.mailboxId, [12345], { action: 'add', flags: ['\\Seen'] });
        await tick();
        assert.equal(events.length, 0, 'no change, no event');
      });
    });

    // ---------------------------------------------------------------- cache slot, quota

    describe('message cache slot', () => {
      it('is kept per message, returned only when asked for, ignores unknown UIDs', async () => {
        const a = await store.append(USER, 'INBOX', message('slot a'));
        const b = await store.append(USER, 'INBOX', message('slot b'));
        await store.setMessageCache(a.mailboxId, [
          { uid: a.uid, cache: '{"x":1}' },
          { uid: 999, cache: 'nobody' },
        ]);
        const [ma, mb] = await store.getMessages(a.mailboxId, [a.uid, b.uid], { cache: true });
        assert.equal(ma.cache, '{"x":1}');
        assert.equal(mb.cache, undefined);
        const [plain] = await store.getMessages(a.mailboxId, [a.uid]);
        assert.equal(plain.cache, undefined, 'not returned unless asked for');
        await store.setMessageCache(a.mailboxId, [{ uid: a.uid, cache: '{"x":2}' }]);
        assert.equal((await store.getMessages(a.mailboxId, [a.uid], { cache: true }))[0].cache, '{"x":2}');
      });

      it('is filled by the builder at append, travels with COPY and MOVE, goes with EXPUNGE', async () => {
        const seen: number[] = [];
        store.setMessageCacheBuilder((raw) => {
          seen.push(raw.length);
          return `len=${raw.length}`;
        });
        const raw = message('built');
        const a = await store.append(USER, 'INBOX', raw, { flags: ['\\Deleted'] });
        assert.deepEqual(seen, [raw.length]);
        assert.equal((await store.getMessages(a.mailboxId, [a.uid], { cache: true }))[0].cache, `len=${raw.length}`);
        const copy = await store.copyMessages(a.mailboxId, [a.uid], 'Archive');
        const archive = await open('Archive');
        assert.equal((await store.getMessages(archive.id, copy.destinationUids, { cache: true }))[0].cache, `len=${raw.length}`);
        const moved = await store.moveMessages(archive.id, copy.destinationUids, 'Trash');
        const trash = await open('Trash');
        assert.equal((await store.getMessages(trash.id, moved.destinationUids, { cache: true }))[0].cache, `len=${raw.length}`);
        await store.expunge(a.mailboxId, [a.uid]);
        assert.deepEqual(await store.getMessages(a.mailboxId, [a.uid], { cache: true }), []);
        store.setMessageCacheBuilder(null);
        const b = await store.append(USER, 'INBOX', message('not built'));
        assert.equal((await store.getMessages(b.mailboxId, [b.uid], { cache: true }))[0].cache, undefined);
        assert.equal(seen.length, 1);
      });
    });

    describe('quota', () => {
      it('reports the usage; no limit unless configured', async () => {
        await store.append(USER, 'INBOX', message('q1'));
        await store.append(USER, 'Sent', message('q2'));
        const q = await store.quota(USER);
        assert.equal(q.used, await store.usage(USER));
        assert.ok(q.used > 0);
        assert.equal(q.limit, null);
      });
    });
  });
}
