/**
 * Submission (587 STARTTLS and 465 implicit TLS roles) over real sockets, with real clients
 * (nodemailer with auth, swaks --auth/--tls/--tlsc, and the byte-level SmtpWire), a real
 * users file, aliases file, MaildirStore and outbound queue.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { parseAddressList } from '../src/smtp/address-header.js';
import { AuthThrottle } from '../src/smtp/auth-throttle.js';
import { isLoopback } from '../src/smtp/submission-server.js';
import { DOMAIN, EXTRA_DOMAIN, PASSWORDS, REMOTE, harnessForSuite, openSession, plainToken, startHarness, type Harness } from './helpers/smtp-harness.js';
import { SmtpWire } from './helpers/smtp-wire.js';
import { swaksOrSkip } from './helpers/swaks.js';

const run = promisify(execFile);
const HOSTNAME = os.hostname();
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

function message(from: string, subject: string, extra: string[] = []): Buffer {
  return Buffer.from([`From: Alice <${from}>`, `To: someone@${DOMAIN}`, `Subject: ${subject}`, ...extra, '', 'body', ''].join('\r\n'));
}

/** Splits a stored message into the header block we prepended and the client's bytes. */
function ourPrefix(stored: Buffer, sent: Buffer): string {
  const text = stored.toString('latin1');
  const i = text.indexOf(sent.toString('latin1'));
  assert.ok(i > 0, 'the sent bytes follow our prefix unchanged');
  return text.slice(0, i);
}

function assertPrivate(header: string): void {
  assert.ok(!header.includes('127.0.0.1'), header);
  assert.ok(!/\[[0-9a-f:.]+\]/i.test(header), header);
  assert.ok(!new RegExp(`(^|[^a-z0-9-])${esc(HOSTNAME)}([^a-z0-9-]|$)`, 'i').test(header), `host name in ${header}`);
}

function transport(h: Harness, user: string, extra: Record<string, unknown> = {}) {
  return nodemailer.createTransport({
    host: '127.0.0.1',
    port: h.ports.submission,
    secure: false,
    requireTLS: true,
    name: HOSTNAME,
    auth: { user, pass: PASSWORDS[user.split('@')[0]!.split('+')[0]!]! },
    tls: { ca: [h.cert], servername: DOMAIN, rejectUnauthorized: true },
    ...extra,
  });
}

/** Connects, reads the greeting, says EHLO; with `login`, also AUTH PLAIN (plain text: loopback). */
const session = (port: number, login?: string): Promise<SmtpWire> => openSession(port, { login });

