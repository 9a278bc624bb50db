/**
 * `onionpost import maildir` and `onionpost import imap`, run as the real CLI against real
 * sources: a Maildir written by a real Dovecot (skipped, and said so, without Dovecot) and
 * our own daemon as the IMAP server (over imaps:// with its self-signed certificate).
 * The result is read back through MaildirStore from the target's data dir.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ImapFlow } from 'imapflow';
import { MaildirStore } from '../src/store/maildir/maildir-store.js';
import { parseImapUrl, targetPathFor } from '../src/import/imap-import.js';
import { runCli } from './helpers/cli.js';
import { startDaemon, type Daemon } from './helpers/daemon.js';
import { dovecotMissing, startDovecot } from './helpers/dovecot.js';

interface Expected {
  uid: number;
  flags: string[];
  date: number;
  subject: string;
}

function message(subject: string, body = 'hello'): string {
  return `From: alice@example.org\r\nTo: bob@example.org\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@example.org>\r\n\r\n${body}\r\n`;
}

/** A target onionpost: config + data dir in `dir`, with user `name`. */
async function makeTarget(dir: string, name = 'bob'): Promise<{ config: string; data: string; maildir: string }> {
  const data = path.join(dir, 'data');
  const config = path.join(dir, 'onionpost.toml');
  await mkdir(dir, { recursive: true });
  await writeFile(config, `data_dir = ${JSON.stringify(data)}\ndomain = "localhost"\n`);
  const r = await runCli(['--config', config, 'user', 'add', name, '--password-stdin'], { input: 'secret-pw\n' });
  assert.equal(r.code, 0, r.stderr);
  return { config, data, maildir: path.join(data, 'mail', name) };
}

/** Folder -> messages as our store sees them (uid, flags sorted, date, subject). */
async function readBack(maildir: string, user: string): Promise<{ folders: Map<string, { uidValidity: number; msgs: Expected[] }> }> {
  const store = new MaildirStore({ maildirFor: () => maildir });
  try {
    const folders = new Map<string, { uidValidity: number; msgs: Expected[] }>();
    for (const box of await store.listMailboxes(user)) {
      const snap = (await store.openMailbox(user, box.path))!;
      const metas = await store.getMessages(snap.id, snap.uids);
      const msgs: Expected[] = [];
      for (const m of metas) {
        const raw = (await store.readMessage(snap.id, m.uid))!.toString('utf8');
        msgs.push({ uid: m.uid, flags: [...m.flags].sort(), date: m.internalDate.getTime(), subject: /^Subject: (.*)$/m.exec(raw)?.[1]?.trim() ?? '' });
      }
      folders.set(box.path, { uidValidity: snap.uidValidity, msgs });
    }
    return { folders };
  } finally {
    await store.close();
  }
}

/** Same view through IMAP (imapflow) of the source. */
async function readSource(client: ImapFlow, folders: string[]): Promise<Map<string, { uidValidity: number; msgs: Expected[] }>> {
  const out = new Map<string, { uidValidity: number; msgs: Expected[] }>();
  for (const f of folders) {
    const box = await client.mailboxOpen(f, { readOnly: true });
    const msgs: Expected[] = [];
    if (box.exists > 0) {
      for await (const m of client.fetch('1:*', { uid: true, flags: true, internalDate: true, envelope: true })) {
        msgs.push({ uid: m.uid, flags: [...(m.flags ?? [])].filter((x) => x !== '\\Recent').sort(), date: new Date(m.internalDate!).getTime(), subject: m.envelope?.subject ?? '' });
      }
    }
    out.set(f, { uidValidity: Number(box.uidValidity), msgs });
  }
  return out;
}

const withoutUids = (msgs: Expected[]) => msgs.map(({ flags, date, subject }) => ({ flags, date, subject }));

const DATES = [new Date('2019-03-04T05:06:07Z'), new Date('2020-11-12T13:14:15Z'), new Date('2021-01-02T03:04:05Z')];

