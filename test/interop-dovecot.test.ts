/**
 * Dovecot interop over IMAP, both ways, with a real Dovecot and the real onionpost daemon
 * taking turns on one Maildir tree (never at the same time):
 *   (a) Dovecot writes first (APPEND with flags, keywords and dates, folders with non-ASCII
 *       names, RENAME, DELETE, STORE, EXPUNGE, subscriptions); onionpost then serves exactly
 *       that state, changes it (STORE, MOVE, EXPUNGE, RENAME), and Dovecot, with its own
 *       index files from before, serves exactly onionpost's state.
 *   (b) onionpost writes first (SMTP delivery, STORE, MOVE, EXPUNGE, APPEND); Dovecot then
 *       serves exactly that state.
 * "Exactly" is compared as a client sees it through imapflow: folder list, subscriptions,
 * special-use, UIDVALIDITY, UIDNEXT, UIDs, flags and keywords, INTERNALDATE, RFC822.SIZE and
 * the BODY[] bytes. Each side then appends once more and must get the next UID.
 * Skipped, saying so, only where Dovecot is not installed.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ImapFlow } from 'imapflow';
import nodemailer from 'nodemailer';
import { runCli } from './helpers/cli.js';
import { startDaemon, type Daemon } from './helpers/daemon.js';
import { dovecotMissing, dovecotVersion, startDovecot, type Dovecot } from './helpers/dovecot.js';
import { plainMessage } from './helpers/plain-message.js';

const missing = dovecotMissing();
const skip = missing ? `Dovecot interop NOT checked: ${missing}` : false;
if (missing) process.stderr.write(`interop-dovecot: skipped: ${missing}\n`);

const USER = 'alice';
const PASSWORD = 'correct horse';

// --------------------------------------------------------------------------------------
// What a client sees
// --------------------------------------------------------------------------------------

interface MessageView {
  uid: number;
  flags: string[];
  internalDate: string;
  size: number;
  sha256: string;
  /** ENVELOPE and BODYSTRUCTURE as imapflow parses them (compared on their own). */
  structure: { envelope: unknown; bodyStructure: unknown };
}

interface FolderView {
  path: string;
  delimiter: string;
  subscribed: boolean;
  specialUse: string | null;
  uidValidity: string;
  uidNext: number;
  exists: number;
  messages: MessageView[];
}

/**
 * imapflow enables UTF8=ACCEPT (and CONDSTORE) when offered, as onionpost does; `classic`
 * leaves them off, like mutt or Thunderbird: mailbox names in modified UTF-7.
 */
function client(port: number, classic = false): ImapFlow {
  return new ImapFlow({
    disableAutoEnable: classic,
    host: '127.0.0.1',
    port,
    secure: false,
    tls: { rejectUnauthorized: false },
    auth: { user: USER, pass: PASSWORD },
    logger: false,
    // both servers: no STARTTLS dance needed on loopback
    doSTARTTLS: false,
  });
}

/** Everything in the account, folder by folder, opened read-only (EXAMINE). */
async function snapshot(c: ImapFlow): Promise<FolderView[]> {
  const folders: FolderView[] = [];
  const list = (await c.list()).sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  for (const entry of list) {
    if (entry.flags.has('\\Noselect') || entry.flags.has('\\NonExistent')) continue;
    const box = await c.mailboxOpen(entry.path, { readOnly: true });
    const messages: MessageView[] = [];
    if (box.exists > 0) {
      const query = { uid: true, flags: true, internalDate: true, size: true, source: true, envelope: true, bodyStructure: true };
      for (const m of await c.fetchAll('1:*', query)) {
        messages.push({
          uid: m.uid,
          flags: [...(m.flags ?? [])].filter((f) => f !== '\\Recent').sort(),
          internalDate: new Date(m.internalDate ?? 0).toISOString(),
          size: m.size ?? -1,
          sha256: createHash('sha256')
            .update(m.source ?? Buffer.alloc(0))
            .digest('hex'),
          structure: { envelope: m.envelope, bodyStructure: m.bodyStructure },
        });
      }
    }
    folders.push({
      path: entry.path,
      delimiter: entry.delimiter,
      subscribed: entry.subscribed === true,
      specialUse: entry.specialUse && entry.specialUseSource !== 'name' ? entry.specialUse : null,
      uidValidity: String(box.uidValidity),
      uidNext: box.uidNext,
      exists: box.exists,
      messages: messages.sort((a, b) => a.uid - b.uid),
    });
  }
  return folders;
}

