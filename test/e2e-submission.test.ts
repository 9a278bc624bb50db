/**
 * Submission through the real daemon (`onionpost start`): users and aliases added with the
 * CLI, mail sent by nodemailer with AUTH on the submission ports, local copies in the
 * Maildir, remote recipients in the queue spool, aliases reloaded on SIGHUP.
 */
import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { randomOnionAddress } from '../src/tor/onion-address.js';
import { runCli } from './helpers/cli.js';
import { startDaemon, type Daemon } from './helpers/daemon.js';
import { maildirFiles } from './helpers/maildir-files.js';

const REMOTE = randomOnionAddress();

describe('submission end to end (real daemon)', () => {
  let d: Daemon;
  const cli = (args: string[], input?: string) => runCli(['--config', d.configFile, ...args], { input });

  before(async () => {
    d = await startDaemon();
    for (const u of ['alice', 'bob']) {
      const r = await cli(['user', 'add', u, '--password-stdin'], `${u} pw\n`);
      assert.equal(r.code, 0, r.stderr);
    }
    const r = await cli(['alias', 'add', 'team', 'alice,bob', `carol@${REMOTE}`]);
    assert.equal(r.code, 0, r.stderr);
  });

  after(async () => {
    const code = await d?.stop();
    await d?.cleanup();
    assert.equal(code, 0, `daemon exit code; stderr: ${d?.stderr()}`);
  });

  it('587 (STARTTLS) and 465 (TLS): alias fan-out to both Maildirs and the queue; 553 for a foreign From', async () => {
    const cert = await readFile(path.join(d.dir, 'data', 'tls', 'cert.pem'));
    const tls = { ca: [cert], servername: 'localhost' };
    const starttls = nodemailer.createTransport({ host: '127.0.0.1', port: d.ports.submission, requireTLS: true, tls, auth: { user: 'alice', pass: 'alice pw' } });
    const info = await starttls.sendMail({ from: 'alice@localhost', to: 'team@localhost', subject: 'to the team', text: 'hello team' });
    assert.match(info.response, /^250 2\.0\.0 Ok: queued as [0-9A-F]{16}$/);
    await assert.rejects(starttls.sendMail({ from: 'bob@localhost', to: 'team@localhost', subject: 'x', text: 'x' }), /553 5\.7\.1/);
    starttls.close();

    const implicit = nodemailer.createTransport({ host: '127.0.0.1', port: d.ports.submissions, secure: true, tls, auth: { user: 'bob', pass: 'bob pw' } });
    await implicit.sendMail({ from: 'bob@localhost', to: `dave@${REMOTE}`, subject: 'remote', text: 'far away' });
    implicit.close();

    for (const u of ['alice', 'bob']) {
      const f = await maildirFiles(path.join(d.dir, 'data', 'mail', u));
      assert.equal(f.length, 1, u);
      const text = await readFile(f[0]!, 'utf8');
      assert.match(text, /^Received: from unknown\r\n\tby localhost \(onionpost\) with ESMTPSA id /);
      assert.match(text, /\r\nMessage-ID: <[^@]+@localhost>\r\n/);
    }
    const entries = await readdir(path.join(d.dir, 'data', 'queue', 'entries'));
    assert.equal(entries.length, 2);
    const states = await Promise.all(entries.map(async (e) => JSON.parse(await readFile(path.join(d.dir, 'data', 'queue', 'entries', e, 'state.json'), 'utf8')) as { recipients: Array<{ address: string }> }));
    assert.deepEqual(states.flatMap((s) => s.recipients.map((r) => r.address)).sort(), [`carol@${REMOTE}`, `dave@${REMOTE}`].sort());
  });

  it('SIGHUP reloads the aliases file at once', async () => {
    await writeFile(path.join(d.dir, 'data', 'aliases'), 'sales: bob\n');
    d.child.kill('SIGHUP');
    await new Promise((r) => setTimeout(r, 200));
    const t = nodemailer.createTransport({ host: '127.0.0.1', port: d.ports.smtp, ignoreTLS: true });
    await t.sendMail({ envelope: { from: 'x@example.onion', to: ['sales@localhost'] }, raw: 'Subject: hi\r\n\r\nx\r\n' });
    await assert.rejects(t.sendMail({ envelope: { from: 'x@example.onion', to: ['team@localhost'] }, raw: 'Subject: hi\r\n\r\nx\r\n' }), /550 5\.1\.1/);
    t.close();
    assert.equal((await maildirFiles(path.join(d.dir, 'data', 'mail', 'bob'))).length, 2);
  });
});
