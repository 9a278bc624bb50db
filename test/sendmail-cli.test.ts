/**
 * `onionpost sendmail` and `onionpost queue ...` as separate processes, the way mutt and an
 * administrator run them: first without a daemon (the message waits in the queue), then
 * against a running daemon, which picks new mail and flush requests up at once and delivers
 * through a SOCKS5 server (standing in for Tor) to a real onionpost port-25 listener.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { QueueEntry } from '../src/delivery/queue.js';
import { randomOnionAddress } from '../src/tor/onion-address.js';
import { UserDb } from '../src/users/user-db.js';
import { BIN, ROOT, runCli } from './helpers/cli.js';
import { startDaemon, type Daemon } from './helpers/daemon.js';
import { DOMAIN as PEER, startHarness, type Harness } from './helpers/smtp-harness.js';
import { startSocksServer, type TestSocksServer } from './helpers/socks5-server.js';
import { waitForEvery } from './helpers/wait-for.js';

const OURS = randomOnionAddress();
const waitFor = waitForEvery(50);

describe('onionpost sendmail and queue (no daemon running)', { timeout: 60_000 }, () => {
  let dir: string;
  let config: string;
  const cli = (args: string[], input = '') => runCli(['--config', config, ...args], { input });
  const list = async (): Promise<QueueEntry[]> => {
    const r = await cli(['queue', 'list', '--json']);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as QueueEntry[];
  };
  const raw = async (id: string): Promise<string> => {
    const r = await cli(['queue', 'show', id, '--message']);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout;
  };

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-sendmail-'));
    config = path.join(dir, 'onionpost.toml');
    await writeFile(config, `data_dir = "data"\ndomain = "${OURS}"\n[tor]\ncontrol = ""\n`);
    const users = new UserDb(path.join(dir, 'data', 'users.passwd'), { localDomains: [OURS] });
    await users.add('alice', 'alice password');
    await users.add('bob', 'bob password');
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('mutt style (-oem -oi -- rcpt): queued durably with Received, Date and Message-ID added, CRLF, dots kept', async () => {
    const message = `From: Alice <alice@${OURS}>\nTo: bob@${PEER}\nSubject: from mutt\n\nfirst line\n.\n..two dots\nlast line\n`;
    const r = await cli(['sendmail', '-oem', '-oi', '--', `bob@${PEER}`], message);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /queued as [0-9A-F]{16}; the daemon is not running/);
    const entries = await list();
    assert.equal(entries.length, 1);
    const e = entries[0]!;
    assert.equal(e.from, `alice@${OURS}`, 'the sender comes from the From field');
    assert.deepEqual(e.recipients.map((x) => [x.address, x.status]), [[`bob@${PEER}`, 'pending']]);
    assert.equal(e.origin, 'local');
    const text = await raw(e.id);
    assert.doesNotMatch(text, /(^|[^\r])\n/, 'CRLF line ends');
    assert.match(text, new RegExp(`^Received: by ${OURS} \\(onionpost sendmail\\) id ${e.id};\\r\\n\\t[A-Z][a-z]{2}, \\d+ [A-Z][a-z]{2} \\d{4} \\d\\d:\\d\\d:\\d\\d \\+0000\\r\\n`));
    assert.match(text, /^Date: .* \+0000\r$/m);
    assert.match(text, new RegExp(`^Message-ID: <[A-Za-z0-9_-]+@${OURS}>\\r$`, 'm'));
    assert.ok(text.endsWith('\r\n\r\nfirst line\r\n.\r\n..two dots\r\nlast line\r\n'), 'with -oi a lone "." is message text');
    assert.ok(text.includes(`From: Alice <alice@${OURS}>\r\nTo: bob@${PEER}\r\nSubject: from mutt\r\n`), 'the header is kept as written');
    await cli(['queue', 'delete', e.id]);
  });

  it('-t takes recipients from To/Cc/Bcc and removes Bcc; -f and -F make the From field; without -i a "." line ends the message', async () => {
    const carol = `carol@${randomOnionAddress()}`;
    const message = `To: bob@${PEER}\nCc: Bob Too <bob@${OURS}>\nBcc: ${carol},\n  secret@${PEER}\nSubject: extracted\n\nbody\n.\nnot part of it\n`;
    const r = await cli(['sendmail', '-t', '-f', `alice@${OURS}`, '-F', 'Alice Ä', `extra@${PEER}`], message);
    assert.equal(r.code, 0, r.stderr);
    const e = (await list()).at(-1)!;
    assert.deepEqual(e.recipients.map((x) => x.address).sort(), [`bob@${OURS}`, `bob@${PEER}`, carol, `extra@${PEER}`, `secret@${PEER}`].sort());
    const text = await raw(e.id);
    assert.doesNotMatch(text, /^Bcc:/im, 'no Bcc field');
    assert.doesNotMatch(text, /secret@/, 'not even its continuation line');
    assert.match(text, new RegExp(`^From: =\\?UTF-8\\?B\\?${Buffer.from('Alice Ä').toString('base64').replace(/[+/=]/g, '\\$&')}\\?= <alice@${OURS}>\\r$`, 'm'));
    assert.ok(text.endsWith('\r\n\r\nbody\r\n'), 'the message ends at the "." line');
    await cli(['queue', 'delete', e.id]);
  });

  it('-N, -R and -V (delivery reports, RFC 3461) are kept in the queue entry', async () => {
    const r = await cli(['sendmail', '-N', 'success,failure', '-R', 'hdrs', '-V', 'mutt-42', '-f', `alice@${OURS}`, `bob@${PEER}`, `bob@${OURS}`], 'Subject: dsn\n\nx\n');
    assert.equal(r.code, 0, r.stderr);
    const e = (await list()).at(-1)!;
    assert.equal(e.ret, 'HDRS');
    assert.equal(e.envid, 'mutt-42');
    assert.deepEqual(e.recipients.map((x) => x.notify), [
      ['SUCCESS', 'FAILURE'],
      ['SUCCESS', 'FAILURE'],
    ]);
    await cli(['queue', 'delete', e.id]);
  });

  const refusals: Array<[string, string[], string, number, RegExp]> = [
    ['a sender that is not ours', ['-f', `mallory@${PEER}`, `bob@${PEER}`], 'Subject: x\n\nx\n', 77, /sender <mallory@.*> is not allowed/],
    ['a From field of another user', ['-f', `alice@${OURS}`, `bob@${PEER}`], `From: bob@${OURS}\n\nx\n`, 77, /From field names <bob@.*does not belong/],
    ['an unknown local user', ['-f', `alice@${OURS}`, `nobody@${OURS}`], 'Subject: x\n\nx\n', 67, /nobody@.*no such user/],
    ['an invalid onion', ['-f', `alice@${OURS}`, 'bob@notanonion.onion'], 'Subject: x\n\nx\n', 67, /not a valid onion address/],
    ['a clearnet domain (relay.clearnet off)', ['-f', `alice@${OURS}`, 'bob@example.com'], 'Subject: x\n\nx\n', 67, /clearnet/],
    ['no recipients', ['-f', `alice@${OURS}`], 'Subject: x\n\nx\n', 64, /no recipients/],
    ['-t without recipient fields', ['-t', '-f', `alice@${OURS}`], 'Subject: x\n\nx\n', 64, /none in To, Cc or Bcc/],
    ['an unknown option', ['-Z', `bob@${PEER}`], 'x\n', 64, /unknown option -Z/],
    ['-bs', ['-bs'], '', 64, /not supported/],
    ['a bad -N', ['-N', 'never,success', '-f', `alice@${OURS}`, `bob@${PEER}`], 'Subject: x\n\nx\n', 64, /-N never,success/],
    ['a bad -R', ['-R', 'body', '-f', `alice@${OURS}`, `bob@${PEER}`], 'Subject: x\n\nx\n', 64, /-R body/],
    ['NUL bytes', ['-f', `alice@${OURS}`, `bob@${PEER}`], 'Subject: x\n\nnul \0 here\n', 65, /NUL/],
  ];
  for (const [what, args, input, code, re] of refusals) {
    it(`refuses ${what} with exit ${code}, and queues nothing`, async () => {
      const before = (await list()).length;
      const r = await cli(['sendmail', ...args], input);
      assert.equal(r.code, code, r.stderr);
      assert.match(r.stderr, re);
      assert.equal((await list()).length, before);
    });
  }

  it('a config error is exit 78 (EX_CONFIG)', async () => {
    const bad = path.join(dir, 'bad.toml');
    await writeFile(bad, '[queue]\nretry = []\n');
    const r = await runCli(['--config', bad, 'sendmail', 'x@y'], { input: 'x' });
    assert.equal(r.code, 78, r.stderr);
    assert.match(r.stderr, /key "queue\.retry"/);
  });

  it('queue list / show / flush / delete, and sendmail -bp', async () => {
    const r = await cli(['sendmail', `bob@${PEER}`], `From: alice@${OURS}\nSubject: listed\n\nx\n`);
    assert.equal(r.code, 0, r.stderr);
    const e = (await list()).at(-1)!;
    const text = await cli(['queue', 'list']);
    assert.equal(text.code, 0);
    assert.match(text.stdout, new RegExp(`^${e.id} +\\S+ +\\d+ +alice@${OURS}$`, 'm'));
    assert.match(text.stdout, new RegExp(`^ +bob@${PEER} +\\(waiting: not tried yet, due now\\)$`, 'm'));
    assert.match(text.stdout, /^-- .* in 1 message, 1 recipient waiting$/m);
    const noAge = (out: string): string => out.replace(new RegExp(`^(${e.id} +)\\S+`, 'm'), '$1');
    assert.equal(noAge((await cli(['sendmail', '-bp'])).stdout), noAge(text.stdout), 'sendmail -bp lists the queue like mailq');

    const show = await cli(['queue', 'show', e.id.toLowerCase()]);
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, new RegExp(`Sender: +alice@${OURS}`));
    assert.match(show.stdout, /^  Subject: listed$/m);

    const flush = await cli(['queue', 'flush', e.id]);
    assert.equal(flush.code, 0, flush.stderr);
    assert.match(flush.stdout, /daemon is not running/);
    assert.ok((await readdir(path.join(dir, 'data', 'queue', 'wake'))).some((n) => n.startsWith(`flush-${e.id}.`)), 'the request waits for the daemon');

    const del = await cli(['queue', 'delete', e.id]);
    assert.equal(del.code, 0, del.stderr);
    assert.equal((await list()).length, 0);
    const gone = await cli(['queue', 'show', e.id]);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /no message .* in the queue/);
    assert.equal((await cli(['queue', 'list'])).stdout, 'Mail queue is empty\n');
    assert.equal((await cli(['queue', 'show', 'nothex'])).code, 64);
  });
});

describe('onionpost sendmail and queue with the daemon running', { timeout: 60_000 }, () => {
  let peer: Harness;
  let socks: TestSocksServer;
  let daemon: Daemon;
  const cli = (args: string[], input = '') => runCli(['--config', daemon.configFile, ...args], { input });

  before(async () => {
    peer = await startHarness();
    socks = await startSocksServer();
    socks.forwardTo = peer.ports.smtp;
    daemon = await startDaemon(`[tor]\ncontrol = ""\nsocks = "127.0.0.1:${socks.port}"\n[queue]\nretry = ["1h"]\n`, {
      prepare: async (d) => {
        const users = new UserDb(path.join(d, 'data', 'users.passwd'), { localDomains: ['localhost'] });
        await users.add('alice', 'alice password');
      },
    });
  });
  after(async () => {
    await daemon?.cleanup();
    await socks?.close();
    await peer?.stop();
  });

  it('the daemon delivers what sendmail queued at once, through the SOCKS port', async () => {
    const before = (await peer.inbox('bob')).length;
    const requests = socks.requests.length;
    const t0 = Date.now();
    const r = await cli(['sendmail', '-oi', `bob@${PEER}`], 'From: alice@localhost\nSubject: live\n\nhello bob\n');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '', 'nothing to say when the daemon runs');
    const got = await waitFor('delivery', async () => (await peer.inbox('bob')).slice(before)[0], 5000);
    process.stderr.write(`sendmail -> delivered at the peer (SOCKS stand-in, no Tor): ${Date.now() - t0} ms\n`);
    assert.match(got.toString(), /\r\n\r\nhello bob\r\n$/);
    assert.equal(socks.requests.length, requests + 1);
    assert.equal(socks.requests.at(-1)!.host, PEER);
    await waitFor('an empty queue', async () => JSON.parse((await cli(['queue', 'list', '--json'])).stdout).length === 0);
  });

  it('a deferred message shows its last error in `queue list`; `queue flush ID` retries it now', async () => {
    socks.reply = (req) => (req.host === PEER ? 0xf0 : 0x00);
    const r = await cli(['sendmail', `alice@${PEER}`], 'From: alice@localhost\nSubject: deferred\n\nlater\n');
    assert.equal(r.code, 0, r.stderr);
    const listing = await waitFor(
      'the first attempt',
      async () => {
        const l = await cli(['queue', 'list']);
        return /last error:/.test(l.stdout) ? l.stdout : null;
      },
      5000,
    );
    assert.match(listing, /\(waiting: 1 attempt, next in (59m|1h)/);
    assert.match(listing, /last error: the onion service .* is not reachable: its descriptor was not found \(SOCKS f0/);
    const id = /^([0-9A-F]{16}) /m.exec(listing)![1]!;

    socks.reply = () => 0x00;
    const before = (await peer.inbox('alice')).length;
    const t0 = Date.now();
    const flush = await cli(['queue', 'flush', id]);
    assert.equal(flush.code, 0, flush.stderr);
    assert.match(flush.stdout, /the daemon retries now/);
    await waitFor('delivery after the flush', async () => (await peer.inbox('alice')).length > before, 5000);
    process.stderr.write(`queue flush -> delivered: ${Date.now() - t0} ms\n`);
    await waitFor('an empty queue', async () => JSON.parse((await cli(['queue', 'list', '--json'])).stdout).length === 0);
  });

  it('a daemon killed (SIGKILL) in the middle of a delivery loses nothing: the next start delivers it', async () => {
    socks.reply = (req) => (req.host === PEER ? 'silent' : 0x00); // the CONNECT hangs: a delivery in flight
    const requests = socks.requests.length;
    const r = await cli(['sendmail', `bob@${PEER}`], 'From: alice@localhost\nSubject: survives a crash\n\nstill here\n');
    assert.equal(r.code, 0, r.stderr);
    await waitFor('the delivery to start', async () => socks.requests.length > requests, 5000);
    daemon.child.kill('SIGKILL');
    await new Promise<void>((resolve) => (daemon.child.exitCode !== null || daemon.child.signalCode !== null ? resolve() : daemon.child.once('exit', () => resolve())));
    const left = JSON.parse((await cli(['queue', 'list', '--json'])).stdout) as QueueEntry[];
    assert.equal(left.length, 1, 'still queued');
    assert.equal(left[0]!.recipients[0]!.status, 'pending');

    socks.reply = () => 0x00;
    const before = (await peer.inbox('bob')).length;
    const again = spawn(process.execPath, [BIN, '--config', daemon.configFile, 'start'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    again.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exited = new Promise<void>((resolve) => again.once('exit', () => resolve()));
    try {
      const got = await waitFor(`delivery after the restart (${err.slice(-300)})`, async () => (await peer.inbox('bob')).slice(before)[0], 10_000);
      assert.match(got.toString(), /Subject: survives a crash\r\n/);
      await waitFor('an empty queue', async () => JSON.parse((await cli(['queue', 'list', '--json'])).stdout).length === 0);
    } finally {
      again.kill('SIGTERM');
      await exited;
    }
  });
});