async function withClient<T>(port: number, fn: (c: ImapFlow) => Promise<T>, classic = false): Promise<T> {
  const c = client(port, classic);
  await c.connect();
  try {
    return await fn(c);
  } catch (err) {
    // imapflow says only "Command failed": name the command and the server's answer.
    const e = err as Error & { executedCommand?: string; responseText?: string; responseStatus?: string };
    if (e.executedCommand || e.responseText) e.message += ` (${e.executedCommand ?? '?'} -> ${e.responseStatus ?? ''} ${e.responseText ?? ''})`;
    throw e;
  } finally {
    await c.logout().catch(() => c.close());
  }
}

function sourceOf(raw: Buffer): string {
  return createHash('sha256').update(raw).digest('hex');
}

/** Every difference between two views, one line each (empty: the same). */
function differences(actual: FolderView[], expected: FolderView[], part: 'state' | 'structure'): string[] {
  const out: string[] = [];
  const show = (v: unknown): string => JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? String(x) : x));
  const byPath = new Map(actual.map((f) => [f.path, f]));
  if (part === 'state') {
    for (const f of actual) if (!expected.some((e) => e.path === f.path)) out.push(`extra folder ${f.path}`);
  }
  for (const e of expected) {
    const a = byPath.get(e.path);
    if (!a) {
      if (part === 'state') out.push(`missing folder ${e.path}`);
      continue;
    }
    if (part === 'state') {
      for (const k of ['delimiter', 'subscribed', 'specialUse', 'uidValidity', 'uidNext', 'exists'] as const) {
        if (show(a[k]) !== show(e[k])) out.push(`${e.path}: ${k} ${show(a[k])}, expected ${show(e[k])}`);
      }
    }
    const am = new Map(a.messages.map((m) => [m.uid, m]));
    for (const em of e.messages) {
      const m = am.get(em.uid);
      if (!m) {
        if (part === 'state') out.push(`${e.path}: UID ${em.uid} missing`);
        continue;
      }
      const keys = part === 'state' ? (['flags', 'internalDate', 'size', 'sha256'] as const) : (['structure'] as const);
      for (const k of keys) {
        if (k === 'structure') {
          for (const s of ['envelope', 'bodyStructure'] as const) {
            if (show(m.structure[s]) !== show(em.structure[s])) out.push(`${e.path} UID ${em.uid}: ${s}\n    got      ${show(m.structure[s])}\n    expected ${show(em.structure[s])}`);
          }
        } else if (show(m[k]) !== show(em[k])) {
          out.push(`${e.path} UID ${em.uid}: ${k} ${show(m[k])}, expected ${show(em[k])}`);
        }
      }
    }
    if (part === 'state') for (const m of a.messages) if (!e.messages.some((x) => x.uid === m.uid)) out.push(`${e.path}: extra UID ${m.uid}`);
  }
  return out;
}

function assertSameState(actual: FolderView[], expected: FolderView[], who: string): void {
  const diff = differences(actual, expected, 'state');
  assert.deepEqual(diff, [], `${who}:\n  ${diff.join('\n  ')}`);
}

function assertSameStructure(actual: FolderView[], expected: FolderView[], who: string): void {
  const diff = differences(actual, expected, 'structure');
  assert.deepEqual(diff, [], `${who}:\n  ${diff.join('\n  ')}`);
}

// --------------------------------------------------------------------------------------
// Messages
// --------------------------------------------------------------------------------------

const crlf = (lines: string[]): Buffer => Buffer.from(lines.join('\r\n'), 'utf8');

