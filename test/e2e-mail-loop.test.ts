/**
 * The whole loop as a new user runs it: `onionpost start`, `onionpost user add`, mail sent
 * with swaks and nodemailer on the SMTP port, read by an IDLEing imapflow client.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { ImapFlow } from 'imapflow';
import nodemailer from 'nodemailer';
import { runCli } from './helpers/cli.js';
import { startDaemon, type Daemon } from './helpers/daemon.js';
import { plainMessage } from './helpers/plain-message.js';

const run = promisify(execFile);

describe('mail loop end to end (real daemon, real clients)', () => {
  let d: Daemon;
  let imap: ImapFlow;

  before(async () => {
    d = await startDaemon();
    const added = await runCli(['--config', d.configFile, 'user', 'add', 'alice', '--password-stdin'], { input: 'correct horse\n' });
    assert.equal(added.code, 0, added.stderr);
    imap = new ImapFlow({
      host: '127.0.0.1',
      port: d.ports.imap,
      secure: false,
      tls: { rejectUnauthorized: false },
      auth: { user: 'alice', pass: 'correct horse' },
      logger: false,
    });
    await imap.connect();
  });

  after(async () => {
    await imap?.logout().catch(() => undefined);
    const code = await d?.stop();
    await d?.cleanup();
    assert.equal(code, 0, `daemon exit code; stderr: ${d?.stderr()}`);
  });

  it('a user added while the daemon runs can log in and has the default folders', async () => {
    const list = await imap.list();
    const byPath = new Map(list.map((m) => [m.path, m]));
    for (const p of ['INBOX', 'Sent', 'Drafts', 'Trash', 'Junk', 'Archive']) assert.ok(byPath.has(p), `missing ${p}`);
    assert.equal(byPath.get('Sent')!.specialUse, '\\Sent');
    assert.equal(byPath.get('Trash')!.specialUse, '\\Trash');
  });

  it('swaks delivers; the IDLEing client sees EXISTS and fetches the exact bytes', async () => {
    const which = await run('sh', ['-c', 'command -v swaks']).catch(() => null);
    assert.ok(which, 'swaks is required (scripts/install-test-deps.sh installs it)');
    const lock = await imap.getMailboxLock('INBOX');
    try {
      const raw = plainMessage('Hello from swaks', 'Grüße aus dem Onionland.\r\n.leading dot line\r\nend');
      const file = path.join(d.dir, 'msg.eml');
      // swaks always adds CRLF before the final dot, so give it the message without its last CRLF.
      await writeFile(file, raw.subarray(0, raw.length - 2));
      const exists = new Promise<number>((resolve) => imap.once('exists', (ev: { count: number }) => resolve(ev.count)));
      void imap.idle(); // imapflow does not IDLE by itself while a mailbox lock is held
      await new Promise((r) => setTimeout(r, 100));
      const sent = await run('swaks', [
        '--server', '127.0.0.1', '--port', String(d.ports.smtp),
        '--from', 'bob@example.onion', '--to', 'alice@localhost',
        '--helo', 'example.onion', '--data', `@${file}`, '--silent', '2',
      ]);
      assert.equal(sent.stderr, '');
      const count = await Promise.race([exists, new Promise<number>((_, rej) => setTimeout(() => rej(new Error('no EXISTS within 5 s')), 5000))]);
      assert.equal(count, 1);
      const msg = await imap.fetchOne('*', { source: true, uid: true });
      assert.ok(msg && msg.source);
      const source = msg.source;
      const tail = source.subarray(source.length - raw.length);
      assert.ok(tail.equals(raw), 'stored message ends with the exact bytes sent');
      const header = source.subarray(0, source.length - raw.length).toString('latin1');
      assert.match(header, /^Received: from example\.onion/);
      assert.doesNotMatch(header, /127\.0\.0\.1/);
    } finally {
      lock.release();
    }
  });

  it('nodemailer delivers; measures SMTP 250 -> IDLE EXISTS', async (t) => {
    const lock = await imap.getMailboxLock('INBOX');
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: d.ports.smtp, secure: false, ignoreTLS: true });
    try {
      const timings: number[] = [];
      for (let i = 0; i < 5; i++) {
        void imap.idle();
        await new Promise((r) => setTimeout(r, 100)); // let the IDLE command reach the server
        let exists = 0;
        const seen = new Promise<void>((resolve) =>
          imap.once('exists', () => {
            exists = performance.now();
            resolve();
          }),
        );
        const raw = plainMessage(`Loop ${i}`, `body ${i}`);
        await transport.sendMail({ envelope: { from: 'bob@example.onion', to: ['alice@localhost'] }, raw });
        const acked = performance.now();
        await Promise.race([seen, new Promise((_, rej) => setTimeout(() => rej(new Error('no EXISTS within 5 s')), 5000))]);
        timings.push(Math.max(0, exists - acked));
      }
      timings.sort((a, b) => a - b);
      t.diagnostic(`SMTP 250 -> IDLE EXISTS (ms, 5 runs, sorted): ${timings.map((x) => x.toFixed(1)).join(' ')}`);
      const box = imap.mailbox;
      assert.ok(box, 'INBOX is selected');
      assert.equal(box.exists, 6);
    } finally {
      transport.close();
      lock.release();
    }
  });

  it('unknown recipients are refused at RCPT time with 550 5.1.1', async () => {
    const r = await run('swaks', ['--server', '127.0.0.1', '--port', String(d.ports.smtp), '--from', 'bob@example.onion', '--to', 'nobody@localhost', '--silent', '2']).then(
      () => null,
      (err: { stdout: string; stderr: string; code: number }) => err,
    );
    assert.ok(r, 'swaks must fail');
    assert.match(r.stdout + r.stderr, /550 5\.1\.1/);
  });

  it('a wrong password is refused', async () => {
    const other = new ImapFlow({ host: '127.0.0.1', port: d.ports.imap, secure: false, tls: { rejectUnauthorized: false }, auth: { user: 'alice', pass: 'wrong' }, logger: false });
    await assert.rejects(other.connect());
    other.close();
  });
});