describe('import maildir (a Maildir written by Dovecot)', { skip: dovecotMissing() ?? false }, () => {
  let dir: string;
  let source: Map<string, { uidValidity: number; msgs: Expected[] }>;
  let aliceMaildir: string;
  const FOLDERS = ['INBOX', 'Entwürfe/Sub', 'Sent'];

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-import-md-'));
    const mailRoot = path.join(dir, 'mail');
    await mkdir(mailRoot);
    const src = await makeTarget(path.join(dir, 'src'), 'alice');
    const dovecot = await startDovecot({ mailRoot, usersFile: path.join(src.data, 'users.passwd') });
    try {
      const client = new ImapFlow({ host: '127.0.0.1', port: dovecot.port, secure: false, doSTARTTLS: false, auth: { user: 'alice', pass: 'secret-pw' }, logger: false });
      await client.connect();
      await client.mailboxCreate('Entwürfe/Sub').catch(() => undefined);
      await client.mailboxCreate('Sent').catch(() => undefined);
      // An expunged message first, so that UIDs do not start at 1.
      await client.append('INBOX', message('gone'), ['\\Deleted']);
      await client.mailboxOpen('INBOX');
      await client.messageDelete('1:*');
      await client.append('INBOX', message('one'), ['\\Seen', '$Forwarded'], DATES[0]);
      await client.append('INBOX', message('two'), ['\\Flagged', 'Urgent', '$Junk'], DATES[1]);
      await client.append('INBOX', message('three'), [], DATES[2]);
      await client.append('Entwürfe/Sub', message('draft'), ['\\Draft', '\\Seen'], DATES[1]);
      await client.append('Sent', message('sent'), ['\\Seen'], DATES[0]);
      source = await readSource(client, FOLDERS);
      await client.logout();
    } finally {
      await dovecot.cleanup(); // stops it, gives the Maildir back, removes its temp dir
    }
    aliceMaildir = path.join(mailRoot, 'alice');
  });

  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('keeps UIDVALIDITY, UIDs, flags, keywords and dates; a re-run imports nothing', async () => {
    const t = await makeTarget(path.join(dir, 't1'));
    const r = await runCli(['--config', t.config, 'import', 'maildir', aliceMaildir, '--user', 'bob']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /imported 5 message\(s\) in \d+ folder\(s\)/);
    assert.match(r.stdout, /UIDs kept in: .*INBOX/);
    assert.equal(r.stderr, '', 'no progress output when stderr is not a terminal');
    const { folders } = await readBack(t.maildir, 'bob');
    for (const f of FOLDERS) {
      const want = source.get(f)!;
      const got = folders.get(f);
      assert.ok(got, `folder ${f} imported`);
      assert.equal(got.uidValidity, want.uidValidity, `${f}: UIDVALIDITY kept`);
      assert.deepEqual(got.msgs, want.msgs, `${f}: same UIDs, flags, dates, subjects`);
    }
    assert.ok(source.get('INBOX')!.msgs[0]!.uid > 1, 'the source had an expunged first UID');

    const again = await runCli(['--config', t.config, 'import', 'maildir', aliceMaildir, '--user', 'bob']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /imported 0 message\(s\).*skipped 5/);
    assert.equal((await readBack(t.maildir, 'bob')).folders.get('INBOX')!.msgs.length, 3);
  });

  test('appends into folders that have mail (new UIDs, same flags and dates) and resumes', async () => {
    const t = await makeTarget(path.join(dir, 't2'));
    const store = new MaildirStore({ maildirFor: () => t.maildir });
    await store.ensureUser('bob');
    await store.append('bob', 'INBOX', Buffer.from(message('already here')), { flags: ['\\Seen'] });
    await store.close();

    const r = await runCli(['--config', t.config, 'import', 'maildir', aliceMaildir, '--user', 'bob']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /imported 5 message/);
    const got = (await readBack(t.maildir, 'bob')).folders.get('INBOX')!;
    assert.deepEqual(got.msgs.map((m) => m.uid), [1, 2, 3, 4]);
    assert.deepEqual(withoutUids(got.msgs.slice(1)), withoutUids(source.get('INBOX')!.msgs));

    // A new message arrives at the source (an MDA writes new/): only it is imported.
    const name = `${Math.floor(Date.now() / 1000)}.M1P1.test,S=90`;
    await writeFile(path.join(aliceMaildir, 'new', name), message('late'));
    const again = await runCli(['--config', t.config, 'import', 'maildir', aliceMaildir, '--user', 'bob']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /imported 1 message\(s\).*skipped 5/);
    const inbox = (await readBack(t.maildir, 'bob')).folders.get('INBOX')!;
    assert.deepEqual(inbox.msgs.map((m) => m.subject), ['already here', 'one', 'two', 'three', 'late']);
    await rm(path.join(aliceMaildir, 'new', name));
  });

  test('into a running daemon: appends (new UIDs) and IMAP sessions see the mail', async () => {
    const d = await startDaemon();
    try {
      const add = await runCli(['--config', d.configFile, 'user', 'add', 'bob', '--password-stdin'], { input: 'bob-pw\n' });
      assert.equal(add.code, 0, add.stderr);
      const watcher = new ImapFlow({ host: '127.0.0.1', port: d.ports.imap, secure: false, doSTARTTLS: false, auth: { user: 'bob', pass: 'bob-pw' }, logger: false });
      await watcher.connect();
      await watcher.mailboxOpen('Sent'); // a session has a folder selected during the import
      const r = await runCli(['--config', d.configFile, 'import', 'maildir', aliceMaildir, '--user', 'bob']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /the daemon runs .* new UIDs; stop it first to keep UIDs/);
      assert.doesNotMatch(r.stdout, /UIDs kept/);
      for (let i = 0; i < 30 && (watcher.mailbox as { exists: number }).exists === 0; i++) {
        await watcher.noop();
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal((watcher.mailbox as { exists: number }).exists, source.get('Sent')!.msgs.length, 'the selected folder announced the new message');
      await watcher.logout();
      const client = new ImapFlow({ host: '127.0.0.1', port: d.ports.imap, secure: false, doSTARTTLS: false, auth: { user: 'bob', pass: 'bob-pw' }, logger: false });
      await client.connect();
      const seen = await readSource(client, FOLDERS);
      await client.logout();
      for (const f of FOLDERS) assert.deepEqual(withoutUids(seen.get(f)!.msgs), withoutUids(source.get(f)!.msgs), `${f} over IMAP`);
    } finally {
      await d.cleanup();
    }
  });

  test('errors: unknown user, not a Maildir, missing --user', async () => {
    const t = await makeTarget(path.join(dir, 't3'));
    const noUser = await runCli(['--config', t.config, 'import', 'maildir', aliceMaildir, '--user', 'nobody-here']);
    assert.equal(noUser.code, 67);
    assert.match(noUser.stderr, /no user "nobody-here"/);
    const notMaildir = await runCli(['--config', t.config, 'import', 'maildir', t.data, '--user', 'bob']);
    assert.equal(notMaildir.code, 65);
    assert.match(notMaildir.stderr, /no Maildir folder/);
    const missing = await runCli(['--config', t.config, 'import', 'maildir', aliceMaildir]);
    assert.equal(missing.code, 64);
    assert.match(missing.stderr, /--user NAME is missing/);
  });
});

