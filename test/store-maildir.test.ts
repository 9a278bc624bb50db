/**
 * MaildirStore: the shared MailStore conformance suite, plus what only a Maildir has: the
 * exact on-disk formats Dovecot reads, interplay with other software writing the same
 * maildir, restarts, durability under real I/O failures, and (when Dovecot is installed)
 * Dovecot itself reading what we wrote and the other way round.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chown, lstat, mkdir, mkdtemp, readdir, readFile, rename, rm, symlink, unlink, utimes, writeFile } from 'node:fs/promises';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MaildirStore, type MaildirStoreOptions } from '../src/store/maildir/maildir-store.js';
import { decodeMutf7, encodeMutf7, normalizeMailboxPath } from '../src/store/maildir/mailbox-name.js';
import { parseUidlist, serializeUidlist } from '../src/store/maildir/uidlist.js';
import { parseSubscriptions } from '../src/store/maildir/subscriptions.js';
import { acquireDotlock } from '../src/store/maildir/dotlock.js';
import { appendIndexLog, INDEX_LOG_FILE, logLineRemove, logLineSet, readFolderIndex, writeFolderIndex } from '../src/store/maildir/index-file.js';
import { StoreError, type ChangeEvent } from '../src/store/types.js';
import { message, runStoreConformance } from './store-conformance.js';

const USER = 'alice';

runStoreConformance('maildir', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'onionpost-maildir-'));
  const store = new MaildirStore({ maildirFor: (user) => join(dir, 'mail', user) });
  return { store, cleanup: () => rm(dir, { recursive: true, force: true }) };
});

// -------------------------------------------------------------------------------------
// Helpers
// -------------------------------------------------------------------------------------

interface Env {
  dir: string;
  root: string;
  store: MaildirStore;
  events: ChangeEvent[];
  reopen(options?: Partial<MaildirStoreOptions>): Promise<MaildirStore>;
}

async function withMaildir(fn: (env: Env) => Promise<void>, options: Partial<MaildirStoreOptions> = {}): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'onionpost-maildir-'));
  const maildirFor = (user: string): string => join(dir, 'mail', user);
  const stores: MaildirStore[] = [];
  const make = (extra: Partial<MaildirStoreOptions> = {}): MaildirStore => {
    const s = new MaildirStore({ maildirFor, ...options, ...extra });
    stores.push(s);
    return s;
  };
  const events: ChangeEvent[] = [];
  const env: Env = {
    dir,
    root: maildirFor(USER),
    store: make(),
    events,
    reopen: async (extra) => {
      await env.store.close();
      env.store = make(extra);
      env.store.on('change', (e) => events.push(e));
      return env.store;
    },
  };
  env.store.on('change', (e) => events.push(e));
  try {
    await env.store.ensureUser(USER);
    await fn(env);
  } finally {
    for (const s of stores) await s.close();
    await rm(dir, { recursive: true, force: true });
  }
}

function files(dir: string): string[] {
  try {
    return readdirSync(dir).filter((n) => !n.startsWith('.')).sort();
  } catch {
    return [];
  }
}

const FILE_NAME = /^(\d+)\.M(\d+)P(\d+)\.onionpost,S=(\d+),W=(\d+):2,([A-Za-z]*)$/;

async function uidlistOf(folderDir: string) {
  return parseUidlist(await readFile(join(folderDir, 'dovecot-uidlist'), 'utf8'));
}

function isCode(code: StoreError['code']): (err: unknown) => boolean {
  return (err) => err instanceof StoreError && err.code === code;
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
/** Longer than the store's racy window (one file-system clock tick, 50 ms). */
const settle = (): Promise<void> => sleep(80);

// -------------------------------------------------------------------------------------
// Codecs
// -------------------------------------------------------------------------------------

describe('modified UTF-7', () => {
  const vectors: Array<[string, string]> = [
    ['INBOX', 'INBOX'],
    ['Entwürfe', 'Entw&APw-rfe'],
    ['日本語', '&ZeVnLIqe-'],
    ['~peter/mail/台北/日本語', '~peter/mail/&U,BTFw-/&ZeVnLIqe-'],
    ['a & b', 'a &- b'],
    ['&', '&-'],
    ['Ελληνικά', '&A5UDuwO7A7cDvQO5A7oDrA-'],
    ['😀 smile', '&2D3eAA- smile'],
  ];
  for (const [plain, encoded] of vectors) {
    it(`${plain} <-> ${encoded}`, () => {
      assert.equal(encodeMutf7(plain), encoded);
      assert.equal(decodeMutf7(encoded), plain);
    });
  }
  it('refuses non-canonical or broken input', () => {
    for (const bad of ['&', '&Jjo', '&AGE-', 'Entwü', '&ZeVnLIqe-&ZeVnLIqe-', '&Jjo!-', '&AAAA-']) {
      assert.throws(() => decodeMutf7(bad), RangeError, bad);
    }
  });
});

describe('mailbox names', () => {
  it('normalizes INBOX and refuses what Maildir++ cannot hold', () => {
    assert.equal(normalizeMailboxPath('inbox'), 'INBOX');
    assert.equal(normalizeMailboxPath('Inbox/Sub'), 'INBOX/Sub');
    assert.equal(normalizeMailboxPath('a/b'), 'a/b');
    for (const bad of ['a.b', '.hidden', 'x/.y', 'A/./B', 'trailing.', 'x'.repeat(300), 'ü'.repeat(130), 'DEL\u007f', 'C1\u0085']) {
      assert.throws(() => normalizeMailboxPath(bad), isCode('CANNOT'), bad);
    }
  });
});

describe('dovecot-uidlist parser', () => {
  it('keeps unknown fields, tolerates a partial last line, fixes a stale N', () => {
    const text =
      '3 V1700000000 N2 G0123456789abcdef0123456789abcdef Xfuture\n' +
      '1 :1700000000.M1P1.host,S=10,W=12\n' +
      '5 W99 P123 Zweird :1700000001.M2P1.host\n' +
      '7 :1700000002.M3P1.ho';
    const list = parseUidlist(text);
    assert.equal(list.uidValidity, 1700000000);
    assert.equal(list.nextUid, 6);
    assert.equal(list.guid, '0123456789abcdef0123456789abcdef');
    assert.deepEqual(list.headerExt, ['Xfuture']);
    assert.deepEqual(
      list.records.map((r) => r.uid),
      [1, 5],
    );
    assert.deepEqual(list.records[1].ext, ['W99', 'P123', 'Zweird']);
    assert.equal(
      serializeUidlist(list),
      '3 V1700000000 N6 G0123456789abcdef0123456789abcdef Xfuture\n' +
        '1 :1700000000.M1P1.host,S=10,W=12\n' +
        '5 W99 P123 Zweird :1700000001.M2P1.host\n',
    );
  });
  it('reads version 1 and strips flags from names', () => {
    const list = parseUidlist('1 1600000000 4\n1 1600000000.a.host:2,S\n3 1600000001.b.host\n');
    assert.equal(list.uidValidity, 1600000000);
    assert.equal(list.nextUid, 4);
    assert.deepEqual(
      list.records.map((r) => [r.uid, r.base]),
      [
        [1, '1600000000.a.host'],
        [3, '1600000001.b.host'],
      ],
    );
  });
  it('refuses a broken header', () => {
    assert.throws(() => parseUidlist('garbage\n'));
    assert.throws(() => parseUidlist('3 N5\n'));
  });
});