function withAttachment(id: string): Buffer {
  const blob = Buffer.alloc(6000);
  for (let i = 0; i < blob.length; i++) blob[i] = (i * 7 + 13) & 0xff;
  const b64 = blob.toString('base64').replace(/.{76}/g, '$&\r\n');
  return crlf([
    'From: =?UTF-8?Q?J=C3=BCrgen?= <juergen@example.onion>',
    'To: alice@localhost',
    'Subject: =?UTF-8?B?w5xiZXJzaWNodCDwn5OO?=',
    `Message-ID: <${id}@example.onion>`,
    'Date: Fri, 27 Nov 2026 08:30:00 +0100',
    'MIME-Version: 1.0',
    'Content-Type: multipart/mixed; boundary="b1"',
    '',
    'preamble',
    '--b1',
    'Content-Type: text/plain; charset=iso-8859-1',
    'Content-Transfer-Encoding: quoted-printable',
    '',
    'Gr=FC=DFe, siehe Anhang.',
    '--b1',
    'Content-Type: application/octet-stream; name="data.bin"',
    'Content-Disposition: attachment; filename="data.bin"',
    'Content-Transfer-Encoding: base64',
    '',
    b64,
    '--b1--',
    '',
  ]);
}

/** A message with bare LF line ends, as some software writes it. */
const bareLf = (id: string): Buffer =>
  Buffer.from(`From: lf@example.onion\nTo: alice@localhost\nSubject: bare LF\nMessage-ID: <${id}@example.onion>\n\nline one\nline two\n`);

// --------------------------------------------------------------------------------------
// Servers
// --------------------------------------------------------------------------------------

/** TOML for a daemon whose users file and Maildir root are `dir`'s. */
function storeToml(dir: string): string {
  return `[users]\nfile = ${JSON.stringify(path.join(dir, 'users.passwd'))}\n[store]\nmaildir = ${JSON.stringify(path.join(dir, 'mail', '%u'))}\n`;
}

async function addUser(configFile: string): Promise<void> {
  const added = await runCli(['--config', configFile, 'user', 'add', USER, '--password-stdin'], { input: `${PASSWORD}\n` });
  assert.equal(added.code, 0, added.stderr);
}

async function stopDaemon(d: Daemon): Promise<void> {
  const code = await d.stop();
  assert.equal(code, 0, `daemon exit code; stderr: ${d.stderr()}`);
  assert.doesNotMatch(d.stderr(), /"level":(50|60)/, `the daemon logged errors:\n${d.stderr()}`);
}

function assertDovecotHappy(dovecot: Dovecot): void {
  assert.deepEqual(dovecot.problems(), [], `Dovecot complained:\n${dovecot.log()}`);
}

// --------------------------------------------------------------------------------------
// (a) Dovecot first
// --------------------------------------------------------------------------------------

