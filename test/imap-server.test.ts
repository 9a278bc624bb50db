/**
 * The IMAP server over a real MaildirStore in a temp dir, driven by real clients: imapflow
 * for the client's view, and a byte-level wire client for exact protocol responses.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import dns from 'node:dns';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { ImapFlow, type FetchMessageObject } from 'imapflow';
import { pino } from 'pino';
import { createImapServer, DEFAULT_MAX_MESSAGE, type ImapServer } from '../src/imap/imap-server.js';
import { MaildirStore } from '../src/store/maildir/maildir-store.js';
import { ImapWire } from './helpers/imap-wire.js';

const run = promisify(execFile);
const USER = 'alice';
const PASSWORD = 'correct horse';

const crlf = (lines: string[]): Buffer => Buffer.from(lines.join('\r\n'), 'utf8');
const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');

const SUBJECT = 'Päev ümber Tallinna 🌍';
const ATTACHMENT = Buffer.from([0, 1, 2, 250, 251, 252, 13, 10, 255]);

/** multipart/mixed > (multipart/alternative > QP text + 8bit HTML) + base64 attachment. */
const MULTIPART = crlf([
  'From: =?UTF-8?Q?J=C3=BCri_Tamm?= <juri@example.onion>',
  'To: Alice <alice@example.onion>',
  `Subject: =?UTF-8?B?${b64(SUBJECT)}?=`,
  'Date: Mon, 2 Mar 2026 09:15:00 +0200',
  'Message-ID: <mp1@example.onion>',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="==b1=="',
  '',
  'This is a multi-part message in MIME format.',
  '--==b1==',
  'Content-Type: multipart/alternative; boundary="==b2=="',
  '',
  '--==b2==',
  'Content-Type: text/plain; charset=utf-8',
  'Content-Transfer-Encoding: quoted-printable',
  '',
  'Tere! J=C3=A4rgmine kohtumine on ne=',
  'ljap=C3=A4eval kell k=C3=BCmme.',
  '--==b2==',
  'Content-Type: text/html; charset=utf-8',
  'Content-Transfer-Encoding: 8bit',
  '',
  '<p>Tere! Järgmine kohtumine on neljapäeval.</p>',
  '--==b2==--',
  '',
  '--==b1==',
  'Content-Type: application/octet-stream; name="data.bin"',
  'Content-Disposition: attachment; filename="data.bin"',
  'Content-Transfer-Encoding: base64',
  '',
  b64(ATTACHMENT),
  '--==b1==--',
  '',
]);

/** A single-part base64 message in ISO-8859-1. */
const BASE64_LATIN1 = crlf([
  'From: Bob <bob@example.onion>',
  'To: alice@example.onion',
  'Subject: plain ascii subject',
  'Date: Thu, 15 Jan 2026 12:00:00 +0000',
  'Message-ID: <b64@example.onion>',
  'MIME-Version: 1.0',
  'Content-Type: text/plain; charset=iso-8859-1',
  'Content-Transfer-Encoding: base64',
  '',
  Buffer.from('Salajane s\xf5num: kohtume Kalamaja kohvikus.\r\n', 'latin1').toString('base64'),
  '',
]);

/** Written into the Maildir by "other software": bare LF line ends. */
const BARE_LF = Buffer.from(
  'From: Carol <carol@example.onion>\nTo: alice@example.onion\nSubject: bare LF lines\nDate: Fri, 20 Feb 2026 08:00:00 +0000\n\nfirst line\nsecond line, ümlaut\n',
  'utf8',
);

function imapClient(port: number, user = USER, pass = PASSWORD): ImapFlow {
  return new ImapFlow({
    host: '127.0.0.1',
    port,
    secure: false,
    tls: { rejectUnauthorized: false },
    auth: { user, pass },
    logger: false,
    disableAutoIdle: true,
  });
}

type FetchQuery = Parameters<ImapFlow['fetchOne']>[1];

/** fetchOne by UID, failing the test when the message is not there. */
async function fetchUid(c: ImapFlow, uid: number, query: FetchQuery): Promise<FetchMessageObject> {
  const msg = await c.fetchOne(String(uid), query, { uid: true });
  assert.ok(msg, `uid ${uid} not fetched`);
  return msg;
}

async function statusOf(c: ImapFlow, pathName: string, query: Parameters<ImapFlow['status']>[1]): Promise<{ messages?: number; unseen?: number }> {
  const st = await c.status(pathName, query);
  assert.ok(st, `no STATUS for ${pathName}`);
  return st;
}

async function selfSignedCert(dir: string): Promise<{ key: Buffer; cert: Buffer } | null> {
  const keyFile = path.join(dir, 'key.pem');
  const certFile = path.join(dir, 'cert.pem');
  try {
    await run('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
      '-subj', '/CN=test.onion', '-keyout', keyFile, '-out', certFile,
    ]);
  } catch {
    return null;
  }
  return { key: await readFile(keyFile), cert: await readFile(certFile) };
}

/** A non-loopback address of this machine, to connect "from elsewhere". */
function externalAddress(): string | null {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const i of list ?? []) if (!i.internal && i.family === 'IPv4') return i.address;
  }
  return null;
}