describe('index files', () => {
  it('snapshot + log: older log lines never win, a partial line is ignored, a foreign log is not applied', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'onionpost-index-'));
    try {
      const guid = '0123456789abcdef0123456789abcdef';
      await writeFolderIndex(dir, {
        uidValidity: 5,
        guid,
        highestModseq: 10,
        messages: new Map([[1, { modseq: 10, size: 50, idate: 1000.5, letters: 'S' }]]),
      });
      await appendIndexLog(dir, [
        logLineSet(2, { modseq: 11, size: 7, idate: 2000, letters: '' }),
        logLineSet(1, { modseq: 9, size: 50, idate: 1000.5, letters: '' }),
        logLineRemove(3, 12),
      ]);
      await writeFile(join(dir, INDEX_LOG_FILE), 'm 4 13 1 1 :S', { flag: 'a' });
      const index = await readFolderIndex(dir);
      assert.ok(index);
      assert.equal(index.highestModseq, 12);
      assert.equal(index.logLines, 3);
      assert.deepEqual(index.messages.get(1), { modseq: 10, size: 50, idate: 1000.5, letters: 'S' });
      assert.deepEqual(index.messages.get(2), { modseq: 11, size: 7, idate: 2000, letters: '' });
      assert.equal(index.messages.has(4), false);
      await writeFile(join(dir, INDEX_LOG_FILE), `onionpost-index-log 1 6 ${guid}\nh 99\n`);
      const other = await readFolderIndex(dir);
      assert.equal(other?.highestModseq, 10);
      assert.equal(other?.logLines, -1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('subscriptions file', () => {
  it('reads Dovecot v2 (tab-separated, mUTF-7) and plain v1 lists', () => {
    assert.deepEqual(parseSubscriptions('V\t2\n\nINBOX\nEntw&APw-rfe\na\tb\n'), ['INBOX', 'Entwürfe', 'a/b']);
    assert.deepEqual(parseSubscriptions('Sent\nfoo.bar\nINBOX.Lists.x\n&ZeVnLIqe-\n'), ['Sent', 'foo/bar', 'Lists/x', '日本語']);
  });
});

// -------------------------------------------------------------------------------------
// On-disk format
// -------------------------------------------------------------------------------------

describe('Maildir on disk', () => {
  it('ensureUser lays out INBOX, Maildir++ folders, uidlists and subscriptions', async () => {
    await withMaildir(async ({ root }) => {
      for (const sub of ['cur', 'new', 'tmp']) assert.ok(statSync(join(root, sub)).isDirectory());
      for (const name of ['.Sent', '.Drafts', '.Trash', '.Junk', '.Archive']) {
        const dir = join(root, name);
        for (const sub of ['cur', 'new', 'tmp']) assert.ok(statSync(join(dir, sub)).isDirectory(), `${name}/${sub}`);
        assert.equal(statSync(join(dir, 'maildirfolder')).size, 0, `${name}/maildirfolder`);
        assert.match(await readFile(join(dir, 'dovecot-uidlist'), 'utf8'), /^3 V\d+ N1 G[0-9a-f]{32}\n$/);
      }
      assert.ok(!existsSync(join(root, 'maildirfolder')), 'INBOX is the root, not a folder');
      assert.match(await readFile(join(root, 'dovecot-uidlist'), 'utf8'), /^3 V\d+ N1 G[0-9a-f]{32}\n$/);
      assert.equal(await readFile(join(root, 'subscriptions'), 'utf8'), 'V\t2\n\nINBOX\nSent\nDrafts\nTrash\nJunk\nArchive\n');
      // Distinct UIDVALIDITYs, shared with Dovecot through dovecot-uidvalidity.
      const values = new Set<number>();
      for (const name of ['', '.Sent', '.Drafts', '.Trash', '.Junk', '.Archive']) values.add((await uidlistOf(join(root, name))).uidValidity);
      assert.equal(values.size, 6);
      const last = parseInt(await readFile(join(root, 'dovecot-uidvalidity'), 'utf8'), 16);
      assert.equal(last, Math.max(...values));
      assert.ok(existsSync(join(root, `dovecot-uidvalidity.${last.toString(16).padStart(8, '0')}`)));
    });
  });

  it('writes dovecot-uidlist v3, file names, flag letters and dovecot-keywords', async () => {
    await withMaildir(async ({ root, store }) => {
      const crlf = message('crlf');
      const r1 = await store.append(USER, 'INBOX', crlf, { flags: ['\\Deleted', '\\Seen', '\\Answered', '\\Draft', '\\Flagged'] });
      const r2 = await store.append(USER, 'INBOX', Buffer.from('Subject: lf\n\nbody\n'), { flags: ['Work', '$Forwarded', '\\Seen'] });
      const r3 = await store.append(USER, 'INBOX', message('plain'));
      assert.deepEqual([r1.uid, r2.uid, r3.uid], [1, 2, 3]);

      const text = await readFile(join(root, 'dovecot-uidlist'), 'utf8');
      const lines = text.split('\n');
      // New lines are appended as Dovecot does; N may lag (readers use max(N, last UID + 1)).
      assert.match(lines[0], /^3 V\d+ N\d+ G[0-9a-f]{32}$/);
      assert.equal(parseUidlist(text).nextUid, 4);
      assert.equal(Number(/V(\d+)/.exec(lines[0])?.[1]), r1.uidValidity);
      assert.equal(lines.length, 5);
      assert.equal(lines[4], '');

      const cur = files(join(root, 'cur'));
      assert.equal(cur.length, 3);
      assert.deepEqual(files(join(root, 'new')), []);
      assert.deepEqual(files(join(root, 'tmp')), []);
      for (const name of cur) {
        assert.match(name, FILE_NAME);
        if (hostname() !== 'onionpost') assert.ok(!name.includes(hostname()), 'no real host name in file names');
      }
      const byUid = new Map<number, string>();
      for (let i = 1; i <= 3; i++) {
        const m = /^(\d+) :(.+)$/.exec(lines[i]);
        assert.ok(m, `uidlist line ${lines[i]}`);
        assert.equal(Number(m[1]), i);
        const file = cur.find((n) => n.startsWith(m[2] + ':2,'));
        assert.ok(file, `file for ${m[2]}`);
        byUid.set(i, file);
      }
      const [, , , , s1, w1, letters1] = FILE_NAME.exec(byUid.get(1) ?? '') ?? [];
      assert.equal(letters1, 'DFRST');
      assert.equal(Number(s1), crlf.length);
      assert.equal(Number(w1), crlf.length);
      assert.equal(statSync(join(root, 'cur', byUid.get(1) ?? '')).size, crlf.length);
      const [, , , , s2, w2, letters2] = FILE_NAME.exec(byUid.get(2) ?? '') ?? [];
      assert.equal(Number(s2), 18, 'S= is the size on disk (bare LF kept)');
      assert.equal(Number(w2), 21, 'W= is the CRLF size');
      assert.equal(letters2, 'Sab');
      assert.equal(FILE_NAME.exec(byUid.get(3) ?? '')?.[6], '');
      assert.equal(await readFile(join(root, 'dovecot-keywords'), 'utf8'), '0 Work\n1 $Forwarded\n');

      // Keyword letters follow dovecot-keywords; flag changes rename the file.
      await store.storeFlags(r3.mailboxId, [r3.uid], { action: 'add', flags: ['$Forwarded', 'New'] });
      assert.equal(await readFile(join(root, 'dovecot-keywords'), 'utf8'), '0 Work\n1 $Forwarded\n2 New\n');
      const renamed = files(join(root, 'cur')).find((n) => n.startsWith(FILE_NAME.exec(byUid.get(3) ?? '')?.[0].split(':')[0] ?? '?'));
      assert.match(renamed ?? '', /:2,bc$/);
      // The uidlist is not rewritten by flag changes (it holds base names only).
      assert.equal(await readFile(join(root, 'dovecot-uidlist'), 'utf8'), text);
      // Our own index sits beside it.
      assert.ok(existsSync(join(root, 'onionpost-index.json')));
      assert.ok(existsSync(join(root, 'onionpost-index.log')));
      // An expunge recreates the file: exact N, remaining lines.
      await store.expunge(r1.mailboxId);
      assert.match(await readFile(join(root, 'dovecot-uidlist'), 'utf8'), /^3 V\d+ N4 G[0-9a-f]{32}\n2 :\S+\n3 :\S+\n$/);
      assert.ok(!existsSync(join(root, 'dovecot-uidlist.lock')));
    });
  });

  it('keeps letters it does not know (P, unmapped keyword letters) across flag changes', async () => {
    await withMaildir(async ({ root, store }) => {
      const r = await store.append(USER, 'INBOX', message('passed'));
      const [name] = files(join(root, 'cur'));
      await rename(join(root, 'cur', name), join(root, 'cur', name.replace(/:2,.*$/, ':2,PSz')));
      const [meta] = await store.getMessages(r.mailboxId, [r.uid]);
      assert.deepEqual(meta.flags, ['\\Seen']);
      await store.storeFlags(r.mailboxId, [r.uid], { action: 'set', flags: ['\\Flagged'] });
      assert.match(files(join(root, 'cur'))[0], /:2,FPz$/);
    });
  });

  it('stores folder names in modified UTF-7 with "." as separator', async () => {
    await withMaildir(async ({ root, store }) => {
      await store.createMailbox(USER, 'Entwürfe');
      await store.createMailbox(USER, '日本語');
      await store.createMailbox(USER, 'Work/Clients/ACME & Co');
      await store.createMailbox(USER, 'INBOX/Sub');
      const names = readdirSync(root).filter((n) => n.startsWith('.'));
      for (const n of ['.Entw&APw-rfe', '.&ZeVnLIqe-', '.Work', '.Work.Clients', '.Work.Clients.ACME &- Co', '.INBOX.Sub']) {
        assert.ok(names.includes(n), `${n} in ${names.join(' ')}`);
        assert.equal(statSync(join(root, n, 'maildirfolder')).size, 0);
      }
      assert.ok(!names.includes('.INBOX'), 'INBOX stays the root');
      const listed = (await store.listMailboxes(USER)).map((m) => m.path);
      for (const p of ['Entwürfe', '日本語', 'Work/Clients/ACME & Co', 'INBOX/Sub']) assert.ok(listed.includes(p), p);
    });
  });

  it('refuses names Maildir++ cannot represent', async () => {
    await withMaildir(async ({ store }) => {
      for (const bad of ['a.b', '.hidden', 'Dots/in.side', 'x'.repeat(256), '日本語'.repeat(40)]) {
        await assert.rejects(store.createMailbox(USER, bad), isCode('CANNOT'), bad);
        await assert.rejects(store.append(USER, bad, message('x')), isCode('CANNOT'), bad);
      }
      await store.createMailbox(USER, 'ok');
      await assert.rejects(store.renameMailbox(USER, 'ok', 'not.ok'), isCode('CANNOT'));
    });
  });

  it('sets the file mtime to the internal date; copies hard-link the file', async () => {
    await withMaildir(async ({ root, store }) => {
      const date = new Date('2020-01-02T03:04:05Z');
      const r = await store.append(USER, 'INBOX', message('dated'), { internalDate: date });
      const [name] = files(join(root, 'cur'));
      const st = statSync(join(root, 'cur', name));
      assert.equal(st.mtime.getTime(), date.getTime());
      await store.copyMessages(r.mailboxId, [r.uid], 'Archive');
      const [copy] = files(join(root, '.Archive', 'cur'));
      const cst = statSync(join(root, '.Archive', 'cur', copy));
      assert.equal(cst.ino, st.ino, 'same inode');
      assert.equal(cst.nlink, 2);
      assert.notEqual(copy.split(':')[0], name.split(':')[0], 'a new base name in the target');
      assert.match(copy, FILE_NAME);
    });
  });

  it('renames folders with their children and subscriptions; deletes leave nothing behind', async () => {
    await withMaildir(async ({ root, store }) => {
      await store.createMailbox(USER, 'Old/Child');
      await store.setSubscribed(USER, 'Old/Child', true);
      await store.renameMailbox(USER, 'Old', 'Nëw');
      const names = readdirSync(root);
      assert.ok(names.includes('.N&AOs-w') && names.includes('.N&AOs-w.Child'));
      assert.ok(!names.includes('.Old') && !names.includes('.Old.Child'));
      assert.match(await readFile(join(root, 'subscriptions'), 'utf8'), /\nN&AOs-w\tChild\n/);
      await store.deleteMailbox(USER, 'Nëw');
      const after = readdirSync(root);
      assert.ok(!after.includes('.N&AOs-w') && after.includes('.N&AOs-w.Child'));
      assert.ok(!after.some((n) => n.startsWith('onionpost-deleting-')));
    });
  });

  it('reads a plain (v1) subscriptions file and rewrites it as v2', async () => {
    await withMaildir(async ({ root, store }) => {
      await store.createMailbox(USER, 'foo/bar');
      await writeFile(join(root, 'subscriptions'), 'INBOX\nfoo.bar\n');
      const list = await store.listMailboxes(USER);
      assert.equal(list.find((m) => m.path === 'foo/bar')?.subscribed, true);
      assert.equal(list.find((m) => m.path === 'Sent')?.subscribed, false);
      await store.setSubscribed(USER, 'Sent', true);
      assert.equal(await readFile(join(root, 'subscriptions'), 'utf8'), 'V\t2\n\nINBOX\nfoo\tbar\nSent\n');
    });
  });
});

// -------------------------------------------------------------------------------------
// Other software writing the same maildir
// -------------------------------------------------------------------------------------

describe('changes by other software', () => {
  it('a file dropped into new/ gets a UID, moves to cur/, and is announced', async () => {
    await withMaildir(async ({ root, store, events }) => {
      const first = await store.append(USER, 'INBOX', message('ours'));
      const snap = await store.openMailbox(USER, 'INBOX');
      assert.ok(snap);
      await settle();
      // Another MDA (bare LF, no S=/W=), delivered the maildir way: tmp/ then new/.
      const body = 'From: x@y\nSubject: dropped\n\nhello\nworld\n';
      const name = '1790000000.M123P456.mx.example';
      await writeFile(join(root, 'tmp', name), body);
      const when = new Date('2026-01-01T00:00:00Z');
      await utimes(join(root, 'tmp', name), when, when);
      await rename(join(root, 'tmp', name), join(root, 'new', name));
      events.length = 0;

      const after = await store.openMailbox(USER, 'INBOX');
      assert.deepEqual(after?.uids, [first.uid, first.uid + 1]);
      const uid = first.uid + 1;
      assert.deepEqual(files(join(root, 'new')), []);
      assert.ok(files(join(root, 'cur')).includes(`${name}:2,`));
      const crlf = body.replace(/\n/g, '\r\n');
      assert.equal((await store.readMessage(snap.id, uid))?.toString(), crlf);
      const [meta] = await store.getMessages(snap.id, [uid]);
      assert.equal(meta.size, Buffer.byteLength(crlf));
      assert.equal(meta.internalDate.getTime(), when.getTime());
      const changes = await store.changesSince(snap.id, snap.highestModseq);
      assert.deepEqual(
        changes.map((c) => [c.command, c.uid]),
        [['EXISTS', uid]],
      );
      await tick();
      assert.ok(events.some((e) => e.mailboxId === snap.id));
      // Like Dovecot, the computed virtual size goes into the uidlist (the name has no W=).
      const list = await uidlistOf(root);
      assert.deepEqual(list.records.find((r) => r.uid === uid)?.ext, [`W${Buffer.byteLength(crlf)}`]);
    });
  });

  it('a flag change made by renaming the file is picked up at once', async () => {
    await withMaildir(async ({ root, store }) => {
      const r = await store.append(USER, 'INBOX', message('rename me'));
      const snap = await store.openMailbox(USER, 'INBOX');
      assert.ok(snap);
      const [name] = files(join(root, 'cur'));
      await settle();
      await rename(join(root, 'cur', name), join(root, 'cur', name.replace(/:2,$/, ':2,FS')));
      const [meta] = await store.getMessages(snap.id, [r.uid]);
      assert.deepEqual(meta.flags, ['\\Seen', '\\Flagged']);
      assert.ok(meta.modseq > snap.highestModseq);
      const changes = await store.changesSince(snap.id, snap.highestModseq);
      assert.deepEqual(
        changes.map((c) => [c.command, c.uid, c.flags]),
        [['FETCH', r.uid, ['\\Seen', '\\Flagged']]],
      );
      // And our own next change applies on top of it.
      await store.storeFlags(snap.id, [r.uid], { action: 'add', flags: ['\\Answered'] });
      assert.match(files(join(root, 'cur'))[0], /:2,FRS$/);
    });
  });

  it('a change within the same clock tick as ours is seen after the racy window', async () => {
    await withMaildir(async ({ root, store }) => {
      const a = await store.append(USER, 'INBOX', message('a'));
      const b = await store.append(USER, 'INBOX', message('b'));
      const snap = await store.openMailbox(USER, 'INBOX');
      assert.ok(snap);
      // Right after our own change: possibly the same mtime as ours (a racy directory).
      await store.storeFlags(snap.id, [a.uid], { action: 'add', flags: ['\\Answered'] });
      const other = files(join(root, 'cur')).find((n) => n.endsWith(':2,'));
      assert.ok(other);
      await rename(join(root, 'cur', other), join(root, 'cur', other + 'F'));
      await settle();
      const [meta] = await store.getMessages(snap.id, [b.uid]);
      assert.deepEqual(meta.flags, ['\\Flagged']);
    });
  });

  it('a file removed by other software is expunged', async () => {
    await withMaildir(async ({ root, store }) => {
      const a = await store.append(USER, 'INBOX', message('a'));
      const b = await store.append(USER, 'INBOX', message('b'));
      const snap = await store.openMailbox(USER, 'INBOX');
      assert.ok(snap);
      const victim = files(join(root, 'cur')).find((n) => readFileSyncSafe(join(root, 'cur', n)).includes('Subject: a\r\n'));
      assert.ok(victim);
      await settle();
      await unlink(join(root, 'cur', victim));
      assert.deepEqual((await store.openMailbox(USER, 'INBOX'))?.uids, [b.uid]);
      const changes = await store.changesSince(snap.id, snap.highestModseq);
      assert.deepEqual(
        changes.map((c) => [c.command, c.uid]),
        [['EXPUNGE', a.uid]],
      );
      assert.deepEqual(
        (await uidlistOf(root)).records.map((r) => r.uid),
        [b.uid],
      );
    });
  });

  it('a folder created by other software (no uidlist yet) becomes usable', async () => {
    await withMaildir(async ({ root, store }) => {
      const dir = join(root, '.Foreign');
      for (const sub of ['cur', 'new']) await mkdir(join(dir, sub), { recursive: true });
      await writeFile(join(dir, 'cur', '1700000000.M1P1.elsewhere:2,S'), 'Subject: old\n\nx\n');
      await writeFile(join(dir, 'cur', '1700000001.M1P1.elsewhere,S=12,W=14:2,'), 'Subject: y\n\n\n');
      const snap = await store.openMailbox(USER, 'Foreign');
      assert.ok(snap);
      assert.deepEqual(snap.uids, [1, 2]);
      const metas = await store.getMessages(snap.id, snap.uids);
      assert.deepEqual(metas[0].flags, ['\\Seen']);
      assert.equal(metas[1].size, 14, 'W= is trusted');
      assert.ok(existsSync(join(dir, 'tmp')));
      assert.match(await readFile(join(dir, 'dovecot-uidlist'), 'utf8'), /^3 V\d+ N3 G[0-9a-f]{32}\n1 W\d+ :1700000000\.M1P1\.elsewhere\n2 :1700000001/);
    });
  });

  it('two processes appending at once (two store instances): distinct UIDs via the dotlock', async () => {
    await withMaildir(async ({ dir, root, store }) => {
      const other = new MaildirStore({ maildirFor: (user) => join(dir, 'mail', user) });
      try {
        const [a, b] = await Promise.all([
          Promise.all(Array.from({ length: 30 }, (_, i) => store.append(USER, 'INBOX', message(`A${i}`)))),
          Promise.all(Array.from({ length: 30 }, (_, i) => other.append(USER, 'INBOX', message(`B${i}`)))),
        ]);
        const uids = [...a, ...b].map((r) => r.uid);
        assert.equal(new Set(uids).size, 60, 'no UID given twice');
        const list = await uidlistOf(root);
        assert.deepEqual(
          list.records.map((r) => r.uid).sort((x, y) => x - y),
          [...uids].sort((x, y) => x - y),
        );
        await settle();
        assert.equal((await store.openMailbox(USER, 'INBOX'))?.uids.length, 60);
        assert.equal((await other.openMailbox(USER, 'INBOX'))?.uids.length, 60);
      } finally {
        await other.close();
      }
    });
  });

  it('refresh() picks up and announces outside changes (the hook for a watcher)', async () => {
    await withMaildir(async ({ root, store, events }) => {
      const snap = await store.openMailbox(USER, 'INBOX');
      assert.ok(snap);
      await writeFile(join(root, 'new', '1790000000.M1P1.mda'), 'Subject: w\r\n\r\nx\r\n');
      events.length = 0;
      await store.refresh(USER, 'INBOX', { force: true });
      await tick();
      assert.deepEqual(
        events.map((e) => e.path),
        ['INBOX'],
      );
      assert.deepEqual(
        (await store.changesSince(snap.id, snap.highestModseq)).map((c) => c.command),
        ['EXISTS'],
      );
    });
  });

  it('a lost dovecot-uidlist is rewritten from memory, keeping the UIDs', async () => {
    await withMaildir(async ({ root, store }) => {
      await store.append(USER, 'INBOX', message('1'));
      await store.append(USER, 'INBOX', message('2'));
      const snap = await store.openMailbox(USER, 'INBOX');
      await unlink(join(root, 'dovecot-uidlist'));
      const r = await store.append(USER, 'INBOX', message('3'));
      assert.equal(r.uid, 3);
      const list = await uidlistOf(root);
      assert.equal(list.uidValidity, snap?.uidValidity);
      assert.deepEqual(
        list.records.map((x) => x.uid),
        [1, 2, 3],
      );
    });
  });

  it('a mailbox replaced on disk (new UIDVALIDITY, e.g. restored by Dovecot) is served as the new mailbox', async () => {
    await withMaildir(async ({ root, store }) => {
      await store.append(USER, 'Sent', message('1'));
      await store.append(USER, 'Sent', message('2'));
      const dir = join(root, '.Sent');
      const before = await store.openMailbox(USER, 'Sent');
      assert.ok(before);
      const second = await store.readMessage(before.id, 2);
      // Another program renumbers the folder: a new UIDVALIDITY, UIDs from 100.
      const list = await uidlistOf(dir);
      const renumbered = { ...list, uidValidity: list.uidValidity + 1000, nextUid: 102, records: list.records.map((r, i) => ({ ...r, uid: 100 + i })) };
      await writeFile(join(dir, 'dovecot-uidlist'), serializeUidlist(renumbered));
      const after = await store.openMailbox(USER, 'Sent');
      assert.ok(after, 'SELECT still works');
      assert.equal(after.uidValidity, list.uidValidity + 1000);
      assert.deepEqual(after.uids, [100, 101]);
      assert.deepEqual(await store.readMessage(after.id, 101), second);
      assert.equal((await store.mailboxStatus(USER, 'Sent'))?.messages, 2);
      const r = await store.append(USER, 'Sent', message('3'));
      assert.equal(r.uid, 102);
      assert.equal(r.uidValidity, list.uidValidity + 1000);
    });
  });

  it('a folder holds at most 26 keywords (dovecot-keywords letters a-z)', async () => {
    await withMaildir(async ({ root, store }) => {
      const r = await store.append(USER, 'INBOX', message('kw'));
      const many = Array.from({ length: 26 }, (_, i) => `k${i}`);
      await store.storeFlags(r.mailboxId, [r.uid], { action: 'add', flags: many });
      assert.match(files(join(root, 'cur'))[0], /:2,abcdefghijklmnopqrstuvwxyz$/);
      await assert.rejects(store.storeFlags(r.mailboxId, [r.uid], { action: 'add', flags: ['one-too-many'] }), isCode('LIMIT'));
      await assert.rejects(store.append(USER, 'INBOX', message('x'), { flags: ['another'] }), isCode('LIMIT'));
      assert.equal((await store.openMailbox(USER, 'INBOX'))?.uids.length, 1);
      nothingVisible(root);
      // Existing ones still work.
      const res = await store.storeFlags(r.mailboxId, [r.uid], { action: 'remove', flags: ['K3'] });
      assert.equal(res.changed[0].flags.length, 25);
    });
  });

  it('an id still resolves after a restart; a store with another instance sees its appends', async () => {
    await withMaildir(async ({ store, reopen }) => {
      const r = await store.append(USER, 'Archive', message('x'));
      const other = await reopen();
      assert.ok((await other.readMessage(r.mailboxId, r.uid))?.includes('Subject: x'));
    });
  });
});

function readFileSyncSafe(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

// -------------------------------------------------------------------------------------
// Restarts
// -------------------------------------------------------------------------------------

describe('restarts', () => {
  it('UIDs, UIDVALIDITY, flags and modseqs survive a new store instance', async () => {
    await withMaildir(async ({ store, reopen }) => {
      const rs = [];
      for (let i = 0; i < 5; i++) rs.push(await store.append(USER, 'INBOX', message(`r${i}`)));
      const id = rs[0].mailboxId;
      await store.storeFlags(id, [rs[1].uid, rs[3].uid], { action: 'add', flags: ['\\Deleted'] });
      await store.expunge(id);
      await store.storeFlags(id, [rs[2].uid], { action: 'add', flags: ['\\Seen', 'Later'] });
      const snap = await store.openMailbox(USER, 'INBOX');
      assert.ok(snap);
      const metas = await store.getMessages(id, snap.uids);

      const s2 = await reopen();
      const snap2 = await s2.openMailbox(USER, 'INBOX');
      assert.ok(snap2);
      assert.equal(snap2.id, snap.id);
      assert.equal(snap2.uidValidity, snap.uidValidity);
      assert.deepEqual(snap2.uids, [rs[0].uid, rs[2].uid, rs[4].uid]);
      assert.equal(snap2.uidNext, snap.uidNext);
      assert.equal(snap2.highestModseq, snap.highestModseq);
      assert.deepEqual(await s2.getMessages(id, snap2.uids), metas);
      // Counting continues from where it was.
      const next = await s2.append(USER, 'INBOX', message('after restart'));
      assert.equal(next.uid, snap.uidNext);
      const [m] = await s2.getMessages(id, [next.uid]);
      assert.ok(m.modseq > snap.highestModseq);
    });
  });

  it('a lost index is rebuilt from the maildir (UIDs and flags kept)', async () => {
    await withMaildir(async ({ root, store, reopen }) => {
      await store.append(USER, 'INBOX', message('i1'), { flags: ['\\Seen'] });
      await store.append(USER, 'INBOX', message('i2'), { internalDate: new Date('2021-06-01T00:00:00Z') });
      const snap = await store.openMailbox(USER, 'INBOX');
      assert.ok(snap);
      const metas = await store.getMessages(snap.id, snap.uids);
      await store.close();
      await unlink(join(root, 'onionpost-index.json'));
      const s2 = await reopen();
      const snap2 = await s2.openMailbox(USER, 'INBOX');
      assert.deepEqual(snap2?.uids, snap.uids);
      const metas2 = await s2.getMessages(snap.id, snap.uids);
      assert.deepEqual(
        metas2.map((m) => [m.uid, m.flags, m.size, m.internalDate.getTime()]),
        metas.map((m) => [m.uid, m.flags, m.size, m.internalDate.getTime()]),
      );
      assert.ok(existsSync(join(root, 'onionpost-index.json')));
    });
  });

  it('flag changes made while we were down get new modseqs', async () => {
    await withMaildir(async ({ root, store, reopen }) => {
      const r = await store.append(USER, 'INBOX', message('down'));
      const snap = await store.openMailbox(USER, 'INBOX');
      assert.ok(snap);
      await store.close();
      const [name] = files(join(root, 'cur'));
      await rename(join(root, 'cur', name), join(root, 'cur', name + 'S'));
      const s2 = await reopen();
      const [meta] = await s2.getMessages(snap.id, [r.uid]);
      assert.deepEqual(meta.flags, ['\\Seen']);
      assert.ok(meta.modseq > snap.highestModseq);
    });
  });
});

// -------------------------------------------------------------------------------------
// Durability and locking
// -------------------------------------------------------------------------------------

function nothingVisible(folderDir: string): void {
  assert.deepEqual(files(join(folderDir, 'new')), [], 'nothing in new/');
  assert.deepEqual(files(join(folderDir, 'tmp')), [], 'nothing left in tmp/');
}

function haveRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

describe('durability', () => {
  it('a failing write leaves no visible file (tmp/ is not a directory)', async () => {
    await withMaildir(async ({ root, store }) => {
      await store.append(USER, 'Sent', message('before'));
      const dir = join(root, '.Sent');
      const uidlist = await readFile(join(dir, 'dovecot-uidlist'), 'utf8');
      const cur = files(join(dir, 'cur'));
      await rm(join(dir, 'tmp'), { recursive: true });
      await writeFile(join(dir, 'tmp'), 'not a directory');
      await assert.rejects(store.append(USER, 'Sent', message('fails')), (err: NodeJS.ErrnoException) => err.code === 'ENOTDIR');
      assert.deepEqual(files(join(dir, 'cur')), cur);
      assert.deepEqual(files(join(dir, 'new')), []);
      assert.equal(await readFile(join(dir, 'dovecot-uidlist'), 'utf8'), uidlist);
      await unlink(join(dir, 'tmp'));
      await mkdir(join(dir, 'tmp'));
      const ok = await store.append(USER, 'Sent', message('after'));
      assert.equal(ok.uid, 2);
    });
  });

  it('a failing rename into cur/ leaves nothing behind (tmp/ on another file system: EXDEV)', async (t) => {
    const other = existsSync('/dev/shm') ? '/dev/shm' : null;
    if (other === null || statSync(other).dev === statSync(tmpdir()).dev) {
      t.skip('needs a second file system (/dev/shm) to provoke EXDEV');
      return;
    }
    const foreign = await mkdtemp(join(other, 'onionpost-exdev-'));
    try {
      await withMaildir(async ({ root, store }) => {
        await store.append(USER, 'INBOX', message('before'));
        const uidlist = await readFile(join(root, 'dovecot-uidlist'), 'utf8');
        const cur = files(join(root, 'cur'));
        await rm(join(root, 'tmp'), { recursive: true });
        await symlink(foreign, join(root, 'tmp'));
        await assert.rejects(store.append(USER, 'INBOX', message('fails')), (err: NodeJS.ErrnoException) => err.code === 'EXDEV');
        assert.deepEqual(readdirSync(foreign), [], 'temp file removed');
        assert.deepEqual(files(join(root, 'cur')), cur);
        assert.deepEqual(files(join(root, 'new')), []);
        assert.equal(await readFile(join(root, 'dovecot-uidlist'), 'utf8'), uidlist);
        assert.deepEqual((await store.openMailbox(USER, 'INBOX'))?.uids, [1]);
      });
    } finally {
      await rm(foreign, { recursive: true, force: true });
    }
  });

  it('a failing uidlist update takes the message back out of cur/ (immutable dovecot-uidlist)', async (t) => {
    await withMaildir(async ({ root, store }) => {
      await store.append(USER, 'INBOX', message('before'));
      const uidlistPath = join(root, 'dovecot-uidlist');
      const uidlist = await readFile(uidlistPath, 'utf8');
      const cur = files(join(root, 'cur'));
      const chattr = spawnSync('chattr', ['+i', uidlistPath]);
      if (chattr.status !== 0) {
        t.skip('chattr +i not available here (needs root and an ext4/xfs/btrfs file system)');
        return;
      }
      try {
        await assert.rejects(store.append(USER, 'INBOX', message('fails')), (err: NodeJS.ErrnoException) => err.code === 'EPERM');
        assert.deepEqual(files(join(root, 'cur')), cur, 'the renamed file was taken back');
        nothingVisible(root);
        assert.ok(!existsSync(`${uidlistPath}.tmp`) && !existsSync(`${uidlistPath}.lock`));
      } finally {
        spawnSync('chattr', ['-i', uidlistPath]);
      }
      assert.equal(await readFile(uidlistPath, 'utf8'), uidlist);
      const ok = await store.append(USER, 'INBOX', message('after'));
      assert.ok(ok.uid > 1);
      assert.deepEqual((await store.openMailbox(USER, 'INBOX'))?.uids, [1, ok.uid]);
    });
  });

  it('a full disk while writing leaves nothing behind (tiny tmpfs on tmp/)', async (t) => {
    if (!haveRoot()) {
      t.skip('mounting a tmpfs needs root');
      return;
    }
    await withMaildir(async ({ root, store }) => {
      const tmp = join(root, '.Junk', 'tmp');
      const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', tmp]);
      if (mount.status !== 0) {
        t.skip(`cannot mount a tmpfs here: ${mount.stderr.toString().trim()}`);
        return;
      }
      try {
        const big = message('big', 'x'.repeat(200_000) + '\r\n');
        await assert.rejects(store.append(USER, 'Junk', big), (err: NodeJS.ErrnoException) => err.code === 'ENOSPC');
        assert.deepEqual(readdirSync(tmp), []);
        assert.deepEqual(files(join(root, '.Junk', 'cur')), []);
        assert.deepEqual((await store.openMailbox(USER, 'Junk'))?.uids, []);
      } finally {
        spawnSync('umount', [tmp]);
      }
      const ok = await store.append(USER, 'Junk', message('fits'));
      assert.equal(ok.uid, 1);
    });
  });

  it('many concurrent appends: distinct ascending UIDs, one uidlist line each', async () => {
    await withMaildir(async ({ root, store }) => {
      const n = 100;
      const results = await Promise.all(Array.from({ length: n }, (_, i) => store.append(USER, 'INBOX', message(`p${i}`))));
      const uids = results.map((r) => r.uid).sort((a, b) => a - b);
      assert.deepEqual(
        uids,
        Array.from({ length: n }, (_, i) => i + 1),
      );
      const list = await uidlistOf(root);
      assert.equal(list.records.length, n);
      assert.equal(list.nextUid, n + 1);
      assert.equal(files(join(root, 'cur')).length, n);
      nothingVisible(root);
      for (const r of results) {
        const body = await store.readMessage(r.mailboxId, r.uid);
        assert.ok(body?.toString().includes(`Subject: p${results.indexOf(r)}\r\n`));
      }
    });
  });

  it("waits for a live Dovecot dotlock, fails with INUSE after the timeout, and breaks stale ones", async () => {
    await withMaildir(
      async ({ root, store }) => {
        await store.openMailbox(USER, 'INBOX');
        const lock = join(root, 'dovecot-uidlist.lock');
        await writeFile(lock, '12345:some-other-host');
        await assert.rejects(store.append(USER, 'INBOX', message('blocked')), isCode('INUSE'));
        nothingVisible(root);
        assert.deepEqual(files(join(root, 'cur')), []);
        // Reads still work while the lock is held (partial rescan).
        assert.deepEqual((await store.openMailbox(USER, 'INBOX'))?.uids, []);
        // Released meanwhile by its owner: the waiting append goes through.
        const pending = store.append(USER, 'INBOX', message('waits'));
        setTimeout(() => void unlink(lock), 100);
        assert.equal((await pending).uid, 1);
        // A lock nobody touched for longer than the stale time is broken.
        await writeFile(lock, '12345:some-other-host');
        const old = new Date(Date.now() - 60_000);
        await utimes(lock, old, old);
        await utimes(join(root, 'dovecot-uidlist'), old, old);
        assert.equal((await store.append(USER, 'INBOX', message('stale'))).uid, 2);
        assert.ok(!existsSync(lock));
      },
      { lockStaleMs: 10_000, lockTimeoutMs: 400, readLockTimeoutMs: 50 },
    );
  });

  it('dotlock files carry <pid>:<host token>', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'onionpost-lock-'));
    try {
      const target = join(dir, 'file');
      const lock = await acquireDotlock(target);
      assert.equal(await readFile(`${target}.lock`, 'utf8'), `${process.pid}:onionpost`);
      // A second taker waits; a dead owner of ours is stale at once.
      await assert.rejects(acquireDotlock(target, { timeoutMs: 50 }));
      await lock.release();
      assert.ok(!existsSync(`${target}.lock`));
      await writeFile(`${target}.lock`, '2147483646:onionpost');
      const again = await acquireDotlock(target, { timeoutMs: 500 });
      await again.release();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

// -------------------------------------------------------------------------------------
// Dovecot interoperability
// -------------------------------------------------------------------------------------

/**
 * Dovecot is usable when doveadm is there and `doveadm exec imap` finds its imap binary
 * (without USER set, imap just complains about that and exits).
 */
function haveDovecot(): boolean {
  const probe = spawnSync('doveadm', ['exec', 'imap'], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
  return probe.error === undefined && !probe.stderr.toString().includes('execv(');
}

interface FetchRow {
  uid: number;
  flags: string[];
  size: number;
}

function parseFetches(out: string): FetchRow[] {
  const rows: FetchRow[] = [];
  for (const line of out.split('\r\n')) {
    if (!/^\* \d+ FETCH /.test(line)) continue;
    const uid = /UID (\d+)/.exec(line);
    const flags = /FLAGS \(([^)]*)\)/.exec(line);
    const size = /RFC822\.SIZE (\d+)/.exec(line);
    if (!uid || !flags || !size) continue;
    rows.push({
      uid: Number(uid[1]),
      flags: flags[1].split(' ').filter((f) => f !== '' && f !== '\\Recent').sort(),
      size: Number(size[1]),
    });
  }
  return rows;
}

/** Sections of the transcript between tagged responses: tag -> lines before it. */
function sections(out: string): Map<string, string> {
  const map = new Map<string, string>();
  let buf = '';
  for (const line of out.split('\r\n')) {
    const m = /^(t\d+) (OK|NO|BAD)/.exec(line);
    if (m) {
      assert.equal(m[2], 'OK', `Dovecot answered: ${line}`);
      map.set(m[1], buf);
      buf = '';
    } else {
      buf += line + '\r\n';
    }
  }
  return map;
}

describe('Dovecot interoperability', () => {
  const dovecotThere = haveDovecot();
  let dir = '';
  let conf = '';
  let home = '';
  let uid = 0;
  let gid = 0;

  before(async () => {
    if (!dovecotThere) return;
    dir = await mkdtemp(join(tmpdir(), 'onionpost-dovecot-'));
    // Dovecot refuses to access mail as root: run it as nobody then (and hand it the files).
    uid = haveRoot() ? 65534 : (process.getuid?.() ?? 0);
    gid = haveRoot() ? 65534 : (process.getgid?.() ?? 0);
    home = join(dir, 'home');
    await mkdir(home);
    await mkdir(join(dir, 'run'));
    await mkdir(join(dir, 'mail'));
    conf = join(dir, 'dovecot.conf');
    await writeFile(
      conf,
      [
        'protocols =',
        'ssl = no',
        `base_dir = ${join(dir, 'run')}`,
        `state_dir = ${join(dir, 'run')}`,
        `log_path = ${join(dir, 'dovecot.log')}`,
        `first_valid_uid = ${uid}`,
        `first_valid_gid = ${gid}`,
        `mail_uid = ${uid}`,
        `mail_gid = ${gid}`,
        `mail_location = maildir:${join(dir, 'mail')}/%u`,
        'namespace inbox {',
        '  inbox = yes',
        '  separator = /',
        '}',
        'passdb {',
        '  driver = static',
        '  args = password=unused',
        '}',
        'userdb {',
        '  driver = static',
        `  args = uid=${uid} gid=${gid} home=${home}`,
        '}',
        '',
      ].join('\n'),
    );
  });

  after(async () => {
    if (dir !== '') await rm(dir, { recursive: true, force: true });
  });

  async function handOver(path: string): Promise<void> {
    if (!haveRoot()) return;
    const walk = async (p: string): Promise<void> => {
      await chown(p, uid, gid);
      if ((await lstat(p)).isDirectory()) for (const n of await readdir(p)) await walk(join(p, n));
    };
    await walk(path);
  }

  function dovecot(script: string): string {
    // Standalone (pre-authenticated) IMAP on stdin/stdout through a real pipe and a file: Node's
    // pipes are socketpairs, and Dovecot run as root on a socket thinks it came from inetd.
    const input = join(dir, 'imap-input');
    const output = join(dir, 'imap-output');
    writeFileSync(input, script);
    const run = spawnSync('sh', ['-c', 'cat "$1" | doveadm -c "$0" exec imap > "$2"', conf, input, output], {
      env: { USER, HOME: home, PATH: process.env.PATH ?? '/usr/bin:/bin' },
      timeout: 20_000,
    });
    const out = readFileSync(output, 'utf8');
    if (process.env.ONIONPOST_TEST_VERBOSE) process.stderr.write(out);
    assert.equal(run.status, 0, `dovecot imap failed: ${run.stderr.toString()}\n${out}`);
    assert.match(out, /^\* PREAUTH/, out);
    return out;
  }

  it('Dovecot reads our maildir (UIDs, flags, sizes, folders, subscriptions) and we read its changes', async (t) => {
    if (!dovecotThere) {
      t.skip('Dovecot is not installed (no doveadm / imap): interop with Dovecot NOT checked');
      return;
    }
    const maildirFor = (user: string): string => join(dir, 'mail', user);
    let store = new MaildirStore({ maildirFor });
    await store.ensureUser(USER);
    const r1 = await store.append(USER, 'INBOX', message('one'), { flags: ['\\Seen', '\\Flagged', '$Label1'] });
    const r2 = await store.append(USER, 'INBOX', Buffer.from('Subject: bare lf\n\nline\n'));
    const r3 = await store.append(USER, 'INBOX', message('three'), { flags: ['\\Deleted'] });
    const r4 = await store.append(USER, 'INBOX', message('four'), { flags: ['\\Answered', '\\Draft', 'Work'] });
    await store.expunge(r1.mailboxId);
    await store.createMailbox(USER, 'Entwürfe/日本語');
    await store.setSubscribed(USER, 'Entwürfe/日本語', true);
    const e1raw = message('unicode folder');
    const e1 = await store.append(USER, 'Entwürfe/日本語', e1raw, { flags: ['\\Seen'] });
    const ours = await store.getMessages(r1.mailboxId, [r1.uid, r2.uid, r4.uid]);
    const snap = await store.openMailbox(USER, 'INBOX');
    const sub = await store.openMailbox(USER, 'Entwürfe/日本語');
    assert.ok(snap && sub);
    await store.close();
    await handOver(dir);

    const appended = 'Subject: from dovecot\r\n\r\nhi\r\n';
    const out = dovecot(
      [
        't1 LIST "" "*"',
        't2 LSUB "" "*"',
        't3 SELECT INBOX',
        't4 UID FETCH 1:* (UID FLAGS RFC822.SIZE)',
        't5 SELECT "Entw&APw-rfe/&ZeVnLIqe-"',
        't6 UID FETCH 1:* (UID FLAGS RFC822.SIZE)',
        't7 SELECT INBOX',
        `t8 UID STORE ${r2.uid} +FLAGS (\\Answered Custom)`,
        `t9 UID STORE ${r4.uid} -FLAGS (\\Draft)`,
        `t10 APPEND INBOX (\\Seen) {${appended.length}+}`,
        appended,
        't11 LOGOUT',
        '',
      ].join('\r\n'),
    );
    // Dovecot found nothing to complain about in our files.
    const log = existsSync(join(dir, 'dovecot.log')) ? readFileSync(join(dir, 'dovecot.log'), 'utf8') : '';
    assert.doesNotMatch(log, /Error|Warning|Panic|Fatal|Broken|[Cc]orrupt/, log);
    const s = sections(out);
    const list = s.get('t1') ?? '';
    for (const name of ['INBOX', 'Sent', 'Drafts', 'Trash', 'Junk', 'Archive', 'Entw&APw-rfe', 'Entw&APw-rfe/&ZeVnLIqe-']) {
      assert.match(list, new RegExp(`"/" "?${name.replace(/[&/]/g, (c) => `\\${c}`)}"?\\r\\n`), `LIST shows ${name}`);
    }
    assert.match(s.get('t2') ?? '', /Entw&APw-rfe\/&ZeVnLIqe-/, 'LSUB shows our subscription');
    assert.match(s.get('t2') ?? '', /"\/" "?Sent"?\r\n/);
    assert.match(s.get('t3') ?? '', new RegExp(`\\[UIDVALIDITY ${snap.uidValidity}\\]`));
    assert.match(s.get('t3') ?? '', new RegExp(`\\[UIDNEXT ${snap.uidNext}\\]`));
    const theirs = parseFetches(s.get('t4') ?? '');
    assert.deepEqual(
      theirs,
      ours.map((m) => ({ uid: m.uid, flags: [...m.flags].sort(), size: m.size })),
    );
    assert.ok(!theirs.some((r) => r.uid === r3.uid), 'expunged message stays expunged');
    assert.match(s.get('t5') ?? '', new RegExp(`\\[UIDVALIDITY ${sub.uidValidity}\\]`));
    assert.deepEqual(parseFetches(s.get('t6') ?? ''), [{ uid: e1.uid, flags: ['\\Seen'], size: e1raw.length }]);
    const appendUid = /\[APPENDUID (\d+) (\d+)\]/.exec(out);
    assert.ok(appendUid, 'APPENDUID');
    assert.equal(Number(appendUid[1]), snap.uidValidity);

    // And back: we see what Dovecot did, under the UIDs Dovecot gave.
    store = new MaildirStore({ maildirFor });
    try {
      const again = await store.openMailbox(USER, 'INBOX');
      assert.ok(again);
      assert.equal(again.uidValidity, snap.uidValidity);
      assert.deepEqual(again.uids, [r1.uid, r2.uid, r4.uid, Number(appendUid[2])]);
      const metas = await store.getMessages(again.id, again.uids);
      assert.deepEqual(
        metas.map((m) => [...m.flags].sort()),
        [['$Label1', '\\Flagged', '\\Seen'], ['Custom', '\\Answered'], ['Work', '\\Answered'], ['\\Seen']],
      );
      assert.equal((await store.readMessage(again.id, Number(appendUid[2])))?.toString(), appended);
      assert.equal(metas[3].size, appended.length);
      // Dovecot stores bare LF; we still serve CRLF.
      assert.equal((await store.readMessage(again.id, r2.uid))?.toString(), 'Subject: bare lf\r\n\r\nline\r\n');
      const more = await store.append(USER, 'INBOX', message('after dovecot'));
      assert.equal(more.uid, Number(appendUid[2]) + 1);
    } finally {
      await store.close();
    }
  });
});

// -------------------------------------------------------------------------------------
// Message cache slots, quota, file-system watch
// -------------------------------------------------------------------------------------

describe('message cache file (onionpost-cache)', () => {
  it('survives a restart; copies are written too; stale, foreign and torn lines are never served', async () => {
    await withMaildir(async ({ root, store, reopen }) => {
      store.setMessageCacheBuilder((raw) => `built:${raw.length}`);
      const rawA = message('a');
      const rawB = message('b');
      const a = await store.append(USER, 'INBOX', rawA);
      const b = await store.append(USER, 'INBOX', rawB);
      store.setMessageCacheBuilder(null);
      const c = await store.append(USER, 'INBOX', message('c'));
      await store.setMessageCache(a.mailboxId, [{ uid: c.uid, cache: 'set later' }]);
      const copied = await store.copyMessages(a.mailboxId, [a.uid], 'Archive');
      const id = a.mailboxId;
      const text = readFileSync(join(root, 'onionpost-cache'), 'utf8');
      assert.match(text, /^onionpost-cache 1 \d+ [0-9a-f]{32}\n/);

      let s2 = await reopen();
      const metas = await s2.getMessages(id, [a.uid, b.uid, c.uid], { cache: true });
      assert.deepEqual(
        metas.map((m) => m.cache),
        [`built:${rawA.length}`, `built:${rawB.length}`, 'set later'],
      );
      const archive = await s2.openMailbox(USER, 'Archive');
      assert.equal((await s2.getMessages(archive!.id, copied.destinationUids, { cache: true }))[0].cache, `built:${rawA.length}`);

      // a torn last line (crash while appending) and a line naming another file for a UID
      const lines = readFileSync(join(root, 'onionpost-cache'), 'utf8').split('\n');
      const bLine = lines.findIndex((l) => l.startsWith(`${b.uid} `));
      lines[bLine] = `${b.uid} not-the-file-of-b stale data`;
      writeFileSync(join(root, 'onionpost-cache'), lines.join('\n') + `${c.uid} ${'x'} torn`);
      s2 = await reopen();
      const again = await s2.getMessages(id, [a.uid, b.uid, c.uid], { cache: true });
      assert.equal(again[0].cache, `built:${rawA.length}`);
      assert.equal(again[1].cache, undefined, 'a line for another file is ignored');
      assert.equal(again[2].cache, 'set later', 'the torn line is ignored, the earlier one kept');
      // the damaged file was rewritten: appending is safe again
      assert.ok(readFileSync(join(root, 'onionpost-cache'), 'utf8').endsWith('\n'));
      await s2.setMessageCache(id, [{ uid: b.uid, cache: 'fresh b' }]);
      s2 = await reopen();
      assert.equal((await s2.getMessages(id, [b.uid], { cache: true }))[0].cache, 'fresh b');

      // a file of another incarnation of the folder (other UIDVALIDITY) is not used
      const foreign = readFileSync(join(root, 'onionpost-cache'), 'utf8').replace(/^onionpost-cache 1 \d+/, 'onionpost-cache 1 1');
      writeFileSync(join(root, 'onionpost-cache'), foreign);
      s2 = await reopen();
      assert.deepEqual(
        (await s2.getMessages(id, [a.uid, b.uid], { cache: true })).map((m) => m.cache),
        [undefined, undefined],
      );
    });
  });

  it('is compacted when most of its lines belong to expunged messages', async () => {
    await withMaildir(async ({ root, store, reopen }) => {
      store.setMessageCacheBuilder(() => 'x'.repeat(50));
      const rs = [];
      for (let i = 0; i < 300; i++) rs.push(await store.append(USER, 'INBOX', message(`m${i}`), { flags: i < 290 ? ['\\Deleted'] : [] }));
      await store.expunge(rs[0].mailboxId);
      const s2 = await reopen();
      await s2.getMessages(rs[0].mailboxId, [rs[299].uid], { cache: true });
      const lines = readFileSync(join(root, 'onionpost-cache'), 'utf8').trimEnd().split('\n');
      assert.equal(lines.length, 1 + 10, 'header + the 10 live messages');
    });
  });
});

describe('quota', () => {
  it('appends and copies over the limit fail with OVERQUOTA; moves and expunges still work', async () => {
    let limit: number | null = 4000;
    await withMaildir(
      async ({ store }) => {
        const big = message('big', 'x'.repeat(1500) + '\r\n');
        const a = await store.append(USER, 'INBOX', big);
        await store.append(USER, 'Sent', big);
        assert.ok((await store.usage(USER)) < 4000);
        await assert.rejects(store.append(USER, 'INBOX', big), isCode('OVERQUOTA'));
        await assert.rejects(store.copyMessages(a.mailboxId, [a.uid], 'Archive'), isCode('OVERQUOTA'));
        const q = await store.quota(USER);
        assert.deepEqual(q, { used: await store.usage(USER), limit: 4000 });
        // a move does not grow the mailbox
        const moved = await store.moveMessages(a.mailboxId, [a.uid], 'Archive');
        assert.equal(moved.destinationUids.length, 1);
        // small enough still fits
        await store.append(USER, 'INBOX', message('small'));
        // after removing mail, there is room again (the quota view follows our own changes)
        const archive = await store.openMailbox(USER, 'Archive');
        await store.storeFlags(archive!.id, archive!.uids, { action: 'add', flags: ['\\Deleted'] });
        await store.expunge(archive!.id);
        await store.append(USER, 'INBOX', big);
        // null / 0: unlimited
        limit = 0;
        assert.equal((await store.quota(USER)).limit, null);
        for (let i = 0; i < 3; i++) await store.append(USER, 'INBOX', big);
      },
      { quotaFor: () => limit },
    );
  });
});

describe('deliver (delivery agent drop into new/)', () => {
  it('drops into new/ without touching dovecot-uidlist; the next look gives the UID and moves it to cur/', async () => {
    await withMaildir(async ({ root, store, events }) => {
      const first = await store.append(USER, 'INBOX', message('first'));
      const uidlist = await readFile(join(root, 'dovecot-uidlist'), 'utf8');
      events.length = 0;
      await store.deliver(USER, message('dropped'));
      const dropped = files(join(root, 'new'));
      assert.equal(dropped.length, 1);
      assert.match(dropped[0], /^\d+\.M\d+P\d+\.onionpost,S=\d+,W=\d+$/);
      assert.deepEqual(files(join(root, 'tmp')), []);
      assert.equal(await readFile(join(root, 'dovecot-uidlist'), 'utf8'), uidlist);
      assert.equal(events.length, 0, 'nobody watches: nothing announced yet');
      const snap = await store.openMailbox(USER, 'INBOX');
      assert.deepEqual(snap?.uids, [first.uid, first.uid + 1]);
      assert.deepEqual(files(join(root, 'new')), []);
      assert.ok(files(join(root, 'cur')).includes(`${dropped[0]}:2,`));
      assert.match(await readFile(join(root, 'dovecot-uidlist'), 'utf8'), new RegExp(`^${first.uid + 1} .*:${dropped[0].replace(/[.,=]/g, '\\$&')}$`, 'm'));
    });
  });

  it('a watched mailbox announces the delivery without any other call', async () => {
    await withMaildir(async ({ store, events }) => {
      const snap = await store.openMailbox(USER, 'INBOX');
      assert.ok(snap);
      const stop = store.watchMailbox(snap.id);
      try {
        await settle();
        events.length = 0;
        await Promise.all([store.deliver(USER, message('one')), store.deliver(USER, message('two'))]);
        const t0 = Date.now();
        while ((await store.changesSince(snap.id, snap.highestModseq)).length < 2 && Date.now() - t0 < 2000) await new Promise((r) => setTimeout(r, 2));
        assert.ok(events.some((e) => e.mailboxId === snap.id), 'announced');
        assert.deepEqual(
          (await store.changesSince(snap.id, snap.highestModseq)).map((c) => c.command),
          ['EXISTS', 'EXISTS'],
        );
      } finally {
        stop();
      }
    });
  });

  it('an unwatched mailbox is scanned in the background once deliveries pile up', async () => {
    await withMaildir(
      async ({ root, store, events }) => {
        await store.openMailbox(USER, 'INBOX');
        events.length = 0;
        for (let i = 0; i < 4; i++) await store.deliver(USER, message(`m${i}`));
        assert.equal(files(join(root, 'new')).length, 4);
        await store.deliver(USER, message('m4'));
        // The scan moves the files to cur/ first, then writes the uidlist: wait for the latter.
        const numbered = async (): Promise<number> => parseUidlist(await readFile(join(root, 'dovecot-uidlist'), 'utf8')).records.length;
        const t0 = Date.now();
        while ((await numbered()) < 5 && Date.now() - t0 < 2000) await new Promise((r) => setTimeout(r, 5));
        assert.equal(await numbered(), 5);
        assert.deepEqual(files(join(root, 'new')), []);
      },
      { deliveriesPerBackgroundScan: 5 },
    );
  });

  it('deliveries count against the quota before any scan saw them', async () => {
    await withMaildir(
      async ({ root, store }) => {
        const big = message('big', 'x'.repeat(1500) + '\r\n');
        await store.deliver(USER, big);
        await store.deliver(USER, big);
        await assert.rejects(store.deliver(USER, big), isCode('OVERQUOTA'));
        assert.equal(files(join(root, 'new')).length, 2);
        assert.deepEqual((await store.openMailbox(USER, 'INBOX'))?.uids.length, 2);
        await assert.rejects(store.deliver(USER, big), isCode('OVERQUOTA'));
      },
      { quotaFor: () => 4000 },
    );
  });

  it('a failing write leaves nothing visible in new/ or tmp/', async () => {
    await withMaildir(async ({ root, store }) => {
      await rm(join(root, 'tmp'), { recursive: true });
      await writeFile(join(root, 'tmp'), 'not a directory');
      await assert.rejects(store.deliver(USER, message('fails')), (err: NodeJS.ErrnoException) => err.code === 'ENOTDIR');
      assert.deepEqual(files(join(root, 'new')), []);
      await unlink(join(root, 'tmp'));
      await mkdir(join(root, 'tmp'));
      await store.deliver(USER, message('after'));
      assert.equal((await store.openMailbox(USER, 'INBOX'))?.uids.length, 1);
    });
  });

  it('a full disk while writing leaves nothing behind (tiny tmpfs on tmp/)', async (t) => {
    if (!haveRoot()) {
      t.skip('mounting a tmpfs needs root');
      return;
    }
    await withMaildir(async ({ root, store }) => {
      const tmp = join(root, 'tmp');
      const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', tmp]);
      if (mount.status !== 0) {
        t.skip(`cannot mount a tmpfs here: ${mount.stderr.toString().trim()}`);
        return;
      }
      try {
        await assert.rejects(store.deliver(USER, message('big', 'x'.repeat(200_000) + '\r\n')), (err: NodeJS.ErrnoException) => err.code === 'ENOSPC');
        assert.deepEqual(readdirSync(tmp), []);
        assert.deepEqual(files(join(root, 'new')), []);
      } finally {
        spawnSync('umount', [tmp]);
      }
    });
  });
});

describe('file-system watch (watchMailbox)', () => {
  it('a file dropped into new/ by other software is journaled and announced promptly, without any call', async () => {
    await withMaildir(async ({ root, store, events }) => {
      const snap = await store.openMailbox(USER, 'INBOX');
      assert.ok(snap);
      const stop = store.watchMailbox(snap.id);
      try {
        await settle();
        events.length = 0;
        const t0 = Date.now();
        const name = '1790000001.M1P1.mda';
        await writeFile(join(root, 'tmp', name), 'Subject: watched\r\n\r\nx\r\n');
        await rename(join(root, 'tmp', name), join(root, 'new', name));
        while (!events.some((e) => e.mailboxId === snap.id) && Date.now() - t0 < 2000) await new Promise((r) => setTimeout(r, 2));
        const took = Date.now() - t0;
        assert.ok(events.some((e) => e.mailboxId === snap.id), 'announced');
        // typically 20-60 ms; without a watch nothing is announced at all (see below)
        assert.ok(took < 500, `announced after ${took} ms`);
        assert.deepEqual(
          (await store.changesSince(snap.id, snap.highestModseq)).map((c) => c.command),
          ['EXISTS'],
        );
        // a flag change by renaming in cur/ too
        const cur = readdirSync(join(root, 'cur')).find((n) => n.startsWith(name));
        assert.ok(cur);
        events.length = 0;
        await rename(join(root, 'cur', cur), join(root, 'cur', `${name}:2,S`));
        const t1 = Date.now();
        while (!events.some((e) => e.mailboxId === snap.id) && Date.now() - t1 < 2000) await new Promise((r) => setTimeout(r, 2));
        assert.ok(events.some((e) => e.mailboxId === snap.id), 'flag change announced');
      } finally {
        stop();
      }
      // after the last watch ended, nothing is announced without a call
      events.length = 0;
      await writeFile(join(root, 'new', '1790000002.M1P1.mda'), 'Subject: unwatched\r\n\r\nx\r\n');
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(events.length, 0);
    });
  });
});
