/**
 * SMTP inbound (port 25 role) over real sockets, a real MaildirStore in a temp dir, and real
 * clients (nodemailer, swaks, and a byte-level client for what those cannot send).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { silentLogger } from '../src/log/logger.js';
import { createInboundSmtpServer, type InboundSmtpOptions, type InboundSmtpServer, type RecipientResolution } from '../src/smtp/inbound-server.js';
import { MaildirStore } from '../src/store/maildir/maildir-store.js';
import { ensureCertificate } from '../src/tls/certificate.js';
import { maildirMessagesByAge } from './helpers/maildir-files.js';
import { SmtpWire } from './helpers/smtp-wire.js';
import { swaksOrSkip } from './helpers/swaks.js';

const run = promisify(execFile);

const DOMAIN = 'mv2gugvcecgbi4sbp6ckoa2faqv5tcwqmpo367phqorka2d4tbz6xv4l.onion';
const EXTRA_DOMAIN = 'mail.example';
const LOCAL_DOMAINS = [DOMAIN, EXTRA_DOMAIN];
const USERS = new Set(['alice', 'bob', 'carol', 'broken']);
const ALIASES: Record<string, string> = { 'alice.alias': 'alice', postmaster: 'carol' };
const MAX_SIZE = 64 * 1024;
const MAX_RCPT = 5;
const HOSTNAME = os.hostname();

/** The test's recipient policy (same shape as src/users/recipients.ts). */
function resolveRecipient(address: string): RecipientResolution {
  const at = address.lastIndexOf('@');
  const local = address.slice(0, at).toLowerCase();
  const domain = address.slice(at + 1).toLowerCase();
  if (at < 0 || !LOCAL_DOMAINS.includes(domain)) return { kind: 'remote', domain };
  if (local === 'lookup-fails') throw new Error('user database unavailable');
  if (USERS.has(local)) return { kind: 'local', user: local };
  if (ALIASES[local]) return { kind: 'local', user: ALIASES[local]! };
  return { kind: 'unknown-local' };
}

interface Harness {
  dir: string;
  port: number;
  server: InboundSmtpServer;
  store: MaildirStore;
  stop(): Promise<void>;
}

async function startServer(overrides: Partial<InboundSmtpOptions> = {}): Promise<Harness> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-smtp-'));
  // "broken": its Maildir would live below a regular file, so every append fails for real.
  await writeFile(path.join(dir, 'not-a-dir'), 'x');
  const store = new MaildirStore({
    maildirFor: (user: string) => (user === 'broken' ? path.join(dir, 'not-a-dir', 'Maildir') : path.join(dir, 'mail', user)),
  });
  const server = createInboundSmtpServer({
    domain: DOMAIN,
    store,
    resolveRecipient,
    maxMessageSize: MAX_SIZE,
    maxRecipients: MAX_RCPT,
    logger: silentLogger(),
    ...overrides,
  });
  await server.listen(0, '127.0.0.1');
  const port = server.address()!.port;
  return {
    dir,
    port,
    server,
    store,
    async stop() {
      await server.close();
      await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Every message file of the user's INBOX (new/ and cur/), oldest name first. */
function inbox(h: Harness, user: string): Promise<Buffer[]> {
  return maildirMessagesByAge(path.join(h.dir, 'mail', user));
}

function message(subject: string, extra = ''): Buffer {
  return Buffer.from(
    [
      'From: Sender <sender@remote.onion>',
      `To: Alice <alice@${DOMAIN}>`,
      `Subject: ${subject}`,
      `Message-ID: <${Math.random().toString(36).slice(2)}@remote.onion>`,
      'Date: Thu, 26 Nov 2026 10:00:00 +0000',
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: 8bit',
      '',
      'Grüße aus dem Onionland.',
      '.a line starting with a dot (dot-stuffed on the wire)',
      '..two dots',
      '.',
      extra,
      'end',
      '',
    ].join('\r\n'),
  );
}

/** Splits a stored message into our Received header (unfolded parts kept) and the rest. */
function splitReceived(stored: Buffer): { header: string; rest: Buffer } {
  const text = stored.toString('latin1');
  assert.ok(text.startsWith('Received: '), 'stored message starts with our Received header');
  const m = /^Received: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n/.exec(text);
  assert.ok(m, 'Received header is well-formed and folded with CRLF + WSP');
  const header = m[0];
  return { header, rest: stored.subarray(Buffer.byteLength(header, 'latin1')) };
}

function assertPrivateReceived(header: string): void {
  assert.ok(!header.includes('127.0.0.1'), `no client IP in ${header}`);
  assert.ok(!/\[[0-9a-f:.]+\]/i.test(header), `no address literal in ${header}`);
  assert.ok(!new RegExp(`(^|[^a-z0-9-])${HOSTNAME.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}([^a-z0-9-]|$)`, 'i').test(header), `host name ${HOSTNAME} not in ${header}`);
  assert.match(header, /\+0000\r\n$/, 'date in UTC');
}

/** A byte-level session past the greeting and EHLO (their replies not checked). */
async function ehloSession(port: number): Promise<SmtpWire> {
  const c = await SmtpWire.connect(port);
  await c.read();
  await c.command('EHLO client.remote.onion');
  return c;
}

function plainTransport(port: number, extra: Record<string, unknown> = {}) {
  return nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true, name: 'client.remote.onion', ...extra });
}