describe(`Dovecot${missing ? '' : ` ${dovecotVersion()}`} writes, then onionpost serves the same Maildir, then Dovecot again`, { skip }, () => {
  let dir = '';
  let dovecot: Dovecot | null = null;
  let dovecotAgain: Dovecot | null = null;
  let changed: FolderView[] = [];
  let daemon: Daemon | null = null;
  let theirs: FolderView[] = [];
  let ours: FolderView[] = [];
  const appended = new Map<string, Buffer>();

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-interop-a-'));
    // The users file, made by our CLI (a config naming only it).
    const cliConfig = path.join(dir, 'cli.toml');
    await writeFile(cliConfig, `data_dir = "data"\n${storeToml(dir)}`);
    await addUser(cliConfig);
  });

  after(async () => {
    await dovecot?.cleanup();
    await dovecotAgain?.cleanup();
    await daemon?.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('Dovecot: folders, APPEND with flags/keywords/dates, STORE, EXPUNGE, subscriptions', async () => {
    dovecot = await startDovecot({ mailRoot: path.join(dir, 'mail'), usersFile: path.join(dir, 'users.passwd') });
    await withClient(dovecot.port, async (c) => {
      // What a Dovecot user has: the usual folders (clients create them) and their own.
      for (const name of ['Sent', 'Drafts', 'Trash', 'Junk', 'Archive', 'Work', 'Entwürfe', 'Entwürfe/日本語', 'Archive/2026']) {
        await c.mailboxCreate(name);
        await c.mailboxSubscribe(name);
      }
      await c.mailboxUnsubscribe('Junk');

      const put = async (folder: string, raw: Buffer, flags: string[], date: string): Promise<number> => {
        const r = await c.append(folder, raw, flags, new Date(date));
        assert.ok(r && r.uid, `APPENDUID from Dovecot for ${folder}`);
        appended.set(sourceOf(raw), raw);
        return r.uid;
      };
      const u1 = await put('INBOX', plainMessage('hello', 'plain ascii', 'a1'), ['\\Seen'], '2026-11-20T10:00:00Z');
      const u2 = await put('INBOX', plainMessage('to be expunged', 'bye', 'a2'), [], '2026-11-20T11:00:00Z');
      const u3 = await put('INBOX', withAttachment('a3'), ['\\Flagged', '$Forwarded', 'Project-X'], '2026-11-21T09:15:30+01:00');
      const u4 = await put('INBOX', bareLf('a4'), ['\\Answered', '\\Draft'], '2026-11-22T23:59:59Z');
      const u5 = await put('INBOX', plainMessage('Grüße 🎉', 'Schöne Grüße aus dem Onionland.\r\n.leading dot', 'a5'), ['$Label1', 'Work'], '2026-11-23T12:00:00Z');
      const u6 = await put('INBOX', plainMessage('last one, expunged too', 'gone', 'a6'), ['\\Seen'], '2026-11-24T12:00:00Z');
      await put('Entwürfe/日本語', plainMessage('下書き', '日本語の本文', 'a7'), ['\\Draft', '\\Seen', 'Project-X'], '2026-11-25T01:02:03Z');
      await put('Entwürfe/日本語', plainMessage('zweiter Entwurf', 'text', 'a8'), [], '2026-11-25T04:05:06Z');
      await put('Work', withAttachment('a9'), ['$Important'], '2026-11-19T00:00:00Z');
      // A folder with mail renamed below another; an empty one deleted.
      await c.mailboxCreate('Old');
      await put('Old', plainMessage('in a renamed folder', 'text', 'a10'), ['\\Seen', '$MDNSent', 'NonJunk'], '2026-11-18T00:00:00Z');
      await c.mailboxRename('Old', 'Archive/Renamed');
      await c.mailboxCreate('Tmp');
      await c.mailboxDelete('Tmp');

      await c.mailboxOpen('INBOX');
      await c.messageFlagsAdd(String(u1), ['$Forwarded', '\\Answered'], { uid: true });
      await c.messageFlagsRemove(String(u3), ['Project-X'], { uid: true });
      await c.messageFlagsAdd(String(u4), ['Project-X', '\\Deleted'], { uid: true }); // \Deleted, never expunged
      // The highest UID goes too: UIDNEXT must not fall back to it later.
      await c.messageDelete(`${u2},${u6}`, { uid: true });
      void u5;

      theirs = await snapshot(c);
    });
    await dovecot.stop();
    assertDovecotHappy(dovecot);

    const inbox = theirs.find((f) => f.path === 'INBOX');
    assert.ok(inbox);
    assert.equal(inbox.messages.length, 4);
    assert.equal(inbox.uidNext, 7);
    assert.ok(theirs.some((f) => f.path === 'Entwürfe/日本語' && f.subscribed && f.messages.length === 2));
  });

  it('onionpost serves the same folders, UIDVALIDITY, UIDNEXT, UIDs, flags, keywords, dates, sizes and bytes', async () => {
    assert.ok(theirs.length > 0, 'needs the Dovecot step');
    daemon = await startDaemon(storeToml(dir));
    ours = await withClient(daemon.ports.imap, snapshot);
    assertSameState(ours, theirs, 'onionpost after Dovecot');
  });

  it('onionpost answers ENVELOPE and BODYSTRUCTURE as Dovecot does', () => {
    assert.ok(ours.length > 0, 'needs the onionpost snapshot');
    assertSameStructure(ours, theirs, 'onionpost after Dovecot');
  });

  it('onionpost serves BODY[] byte for byte as appended to Dovecot (CRLF, also for a bare-LF message)', async () => {
    assert.ok(daemon, 'needs the daemon');
    await withClient(daemon.ports.imap, async (c) => {
      await c.mailboxOpen('INBOX', { readOnly: true });
      const all = await c.fetchAll('1:*', { uid: true, source: true, size: true });
      for (const m of all) {
        const src = m.source!;
        assert.equal(m.size, src.length, `RFC822.SIZE is the size of BODY[] (uid ${m.uid})`);
        const orig = [...appended.values()].find((raw) => raw.toString('latin1').replace(/\r?\n/g, '\r\n') === src.toString('latin1'));
        assert.ok(orig, `uid ${m.uid}: BODY[] is an appended message with CRLF line ends`);
      }
    });
  });

  it('a new message in onionpost gets the UID Dovecot announced as UIDNEXT, in every folder', async () => {
    assert.ok(daemon, 'needs the daemon');
    await withClient(daemon.ports.imap, async (c) => {
      for (const f of theirs) {
        const r = await c.append(f.path, plainMessage('after the move', 'from onionpost', `n-${f.uidNext}`), ['\\Seen']);
        assert.ok(r, `APPEND to ${f.path}`);
        assert.equal(r.uid, f.uidNext, `UID of the first onionpost message in ${f.path}`);
        assert.equal(String(r.uidValidity), f.uidValidity, `UIDVALIDITY in ${f.path}`);
      }
    }, true);
  });

  it('APPEND to a non-ASCII folder named in UTF-8 (after ENABLE UTF8=ACCEPT, as imapflow does)', async () => {
    assert.ok(daemon, 'needs the daemon');
    await withClient(daemon.ports.imap, async (c) => {
      assert.ok(c.enabled.has('UTF8=ACCEPT'));
      const r = await c.append('Entwürfe/日本語', plainMessage('utf8 append', 'text', 'u8'), ['\\Seen']);
      assert.ok(r && (r.uid ?? 0) > 0);
    });
  });

  it('onionpost changes things (STORE, MOVE, EXPUNGE, RENAME, subscriptions) and stops cleanly', async () => {
    assert.ok(daemon, 'needs the daemon');
    changed = await withClient(
      daemon.ports.imap,
      async (c) => {
        await c.mailboxOpen('INBOX');
        const uids = (await c.fetchAll('1:*', { uid: true })).map((m) => m.uid);
        assert.ok(uids.length >= 5, `INBOX has ${uids.length} messages`);
        const [u1, u3, u4, u5] = uids;
        await c.messageFlagsAdd(String(u1), ['\\Flagged', 'Later'], { uid: true });
        await c.messageFlagsRemove(String(u1), ['$Forwarded'], { uid: true });
        await c.messageFlagsRemove(String(u4), ['\\Deleted'], { uid: true });
        await c.messageMove(String(u3), 'Work', { uid: true });
        await c.messageDelete(String(u5), { uid: true });
        await c.mailboxRename('Work', 'Projects/Work');
        await c.mailboxSubscribe('Projects/Work');
        await c.mailboxUnsubscribe('Archive/2026');
        return snapshot(c);
      },
      true,
    );
    await stopDaemon(daemon);
    assert.ok(changed.some((f) => f.path === 'Projects/Work' && f.messages.length === 3));
  });

  it('Dovecot, with its index files from before, serves what onionpost changed', async () => {
    assert.ok(changed.length > 0, 'needs the onionpost changes');
    dovecotAgain = await startDovecot({ mailRoot: path.join(dir, 'mail'), usersFile: path.join(dir, 'users.passwd') });
    const again = await withClient(dovecotAgain.port, snapshot);
    // Dovecot lists the parent "Projects" that onionpost's rename implied (\Noselect: skipped).
    assertSameState(again, changed, 'Dovecot after onionpost after Dovecot');
    await dovecotAgain.stop();
    assertDovecotHappy(dovecotAgain);
  });
});