describe('import imap (from a running onionpost over imaps://)', () => {
  let daemon: Daemon;
  let dir: string;
  let source: Map<string, { uidValidity: number; msgs: Expected[] }>;
  let client: ImapFlow;
  const FOLDERS = ['INBOX', 'Sent', 'Projects/2026'];

  before(async () => {
    daemon = await startDaemon();
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-import-imap-'));
    const add = await runCli(['--config', daemon.configFile, 'user', 'add', 'alice', '--password-stdin'], { input: 'alice-pw\n' });
    assert.equal(add.code, 0, add.stderr);
    client = new ImapFlow({ host: '127.0.0.1', port: daemon.ports.imap, secure: false, doSTARTTLS: false, auth: { user: 'alice', pass: 'alice-pw' }, logger: false });
    await client.connect();
    await client.mailboxCreate('Projects/2026');
    await client.append('INBOX', message('one'), ['\\Seen', '$Forwarded'], DATES[0]);
    await client.append('INBOX', message('two'), ['\\Flagged', 'Urgent'], DATES[1]);
    await client.append('Sent', message('sent'), ['\\Seen'], DATES[2]);
    await client.append('Projects/2026', message('plan'), ['\\Answered'], DATES[1]);
    source = await readSource(client, FOLDERS);
  });

  after(async () => {
    await client?.logout().catch(() => undefined);
    await daemon?.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('imports every folder with flags, keywords and dates; resumes; refuses an unverified certificate', async () => {
    const t = await makeTarget(path.join(dir, 't1'));
    const url = `imaps://alice@127.0.0.1:${daemon.ports.imaps}`;
    const strict = await runCli(['--config', t.config, 'import', 'imap', url, '--user', 'bob', '--password-stdin'], { input: 'alice-pw\n' });
    assert.equal(strict.code, 69, strict.stderr);
    assert.match(strict.stderr, /--insecure/);

    const bad = await runCli(['--config', t.config, 'import', 'imap', url, '--user', 'bob', '--password-stdin', '--insecure'], { input: 'Xq7-not-it\n' });
    assert.equal(bad.code, 77, bad.stderr);
    assert.doesNotMatch(bad.stderr + bad.stdout, /Xq7-not-it/, 'the password is never printed');

    const r = await runCli(['--config', t.config, 'import', 'imap', url, '--user', 'bob', '--password-stdin', '--insecure'], { input: 'alice-pw\n' });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /imported 4 message\(s\)/);
    const { folders } = await readBack(t.maildir, 'bob');
    for (const f of FOLDERS) assert.deepEqual(withoutUids(folders.get(f)?.msgs ?? []), withoutUids(source.get(f)!.msgs), f);

    const again = await runCli(['--config', t.config, 'import', 'imap', url, '--user', 'bob', '--password-stdin', '--insecure'], { input: 'alice-pw\n' });
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /imported 0 message\(s\)/);

    await client.append('INBOX', message('three'), ['\\Seen'], DATES[2]);
    const third = await runCli(['--config', t.config, 'import', 'imap', url, '--user', 'bob', '--password-stdin', '--insecure'], { input: 'alice-pw\n' });
    assert.equal(third.code, 0, third.stderr);
    assert.match(third.stdout, /imported 1 message\(s\)/);
    const inbox = (await readBack(t.maildir, 'bob')).folders.get('INBOX')!;
    assert.deepEqual(inbox.msgs.map((m) => m.subject), ['one', 'two', 'three']);
    assert.ok((await readdir(path.join(t.data, 'import', 'bob'))).length === 1, 'one resume log');
  });

  test('imap:// requires STARTTLS and takes it', async () => {
    const t = await makeTarget(path.join(dir, 't2'));
    const url = `imap://alice@127.0.0.1:${daemon.ports.imap}`;
    const r = await runCli(['--config', t.config, 'import', 'imap', url, '--user', 'bob', '--password-stdin', '--insecure'], { input: 'alice-pw\n' });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /imported [45] message\(s\)/);
  });
});