describe('submission', () => {
  let h: Harness;
  harnessForSuite((started) => (h = started));

  it('EHLO: AUTH PLAIN LOGIN (never CRAM-MD5), PIPELINING, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, SIZE, STARTTLS, DSN; domain, no host name', async () => {
    const c = await SmtpWire.connect(h.ports.submission);
    const greeting = await c.read();
    assert.equal(greeting.text, `220 ${DOMAIN} ESMTP`);
    const ehlo = await c.command('EHLO client.example');
    const caps = ehlo.lines.map((l) => l.slice(4));
    assert.equal(caps[0], DOMAIN);
    for (const cap of ['PIPELINING', '8BITMIME', 'SMTPUTF8', 'ENHANCEDSTATUSCODES', 'SIZE 65536', 'STARTTLS', 'AUTH PLAIN LOGIN', 'DSN']) {
      assert.ok(caps.includes(cap), `${cap} in ${ehlo.text}`);
    }
    assert.ok(!caps.some((x) => /CRAM|DIGEST|REQUIRETLS/.test(x)), ehlo.text);
    assert.ok(!ehlo.text.includes('127.0.0.1') && !new RegExp(`\\b${esc(HOSTNAME)}\\b`).test(ehlo.text.replace(DOMAIN, '')));
    // Nothing without AUTH.
    const mail = await c.command(`MAIL FROM:<alice@${DOMAIN}>`);
    assert.equal(mail.text, '530 5.7.0 Authentication required');
    for (const mech of ['CRAM-MD5', 'DIGEST-MD5', 'XOAUTH2']) {
      const r = await c.command(`AUTH ${mech}`);
      assert.equal(r.code, 504, `${mech}: ${r.text}`);
    }
    c.close();

    // Implicit TLS: no STARTTLS, AUTH listed.
    const t = await SmtpWire.connectTls(h.ports.submissions, { ca: [h.cert], servername: DOMAIN });
    assert.equal((await t.read()).code, 220);
    const e2 = await t.command('EHLO client.example');
    assert.ok(e2.lines.some((l) => /AUTH PLAIN LOGIN$/.test(l)) && !e2.lines.some((l) => /STARTTLS/.test(l)), e2.text);
    t.close();
  });

  it('nodemailer over STARTTLS (verified certificate): local delivery with Received "from unknown ... with ESMTPSA", Date and Message-ID added', async () => {
    const raw = message(`alice@${DOMAIN}`, 'no id no date');
    const t = transport(h, 'alice');
    const info = await t.sendMail({ envelope: { from: `alice@${DOMAIN}`, to: [`bob@${DOMAIN}`] }, raw });
    t.close();
    const id = /^250 2\.0\.0 Ok: queued as ([0-9A-F]{16})$/.exec(info.response)?.[1];
    assert.ok(id, info.response);
    const files = await h.inbox('bob');
    assert.equal(files.length, 1);
    const prefix = ourPrefix(files[0]!, raw);
    const lines = prefix.replace(/\r\n[ \t]+/g, ' ').split('\r\n');
    assert.match(lines[0]!, new RegExp(`^Received: from unknown by ${esc(DOMAIN)} \\(onionpost\\) with ESMTPSA id ${id} for <bob@${esc(DOMAIN)}>; \\w{3}, \\d{1,2} \\w{3} \\d{4} \\d\\d:\\d\\d:\\d\\d \\+0000$`));
    assert.match(lines[1]!, /^Date: \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000$/);
    assert.match(lines[2]!, new RegExp(`^Message-ID: <[A-Za-z0-9_-]{24}@${esc(DOMAIN)}>$`));
    assert.equal(lines.length, 4);
    assertPrivate(prefix);
    assert.ok(!prefix.includes('alice'), 'the authenticated user is not in the trace header');
  });

  it('existing Date and Message-ID are kept; 465 with nodemailer secure:true; login as alice@domain and with a plus-address sender', async () => {
    const raw = message(`alice+lists@${EXTRA_DOMAIN}`, 'has both', ['Date: Thu, 26 Nov 2026 10:00:00 +0100', 'Message-ID: <keep.me@client.example>']);
    const t = nodemailer.createTransport({
      host: '127.0.0.1',
      port: h.ports.submissions,
      secure: true,
      auth: { user: `alice@${DOMAIN}`, pass: PASSWORDS.alice! },
      tls: { ca: [h.cert], servername: DOMAIN },
    });
    await t.sendMail({ envelope: { from: `alice+lists@${EXTRA_DOMAIN}`, to: [`bob@${DOMAIN}`] }, raw });
    t.close();
    const files = await h.inbox('bob');
    const prefix = ourPrefix(files[files.length - 1]!, raw);
    assert.ok(prefix.startsWith('Received: ') && !/\r\n(Date|Message-ID):/i.test(prefix), prefix);
    assert.match(prefix, / with ESMTPSA id /);
  });

  it('envelope sender must belong to the user: own addresses, plus-addresses, aliases that include the user; else 553 5.7.1', async () => {
    const c = await session(h.ports.submission, 'alice');
    const ok = [`alice@${DOMAIN}`, `ALICE@${EXTRA_DOMAIN}`, `alice+tag@${DOMAIN}`, `team@${DOMAIN}`, `sales+x@${EXTRA_DOMAIN}`, `shared@${DOMAIN}`, `postmaster@${DOMAIN}`];
    for (const from of ok) {
      const r = await c.command(`MAIL FROM:<${from}>`);
      assert.equal(r.code, 250, `${from}: ${r.text}`);
      await c.command('RSET');
    }
    const bad = [`bob@${DOMAIN}`, `bob+alice@${DOMAIN}`, `nobody@${DOMAIN}`, `alice@${REMOTE}`, `fwd@${DOMAIN}`];
    for (const from of bad) {
      const r = await c.command(`MAIL FROM:<${from}>`);
      assert.equal(r.code, 553, `${from}: ${r.text}`);
      assert.match(r.text, /^553 5\.7\.1 .*not owned by user alice/);
    }
    const nul = await c.command('MAIL FROM:<>');
    assert.match(nul.text, /^553 5\.7\.1 /, 'no null sender from a client');
    c.close();

    const b = await session(h.ports.submission, 'bob');
    assert.equal((await b.command(`MAIL FROM:<team@${DOMAIN}>`)).code, 250, 'team includes bob');
    await b.command('RSET');
    assert.equal((await b.command(`MAIL FROM:<sales@${DOMAIN}>`)).code, 553, 'sales is alice only');
    b.close();
  });

  it('From (and Sender) must belong to the user: 553 5.7.1; no From or two From fields: 550 5.6.0; nothing stored', async () => {
    const before = (await h.inbox('bob')).length;
    const cases: Array<[string[], RegExp]> = [
      [[`From: Bob <bob@${DOMAIN}>`], /^553 5\.7\.1 Error: From\/Sender address <bob@/],
      [[`From: "Alice, (not really)" <alice@${DOMAIN}>, bob@${DOMAIN}`], /^553 5\.7\.1 .*<bob@/],
      [[`From: alice@${DOMAIN}`, `Sender: bob@${DOMAIN}`], /^553 5\.7\.1 .*<bob@/],
      [[`From: bob@${DOMAIN} (alice@${DOMAIN})`], /^553 5\.7\.1 .*<bob@/],
      [[`From: undisclosed:;`], /^550 5\.6\.0 .*no address/],
      [['Subject: no from'], /^550 5\.6\.0 .*no From/],
      [[`From: alice@${DOMAIN}`, `From: alice@${DOMAIN}`], /^550 5\.6\.0 .*more than one From/],
    ];
    const c = await session(h.ports.submission, 'alice');
    for (const [headers, re] of cases) {
      assert.equal((await c.command(`MAIL FROM:<alice@${DOMAIN}>`)).code, 250);
      assert.equal((await c.command(`RCPT TO:<bob@${DOMAIN}>`)).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      const r = await c.command(`${headers.join('\r\n')}\r\n\r\nbody\r\n.`);
      assert.match(r.text, re, headers.join(' | '));
    }
    // Folded From with a display name, a comment and a group syntax that all resolve to alice.
    await c.command(`MAIL FROM:<alice@${DOMAIN}>`);
    await c.command(`RCPT TO:<bob@${DOMAIN}>`);
    await c.command('DATA');
    const good = await c.command(`From: "Smith, Alice" (home)\r\n  <alice+x@${DOMAIN}>, friends: <team@${EXTRA_DOMAIN}>;\r\n\r\nok\r\n.`);
    assert.equal(good.code, 250, good.text);
    c.close();
    assert.equal((await h.inbox('bob')).length, before + 1);
  });

  it('remote onion recipients go to the queue (durably, with our headers); local ones to the store; aliases expand', async () => {
    const beforeAlice = (await h.inbox('alice')).length;
    const raw = message(`bob@${DOMAIN}`, 'mixed');
    const t = transport(h, 'bob');
    const info = await t.sendMail({ envelope: { from: `bob@${DOMAIN}`, to: [`carol@${REMOTE}`, `team@${DOMAIN}`, `shared@${DOMAIN}`] }, raw });
    t.close();
    const id = /queued as ([0-9A-F]{16})$/.exec(info.response)![1]!;
    const entry = await h.queue.get(id);
    assert.ok(entry, 'the queue entry has the id of the Received header');
    assert.equal(entry.from, `bob@${DOMAIN}`);
    assert.equal(entry.origin, 'submission');
    assert.deepEqual(entry.recipients.map((r) => [r.address, r.status]), [[`carol@${REMOTE}`, 'pending']], 'carol twice (direct and via shared): once');
    const queued = (await h.queue.readMessage(id))!;
    const prefix = ourPrefix(queued, raw);
    assert.match(prefix, new RegExp(`^Received: from unknown\\r\\n\\tby ${esc(DOMAIN)} \\(onionpost\\) with ESMTPSA id ${id};`));
    assert.match(prefix, /\r\nMessage-ID: </);
    assert.equal((await h.inbox('alice')).length, beforeAlice + 1, 'alice once (team and shared)');
    const bob = await h.inbox('bob');
    assert.ok(bob[bob.length - 1]!.equals(await h.inbox('alice').then((a) => a[a.length - 1]!)), 'same bytes for everybody');
  });

  it('clearnet recipients: 550 5.7.1 explaining relay.clearnet; invalid onion names: 550 5.1.2; unknown local: 550 5.1.1', async () => {
    const c = await session(h.ports.submission, 'alice');
    await c.command(`MAIL FROM:<alice@${DOMAIN}>`);
    const clear = await c.command('RCPT TO:<someone@example.com>');
    assert.match(clear.text, /^550 5\.7\.1 <someone@example\.com>: relaying to clearnet \(non-onion\) domains is disabled on this server \(relay\.clearnet = false\)/);
    const typo = REMOTE.replace(/^(.)/, (ch) => (ch === 'a' ? 'b' : 'a'));
    const bad = await c.command(`RCPT TO:<x@${typo}>`);
    assert.match(bad.text, /^550 5\.1\.2 .*not a valid onion address/);
    assert.match((await c.command('RCPT TO:<x@short.onion>')).text, /^550 5\.1\.2 /);
    assert.match((await c.command(`RCPT TO:<nobody@${DOMAIN}>`)).text, /^550 5\.1\.1 /);
    assert.match((await c.command(`RCPT TO:<clear@${DOMAIN}>`)).text, /^550 5\.7\.1 .*alias targets cannot be reached/);
    c.close();

    const open = await startHarness({ relay: { clearnet: true } });
    try {
      const t = transport(open, 'alice');
      const info = await t.sendMail({ envelope: { from: `alice@${DOMAIN}`, to: ['someone@example.com', `clear@${DOMAIN}`] }, raw: message(`alice@${DOMAIN}`, 'clearnet on') });
      t.close();
      const entry = (await open.queue.get(/queued as (\w+)$/.exec(info.response)![1]!))!;
      assert.deepEqual(entry.recipients.map((r) => r.address), ['someone@example.com']);
    } finally {
      await open.stop();
    }
  });

  it('AUTH: wrong passwords get 535 5.7.8 after a growing delay; the third failure closes the connection; LOGIN works', async () => {
    const c = await session(h.ports.submission);
    const times: number[] = [];
    for (let i = 0; i < 2; i++) {
      const t0 = Date.now();
      const r = await c.command(`AUTH PLAIN ${plainToken('bob', 'wrong')}`);
      times.push(Date.now() - t0);
      assert.equal(r.text, '535 5.7.8 Error: authentication credentials invalid');
    }
    const third = await c.command(`AUTH PLAIN ${plainToken('nosuchuser', 'x')}`);
    assert.equal(third.text, '421 4.7.0 Error: too many failed authentication attempts');
    assert.ok(await c.closed());
    // base 100 ms, doubled for the second failure of the same name
    assert.ok(times[0]! >= 100 && times[1]! >= 200, `delays ${times.join(', ')} ms`);
    assert.equal(h.throttle.failuresOf('BOB@whatever'), 2, 'counted per user name, domain and case ignored');

    // A correct login for bob waits out bob's delay, then resets the counter.
    const d = await session(h.ports.submission);
    assert.equal((await d.command('AUTH LOGIN')).text, '334 VXNlcm5hbWU6');
    assert.equal((await d.command(Buffer.from('bob').toString('base64'))).text, '334 UGFzc3dvcmQ6');
    assert.equal((await d.command(Buffer.from(PASSWORDS.bob!).toString('base64'))).code, 235);
    assert.equal(h.throttle.failuresOf('bob'), 0);
    assert.equal((await d.command(`AUTH PLAIN ${plainToken('bob', PASSWORDS.bob!)}`)).code, 503, 'no second AUTH');
    d.close();

    // PLAIN with an authorization identity other than the user: refused.
    const e = await session(h.ports.submission);
    assert.equal((await e.command(`AUTH PLAIN ${plainToken('bob', PASSWORDS.bob!, 'alice')}`)).code, 535);
    assert.equal((await e.command(`AUTH PLAIN ${plainToken('bob', PASSWORDS.bob!, 'bob')}`)).code, 235);
    e.close();
  });

  it('swaks: --auth PLAIN --tls, --auth LOGIN --tlsc (465), and a 553 for a foreign sender (skipped without swaks)', async (t) => {
    if (!(await swaksOrSkip(t))) return;
    const before = (await h.inbox('bob')).length;
    const common = ['--server', '127.0.0.1', '--to', `bob@${DOMAIN}`, '--timeout', '15', '--auth-user', 'alice', '--auth-password', PASSWORDS.alice!];
    const starttls = await run('swaks', [...common, '--port', String(h.ports.submission), '--tls', '--auth', 'PLAIN', '--from', `alice@${DOMAIN}`, '--h-From', `alice@${DOMAIN}`]);
    assert.match(starttls.stdout, /<~ {2}235 2\.7\.0 /);
    assert.match(starttls.stdout, /<~ {2}250 2\.0\.0 Ok: queued as /);
    const implicit = await run('swaks', [...common, '--port', String(h.ports.submissions), '--tlsc', '--auth', 'LOGIN', '--from', `team@${DOMAIN}`, '--h-From', `team@${DOMAIN}`]);
    assert.match(implicit.stdout, /<~ {2}250 2\.0\.0 Ok: queued as /);
    assert.equal((await h.inbox('bob')).length, before + 2);
    const foreign = await run('swaks', [...common, '--port', String(h.ports.submission), '--tls', '--auth', 'PLAIN', '--from', `bob@${DOMAIN}`]).catch((e: { stdout: string }) => e);
    assert.match(foreign.stdout, /<~\* 553 5\.7\.1 <bob@/);
  });

  it('a queue that cannot be written: 451 4.3.0, nothing queued', async () => {
    const broken = await startHarness();
    try {
      rmSync(path.join(broken.queue.dir, 'tmp'), { recursive: true });
      writeFileSync(path.join(broken.queue.dir, 'tmp'), 'not a directory');
      const c = await session(broken.ports.submission, 'alice');
      await c.command(`MAIL FROM:<alice@${DOMAIN}>`);
      assert.equal((await c.command(`RCPT TO:<carol@${REMOTE}>`)).code, 250);
      await c.command('DATA');
      const r = await c.command(`From: alice@${DOMAIN}\r\n\r\nx\r\n.`);
      assert.match(r.text, /^451 4\.3\.0 /);
      c.close();
      assert.deepEqual(await broken.queue.list(), []);
    } finally {
      await broken.stop();
    }
  });
});

describe('submission: AUTH only over TLS when plain text on loopback is off', () => {
  let h: Harness;
  harnessForSuite((started) => (h = started), { submission: { allowPlaintextLoopback: false } });

  it('no AUTH before STARTTLS (530 5.7.0, not advertised); after STARTTLS it is, and it works', async () => {
    const c = await SmtpWire.connect(h.ports.submission);
    await c.read();
    const ehlo = await c.command('EHLO client.example');
    assert.ok(!ehlo.lines.some((l) => /AUTH/.test(l)), ehlo.text);
    assert.ok(ehlo.lines.some((l) => /STARTTLS/.test(l)));
    assert.equal((await c.command(`AUTH PLAIN ${plainToken('alice', PASSWORDS.alice!)}`)).text, '530 5.7.0 Must issue a STARTTLS command first');
    assert.equal((await c.command('AUTH LOGIN')).code, 530, 'LOGIN too: no 334 prompt in plain text');
    assert.equal((await c.command('STARTTLS')).code, 220);
    await c.startTls({ ca: [h.cert], servername: DOMAIN });
    const ehlo2 = await c.command('EHLO client.example');
    assert.ok(ehlo2.lines.some((l) => /AUTH PLAIN LOGIN$/.test(l)), ehlo2.text);
    assert.equal((await c.command(`AUTH PLAIN ${plainToken('alice', PASSWORDS.alice!)}`)).code, 235);
    c.close();
    // nodemailer without TLS cannot log in (it sees no AUTH).
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: h.ports.submission, ignoreTLS: true, auth: { user: 'alice', pass: PASSWORDS.alice! } });
    await assert.rejects(t.sendMail({ envelope: { from: `alice@${DOMAIN}`, to: [`bob@${DOMAIN}`] }, raw: message(`alice@${DOMAIN}`, 'x') }));
    t.close();
  });
});

