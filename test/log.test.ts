/**
 * Logging: JSON lines by default, readable lines on a terminal or with format "pretty",
 * connection ids on session lines, and never a password or a message body, even at trace
 * level with the real daemon.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { ImapFlow } from 'imapflow';
import { createLogger, formatPretty } from '../src/log/logger.js';
import { runCli } from './helpers/cli.js';
import { startDaemon, type Daemon } from './helpers/daemon.js';
import { SmtpWire } from './helpers/smtp-wire.js';

function sink(isTTY: boolean): { stream: Writable & { isTTY?: boolean }; text: () => string } {
  let text = '';
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      text += chunk.toString();
      cb();
    },
  }) as Writable & { isTTY?: boolean };
  stream.isTTY = isTTY;
  return { stream, text: () => text };
}

describe('createLogger', () => {
  test('JSON when not a terminal, with redaction of secrets', async () => {
    const s = sink(false);
    const log = createLogger('info', { stream: s.stream }).child({ component: 'imap' });
    log.info({ cid: 'abc123', user: 'alice', password: 'hunter2', auth: { pass: 'hunter3' } }, 'login');
    log.debug('hidden');
    await new Promise((r) => setImmediate(r));
    const lines = s.text().trim().split('\n');
    assert.equal(lines.length, 1);
    const obj = JSON.parse(lines[0]!) as Record<string, unknown>;
    assert.equal(obj.cid, 'abc123');
    assert.equal(obj.component, 'imap');
    assert.equal(obj.msg, 'login');
    assert.doesNotMatch(lines[0]!, /hunter/);
  });

  test('pretty on a terminal (auto) and when asked', async () => {
    const tty = sink(true);
    createLogger('info', { stream: tty.stream }).child({ component: 'smtp-inbound' }).warn({ cid: 'k9', size: 12, password: 'hunter2' }, 'message rejected');
    const forced = sink(false);
    createLogger('info', { stream: forced.stream, format: 'pretty' }).info({ cid: 'z1' }, 'hello world');
    await new Promise((r) => setImmediate(r));
    assert.match(tty.text(), /^\d\d:\d\d:\d\d\.\d{3} .*WARN.* smtp-inbound \[k9\] message rejected size=12 password=\[redacted\]\n$/);
    assert.match(forced.text(), /^\d\d:\d\d:\d\d\.\d{3} INFO  \[z1\] hello world\n$/, 'no colours when not a terminal');
    assert.equal(formatPretty('not json'), 'not json\n');
    assert.match(formatPretty(JSON.stringify({ level: 30, time: 0, component: 'imap', cid: 'q1', msg: '[q1] bob authenticated', tnx: 'auth' })), / INFO  imap \[q1\] bob authenticated tnx=auth\n$/, 'the cid is not shown twice');
    assert.match(formatPretty(JSON.stringify({ level: 50, time: 0, msg: 'boom', err: { message: 'bad', stack: 'Error: bad\n    at x' } })), /ERROR boom err="bad"\n    at x\n$/);
  });
});

describe('daemon log at trace level', () => {
  let daemon: Daemon;
  const PASSWORD = 'Pw-7f3c1e9a-secret';
  const BODY = 'Body-token-5b2d88e1';

  before(async () => {
    daemon = await startDaemon('', {
      prepare: async (dir) => {
        const file = `${dir}/onionpost.toml`;
        const text = await readFile(file, 'utf8');
        await writeFile(file, text.replace('level = "warn"', 'level = "trace"\nformat = "json"'));
      },
    });
    const add = await runCli(['--config', daemon.configFile, 'user', 'add', 'alice', '--password-stdin'], { input: `${PASSWORD}\n` });
    assert.equal(add.code, 0, add.stderr);
  });
  after(async () => {
    await daemon?.cleanup();
  });

  test('session lines carry a cid; no password or body appears', async () => {
    const client = new ImapFlow({ host: '127.0.0.1', port: daemon.ports.imap, secure: false, doSTARTTLS: false, auth: { user: 'alice', pass: PASSWORD }, logger: false });
    await client.connect();
    await client.append('INBOX', `Subject: t\r\n\r\n${BODY} imap\r\n`);
    await client.logout();

    const smtp = await SmtpWire.connect(daemon.ports.smtp);
    await smtp.read();
    await smtp.command('EHLO client.onion');
    assert.equal((await smtp.command('MAIL FROM:<x@peer.onion>')).code, 250);
    assert.equal((await smtp.command('RCPT TO:<alice@localhost>')).code, 250);
    assert.equal((await smtp.command('DATA')).code, 354);
    assert.equal((await smtp.command(`Subject: s\r\n\r\n${BODY} smtp\r\n.`)).code, 250);
    await smtp.command('QUIT');

    const sub = await SmtpWire.connect(daemon.ports.submission);
    await sub.read();
    await sub.command('EHLO client.onion');
    const plain = Buffer.from(`\0alice\0${PASSWORD}`).toString('base64');
    assert.equal((await sub.command(`AUTH PLAIN ${plain}`)).code, 235);
    await sub.command('QUIT');

    assert.equal(await daemon.stop(), 0);
    const log = daemon.stderr();
    const lines = log.split('\n').filter((l) => l !== '');
    assert.ok(lines.length > 5, 'trace level logs something');
    for (const l of lines) {
      JSON.parse(l); // every line is JSON
      const keys = [...l.matchAll(/"([A-Za-z_]+)":/g)].map((m) => m[1]);
      assert.equal(new Set(keys).size, keys.length, `no key twice in one line: ${l.slice(0, 200)}`);
    }
    assert.ok(!log.includes(PASSWORD), 'no password in the log');
    assert.ok(!log.includes(plain), 'no AUTH PLAIN blob in the log');
    assert.ok(!log.includes(BODY), 'no message body in the log');
    const objs = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.ok(objs.some((o) => o.component === 'smtp-inbound' && o.cid !== undefined && o.msg === 'message accepted'), 'SMTP lines have a cid');
    assert.ok(objs.some((o) => o.component === 'imap' && o.cid !== undefined), 'IMAP lines have a cid');
  });
});
