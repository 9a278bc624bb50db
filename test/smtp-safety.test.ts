/**
 * Protocol safety of both SMTP listeners beyond test/smtp-inbound.test.ts: STARTTLS command
 * injection, command line length, commands before AUTH, connection limits, idle timeout,
 * NUL bytes and invalid addresses on submission. Byte-level client on real sockets.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DOMAIN, PASSWORDS, harnessForSuite, openSession, plainToken, type Harness } from './helpers/smtp-harness.js';
import { SmtpWire } from './helpers/smtp-wire.js';

const greeted = (port: number, ehlo = true): Promise<SmtpWire> => openSession(port, { ehlo: ehlo ? 'client.example' : null });

/** Nothing more arrives within ms (the injected commands got no reply). */
async function silent(c: SmtpWire, ms = 400): Promise<void> {
  await assert.rejects(c.read(ms), /no complete reply/);
}

describe('SMTP protocol safety', () => {
  let h: Harness;
  harnessForSuite((started) => (h = started));

  it('STARTTLS injection on submission: commands pipelined behind STARTTLS are discarded, and TLS starts a fresh session', async () => {
    const c = await greeted(h.ports.submission);
    // One write: STARTTLS plus a complete login and transaction, in plain text.
    c.write(`STARTTLS\r\nAUTH PLAIN ${plainToken('alice', PASSWORDS.alice!)}\r\nMAIL FROM:<alice@${DOMAIN}>\r\nRCPT TO:<bob@${DOMAIN}>\r\n`);
    assert.equal((await c.read()).code, 220);
    await c.startTls({ ca: [h.cert], servername: DOMAIN });
    await silent(c);
    assert.equal((await c.command(`MAIL FROM:<alice@${DOMAIN}>`)).code, 503, 'HELO/EHLO forgotten');
    assert.equal((await c.command('EHLO client.example')).code, 250);
    assert.equal((await c.command(`MAIL FROM:<alice@${DOMAIN}>`)).text, '530 5.7.0 Authentication required', 'the injected AUTH did not happen');
    c.close();
  });

  it('STARTTLS after a plain-text login (loopback) forgets the login: AUTH again inside TLS', async () => {
    const c = await greeted(h.ports.submission);
    assert.equal((await c.command(`AUTH PLAIN ${plainToken('alice', PASSWORDS.alice!)}`)).code, 235);
    assert.equal((await c.command('STARTTLS')).code, 220);
    await c.startTls({ ca: [h.cert], servername: DOMAIN });
    await c.command('EHLO client.example');
    assert.equal((await c.command(`MAIL FROM:<alice@${DOMAIN}>`)).code, 530);
    assert.equal((await c.command(`AUTH PLAIN ${plainToken('alice', PASSWORDS.alice!)}`)).code, 235);
    assert.equal((await c.command(`MAIL FROM:<alice@${DOMAIN}>`)).code, 250);
    c.close();
  });

  it('STARTTLS injection on port 25: a pipelined transaction is discarded; nothing is stored', async () => {
    const before = (await h.inbox('alice')).length;
    const c = await greeted(h.ports.smtp);
    c.write(`STARTTLS\r\nMAIL FROM:<evil@x.onion>\r\nRCPT TO:<alice@${DOMAIN}>\r\nDATA\r\nSubject: injected\r\n\r\nx\r\n.\r\n`);
    assert.equal((await c.read()).code, 220);
    await c.startTls({ ca: [h.cert], servername: DOMAIN });
    await silent(c);
    assert.equal((await c.command('EHLO client.example')).code, 250);
    assert.equal((await c.command(`RCPT TO:<alice@${DOMAIN}>`)).code, 503, 'no MAIL FROM survived the handshake');
    c.close();
    assert.equal((await h.inbox('alice')).length, before);
  });

  it('command line length: within the limit fine; beyond it 421 and the connection is closed (port 25: 4096, submission: 8192)', async () => {
    for (const [port, limit] of [
      [h.ports.smtp, 4096],
      [h.ports.submission, 8192],
    ] as const) {
      const c = await greeted(port);
      const ok = await c.command('NOOP ' + 'x'.repeat(limit - 10));
      assert.equal(ok.code, 250, `${limit}: ${ok.text}`);
      const r = await c.command('NOOP ' + 'x'.repeat(limit));
      assert.equal(r.code, 421, r.text);
      assert.match(r.text, /too long/i);
      assert.ok(await c.closed());
      // A line that never ends is cut off as well.
      const d = await greeted(port);
      d.write('NOOP ' + 'y'.repeat(limit * 2));
      assert.equal((await d.read()).code, 421);
      assert.ok(await d.closed());
    }
  });

  it('submission: at most 10 commands before AUTH (421); AUTH itself does not count', async () => {
    const c = await greeted(h.ports.submission); // EHLO: 1
    for (let i = 2; i <= 9; i++) assert.equal((await c.command('NOOP')).code, 250, `command ${i}`);
    assert.equal((await c.command(`AUTH PLAIN ${plainToken('alice', 'wrong')}`)).code, 535);
    const r = await c.command('NOOP');
    assert.equal(r.code, 421, r.text);
    assert.match(r.text, /too many unauthenticated commands/);
    assert.ok(await c.closed());
    // After AUTH there is no such limit.
    const d = await greeted(h.ports.submission);
    await d.command(`AUTH PLAIN ${plainToken('bob', PASSWORDS.bob!)}`);
    for (let i = 0; i < 15; i++) assert.equal((await d.command('NOOP')).code, 250);
    d.close();
  });

  it('submission: NUL bytes -> 500 5.5.2 / 554 5.6.0, invalid addresses -> 501 5.1.7 / 5.1.3; nothing stored', async () => {
    const before = (await h.inbox('bob')).length;
    const c = await greeted(h.ports.submission);
    assert.match((await c.command('NOOP\0')).text, /^500 5\.5\.2 .*NUL/);
    assert.match((await c.command(`AUTH PLAIN ${plainToken('alice', PASSWORDS.alice!)}\0`)).text, /^500 5\.5\.2 /);
    assert.equal((await c.command(`AUTH PLAIN ${plainToken('alice', PASSWORDS.alice!)}`)).code, 235);
    assert.match((await c.command(`MAIL FROM:<ali\0ce@${DOMAIN}>`)).text, /^500 5\.5\.2 /);
    assert.match((await c.command('MAIL FROM:<not an address>')).text, /^501 5\.1\.7 /);
    assert.match((await c.command(`MAIL FROM:<alice@@${DOMAIN}>`)).text, /^501 5\.1\.7 /);
    assert.equal((await c.command(`MAIL FROM:<alice@${DOMAIN}>`)).code, 250);
    for (const bad of ['<a@b@c>', '<@>', '<bob..x@' + DOMAIN + '>', '<>', `bob@${DOMAIN} junk`]) {
      assert.match((await c.command(`RCPT TO:${bad}`)).text, /^501 5\.1\.3 /, bad);
    }
    assert.equal((await c.command(`RCPT TO:<bob@${DOMAIN}>`)).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    const r = await c.command(`From: alice@${DOMAIN}\r\n\r\nbad \0 byte\r\n.`);
    assert.match(r.text, /^554 5\.6\.0 .*NUL/);
    assert.equal((await c.command('NOOP')).code, 250, 'the session goes on');
    c.close();
    // AUTH LOGIN: a NUL in the (decoded) user name is refused by the SASL handler.
    const d = await greeted(h.ports.submission);
    assert.equal((await d.command('AUTH LOGIN')).code, 334);
    assert.equal((await d.command(Buffer.from('al\0ice').toString('base64'))).code, 501);
    d.close();
    assert.equal((await h.inbox('bob')).length, before);
  });
});

describe('SMTP limits: connections and idle time', () => {
  let h: Harness;
  harnessForSuite((started) => (h = started), { inbound: { maxClients: 2, socketTimeoutMs: 600 }, submission: { maxClients: 2 } });

  it('more connections than maxClients: 421 and closed, for port 25, 587 and 465; a freed slot is usable again', async () => {
    for (const [name, port] of Object.entries(h.ports)) {
      const open = async () =>
        name === 'submissions' ? SmtpWire.connectTls(port, { ca: [h.cert], servername: DOMAIN }) : SmtpWire.connect(port);
      const a = await open();
      const b = await open();
      assert.equal((await a.read()).code, 220, name);
      assert.equal((await b.read()).code, 220, name);
      // 465 too: the handshake completes, then the SMTP layer refuses in TLS.
      const c = await open();
      const r = await c.read();
      assert.equal(r.code, 421, `${name}: ${r.text}`);
      assert.match(r.text, /Too many connected clients/);
      assert.ok(await c.closed(), name);
      a.close();
      await new Promise((r) => setTimeout(r, 100));
      const d = await open();
      assert.equal((await d.read()).code, 220, `${name}: slot freed`);
      b.close();
      d.close();
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  it('an idle client is disconnected after socketTimeout with 421', async () => {
    const c = await SmtpWire.connect(h.ports.smtp);
    assert.equal((await c.read()).code, 220);
    const t0 = Date.now();
    const r = await c.read(3000);
    assert.equal(r.code, 421, r.text);
    assert.ok(Date.now() - t0 >= 500, `after ${Date.now() - t0} ms`);
    assert.ok(await c.closed());
  });
});