describe('imap server over a real MaildirStore', () => {
  let dir: string;
  let store: MaildirStore;
  let server: ImapServer;
  let port: number;
  let client: ImapFlow;
  let tlsMaterial: { key: Buffer; cert: Buffer } | null = null;
  let reverseLookups = 0;
  const realReverse = dns.reverse;
  const maildirOf = (user: string): string => path.join(dir, 'mail', user, 'Maildir');

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-imap-'));
    // every reverse lookup anyone makes in this process is counted (privacy rule: none)
    (dns as { reverse: typeof dns.reverse }).reverse = ((...args: Parameters<typeof dns.reverse>) => {
      reverseLookups++;
      return realReverse(...args);
    }) as typeof dns.reverse;
    tlsMaterial = await selfSignedCert(dir);
    store = new MaildirStore({ maildirFor: maildirOf });
    await store.ensureUser(USER);
    server = createImapServer({
      store,
      logger: pino({ level: 'silent' }),
      secure: false,
      tls: tlsMaterial ?? undefined,
      authenticate: async (username, password) => {
        const name = username.split('@')[0];
        return name === USER && password === PASSWORD ? { id: USER, username: name } : null;
      },
      closeTimeout: 200,
    });
    await server.listen(0, '0.0.0.0');
    port = server.address()!.port;
    client = imapClient(port);
    await client.connect();
  });

  after(async () => {
    (dns as { reverse: typeof dns.reverse }).reverse = realReverse;
    await client?.logout().catch(() => undefined);
    await server?.close();
    await store?.close();
    await rm(dir, { recursive: true, force: true });
  });

  describe('protocol details (raw socket)', () => {
    it('greets at once without a reverse DNS lookup and advertises the expected capabilities', async () => {
      const before = reverseLookups;
      const t0 = performance.now();
      const wire = await ImapWire.connect(port);
      try {
        assert.equal(await wire.readLine(), '* OK onionpost ready\r\n');
        assert.ok(performance.now() - t0 < 500, 'greeting must not wait for a lookup');
        const cap = await wire.command('CAPABILITY');
        const expected = [
          'IMAP4rev1',
          `APPENDLIMIT=${DEFAULT_MAX_MESSAGE}`,
          'AUTH=PLAIN',
          'AUTH=PLAIN-CLIENTTOKEN',
          'CHILDREN',
          'CONDSTORE',
          'ENABLE',
          'ID',
          'IDLE',
          'MOVE',
          'NAMESPACE',
          'QUOTA',
          'SASL-IR',
          'SPECIAL-USE',
          ...(tlsMaterial ? ['STARTTLS'] : []),
          'UIDPLUS',
          'UNSELECT',
          'UTF8=ACCEPT',
          'WITHIN',
          'XLIST',
        ];
        assert.equal(cap.text, `* CAPABILITY ${expected.join(' ')}\r\n`);
        assert.match(cap.tagged, /^W1 OK/);
        assert.doesNotMatch(cap.text, /LOGINDISABLED/);
        const id = await wire.command('ID NIL');
        assert.equal(id.text, '* ID ("name" "onionpost")\r\n');
        const login = await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        assert.match(login.tagged, /^W3 OK/);
        const after = await wire.command('CAPABILITY');
        assert.match(after.text, / COMPRESS=DEFLATE /);
        const logout = await wire.command('LOGOUT');
        assert.equal(logout.tagged, 'W5 OK LOGOUT completed');
      } finally {
        wire.close();
      }
      assert.equal(reverseLookups - before, 0, 'no dns.reverse for an IMAP client');
    });

    it('refuses clear-text LOGIN and AUTHENTICATE PLAIN from a non-loopback address', async (t) => {
      const address = externalAddress();
      if (!address) {
        t.skip('this machine has no non-loopback IPv4 address to connect from');
        return;
      }
      const wire = await ImapWire.connect(port, address);
      try {
        await wire.readLine();
        const login = await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        assert.match(login.tagged, /^W1 NO \[PRIVACYREQUIRED\] Clear-text login is allowed only over TLS/);
        const plain = await wire.command(`AUTHENTICATE PLAIN ${b64(`\0${USER}\0${PASSWORD}`)}`);
        assert.match(plain.tagged, /^W2 NO \[PRIVACYREQUIRED\]/);
        if (tlsMaterial) {
          // after STARTTLS the same login works
          const st = await wire.command('STARTTLS');
          assert.match(st.tagged, /^W3 OK/);
          await wire.startTls();
          const cap = await wire.command('CAPABILITY');
          assert.doesNotMatch(cap.text, /STARTTLS/);
          const secured = await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
          assert.match(secured.tagged, /^W5 OK/);
        }
      } finally {
        wire.close();
      }
    });

    it('APPEND over the size limit is refused before the literal is sent', async () => {
      const wire = await ImapWire.connect(port);
      try {
        await wire.readLine();
        await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        wire.write(`A1 APPEND INBOX {${DEFAULT_MAX_MESSAGE + 1}}\r\n`);
        assert.match(await wire.readLine(), /^A1 NO \[TOOBIG\]/);
        assert.match((await wire.command('NOOP')).tagged, /^W2 OK/);
      } finally {
        wire.close();
      }
    });

    it('wrong passwords get NO [AUTHENTICATIONFAILED]; both login forms work', async () => {
      const wire = await ImapWire.connect(port);
      try {
        await wire.readLine();
        const bad = await wire.command(`LOGIN ${USER} wrong`);
        assert.match(bad.tagged, /^W1 NO \[AUTHENTICATIONFAILED\]/);
        const good = await wire.command(`AUTHENTICATE PLAIN ${b64(`\0${USER}@example.onion\0${PASSWORD}`)}`);
        assert.match(good.tagged, /^W2 OK/);
      } finally {
        wire.close();
      }
    });
  });

  describe('mailboxes', () => {
    it('LIST shows the default folders with SPECIAL-USE attributes', async () => {
      const list = await client.list();
      const byPath = new Map(list.map((m) => [m.path, m]));
      for (const p of ['INBOX', 'Sent', 'Drafts', 'Trash', 'Junk', 'Archive']) assert.ok(byPath.has(p), `missing ${p}`);
      assert.equal(byPath.get('Sent')!.specialUse, '\\Sent');
      assert.equal(byPath.get('Drafts')!.specialUse, '\\Drafts');
      assert.equal(byPath.get('Trash')!.specialUse, '\\Trash');
      assert.equal(byPath.get('Junk')!.specialUse, '\\Junk');
      assert.equal(byPath.get('Archive')!.specialUse, '\\Archive');
      const wire = await ImapWire.connect(port);
      try {
        await wire.readLine();
        await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        const r = await wire.command('LIST "" "*" RETURN (SPECIAL-USE)');
        assert.match(r.text, /^\* LIST \(\\Sent\) "\/" "Sent"\r$/m);
        assert.match(r.text, /^\* LIST \(\) "\/" "INBOX"\r$/m);
      } finally {
        wire.close();
      }
    });

    it('CREATE, RENAME (with children), DELETE, SUBSCRIBE, STATUS', async () => {
      await client.mailboxCreate('Projects/Ünicode');
      let paths = (await client.list()).map((m) => m.path);
      assert.ok(paths.includes('Projects/Ünicode'), paths.join(','));
      assert.equal((await client.mailboxCreate('Projects/Ünicode')).created, false, 'ALREADYEXISTS');
      await client.mailboxRename('Projects', 'Work');
      paths = (await client.list()).map((m) => m.path);
      assert.ok(paths.includes('Work/Ünicode'), paths.join(','));
      assert.ok(!paths.includes('Projects/Ünicode'));
      const subscribed = async (): Promise<boolean | undefined> => (await client.list()).find((m) => m.path === 'Work/Ünicode')?.subscribed;
      await client.mailboxUnsubscribe('Work/Ünicode');
      assert.equal(await subscribed(), undefined, 'imapflow leaves `subscribed` unset for unsubscribed folders');
      await client.mailboxSubscribe('Work/Ünicode');
      assert.equal(await subscribed(), true);
      const st = await statusOf(client, 'Work/Ünicode', { messages: true, uidNext: true, uidValidity: true, unseen: true });
      assert.equal(st.messages, 0);
      assert.equal(st.unseen, 0);
      await client.mailboxDelete('Work/Ünicode');
      paths = (await client.list()).map((m) => m.path);
      assert.ok(!paths.includes('Work/Ünicode'));
      await assert.rejects(client.status('Nope', { messages: true }));
    });
  });

  describe('messages', () => {
    let uidMultipart = 0;
    let uidBase64 = 0;
    let uidBareLf = 0;
    let inboxId = '';

    before(async () => {
      const a = await client.append('INBOX', MULTIPART, ['\\Flagged', '$Important'], new Date('2026-03-02T10:00:05Z'));
      const b = await client.append('INBOX', BASE64_LATIN1, [], new Date('2026-01-15T23:30:00Z'));
      assert.ok(a && b);
      uidMultipart = a.uid!;
      uidBase64 = b.uid!;
      // other software drops a bare-LF message into new/
      await mkdir(path.join(maildirOf(USER), 'new'), { recursive: true });
      await writeFile(path.join(maildirOf(USER), 'new', '1771574400.M1P1.othermda'), BARE_LF);
      const box = await store.openMailbox(USER, 'INBOX');
      assert.ok(box);
      inboxId = box.id;
      uidBareLf = box.uids[box.uids.length - 1];
      assert.ok(uidBareLf > uidBase64, 'the dropped-in message got a UID');
      await client.mailboxOpen('INBOX');
    });

    it('APPEND keeps flags and the internal date (with its zone)', async () => {
      const msg = await fetchUid(client, uidMultipart, { flags: true, internalDate: true, size: true });
      assert.ok(msg);
      assert.deepEqual([...msg.flags!].sort(), ['$Important', '\\Flagged']);
      assert.equal(new Date(msg.internalDate!).toISOString(), '2026-03-02T10:00:05.000Z');
      assert.equal(msg.size, MULTIPART.length);
      const wire = await ImapWire.connect(port);
      try {
        await wire.readLine();
        await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        const sel = await wire.command('SELECT INBOX');
        const count = Number(/\* (\d+) EXISTS/.exec(sel.text)![1]);
        wire.write(`A1 APPEND INBOX (\\Seen) "15-Mar-2026 11:22:33 +0200" {${BARE_LF.length}}\r\n`);
        assert.match(await wire.readLine(), /^\+ /);
        wire.write(Buffer.concat([BARE_LF, Buffer.from('\r\n')]));
        const r = await wire.readTagged('A1');
        const m = /^A1 OK \[APPENDUID (\d+) (\d+)\]/.exec(r.tagged);
        assert.ok(m, r.tagged);
        const meta = await store.getMessages(inboxId, [Number(m[2])]);
        assert.equal(meta[0].internalDate.toISOString(), '2026-03-15T09:22:33.000Z');
        assert.deepEqual(meta[0].flags, ['\\Seen']);
        // the appending session learns about its own message at the next command
        const noop = await wire.command('NOOP');
        assert.equal(noop.text, `* ${count + 1} EXISTS\r\n`);
        await client.noop(); // the other session learns about it too
        assert.ok(await client.messageDelete(m[2], { uid: true }));
        assert.equal((await store.getMessages(inboxId, [Number(m[2])])).length, 0);
      } finally {
        wire.close();
      }
    });

    it('ENVELOPE and BODYSTRUCTURE decode the non-ASCII subject and name', async () => {
      const msg = await fetchUid(client, uidMultipart, { envelope: true, bodyStructure: true });
      assert.ok(msg?.envelope && msg.bodyStructure);
      assert.equal(msg.envelope.subject, SUBJECT);
      assert.equal(msg.envelope.from?.[0].name, 'Jüri Tamm');
      assert.equal(msg.envelope.from?.[0].address, 'juri@example.onion');
      assert.equal(msg.envelope.messageId, '<mp1@example.onion>');
      const bs = msg.bodyStructure;
      assert.equal(bs.type, 'multipart/mixed');
      assert.equal(bs.childNodes?.[0].type, 'multipart/alternative');
      assert.equal(bs.childNodes?.[0].childNodes?.[0].type, 'text/plain');
      assert.equal(bs.childNodes?.[0].childNodes?.[0].encoding, 'quoted-printable');
      assert.equal(bs.childNodes?.[1].type, 'application/octet-stream');
      assert.equal(bs.childNodes?.[1].dispositionParameters?.filename, 'data.bin');
      // the part sizes the structure announces are what BODY[part] returns
      const part = await fetchUid(client, uidMultipart, { bodyParts: ['1.1', '2'] });
      assert.equal(part?.bodyParts?.get('1.1')?.length, bs.childNodes?.[0].childNodes?.[0].size);
      assert.equal(part?.bodyParts?.get('2')?.length, bs.childNodes?.[1].size);
    });

    it('non-UTF8 sessions get encoded words in ENVELOPE; repeated FETCHes are identical (cache not mutated)', async () => {
      const wire = await ImapWire.connect(port);
      try {
        await wire.readLine();
        await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        await wire.command('EXAMINE INBOX');
        const q = `UID FETCH ${uidMultipart} (ENVELOPE BODYSTRUCTURE BODY)`;
        const first = await wire.command(q);
        const second = await wire.command(q);
        assert.equal(second.text, first.text);
        assert.doesNotMatch(first.text, /[\x80-\xff]/, 'only ASCII without UTF8=ACCEPT');
        assert.match(first.text, /"=\?UTF-8\?/);
        assert.match(first.text, /\("ATTACHMENT" \("FILENAME" "data.bin"\)\)/);
      } finally {
        wire.close();
      }
      const utf8Wire = await ImapWire.connect(port);
      try {
        await utf8Wire.readLine();
        await utf8Wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        await utf8Wire.command('ENABLE UTF8=ACCEPT');
        await utf8Wire.command('EXAMINE INBOX');
        const q = `UID FETCH ${uidMultipart} (ENVELOPE BODYSTRUCTURE)`;
        const utf8 = await utf8Wire.command(q);
        assert.ok(utf8.raw.includes(Buffer.from(`"${SUBJECT}"`)), 'raw UTF-8 subject after ENABLE UTF8=ACCEPT');
        const again = await utf8Wire.command(q);
        assert.equal(again.text, utf8.text);
      } finally {
        utf8Wire.close();
      }
    });

    it('BODY[] is byte-exact with the store, for a multipart non-ASCII message and a bare-LF one', async () => {
      for (const uid of [uidMultipart, uidBase64, uidBareLf]) {
        const stored = await store.readMessage(inboxId, uid);
        assert.ok(stored);
        const msg = await fetchUid(client, uid, { source: true, size: true });
        assert.ok(msg?.source);
        assert.ok(msg.source.equals(stored), `BODY[] of uid ${uid} differs from store.readMessage`);
        assert.equal(msg.size, stored.length, 'RFC822.SIZE is the CRLF size');
      }
      const lf = await store.readMessage(inboxId, uidBareLf);
      assert.ok(lf?.equals(Buffer.from(BARE_LF.toString('latin1').replace(/\n/g, '\r\n'), 'latin1')));
      assert.ok((await store.readMessage(inboxId, uidMultipart))?.equals(MULTIPART));
    });

    it('BODY.PEEK[1], BODY[HEADER.FIELDS (SUBJECT)], partial <0.10>, RFC822.TEXT, BODY[1.2] are exact', async () => {
      const wire = await ImapWire.connect(port);
      try {
        await wire.readLine();
        await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        await wire.command('SELECT INBOX');
        const r = await wire.command(
          `UID FETCH ${uidMultipart} (BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[]<0.10> BODY.PEEK[1.2] BODY.PEEK[2]<3.4>)`,
        );
        const html = '<p>Tere! Järgmine kohtumine on neljapäeval.</p>';
        const htmlBytes = Buffer.byteLength(html);
        const expected = Buffer.concat([
          Buffer.from(`* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {${`Subject: =?UTF-8?B?${b64(SUBJECT)}?=\r\n\r\n`.length}}\r\n`),
          Buffer.from(`Subject: =?UTF-8?B?${b64(SUBJECT)}?=\r\n\r\n`),
          Buffer.from(` BODY[]<0> {10}\r\n${MULTIPART.subarray(0, 10).toString('latin1')}`, 'latin1'),
          Buffer.from(` BODY[1.2] {${htmlBytes}}\r\n`),
          Buffer.from(html),
          Buffer.from(` BODY[2]<3> {4}\r\n${b64(ATTACHMENT).slice(3, 7)} UID ${uidMultipart})\r\n`),
        ]);
        assert.equal(r.raw.subarray(0, expected.length).toString('latin1'), expected.toString('latin1'));
      } finally {
        wire.close();
      }
      const msg = await fetchUid(client, uidMultipart, { flags: true, bodyParts: ['1'] });
      assert.ok(!msg?.flags?.has('\\Seen'), 'PEEK does not set \\Seen');
      const text = await fetchUid(client, uidBareLf, { bodyParts: ['text'] });
      assert.equal(text?.bodyParts?.get('text')?.toString('utf8'), 'first line\r\nsecond line, ümlaut\r\n');
    });

    it('BODY[] without PEEK sets \\Seen first and shows it in the same response', async () => {
      const wire = await ImapWire.connect(port);
      try {
        await wire.readLine();
        await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        await wire.command('SELECT INBOX');
        const r = await wire.command(`UID FETCH ${uidBase64} (BODY[TEXT])`);
        assert.match(r.text, /FLAGS \(\\Seen\)/);
      } finally {
        wire.close();
      }
      const meta = await store.getMessages(inboxId, [uidBase64]);
      assert.ok(meta[0].flags.includes('\\Seen'));
      await client.messageFlagsRemove(String(uidBase64), ['\\Seen'], { uid: true });
    });

    it('EXAMINE is read-only: STORE and UID STORE change nothing, BODY[] does not set \\Seen', async () => {
      const wire = await ImapWire.connect(port);
      try {
        await wire.readLine();
        await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        const ex = await wire.command('EXAMINE INBOX');
        assert.match(ex.tagged, /^W2 OK \[READ-ONLY\]/);
        const uidStore = await wire.command(`UID STORE ${uidBase64} +FLAGS (\\Deleted)`);
        assert.match(uidStore.tagged, /^W3 NO \[READ-ONLY\]/);
        const seqStore = await wire.command('STORE 1 +FLAGS (\\Deleted)');
        assert.match(seqStore.tagged, /^W4 NO \[READ-ONLY\]/);
        const body = await wire.command(`UID FETCH ${uidBase64} (BODY[])`);
        assert.doesNotMatch(body.text, /\\Seen/);
        const expunge = await wire.command('EXPUNGE');
        assert.match(expunge.tagged, /^W6 OK/);
      } finally {
        wire.close();
      }
      const metas = await store.getMessages(inboxId, [uidMultipart, uidBase64]);
      for (const m of metas) {
        assert.ok(!m.flags.includes('\\Deleted'));
        assert.ok(!m.flags.includes('\\Seen'));
      }
    });

    it('STORE flags and keywords; CONDSTORE UNCHANGEDSINCE refuses stale updates', async () => {
      assert.ok(await client.messageFlagsAdd(String(uidBase64), ['\\Answered', 'project-x'], { uid: true }));
      let msg = await fetchUid(client, uidBase64, { flags: true });
      assert.deepEqual([...msg!.flags!].sort(), ['\\Answered', 'project-x']);
      await client.messageFlagsRemove(String(uidBase64), ['project-x'], { uid: true });
      await client.messageFlagsSet(String(uidBase64), ['\\Answered', '$Label1'], { uid: true });
      msg = await fetchUid(client, uidBase64, { flags: true });
      assert.deepEqual([...msg!.flags!].sort(), ['$Label1', '\\Answered']);

      const wire = await ImapWire.connect(port);
      try {
        await wire.readLine();
        await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        const sel = await wire.command('SELECT INBOX (CONDSTORE)');
        assert.match(sel.text, /\[HIGHESTMODSEQ \d+\]/);
        const f = await wire.command(`UID FETCH ${uidBase64} (MODSEQ)`);
        const modseq = Number(/MODSEQ \((\d+)\)/.exec(f.text)![1]);
        const stale = await wire.command(`UID STORE ${uidBase64} (UNCHANGEDSINCE ${modseq - 1}) +FLAGS (stale)`);
        assert.match(stale.tagged, new RegExp(`^W4 OK \\[MODIFIED ${uidBase64}\\]`));
        const fresh = await wire.command(`UID STORE ${uidBase64} (UNCHANGEDSINCE ${modseq}) +FLAGS (fresh)`);
        assert.match(fresh.text, new RegExp(`\\* \\d+ FETCH \\(UID ${uidBase64} FLAGS \\([^)]*fresh[^)]*\\) MODSEQ \\((\\d+)\\)\\)`));
        assert.match(fresh.tagged, /^W5 OK/);
        const newModseq = Number(new RegExp(`MODSEQ \\((\\d+)\\)`).exec(fresh.text)![1]);
        const search = await wire.command(`UID SEARCH MODSEQ ${newModseq}`);
        assert.equal(search.text, `* SEARCH ${uidBase64} (MODSEQ ${newModseq})\r\n`);
        const changed = await wire.command(`UID FETCH 1:* (FLAGS) (CHANGEDSINCE ${newModseq - 1})`);
        assert.equal(changed.text.match(/FETCH/g)?.length, 1, changed.text);
        const silent = await wire.command(`UID STORE ${uidBase64} -FLAGS.SILENT (fresh)`);
        // with CONDSTORE on, even .SILENT reports the new MODSEQ
        assert.match(silent.text, /MODSEQ/);
      } finally {
        wire.close();
      }
      await client.messageFlagsSet(String(uidBase64), [], { uid: true });
    });

    it('SEARCH: decoded subject, QP and base64 bodies, flags, UIDs, dates, sizes, NOT/OR', async () => {
      const uids = async (q: Parameters<ImapFlow['search']>[0]): Promise<number[]> =>
        ((await client.search(q, { uid: true })) || []).sort((a, b) => a - b);
      assert.deepEqual(await uids({ subject: 'ümber tallinna' }), [uidMultipart]);
      assert.deepEqual(await uids({ subject: '🌍' }), [uidMultipart]);
      assert.deepEqual(await uids({ from: 'jüri' }), [uidMultipart]);
      assert.deepEqual(await uids({ body: 'neljapäeval kell' }), [uidMultipart], 'QP with a soft line break');
      assert.deepEqual(await uids({ body: 'KALAMAJA' }), [uidBase64], 'base64 ISO-8859-1 body');
      assert.deepEqual(await uids({ body: 'sõnum' }), [uidBase64]);
      assert.deepEqual(await uids({ body: 'ümlaut' }), [uidBareLf]);
      assert.deepEqual(await uids({ text: 'juri@example.onion' }), [uidMultipart]);
      assert.deepEqual(await uids({ header: { 'message-id': 'b64@example' } }), [uidBase64]);
      assert.deepEqual(await uids({ flagged: true }), [uidMultipart]);
      assert.deepEqual(await uids({ keyword: '$Important' }), [uidMultipart]);
      assert.deepEqual(await uids({ unKeyword: '$Important', uid: `${uidMultipart}:${uidBareLf}` }), [uidBase64, uidBareLf]);
      assert.deepEqual(await uids({ uid: `${uidBase64}:*` }), [uidBase64, uidBareLf]);
      const metas = await store.getMessages(inboxId, [uidMultipart, uidBase64, uidBareLf]);
      const [mp, b64m, lf] = metas;
      // the dropped-in message's internal date is its file's time, i.e. now
      const sinceMarch = [uidMultipart, ...(lf.internalDate >= new Date('2026-03-01T00:00:00Z') ? [uidBareLf] : [])];
      assert.deepEqual(await uids({ since: new Date('2026-03-01T00:00:00Z') }), sinceMarch);
      assert.deepEqual(await uids({ before: new Date('2026-02-01T00:00:00Z') }), [uidBase64]);
      assert.deepEqual(await uids({ on: new Date('2026-01-15T00:00:00Z') }), [uidBase64]);
      assert.deepEqual(await uids({ sentBefore: new Date('2026-02-01T00:00:00Z') }), [uidBase64]);
      assert.deepEqual(await uids({ sentOn: new Date('2026-02-20T00:00:00Z') }), [uidBareLf]);
      assert.deepEqual(await uids({ sentSince: new Date('2026-03-02T00:00:00Z') }), [uidMultipart]);
      assert.ok(lf.size < b64m.size && b64m.size < mp.size);
      assert.deepEqual(await uids({ larger: b64m.size }), [uidMultipart]);
      assert.deepEqual(await uids({ smaller: b64m.size }), [uidBareLf]);
      assert.deepEqual(await uids({ larger: lf.size, smaller: mp.size }), [uidBase64]);
      assert.deepEqual(await uids({ not: { flagged: true } }), [uidBase64, uidBareLf]);
      assert.deepEqual(await uids({ or: [{ body: 'kalamaja' }, { subject: 'bare lf' }] }), [uidBase64, uidBareLf]);
      assert.deepEqual(await uids({ subject: 'no such thing' }), []);
    });

    it('SEARCH CHARSET ISO-8859-1 decodes the search string; unknown charsets get BADCHARSET', async () => {
      const wire = await ImapWire.connect(port);
      try {
        await wire.readLine();
        await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        await wire.command('SELECT INBOX');
        wire.write(Buffer.from('S1 UID SEARCH CHARSET ISO-8859-1 BODY {5}\r\n', 'latin1'));
        assert.match(await wire.readLine(), /^\+ /);
        wire.write(Buffer.from('s\xf5num\r\n', 'latin1'));
        const r = await wire.readTagged('S1');
        assert.equal(r.text, `* SEARCH ${uidBase64}\r\n`);
        const bad = await wire.command('SEARCH CHARSET X-NO-SUCH ALL');
        assert.match(bad.tagged, /NO \[BADCHARSET\]/);
      } finally {
        wire.close();
      }
    });

    it('COPY, MOVE, EXPUNGE with UIDPLUS', async () => {
      const copied = await client.messageCopy(String(uidBase64), 'Archive', { uid: true });
      assert.ok(copied && copied.uidMap?.size === 1);
      const archived = await statusOf(client, 'Archive', { messages: true });
      assert.equal(archived.messages, 1);
      const moved = await client.messageMove(String(uidBareLf), 'Trash', { uid: true });
      assert.ok(moved && moved.uidMap?.get(uidBareLf));
      const inboxUids = ((await client.search({ all: true }, { uid: true })) || []).sort((a, b) => a - b);
      assert.deepEqual(inboxUids, [uidMultipart, uidBase64]);
      const trash = await statusOf(client, 'Trash', { messages: true });
      assert.equal(trash.messages, 1);
      assert.equal(await client.messageCopy(String(uidBase64), 'No/Such/Box', { uid: true }), false);
      const wire = await ImapWire.connect(port);
      try {
        await wire.readLine();
        await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        await wire.command('SELECT INBOX');
        assert.match((await wire.command(`UID COPY ${uidBase64} Nope`)).tagged, /^W3 NO \[TRYCREATE\]/);
        assert.match((await wire.command(`UID MOVE ${uidBase64} Nope`)).tagged, /^W4 NO \[TRYCREATE\]/);
      } finally {
        wire.close();
      }

      assert.ok(await client.messageDelete(String(uidBase64), { uid: true }));
      const left = ((await client.search({ all: true }, { uid: true })) || []).sort((a, b) => a - b);
      assert.deepEqual(left, [uidMultipart]);
      assert.equal((await store.getMessages(inboxId, [uidBase64])).length, 0);
    });

    it('hundreds of messages in one FETCH come out byte-exact and in order (arenas, chunked writes, COMPRESS=DEFLATE, STARTTLS)', async () => {
      await store.createMailbox(USER, 'Many');
      const msgs: Buffer[] = [];
      for (let i = 0; i < 300; i++) {
        const body = Buffer.alloc(200 + ((i * 7919) % 60_000));
        for (let k = 0; k < body.length; k++) body[k] = k % 80 === 78 ? 13 : k % 80 === 79 ? 10 : 33 + ((k * 31 + i) % 90);
        // a few with bare LFs (stored as given, served with CRLF)
        const head = i % 50 === 7 ? `Subject: many ${i}\nX-Lf: yes\n\n` : `Subject: many ${i}\r\n\r\n`;
        const raw = Buffer.concat([Buffer.from(head), body]);
        msgs.push(raw);
        await store.append(USER, 'Many', raw);
      }
      // a connection of its own (the shared client keeps INBOX selected)
      const other = imapClient(port);
      await other.connect();
      try {
        await other.mailboxOpen('Many');
        const seen: Buffer[] = [];
        for await (const m of other.fetch('1:*', { source: true })) seen.push(m.source!);
        assert.equal(seen.length, msgs.length);
        seen.forEach((got, i) => {
          const want = Buffer.from(msgs[i].toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
          assert.ok(got.equals(want), `message ${i}`);
        });
      } finally {
        await other.logout().catch(() => undefined);
      }
    });

    it('a 3 MiB message is served byte-exact (streamed literal, COMPRESS=DEFLATE, STARTTLS)', async () => {
      const filler = Buffer.alloc(3 * 1024 * 1024);
      for (let i = 0; i < filler.length; i++) filler[i] = (i * 7919) % 251;
      const big = Buffer.concat([
        crlf(['Subject: big one', 'Content-Type: application/octet-stream', 'Content-Transfer-Encoding: base64', '', '']),
        Buffer.from(filler.toString('base64').replace(/.{76}/g, '$&\r\n') + '\r\n'),
      ]);
      const appended = await client.append('INBOX', big);
      assert.ok(appended);
      await client.noop();
      // two in one FETCH, with small literals around them, to exercise output ordering
      const seen: Buffer[] = [];
      for await (const m of client.fetch(`${uidMultipart},${appended.uid}`, { source: true, headers: ['subject'] }, { uid: true })) {
        seen.push(m.source!);
      }
      assert.equal(seen.length, 2);
      assert.ok(seen[1].equals(big), 'big BODY[] is byte-exact');
      assert.ok(seen[0].equals(MULTIPART));
      const part = await fetchUid(client, appended.uid!, { bodyParts: ['1'] });
      assert.equal(part.bodyParts?.get('1')?.length, big.length - big.indexOf('\r\n\r\n') - 4);
      assert.ok(await client.messageDelete(String(appended.uid), { uid: true }));
    });

    it('GETQUOTAROOT reports the storage in use', async () => {
      const q = await client.getQuota('INBOX');
      assert.ok(q && q.storage);
      const used = await store.usage(USER);
      assert.equal(q.storage.usage, Math.ceil(used / 1024) * 1024);
      assert.ok((q.storage.limit ?? 0) > used);
    });
  });

  describe('IDLE', () => {
    it('an IDLEing session sees EXISTS promptly after a delivery (store.append) and after another session APPENDs', async () => {
      const wire = await ImapWire.connect(port);
      const other = imapClient(port);
      try {
        await wire.readLine();
        await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        const sel = await wire.command('SELECT INBOX');
        let count = Number(/\* (\d+) EXISTS/.exec(sel.text)![1]);
        wire.write('I1 IDLE\r\n');
        assert.match(await wire.readLine(), /^\+ idling/);

        const latencies: number[] = [];
        const totals: number[] = [];
        for (let i = 0; i < 5; i++) {
          const raw = crlf(['From: smtp@example.onion', `Subject: delivery ${i}`, '', 'hello', '']);
          const tStart = performance.now();
          await store.append(USER, 'INBOX', raw);
          const tStored = performance.now();
          const line = await wire.readLine(2000);
          const t1 = performance.now();
          count++;
          assert.equal(line, `* ${count} EXISTS\r\n`);
          latencies.push(t1 - tStored);
          totals.push(t1 - tStart);
        }

        await other.connect();
        const t0 = performance.now();
        await other.append('INBOX', crlf(['Subject: from another session', '', 'hi', '']));
        const line = await wire.readLine(2000);
        const viaSession = performance.now() - t0;
        count++;
        assert.equal(line, `* ${count} EXISTS\r\n`);

        // flag changes by another session arrive as FETCH
        await other.mailboxOpen('INBOX');
        await other.messageFlagsAdd(String(count), ['\\Flagged']);
        assert.match(await wire.readLine(2000), new RegExp(`^\\* ${count} FETCH \\(FLAGS \\(\\\\Flagged\\)\\)`));

        wire.write('DONE\r\n');
        const done = await wire.readTagged('I1');
        assert.equal(done.tagged, 'I1 OK IDLE terminated');
        const max = Math.max(...latencies);
        console.log(
          `# IDLE latency, store.append resolved -> EXISTS: ${latencies.map((l) => l.toFixed(1)).join(', ')} ms (max ${max.toFixed(1)}); ` +
            `store.append called -> EXISTS: ${totals.map((l) => l.toFixed(1)).join(', ')} ms; ` +
            `APPEND by another session -> EXISTS: ${viaSession.toFixed(1)} ms`,
        );
        assert.ok(max < 200, `EXISTS took ${max} ms`);
      } finally {
        wire.close();
        await other.logout().catch(() => undefined);
      }
    });

    it('imapflow gets an exists event while idling', async () => {
      const watcher = imapClient(port);
      await watcher.connect();
      try {
        await watcher.mailboxOpen('INBOX');
        const before = watcher.mailbox && typeof watcher.mailbox === 'object' ? watcher.mailbox.exists : 0;
        const seen = new Promise<number>((resolve) => watcher.on('exists', (ev: { count: number }) => resolve(ev.count)));
        const idling = watcher.idle();
        await new Promise((r) => setTimeout(r, 100));
        await store.append(USER, 'INBOX', crlf(['Subject: watched', '', 'x', '']));
        const count = await Promise.race([seen, new Promise<number>((_, rej) => setTimeout(() => rej(new Error('no exists event')), 3000))]);
        assert.equal(count, before + 1);
        void idling;
      } finally {
        await watcher.logout().catch(() => undefined);
      }
    });

    it('deleting a selected mailbox drops the sessions that have it selected', async () => {
      await client.mailboxCreate('Doomed');
      const wire = await ImapWire.connect(port);
      try {
        await wire.readLine();
        await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
        await wire.command('SELECT Doomed');
        await client.mailboxDelete('Doomed');
        assert.match(await wire.readLine(2000), /^\* BYE /);
      } finally {
        wire.close();
      }
    });
  });

  it('FETCH of a message another session expunged meanwhile does not break the session', async () => {
    const first = await client.append('INBOX', crlf(['Subject: short-lived', '', 'x', '']));
    assert.ok(first);
    await client.noop();
    const wire = await ImapWire.connect(port);
    try {
      await wire.readLine();
      await wire.command(`LOGIN ${USER} "${PASSWORD}"`);
      await wire.command('SELECT INBOX');
      await client.messageDelete(String(first.uid), { uid: true });
      const r = await wire.command(`UID FETCH ${first.uid} (BODY.PEEK[] FLAGS)`);
      assert.match(r.tagged, /OK/);
      const noop = await wire.command('NOOP');
      assert.match(noop.text, /EXPUNGE/);
    } finally {
      wire.close();
    }
  });
});

