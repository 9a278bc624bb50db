/**
 * Port 25 with aliases and the relay policy: alias forwarding to the queue, relaying denied
 * by default, relay.open_to_onion with its global rate limit. Real sockets, real store and
 * queue, real aliases file.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { RelayPolicy, TokenBucket } from '../src/smtp/policy.js';
import { randomOnionAddress } from '../src/tor/onion-address.js';
import { DOMAIN, EXTRA_DOMAIN, REMOTE, harnessForSuite, openSession, startHarness, type Harness } from './helpers/smtp-harness.js';
import type { SmtpWire } from './helpers/smtp-wire.js';
import { swaksOrSkip } from './helpers/swaks.js';

const run = promisify(execFile);

function raw(subject: string): Buffer {
  return Buffer.from(`From: x@sender.onion\r\nSubject: ${subject}\r\n\r\nhello\r\n`);
}

const mta = (port: number): Promise<SmtpWire> => openSession(port, { ehlo: 'sender.onion' });

describe('port 25: aliases and relaying denied by default', () => {
  let h: Harness;
  harnessForSuite((started) => (h = started));

  it('an alias with several local users: one copy each; with remote targets: those are queued (origin forward)', async () => {
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: h.ports.smtp, ignoreTLS: true, name: 'sender.onion' });
    const info = await t.sendMail({ envelope: { from: 'x@sender.onion', to: [`team@${DOMAIN}`, `shared+tag@${EXTRA_DOMAIN}`, `fwd@${DOMAIN}`] }, raw: raw('alias fan-out') });
    t.close();
    assert.deepEqual(info.rejected, []);
    const id = /queued as ([0-9A-F]{16})$/.exec(info.response)![1]!;
    assert.equal((await h.inbox('alice')).length, 1, 'alice once (team and shared)');
    assert.equal((await h.inbox('bob')).length, 1);
    const entry = (await h.queue.get(id))!;
    assert.equal(entry.origin, 'forward');
    assert.equal(entry.from, 'x@sender.onion');
    assert.deepEqual(entry.recipients.map((r) => r.address).sort(), [`carol@${REMOTE}`, `dave@${REMOTE}`].sort());
    const queued = (await h.queue.readMessage(id))!.toString();
    assert.ok(queued.startsWith('Received: from sender.onion\r\n') && queued.endsWith('\r\n\r\nhello\r\n'), queued);
  });

  it('relaying to another onion domain: 550 5.7.1 Relaying denied; an alias to a clearnet address with clearnet off: 550 5.7.1', async () => {
    const c = await mta(h.ports.smtp);
    await c.command('MAIL FROM:<x@sender.onion>');
    assert.equal((await c.command(`RCPT TO:<y@${REMOTE}>`)).text, '550 5.7.1 Relaying denied');
    assert.match((await c.command(`RCPT TO:<clear@${DOMAIN}>`)).text, /^550 5\.7\.1 <clear@.*alias targets cannot be reached .*clearnet/);
    assert.equal((await c.command(`RCPT TO:<postmaster@${DOMAIN}>`)).code, 250, 'postmaster -> root -> first user');
    c.close();
  });

  it('aliases are re-read without a restart', async () => {
    writeFileSync(path.join(h.dir, 'aliases'), 'newalias: bob\n');
    const c = await mta(h.ports.smtp);
    await c.command('MAIL FROM:<x@sender.onion>');
    assert.equal((await c.command(`RCPT TO:<newalias@${DOMAIN}>`)).code, 250);
    assert.equal((await c.command(`RCPT TO:<team@${DOMAIN}>`)).code, 550, 'the old alias is gone');
    c.close();
  });
});

describe('port 25 with relay.open_to_onion', () => {
  let h: Harness;
  harnessForSuite((started) => (h = started), { relay: { openToOnion: true, onionRatePerMinute: 2 } });

  it('accepts any valid onion domain from anyone into the queue (origin relay), one token per message; then 450 4.7.1', async () => {
    const other = randomOnionAddress();
    const send = async (to: string[]) => {
      const c = await mta(h.ports.smtp);
      await c.command('MAIL FROM:<x@sender.onion>');
      const codes = [];
      for (const rcpt of to) codes.push((await c.command(`RCPT TO:<${rcpt}>`)).text);
      let done;
      if (codes.some((r) => r.startsWith('250'))) {
        await c.command('DATA');
        done = await c.command('Subject: relay\r\n\r\nx\r\n.');
      }
      c.close();
      return { codes, done };
    };
    // Two relayed recipients and a local one in one message: one token.
    const first = await send([`a@${REMOTE}`, `b@${other}`, `alice@${DOMAIN}`]);
    assert.deepEqual(first.codes.map((x) => x.slice(0, 3)), ['250', '250', '250']);
    const id = /queued as (\w+)$/.exec(first.done!.text)![1]!;
    const entry = (await h.queue.get(id))!;
    assert.equal(entry.origin, 'relay');
    assert.deepEqual(entry.recipients.map((r) => r.domain), [REMOTE, other]);
    assert.equal((await h.inbox('alice')).length, 1);

    const second = await send([`c@${REMOTE}`]);
    assert.equal(second.done?.code, 250);
    // Third message within the same minute: the bucket (2/minute) is empty.
    const third = await send([`d@${REMOTE}`, `bob@${DOMAIN}`]);
    assert.match(third.codes[0]!, /^450 4\.7\.1 Relay rate limit reached/);
    assert.equal(third.codes[1]!.slice(0, 3), '250', 'local recipients are not rate-limited');
    assert.equal((await h.queue.list()).length, 2);

    // Not relayed even when open: clearnet domains and invalid onion names.
    const c = await mta(h.ports.smtp);
    await c.command('MAIL FROM:<x@sender.onion>');
    assert.equal((await c.command('RCPT TO:<x@example.com>')).text, '550 5.7.1 Relaying denied');
    assert.match((await c.command('RCPT TO:<x@notvalid.onion>')).text, /^550 5\.1\.2 /);
    c.close();
  });

  it('swaks relays through port 25 when a token is available (skipped without swaks)', async (t) => {
    if (!(await swaksOrSkip(t))) return;
    const fresh = await startHarness({ relay: { openToOnion: true, onionRatePerMinute: 60 } });
    try {
      const { stdout } = await run('swaks', ['--server', '127.0.0.1', '--port', String(fresh.ports.smtp), '--from', 'x@sender.onion', '--to', `z@${REMOTE}`, '--timeout', '10']);
      assert.match(stdout, /<- {2}250 2\.0\.0 Ok: queued as /);
      assert.equal((await fresh.queue.list()).length, 1);
    } finally {
      await fresh.stop();
    }
  });
});

describe('relay policy units', () => {
  it('token bucket refills at rate/minute and bursts up to one minute', () => {
    let now = 0;
    const b = new TokenBucket(6, () => now);
    for (let i = 0; i < 6; i++) assert.ok(b.take(), `token ${i}`);
    assert.ok(!b.take());
    now += 9_999;
    assert.ok(!b.take(), 'one token per 10 s');
    now += 2;
    assert.ok(b.take());
    now += 3_600_000;
    for (let i = 0; i < 6; i++) assert.ok(b.take());
    assert.ok(!b.take(), 'no more than a minute worth after a long pause');
  });

  it('destinations', () => {
    const p = new RelayPolicy({ openToOnion: false, onionRatePerMinute: 1, clearnet: false });
    assert.deepEqual(p.submission(`a@${REMOTE}`, REMOTE), { ok: true });
    assert.deepEqual(p.submission(`a@sub.${REMOTE}`, `sub.${REMOTE}`), { ok: true }, 'subdomains of an onion are fine (Tor ignores them)');
    assert.equal(p.submission('a@x.onion', 'x.onion').ok, false);
    assert.equal(p.submission('a@example.com', 'example.com').ok, false);
    assert.equal(new RelayPolicy({ openToOnion: false, onionRatePerMinute: 1, clearnet: true }).submission('a@example.com', 'example.com').ok, true);
    assert.equal(p.inbound(`a@${REMOTE}`, REMOTE, true).ok, false, 'port 25 relays nothing unless open_to_onion');
  });
});