describe('import imap: URL and folder mapping', () => {
  test('parseImapUrl', () => {
    assert.deepEqual(parseImapUrl('imaps://alice@mail.example.org'), { secure: true, host: 'mail.example.org', port: 993, user: 'alice' });
    assert.deepEqual(parseImapUrl('imap://alice%40example.org@[::1]:1143'), { secure: false, host: '::1', port: 1143, user: 'alice@example.org' });
    assert.throws(() => parseImapUrl('imaps://alice:pw@host'), /do not put the password in the URL/);
    assert.throws(() => parseImapUrl('pop3://alice@host'), /not supported/);
    assert.throws(() => parseImapUrl('imaps://host'), /names no user/);
    assert.throws(() => parseImapUrl('imaps://alice@host/INBOX'), /must not have a path/);
  });

  test('targetPathFor: special-use folders go to ours, virtual ones are skipped', () => {
    const ours = new Map([['\\Sent', 'Sent'], ['\\Trash', 'Trash']]);
    const box = (path: string, parent: string[], name: string, specialUse?: string) => ({ path, parent, name, specialUse });
    assert.equal(targetPathFor(box('inbox', [], 'inbox'), ours), 'INBOX');
    assert.equal(targetPathFor(box('Sent Messages', [], 'Sent Messages', '\\Sent'), ours), 'Sent');
    assert.equal(targetPathFor(box('[Gmail]/Trash', ['[Gmail]'], 'Trash', '\\Trash'), ours), 'Trash');
    assert.equal(targetPathFor(box('Entwürfe', [], 'Entwürfe', '\\Drafts'), ours), 'Drafts');
    assert.equal(targetPathFor(box('[Gmail]/All Mail', ['[Gmail]'], 'All Mail', '\\All'), ours), null);
    assert.equal(targetPathFor(box('INBOX.Lists.node', ['INBOX', 'Lists'], 'node'), ours), 'INBOX/Lists/node');
    assert.equal(targetPathFor(box('Work.2026', ['Work'], '2026'), ours), 'Work/2026');
  });
});