// --------------------------------------------------------------------------------------
// (b) onionpost first
// --------------------------------------------------------------------------------------

describe(`onionpost writes, then Dovecot${missing ? '' : ` ${dovecotVersion()}`} serves the same Maildir`, { skip }, () => {
  let dir = '';
  let dovecot: Dovecot | null = null;
  let daemon: Daemon | null = null;
  let ours: FolderView[] = [];
  let theirs: FolderView[] = [];

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-interop-b-'));
  });

  after(async () => {
    await daemon?.cleanup();
    await dovecot?.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('onionpost: SMTP delivery, folders, STORE, MOVE, EXPUNGE, APPEND, subscriptions', async () => {
    daemon = await startDaemon(storeToml(dir));
    await addUser(daemon.configFile);
    const d = daemon;

    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: d.ports.smtp, secure: false, ignoreTLS: true });
    try {
      const raws = [
        plainMessage('delivered 1', 'first', 'b1'),
        withAttachment('b2'),
        plainMessage('delivered 3 — to Work', 'moved', 'b3'),
        plainMessage('delivered 4 — to 日本語', 'moved too', 'b4'),
        plainMessage('delivered 5 — expunged', 'gone', 'b5'),
        bareLf('b6'),
        plainMessage('delivered 7 — last, expunged', 'gone too', 'b7'),
      ];
      for (const raw of raws) await transport.sendMail({ envelope: { from: 'bob@example.onion', to: [`${USER}@localhost`] }, raw });
    } finally {
      transport.close();
    }

    await withClient(d.ports.imap, async (c) => {
      for (const name of ['Work', 'Entwürfe', 'Entwürfe/日本語', 'Archive/2026']) {
        await c.mailboxCreate(name);
        await c.mailboxSubscribe(name);
      }
      await c.mailboxUnsubscribe('Junk');

      const inbox = await c.mailboxOpen('INBOX');
      assert.equal(inbox.exists, 7, 'seven deliveries');
      const uids = (await c.fetchAll('1:*', { uid: true })).map((m) => m.uid);
      const [u1, u2, u3, u4, u5, , u7] = uids;
      await c.messageFlagsAdd(String(u1), ['\\Seen', '$Important', 'Project-X'], { uid: true });
      await c.messageFlagsAdd(String(u2), ['\\Answered', '\\Flagged', '$Forwarded'], { uid: true });
      await c.messageFlagsAdd(String(u3), ['\\Seen', 'Work'], { uid: true });
      await c.messageFlagsRemove(String(u1), ['Project-X'], { uid: true });
      const moved = await c.messageMove(String(u3), 'Work', { uid: true });
      assert.ok(moved && moved.uidMap?.size === 1, 'MOVE with COPYUID');
      await c.messageMove(String(u4), 'Entwürfe/日本語', { uid: true });
      await c.messageDelete(`${u5},${u7}`, { uid: true });

      const a = await c.append('Work', withAttachment('b8'), ['\\Draft', 'Project-X'], new Date('2026-11-18T18:18:18Z'));
      assert.ok(a && a.uid);
      await c.append('Entwürfe/日本語', plainMessage('下書き', '日本語の本文', 'b9'), ['\\Seen', '$Label1'], new Date('2026-11-25T01:02:03Z'));
      await c.mailboxOpen('Work');
      await c.messageFlagsAdd('1:*', ['$Label2'], { uid: false });

      ours = await snapshot(c);
    }, true);
    await stopDaemon(d);

    const inbox = ours.find((f) => f.path === 'INBOX');
    assert.ok(inbox);
    assert.equal(inbox.messages.length, 3);
    assert.ok(ours.find((f) => f.path === 'Work')?.messages.length === 2);
  });

  it('Dovecot serves the same folders, UIDVALIDITY, UIDNEXT, UIDs, flags, keywords, dates, sizes and bytes', async () => {
    assert.ok(ours.length > 0, 'needs the onionpost step');
    dovecot = await startDovecot({ mailRoot: path.join(dir, 'mail'), usersFile: path.join(dir, 'users.passwd') });
    theirs = await withClient(dovecot.port, snapshot);
    assertSameState(theirs, ours, 'Dovecot after onionpost');
    assertDovecotHappy(dovecot);
  });

  it('Dovecot answers ENVELOPE and BODYSTRUCTURE as onionpost did', () => {
    assert.ok(theirs.length > 0, 'needs the Dovecot snapshot');
    assertSameStructure(ours, theirs, 'onionpost before Dovecot');
  });

  it('a new message in Dovecot gets the UID onionpost announced as UIDNEXT, in every folder', async () => {
    assert.ok(dovecot, 'needs Dovecot');
    await withClient(dovecot.port, async (c) => {
      for (const f of ours) {
        const r = await c.append(f.path, plainMessage('back to Dovecot', 'text', `d-${f.uidNext}`), ['\\Seen']);
        assert.ok(r, `APPEND to ${f.path}`);
        assert.equal(r.uid, f.uidNext, `UID of the first Dovecot message in ${f.path}`);
        assert.equal(String(r.uidValidity), f.uidValidity, `UIDVALIDITY in ${f.path}`);
      }
    });
    await dovecot.stop();
    assertDovecotHappy(dovecot);
  });
});