describe('SMTP inbound', () => {
  let h: Harness;
  before(async () => {
    h = await startServer();
  });
  after(async () => {
    await h?.stop();
  });

  it('greeting and EHLO carry the domain, never the host name or an IP; SIZE advertised, no AUTH', async () => {
    const c = await SmtpWire.connect(h.port);
    try {
      const greeting = await c.read();
      assert.equal(greeting.code, 220);
      assert.equal(greeting.text, `220 ${DOMAIN} ESMTP`);
      const ehlo = await c.command('EHLO client.remote.onion');
      assert.equal(ehlo.code, 250);
      assert.equal(ehlo.lines[0], `250-${DOMAIN}`);
      assert.ok(ehlo.lines.includes(`250-SIZE ${MAX_SIZE}`) || ehlo.lines.includes(`250 SIZE ${MAX_SIZE}`), ehlo.text);
      assert.ok(ehlo.lines.some((l) => /ENHANCEDSTATUSCODES/.test(l)), ehlo.text);
      assert.ok(!ehlo.lines.some((l) => /AUTH/.test(l)), 'no AUTH on port 25');
      assert.ok(!ehlo.lines.some((l) => /STARTTLS/.test(l)), 'no STARTTLS without a certificate');
      for (const text of [greeting.text, ehlo.text]) {
        assert.ok(!text.includes('127.0.0.1'), text);
        assert.ok(!new RegExp(`\\b${HOSTNAME}\\b`).test(text.replace(DOMAIN, '')), text);
      }
      const helo = await c.command('HELO client.remote.onion');
      assert.equal(helo.text, `250 ${DOMAIN}`);
      const auth = await c.command('AUTH PLAIN AGFsaWNlAHNlY3JldA==');
      assert.ok(auth.code === 500 || auth.code === 502, auth.text);
    } finally {
      c.close();
    }
  });

  it('greets at once (no 100 ms early-talker pause): a client talking first is answered in order', async () => {
    // smtp-server alone would answer this EHLO "421 ... You talk too soon" and hang up: it
    // arrives long before its 100 ms timer would have sent the greeting.
    const c = await SmtpWire.connect(h.port);
    try {
      c.write('EHLO early.remote.onion\r\n');
      const greeting = await c.read();
      assert.equal(greeting.text, `220 ${DOMAIN} ESMTP`);
      const ehlo = await c.read();
      assert.equal(ehlo.code, 250, ehlo.text);
      assert.equal(ehlo.lines[0], `250-${DOMAIN}`);
      assert.equal((await c.command('NOOP')).code, 250);
    } finally {
      c.close();
    }
  });

  it('nodemailer: stored bytes are exactly our Received header + what was sent', async () => {
    const raw = message('exact bytes');
    const t = plainTransport(h.port);
    const info = await t.sendMail({ envelope: { from: 'sender@remote.onion', to: [`alice@${DOMAIN}`] }, raw });
    t.close();
    const m = /^250 2\.0\.0 Ok: queued as ([0-9A-F]{16})$/.exec(info.response);
    assert.ok(m, info.response);
    const files = await inbox(h, 'alice');
    assert.equal(files.length, 1);
    const { header, rest } = splitReceived(files[0]!);
    assert.ok(rest.equals(raw), 'body after the Received header is byte-identical');
    const unfolded = header.replace(/\r\n[ \t]+/g, ' ');
    assert.match(
      unfolded,
      new RegExp(
        `^Received: from client\\.remote\\.onion by ${DOMAIN.replace(/\./g, '\\.')} \\(onionpost\\) with ESMTP id ${m[1]} ` +
          `for <alice@${DOMAIN.replace(/\./g, '\\.')}>; (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \\d{1,2} [A-Z][a-z]{2} \\d{4} \\d\\d:\\d\\d:\\d\\d \\+0000\\r\\n$`,
      ),
    );
    assertPrivateReceived(header);
    // The store sees it too.
    const box = await h.store.openMailbox('alice', 'INBOX');
    assert.equal(box?.uids.length, 1);
  });

  it('HELO with the host name or an address literal never reaches the Received header; HELO gives "SMTP"', async () => {
    for (const name of [HOSTNAME, '[127.0.0.1]']) {
      const t = plainTransport(h.port, { name });
      await t.sendMail({ envelope: { from: 'sender@remote.onion', to: [`bob@${DOMAIN}`] }, raw: message(`helo ${name}`) });
      t.close();
    }
    const c = await SmtpWire.connect(h.port);
    await c.read();
    assert.equal((await c.command('HELO old.remote.onion')).code, 250);
    assert.equal((await c.command('MAIL FROM:<sender@remote.onion>')).code, 250);
    assert.equal((await c.command(`RCPT TO:<bob@${DOMAIN}>`)).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    const done = await c.command('Subject: helo\r\n\r\nx\r\n.');
    assert.equal(done.code, 250, done.text);
    c.close();

    const files = await inbox(h, 'bob');
    assert.equal(files.length, 3);
    const headers = files.map((f) => splitReceived(f).header);
    for (const header of headers) assertPrivateReceived(header);
    assert.equal(headers.filter((x) => x.startsWith('Received: from unknown\r\n')).length, 2, headers.join('\n'));
    assert.equal(headers.filter((x) => / with SMTP id /.test(x) && x.startsWith('Received: from old.remote.onion')).length, 1, headers.join('\n'));
  });

  it('unknown local user: 550 5.1.1 at RCPT, before DATA; nothing stored', async () => {
    const c = await ehloSession(h.port);
    assert.equal((await c.command('MAIL FROM:<sender@remote.onion>')).code, 250);
    const rcpt = await c.command(`RCPT TO:<nobody@${DOMAIN}>`);
    assert.equal(rcpt.text, `550 5.1.1 <nobody@${DOMAIN}>: Recipient address rejected: User unknown`);
    const data = await c.command('DATA');
    assert.equal(data.code, 503, 'no valid recipient, so DATA is refused');
    c.close();

    const t = plainTransport(h.port);
    await assert.rejects(
      t.sendMail({ envelope: { from: 'sender@remote.onion', to: [`nobody@${EXTRA_DOMAIN}`] }, raw: message('unknown') }),
      (err: Error & { responseCode?: number; command?: string; response?: string }) => {
        assert.equal(err.responseCode, 550);
        assert.equal(err.command, 'RCPT TO');
        assert.match(err.response ?? '', /^550 5\.1\.1 <nobody@mail\.example>: Recipient address rejected: User unknown/);
        return true;
      },
    );
    t.close();
    assert.deepEqual(await readdir(path.join(h.dir, 'mail')).then((d) => d.includes('nobody')), false);
  });

  it('non-local recipient: 550 5.7.1 Relaying denied', async () => {
    const t = plainTransport(h.port);
    await assert.rejects(t.sendMail({ envelope: { from: 'sender@remote.onion', to: ['someone@other.onion'] }, raw: message('relay') }), (err: Error & { response?: string }) => {
      assert.equal(err.response, '550 5.7.1 Relaying denied');
      return true;
    });
    t.close();
  });

  it('resolver failure: 451 4.3.0 at RCPT', async () => {
    const c = await ehloSession(h.port);
    await c.command('MAIL FROM:<sender@remote.onion>');
    const rcpt = await c.command(`RCPT TO:<lookup-fails@${DOMAIN}>`);
    assert.equal(rcpt.code, 451);
    assert.match(rcpt.text, /^451 4\.3\.0 /);
    c.close();
  });

  it('several recipients: one copy per distinct user (aliases and case deduplicated), no "for" clause; rejected ones reported', async () => {
    const before = { alice: (await inbox(h, 'alice')).length, bob: (await inbox(h, 'bob')).length };
    const raw = message('multi');
    const t = plainTransport(h.port);
    const info = await t.sendMail({
      envelope: {
        from: 'sender@remote.onion',
        to: [`alice@${DOMAIN}`, `alice.alias@${DOMAIN}`, `ALICE@${EXTRA_DOMAIN}`, `bob@${DOMAIN}`, `nobody@${DOMAIN}`],
      },
      raw,
    });
    t.close();
    assert.deepEqual(info.rejected, [`nobody@${DOMAIN}`]);
    assert.equal(info.accepted.length, 4);
    const alice = await inbox(h, 'alice');
    const bob = await inbox(h, 'bob');
    assert.equal(alice.length, before.alice + 1, 'alice got exactly one copy');
    assert.equal(bob.length, before.bob + 1);
    const a = splitReceived(alice[alice.length - 1]!);
    const b = splitReceived(bob[bob.length - 1]!);
    assert.ok(a.rest.equals(raw) && b.rest.equals(raw));
    assert.equal(a.header, b.header, 'one shared copy');
    assert.ok(!/\bfor </.test(a.header), 'no recipient list in a shared copy');
  });

  it('the domainless postmaster is accepted (RFC 5321 4.1.1.3)', async () => {
    const c = await ehloSession(h.port);
    await c.command('MAIL FROM:<>');
    assert.equal((await c.command('RCPT TO:<postmaster>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    assert.equal((await c.command('Subject: hi postmaster\r\n\r\nhello\r\n.')).code, 250);
    c.close();
    assert.equal((await inbox(h, 'carol')).length, 1);
  });

  it('more than maxRecipients: 452 4.5.3', async () => {
    const d = await ehloSession(h.port);
    await d.command('MAIL FROM:<sender@remote.onion>');
    const addrs = [`alice@${DOMAIN}`, `bob@${DOMAIN}`, `carol@${DOMAIN}`, `alice@${EXTRA_DOMAIN}`, `bob@${EXTRA_DOMAIN}`];
    for (const a of addrs) assert.equal((await d.command(`RCPT TO:<${a}>`)).code, 250, a);
    const over = await d.command(`RCPT TO:<carol@${EXTRA_DOMAIN}>`);
    assert.equal(over.code, 452);
    assert.match(over.text, /^452 4\.5\.3 /);
    d.close();
  });

  it('SIZE: MAIL FROM SIZE= over the limit is refused with 552 5.3.4', async () => {
    const c = await ehloSession(h.port);
    const r = await c.command(`MAIL FROM:<sender@remote.onion> SIZE=${MAX_SIZE + 1}`);
    assert.equal(r.code, 552);
    assert.match(r.text, /^552 5\.3\.4 /);
    assert.equal((await c.command(`MAIL FROM:<sender@remote.onion> SIZE=${MAX_SIZE}`)).code, 250);
    c.close();
  });

  it('SIZE: data over the limit is refused with 552 5.3.4 and nothing is stored; the session stays usable', async () => {
    const before = (await inbox(h, 'bob')).length;
    const c = await ehloSession(h.port);
    await c.command('MAIL FROM:<sender@remote.onion>');
    await c.command(`RCPT TO:<bob@${DOMAIN}>`);
    assert.equal((await c.command('DATA')).code, 354);
    const line = 'x'.repeat(998) + '\r\n';
    c.write('Subject: big\r\n\r\n' + line.repeat(Math.ceil((MAX_SIZE * 2) / line.length)));
    const r = await c.command('.');
    assert.equal(r.code, 552, r.text);
    assert.match(r.text, /^552 5\.3\.4 /);
    // Exactly at the limit is fine.
    await c.command('MAIL FROM:<sender@remote.onion>');
    await c.command(`RCPT TO:<bob@${DOMAIN}>`);
    await c.command('DATA');
    const head = 'Subject: fits\r\n\r\n';
    const fill = MAX_SIZE - head.length;
    const body = ('y'.repeat(998) + '\r\n').repeat(Math.floor(fill / 1000)) + 'z'.repeat(fill % 1000 - 2) + '\r\n';
    assert.equal(head.length + body.length, MAX_SIZE);
    c.write(head + body);
    const ok = await c.command('.');
    assert.equal(ok.code, 250, ok.text);
    c.close();
    const files = await inbox(h, 'bob');
    assert.equal(files.length, before + 1);
    assert.equal(splitReceived(files[files.length - 1]!).rest.length, MAX_SIZE);
  });

  it('invalid addresses: 501 5.1.3 (recipient) and 501 5.1.7 (sender)', async () => {
    const c = await ehloSession(h.port);
    const from = await c.command('MAIL FROM:<not an address>');
    assert.equal(from.code, 501);
    assert.match(from.text, /^501 5\.1\.7 /);
    await c.command('MAIL FROM:<sender@remote.onion>');
    for (const bad of ['<a@b@c>', '<@>', 'alice@' + DOMAIN, '<alice..x@' + DOMAIN + '>', '<>']) {
      const r = await c.command(`RCPT TO:${bad}`);
      assert.equal(r.code, 501, `${bad}: ${r.text}`);
      assert.match(r.text, /^501 5\.1\.3 /);
    }
    c.close();
  });

  it('NUL bytes: in a command line -> 500 5.5.2; in the message -> 554 5.6.0 and nothing stored', async () => {
    const before = (await inbox(h, 'bob')).length;
    const c = await SmtpWire.connect(h.port);
    await c.read();
    for (const cmd of ['NOOP\0', 'RSET \0', 'EHLO a\0b', '\0']) {
      const r = await c.command(cmd);
      assert.equal(r.code, 500, JSON.stringify(cmd));
      assert.match(r.text, /^500 5\.5\.2 .*NUL/);
    }
    await c.command('EHLO client.remote.onion');
    const mail = await c.command('MAIL FROM:<send\0er@remote.onion>');
    assert.equal(mail.code, 500);
    await c.command('MAIL FROM:<sender@remote.onion>');
    await c.command(`RCPT TO:<bob@${DOMAIN}>`);
    assert.equal((await c.command('DATA')).code, 354);
    const r = await c.command('Subject: nul\r\n\r\nbad \0 byte\r\n.');
    assert.equal(r.code, 554, r.text);
    assert.match(r.text, /^554 5\.6\.0 .*NUL/);
    // The transaction is over, the session goes on.
    assert.equal((await c.command('NOOP')).code, 250);
    c.close();
    assert.equal((await inbox(h, 'bob')).length, before);
  });

  it('DATA ends only at CRLF.CRLF: bare-LF dot sequences cannot end the message or smuggle commands', async () => {
    const before = (await inbox(h, 'bob')).length;
    const variants = ['\n.\n', '\r\n.\n', '\n.\r\n', '\r.\r', '\r\n.\r'];
    const body = variants
      .map((v, i) => `part ${i}${v}MAIL FROM:<evil${i}@remote.onion>\r\nRCPT TO:<alice@${DOMAIN}>\r\nDATA\r\nSubject: smuggled ${i}\r\n\r\nsmuggled${v}`)
      .join('');
    const c = await ehloSession(h.port);
    await c.command('MAIL FROM:<sender@remote.onion>');
    await c.command(`RCPT TO:<bob@${DOMAIN}>`);
    assert.equal((await c.command('DATA')).code, 354);
    c.write('Subject: smuggling test\r\n\r\n' + body);
    // Nothing may answer yet: no reply means the server is still in DATA.
    await assert.rejects(c.read(400), /no complete reply/);
    const end = await c.command('\r\n.');
    assert.equal(end.code, 250, end.text);
    const quit = await c.command('QUIT');
    assert.equal(quit.code, 221, 'exactly one reply for the whole DATA, then QUIT');
    c.close();
    const files = await inbox(h, 'bob');
    assert.equal(files.length, before + 1);
    const { rest } = splitReceived(files[files.length - 1]!);
    assert.equal(rest.toString('latin1'), 'Subject: smuggling test\r\n\r\n' + body + '\r\n');
    assert.equal((await inbox(h, 'alice')).filter((f) => f.includes('smuggled')).length, 0);
  });

  it('PIPELINING: two transactions and QUIT in one write get their replies in order', async () => {
    const before = (await inbox(h, 'carol')).length;
    const c = await ehloSession(h.port);
    const txn = (n: number) => `MAIL FROM:<sender@remote.onion>\r\nRCPT TO:<carol@${DOMAIN}>\r\nDATA\r\nSubject: pipelined ${n}\r\n\r\nbody ${n}\r\n.\r\n`;
    c.write(txn(1) + txn(2) + 'QUIT\r\n');
    const codes: number[] = [];
    for (let i = 0; i < 9; i++) codes.push((await c.read()).code);
    assert.deepEqual(codes, [250, 250, 354, 250, 250, 250, 354, 250, 221]);
    c.close();
    const carol = await inbox(h, 'carol');
    assert.equal(carol.length, before + 2);
    const bodies = carol.slice(-2).map((f) => splitReceived(f).rest.toString()).sort();
    assert.deepEqual(bodies, ['Subject: pipelined 1\r\n\r\nbody 1\r\n', 'Subject: pipelined 2\r\n\r\nbody 2\r\n']);
  });

  it('a failed append answers 451 4.3.0 only after all appends settled; the other user has one copy (duplicate on retry is accepted)', async () => {
    const before = (await inbox(h, 'carol')).length;
    const t = plainTransport(h.port);
    await assert.rejects(t.sendMail({ envelope: { from: 'sender@remote.onion', to: [`broken@${DOMAIN}`] }, raw: message('broken') }), (err: Error & { response?: string }) => {
      assert.match(err.response ?? '', /^451 4\.3\.0 /);
      return true;
    });
    await assert.rejects(
      t.sendMail({ envelope: { from: 'sender@remote.onion', to: [`carol@${DOMAIN}`, `broken@${DOMAIN}`] }, raw: message('half') }),
      (err: Error & { response?: string }) => {
        assert.match(err.response ?? '', /^451 4\.3\.0 /);
        return true;
      },
    );
    t.close();
    const carol = await inbox(h, 'carol');
    assert.equal(carol.length, before + 1, 'carol got exactly one complete copy');
    assert.ok(splitReceived(carol[carol.length - 1]!).rest.toString().includes('Subject: half'));
  });

  it('swaks delivers (skipped when swaks is not installed)', async (t) => {
    if (!(await swaksOrSkip(t))) return;
    const before = (await inbox(h, 'alice')).length;
    const { stdout } = await run('swaks', [
      '--server', '127.0.0.1', '--port', String(h.port), '--from', 'sender@remote.onion', '--to', `alice@${DOMAIN}`,
      '--header', 'Subject: from swaks', '--body', 'hello from swaks', '--timeout', '10',
    ]);
    assert.match(stdout, /<- {2}250 2\.0\.0 Ok: queued as [0-9A-F]{16}/);
    const files = await inbox(h, 'alice');
    assert.equal(files.length, before + 1);
    const { header, rest } = splitReceived(files[files.length - 1]!);
    assertPrivateReceived(header); // swaks says EHLO <host name> by default
    assert.ok(rest.toString().includes('hello from swaks'));
    // swaks sees 550 at RCPT for an unknown user and stops there
    const failed = await run('swaks', ['--server', '127.0.0.1', '--port', String(h.port), '--to', `nobody@${DOMAIN}`, '--timeout', '10']).catch(
      (err: { stdout: string; code: number }) => err,
    );
    assert.match((failed as { stdout: string }).stdout, /<\*\* 550 5\.1\.1 <nobody@/);
  });

  it('close(): idle clients get 421 and close() resolves promptly', async () => {
    const extra = await startServer();
    const c = await ehloSession(extra.port);
    const started = Date.now();
    await extra.stop();
    assert.ok(Date.now() - started < 3000, `close took ${Date.now() - started} ms`);
    const bye = await c.read();
    assert.equal(bye.code, 421);
    assert.ok(await c.closed());
    c.close();
  });
});

describe('SMTP inbound with STARTTLS', () => {
  let h: Harness;
  let cert: Buffer;
  let certDir: string;
  before(async () => {
    certDir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-smtp-tls-'));
    await mkdir(certDir, { recursive: true });
    const material = await ensureCertificate({ certFile: path.join(certDir, 'cert.pem'), keyFile: path.join(certDir, 'key.pem'), domain: DOMAIN, generate: true });
    assert.equal(material.generated, true);
    cert = material.cert;
    h = await startServer({ tls: { key: material.key, cert: material.cert } });
  });
  after(async () => {
    await h?.stop();
    await rm(certDir, { recursive: true, force: true });
  });

  it('STARTTLS is offered and works with the generated certificate (verified against it); Received says ESMTPS', async () => {
    const c = await SmtpWire.connect(h.port);
    await c.read();
    const ehlo = await c.command('EHLO client.remote.onion');
    assert.ok(ehlo.lines.some((l) => /STARTTLS$/.test(l)), ehlo.text);
    assert.ok(!ehlo.lines.some((l) => /AUTH/.test(l)));
    c.close();

    const t = nodemailer.createTransport({
      host: '127.0.0.1',
      port: h.port,
      secure: false,
      requireTLS: true,
      name: 'client.remote.onion',
      // real verification: the self-signed certificate is the trust anchor, the name is the onion
      tls: { ca: [cert], servername: DOMAIN, rejectUnauthorized: true },
    });
    const raw = message('over tls');
    const info = await t.sendMail({ envelope: { from: 'sender@remote.onion', to: [`alice@${DOMAIN}`] }, raw });
    t.close();
    assert.match(info.response, /^250 2\.0\.0 Ok: queued as /);
    const files = await inbox(h, 'alice');
    assert.equal(files.length, 1);
    const { header, rest } = splitReceived(files[0]!);
    assert.ok(rest.equals(raw));
    assert.match(header, / with ESMTPS id /);
    assertPrivateReceived(header);
  });

  it('the "localhost" name verifies too; after STARTTLS the client must EHLO again', async () => {
    const c = await ehloSession(h.port);
    assert.equal((await c.command('STARTTLS')).code, 220);
    const secure = await c.startTls({ ca: [cert], servername: 'localhost', rejectUnauthorized: true });
    assert.equal(secure.authorized, true);
    const mail = await c.command('MAIL FROM:<sender@remote.onion>');
    assert.equal(mail.code, 503, 'HELO/EHLO state is discarded by STARTTLS');
    const ehlo = await c.command('EHLO client.remote.onion');
    assert.ok(!ehlo.lines.some((l) => /STARTTLS/.test(l)));
    c.close();
  });

  it('updateTls(): new handshakes get the new certificate; a server created without TLS starts offering STARTTLS', async () => {
    const other = await ensureCertificate({ certFile: path.join(certDir, 'cert2.pem'), keyFile: path.join(certDir, 'key2.pem'), domain: DOMAIN, generate: true });
    const fingerprint = async (port: number, ca: Buffer) => {
      const c = await SmtpWire.connect(port);
      await c.read();
      const ehlo = await c.command('EHLO client.remote.onion');
      assert.ok(ehlo.lines.some((l) => /STARTTLS$/.test(l)), ehlo.text);
      assert.equal((await c.command('STARTTLS')).code, 220);
      const s = await c.startTls({ ca: [ca], servername: DOMAIN, rejectUnauthorized: true });
      const fp = s.getPeerCertificate().fingerprint256;
      c.close();
      return fp;
    };
    const { X509Certificate } = await import('node:crypto');
    assert.equal(await fingerprint(h.port, cert), new X509Certificate(cert).fingerprint256);
    h.server.updateTls({ key: other.key, cert: other.cert });
    try {
      assert.equal(await fingerprint(h.port, other.cert), new X509Certificate(other.cert).fingerprint256);
    } finally {
      h.server.updateTls({ key: (await readFile(path.join(certDir, 'key.pem'))), cert });
    }

    const plain = await startServer();
    try {
      const c = await SmtpWire.connect(plain.port);
      await c.read();
      assert.ok(!(await c.command('EHLO client.remote.onion')).lines.some((l) => /STARTTLS/.test(l)));
      c.close();
      plain.server.updateTls({ key: other.key, cert: other.cert });
      assert.equal(await fingerprint(plain.port, other.cert), new X509Certificate(other.cert).fingerprint256);
    } finally {
      await plain.stop();
    }
  });

  it('swaks --tls delivers (skipped when swaks is not installed)', async (t) => {
    if (!(await swaksOrSkip(t))) return;
    const before = (await inbox(h, 'bob')).length;
    const { stdout } = await run('swaks', [
      '--server', '127.0.0.1', '--port', String(h.port), '--tls', '--from', 'sender@remote.onion', '--to', `bob@${DOMAIN}`,
      '--header', 'Subject: swaks over tls', '--timeout', '10',
    ]);
    assert.match(stdout, /<- {2}220 .*TLS/i);
    assert.match(stdout, /<~ {2}250 2\.0\.0 Ok: queued as /);
    const files = await inbox(h, 'bob');
    assert.equal(files.length, before + 1);
    assert.match(splitReceived(files[files.length - 1]!).header, / with ESMTPS id /);
  });
});