describe('submission units', () => {
  it('AuthThrottle: per-name exponential delay, serialized attempts, global delay, forgetting', async () => {
    let now = 1_000_000;
    const slept: number[] = [];
    const th = new AuthThrottle({
      baseDelayMs: 1000,
      maxDelayMs: 8000,
      globalFreeFailures: 3,
      forgetAfterMs: 60_000,
      now: () => now,
      sleep: async (ms) => {
        slept.push(ms);
        now += ms;
      },
    });
    const fail = () => th.run('victim', async () => null);
    for (let i = 0; i < 5; i++) await fail();
    assert.deepEqual(slept, [1000, 2000, 4000, 8000, 8000], 'doubling, capped');
    slept.length = 0;
    assert.equal(await th.run('Victim@x.onion', async () => 'ok'), 'ok');
    assert.equal(th.failuresOf('victim'), 0, 'success resets');
    // A spray over many names: each name's first failure is 1 s, but the global count
    // (5 earlier + these) pushes every answer up.
    slept.length = 0;
    for (const name of ['a', 'b', 'c']) await th.run(name, async () => null);
    assert.ok(slept.every((ms) => ms > 1000), `global delay applies: ${slept.join(', ')}`);
    // After a quiet minute the global window is empty, and after forgetAfter the name too.
    now += 120_000;
    slept.length = 0;
    await th.run('a', async () => null);
    assert.deepEqual(slept, [1000]);
    // Parallel attempts for one name run one after another.
    const real = new AuthThrottle({ baseDelayMs: 50, maxDelayMs: 50, globalFreeFailures: 100 });
    let running = 0;
    let maxRunning = 0;
    await Promise.all(
      [1, 2, 3].map(() =>
        real.run('p', async () => {
          running++;
          maxRunning = Math.max(maxRunning, running);
          await new Promise((r) => setTimeout(r, 10));
          running--;
          return null;
        }),
      ),
    );
    assert.equal(maxRunning, 1);
  });

  it('parseAddressList and isLoopback', () => {
    assert.deepEqual(parseAddressList('"Doe, John" <john@x.onion>, jane@y.onion (Jane)'), ['john@x.onion', 'jane@y.onion']);
    assert.deepEqual(parseAddressList('team: a@x.onion, "q\\"uoted" <b@x.onion>;, c@x.onion'), ['a@x.onion', 'b@x.onion', 'c@x.onion']);
    assert.deepEqual(parseAddressList('<@route.example,@other:user@x.onion>'), ['user@x.onion']);
    assert.deepEqual(parseAddressList('Alice (comment (nested) "x") <a@x.onion>\r\n\t(trailing)'), ['a@x.onion']);
    assert.deepEqual(parseAddressList('"a@evil.onion" <b@x.onion>'), ['b@x.onion'], 'an address in a display name is not the address');
    assert.deepEqual(parseAddressList('undisclosed-recipients:;'), []);
    for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) assert.ok(isLoopback(a), a);
    for (const a of ['10.0.0.1', '::ffff:10.0.0.1', '128.0.0.1', '', undefined]) assert.ok(!isLoopback(a), String(a));
  });
});
