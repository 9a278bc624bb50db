/**
 * The persisted metadata cache: ENVELOPE/BODYSTRUCTURE and the search headers live in the
 * store's per-message cache slot, so after a restart metadata FETCH and header SEARCH read
 * no message file. Also the file-system watch: a file dropped into the Maildir by other
 * software reaches an IDLE session without any command.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { after, describe, it } from 'node:test';
import type { ImapServer } from '../src/imap/imap-server.js';
import { MaildirStore } from '../src/store/maildir/maildir-store.js';
import { ImapWire } from './helpers/imap-wire.js';
import { startOneUserImap } from './helpers/imap-test-server.js';

const USER = 'alice';
const PASSWORD = 'pw pw pw';

const crlf = (lines: string[]): Buffer => Buffer.from(lines.join('\r\n') + '\r\n', 'utf8');

function sample(i: number): Buffer {
  const b = `b${i}x`;
  return crlf([
    `From: =?UTF-8?Q?J=C3=BCri_${i}?= <juri${i}@example.onion>`,
    'To: Alice <alice@example.onion>',
    `Subject: =?UTF-8?B?${Buffer.from(`Teade nr ${i} – ülevaade`).toString('base64')}?=`,
    `Date: Mon, ${1 + (i % 28)} Sep 2026 10:00:00 +0200`,
    `Message-ID: <m${i}@example.onion>`,
    'MIME-Version: 1.0',
    `Content-Type: multipart/mixed; boundary="${b}"`,
    '',
    `--${b}`,
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: quoted-printable',
    '',
    `Tere, see on s=C3=B5num ${i}.`,
    `--${b}`,
    'Content-Type: application/pdf; name="f.pdf"',
    'Content-Transfer-Encoding: base64',
    '',
    Buffer.from(`%PDF-${i}`).toString('base64'),
    `--${b}--`,
  ]);
}

interface Running {
  store: MaildirStore;
  server: ImapServer;
  reads: { n: number };
  wire: ImapWire;
}

async function start(maildirFor: (u: string) => string): Promise<Running> {
  const store = new MaildirStore({ maildirFor });
  const reads = { n: 0 };
  const readMessage = store.readMessage.bind(store);
  store.readMessage = async (id, uid, arena) => {
    reads.n++;
    return readMessage(id, uid, arena);
  };
  const readMessages = store.readMessages.bind(store);
  store.readMessages = async (id, uids, arena) => {
    reads.n += uids.length;
    return readMessages(id, uids, arena);
  };
  await store.ensureUser(USER);
  const server = await startOneUserImap(store, { user: USER, password: PASSWORD });
  const wire = await ImapWire.connect(server.address()!.port);
  await wire.readLine();
  assert.match((await wire.command(`LOGIN ${USER} "${PASSWORD}"`)).tagged, /OK/);
  return { store, server, reads, wire };
}

async function stop(r: Running): Promise<void> {
  r.wire.close();
  await r.server.close();
  await r.store.close();
}

const METADATA = 'UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE)';

describe('metadata cache, persisted with the message', () => {
  const dirs: string[] = [];
  const running = new Set<Running>();
  after(async () => {
    // a failed test leaves its server running
    for (const r of running) await stop(r).catch(() => undefined);
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  const startTracked = async (maildirFor: (u: string) => string): Promise<Running> => {
    const r = await start(maildirFor);
    running.add(r);
    return r;
  };
  const stopTracked = async (r: Running): Promise<void> => {
    running.delete(r);
    await stop(r);
  };

  it('after a restart, metadata FETCH and header SEARCH read no message file (also for a dropped-in file)', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-imapcache-'));
    dirs.push(dir);
    const maildirFor = (u: string): string => path.join(dir, 'mail', u);
    let r = await startTracked(maildirFor);
    // through the store (as SMTP delivery does) and through IMAP APPEND
    for (let i = 0; i < 20; i++) await r.store.append(USER, 'INBOX', sample(i));
    const appended = sample(20);
    r.wire.write(`A1 APPEND INBOX {${appended.length}}\r\n`);
    assert.match(await r.wire.readLine(), /^\+/);
    r.wire.write(Buffer.concat([appended, Buffer.from('\r\n')]));
    assert.match((await r.wire.readTagged('A1')).tagged, /^A1 OK/);
    // and one written by other software: no slot until its first FETCH
    const name = '1790000000.M1P1.mda';
    await writeFile(path.join(maildirFor(USER), 'tmp', name), sample(21));
    await rename(path.join(maildirFor(USER), 'tmp', name), path.join(maildirFor(USER), 'new', name));

    assert.match((await r.wire.command('SELECT INBOX')).text, /\* 22 EXISTS/);
    r.reads.n = 0;
    const first = await r.wire.command(METADATA);
    assert.equal(first.text.match(/ FETCH /g)?.length, 22);
    assert.equal(r.reads.n, 1, 'only the dropped-in message is read (slots were built at delivery and APPEND)');
    const body = await r.wire.command('UID FETCH 1:* (BODY)');
    await stopTracked(r);

    r = await startTracked(maildirFor);
    await r.wire.command('SELECT INBOX');
    r.reads.n = 0;
    const again = await r.wire.command(METADATA);
    assert.equal(again.text, first.text, 'same answer after the restart');
    const search = await r.wire.command('UID SEARCH OR SUBJECT "nr 7 – ülevaade" FROM "JÜRI 21"');
    assert.equal(search.text, '* SEARCH 8 22\r\n');
    const sent = await r.wire.command('UID SEARCH SENTON 3-Sep-2026 HEADER Message-ID m2@');
    assert.equal(sent.text, '* SEARCH 3\r\n');
    assert.equal(r.reads.n, 0, 'no message file read after the restart');
    // what the slot does not hold still works (and reads)
    assert.equal((await r.wire.command('UID SEARCH HEADER MIME-Version 1.0')).text.trim().split(' ').length, 2 + 22);
    assert.equal((await r.wire.command('UID FETCH 1:* (BODY)')).text, body.text);
    await stopTracked(r);
  });

  it('figures: 1000 messages, cold vs warm vs warm after a restart', async (t) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-imapcache-'));
    dirs.push(dir);
    const maildirFor = (u: string): string => path.join(dir, 'mail', u);
    // messages stored without a builder: cold, like a maildir migrated from Dovecot
    const plain = new MaildirStore({ maildirFor });
    await plain.ensureUser(USER);
    for (let i = 0; i < 1000; i++) await plain.append(USER, 'INBOX', sample(i));
    await plain.close();

    const timed = async (r: Running): Promise<number> => {
      const t0 = performance.now();
      const res = await r.wire.command(METADATA, 30000);
      assert.equal(res.text.match(/ FETCH /g)?.length, 1000);
      return performance.now() - t0;
    };
    let r = await startTracked(maildirFor);
    await r.wire.command('SELECT INBOX');
    const cold = await timed(r);
    const warm = await timed(r);
    await stopTracked(r);
    r = await startTracked(maildirFor);
    const t0 = performance.now();
    await r.wire.command('SELECT INBOX');
    const select = performance.now() - t0;
    r.reads.n = 0;
    const restarted = await timed(r);
    assert.equal(r.reads.n, 0);
    await stopTracked(r);
    t.diagnostic(
      `1000 messages, ${METADATA}: cold ${cold.toFixed(0)} ms, warm ${warm.toFixed(0)} ms, ` +
        `warm after restart ${restarted.toFixed(0)} ms (first SELECT after restart ${select.toFixed(0)} ms)`,
    );
    assert.ok(restarted < cold, `after a restart (${restarted} ms) must beat cold (${cold} ms)`);
  });
});

describe('outside changes reach IDLE sessions', () => {
  it('a file dropped into new/ by other software: EXISTS during IDLE without any command', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-imapwatch-'));
    const maildirFor = (u: string): string => path.join(dir, 'mail', u);
    const r = await start(maildirFor);
    try {
      await r.store.append(USER, 'INBOX', sample(1));
      assert.match((await r.wire.command('SELECT INBOX')).text, /\* 1 EXISTS/);
      r.wire.write('I1 IDLE\r\n');
      assert.match(await r.wire.readLine(), /^\+ /);
      // let the racy window of our own append pass, so only the watcher can find the file
      await new Promise((res) => setTimeout(res, 120));
      const latencies: number[] = [];
      for (let i = 0; i < 5; i++) {
        const name = `179000000${i}.M${i}P1.mda`;
        await writeFile(path.join(maildirFor(USER), 'tmp', name), sample(100 + i));
        const t0 = performance.now();
        await rename(path.join(maildirFor(USER), 'tmp', name), path.join(maildirFor(USER), 'new', name));
        assert.equal(await r.wire.readLine(2000), `* ${2 + i} EXISTS\r\n`);
        latencies.push(performance.now() - t0);
      }
      r.wire.write('DONE\r\n');
      assert.match((await r.wire.readTagged('I1')).tagged, /^I1 OK/);
      // typically 20-60 ms (the rescan fsyncs the new UID before announcing it); without the
      // watcher no EXISTS would come at all. Generous bound: CI machines are busy.
      const max = Math.max(...latencies);
      assert.ok(max < 500, `EXISTS after ${latencies.map((l) => l.toFixed(1)).join(', ')} ms`);
    } finally {
      await stop(r);
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('ENVELOPE / BODYSTRUCTURE / BODY as Dovecot serves them', () => {
  it('8-bit UTF-8 subjects, NIL subject, default charset, BODY without extension data; also from the cache slot', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-structure-'));
    const maildirFor = (u: string): string => path.join(dir, 'mail', u);
    const r = await start(maildirFor);
    try {
      const messages = [
        crlf(['From: Bob <bob@x.onion>', 'Subject: Grüße 🎉', 'Content-Type: text/html', '', '<p>hi</p>']),
        crlf(['To: a@b.onion', '', 'no from, no subject, no date']),
        crlf(['From: Bob <bob@x.onion>', 'Content-Type: text/plain; format=flowed', '', 'hi']),
        crlf([
          'From: Bob <bob@x.onion>',
          'Subject: fwd',
          'Content-Type: multipart/mixed; boundary=zz',
          '',
          '--zz',
          '',
          'part without headers',
          '--zz',
          'Content-Type: message/rfc822',
          '',
          'From: C <c@y.onion>',
          'Subject: inner Grüße',
          '',
          'inner body',
          '--zz',
          'Content-Type: message/rfc822',
          '',
          'From: D <d@y.onion>',
          '',
          'no subject inside',
          '--zz--',
        ]),
      ];
      for (const m of messages) await r.store.append(USER, 'INBOX', m);
      // the same message once more, but dropped in by other software (parsed at FETCH time)
      const name = '1790000000.M9P9.mda';
      await writeFile(path.join(maildirFor(USER), 'new', name), messages[3]);
      await r.wire.command('SELECT INBOX');
      const res = (await r.wire.command('FETCH 1:* (ENVELOPE BODYSTRUCTURE BODY)')).text.split('\r\n');
      const line = (n: number): string => res.find((l) => l.startsWith(`* ${n} FETCH`)) ?? '';
      assert.match(line(1), /^\* 1 FETCH \(ENVELOPE \(NIL "=\?UTF-8\?Q\?Gr=C3=BC=C3=9Fe_=F0=9F=8E=89\?=" /);
      assert.match(line(1), /BODYSTRUCTURE \("TEXT" "HTML" \("CHARSET" "us-ascii"\) NIL NIL "7BIT" 11 1 NIL NIL NIL NIL\)/);
      assert.match(line(2), /^\* 2 FETCH \(ENVELOPE \(NIL NIL NIL NIL NIL \(\(NIL NIL "a" "b\.onion"\)\) NIL NIL NIL NIL\)/);
      assert.match(line(3), /\("FORMAT" "flowed" "CHARSET" "us-ascii"\)/);
      for (const n of [4, 5]) {
        const l = line(n);
        assert.match(l, /\("TEXT" "PLAIN" \("CHARSET" "us-ascii"\) NIL NIL "7BIT" 20 0 NIL NIL NIL NIL\)/, `#${n} part without headers`);
        assert.match(l, /\(NIL "inner =\?UTF-8\?Q\?Gr=C3=BC=C3=9Fe\?=" /, `#${n} attached subject`);
        assert.match(l, /"7BIT" \d+ \(NIL NIL \(\("D" NIL "d" "y\.onion"\)\)/, `#${n} attached message without subject`);
        // BODY: parts and subtype only (no ("BOUNDARY" ...) or other extension data)
        assert.match(l, /BODY \(\("TEXT" "PLAIN" \("CHARSET" "us-ascii"\) NIL NIL "7BIT" 20 0\)\("MESSAGE" "RFC822" .* "MIXED"\)\)$/, `#${n} BODY`);
      }
      // a UTF8=ACCEPT session gets the subject as UTF-8
      await r.wire.command('UNSELECT');
      assert.match((await r.wire.command('ENABLE UTF8=ACCEPT')).text, /ENABLED UTF8=ACCEPT/);
      await r.wire.command('SELECT INBOX');
      const utf8 = await r.wire.command('FETCH 1 (ENVELOPE)');
      assert.match(utf8.raw.toString('utf8'), /ENVELOPE \(NIL "Grüße 🎉" /);
    } finally {
      await stop(r);
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('APPEND to a non-ASCII mailbox after ENABLE UTF8=ACCEPT (imap-core leaves that name undecoded)', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-structure-'));
    const r = await start((u) => path.join(dir, 'mail', u));
    try {
      await r.store.createMailbox(USER, 'Entwürfe/日本語');
      await r.wire.command('ENABLE UTF8=ACCEPT');
      const raw = sample(1);
      r.wire.write(Buffer.concat([Buffer.from(`A1 APPEND "Entwürfe/日本語" {${raw.length}}\r\n`, 'utf8')]));
      assert.match(await r.wire.readLine(), /^\+/);
      r.wire.write(Buffer.concat([raw, Buffer.from('\r\n')]));
      assert.match((await r.wire.readTagged('A1')).tagged, /^A1 OK \[APPENDUID /);
      assert.equal((await r.store.mailboxStatus(USER, 'Entwürfe/日本語'))!.messages, 1);
      assert.match((await r.wire.command('UNSUBSCRIBE "Entwürfe/日本語"')).tagged, /OK/);
    } finally {
      await stop(r);
      await rm(dir, { recursive: true, force: true });
    }
  });
});