describe('imap server: resources', () => {
  it('an IDLEing client that vanishes leaves no timer behind (imap-core arms a 30-minute one)', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-imap-idle-'));
    const store = new MaildirStore({ maildirFor: (u) => path.join(dir, u) });
    await store.ensureUser(USER);
    const server = createImapServer({
      store,
      logger: pino({ level: 'silent' }),
      secure: false,
      authenticate: async () => ({ id: USER, username: USER }),
    });
    const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    try {
      await server.listen(0, '127.0.0.1');
      const baseline = timers();
      const wire = await ImapWire.connect(server.address()!.port);
      await wire.readLine();
      await wire.command('LOGIN alice x');
      await wire.command('SELECT INBOX');
      wire.write('I1 IDLE\r\n');
      assert.match(await wire.readLine(), /^\+ idling/);
      assert.equal(timers(), baseline + 1, 'IDLE armed its timer');
      wire.close();
      for (let i = 0; i < 200 && server.connectionCount(); i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(server.connectionCount(), 0);
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(timers(), baseline, 'the IDLE timer was cleared');
    } finally {
      await server.close();
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('imap server: implicit TLS listener', () => {
  it('serves clients that send SNI (the onion name), on 993-style and STARTTLS listeners', async (t) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-imap-tls-'));
    const tlsMaterial = await selfSignedCert(dir);
    if (!tlsMaterial) {
      await rm(dir, { recursive: true, force: true });
      t.skip('openssl is not available to make a test certificate');
      return;
    }
    const store = new MaildirStore({ maildirFor: (u) => path.join(dir, u) });
    await store.ensureUser(USER);
    try {
      for (const secure of [true, false]) {
        const server = createImapServer({
          store,
          tls: tlsMaterial,
          logger: pino({ level: 'silent' }),
          secure,
          authenticate: async () => ({ id: USER, username: USER }),
        });
        await server.listen(0, '127.0.0.1');
        const c = new ImapFlow({
          host: '127.0.0.1',
          port: server.address()!.port,
          secure,
          tls: { rejectUnauthorized: false, servername: 'exampleonionaddress.onion' },
          auth: { user: USER, pass: 'x' },
          logger: false,
        });
        try {
          await c.connect();
          assert.equal(c.secureConnection, true);
          assert.ok((await c.list()).some((m) => m.path === 'Sent'));
          await c.logout();
        } finally {
          c.close();
          await server.close();
        }
      }
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('requires a certificate', () => {
    assert.throws(() =>
      createImapServer({
        store: {} as never,
        logger: pino({ level: 'silent' }),
        secure: true,
        authenticate: async () => null,
      }),
    );
  });
});
