/**
 * Outbound delivery through a real (private, offline) Tor network, end to end, with two real
 * onionpost daemons (`onionpost start` child processes):
 *
 *   alice --submission/AUTH--> daemon A --SOCKS--> [recording proxy] --> Tor SocksPort
 *        ~~~ Tor ~~~> onion B:25 --> [round-trip counting relay] --> daemon B port 25 --> bob's INBOX
 *
 * - mail to bob@<onion B> arrives byte for byte, plus the two Received fields (A's submission,
 *   B's port 25); time from submission to delivery and SMTP round trips are measured;
 * - mail to a dead onion (a valid, unhosted v3 address) from `onionpost sendmail` is retried
 *   on a short schedule, `onionpost queue list` shows it with its last error, then it is
 *   bounced to alice with an RFC 3464 DSN;
 * - every connection daemon A made went to its configured SOCKS port, as SOCKS5 CONNECT by
 *   host name with per-domain credentials, and no DNS query left it.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { findNetworkTors, startTorNetwork, type TorNetwork } from '../scripts/tor-testnet-lib.js';
import type { QueueEntry } from '../src/delivery/queue.js';
import { isolationCredentials } from '../src/delivery/transport.js';
import { randomOnionAddress } from '../src/tor/onion-address.js';
import { runCli } from './helpers/cli.js';
import { spawnDaemon } from './helpers/daemon.js';
import { startDnsServer, type TestDnsServer } from './helpers/dns-server.js';
import { parseDsn } from './helpers/mime.js';
import { maildirMessages } from './helpers/maildir-files.js';
import { startTcpRelay } from './helpers/tcp-relay.js';
import { jsonLogLines, prepareMailDaemon, type LogLine } from './helpers/mail-daemon.js';
import { sleep, waitForEvery } from './helpers/wait-for.js';

const waitFor = waitForEvery(20);

// ---------------------------------------------------------------------------------------
// Loopback instruments

interface SocksRecord {
  atyp: number;
  host: string;
  port: number;
  user?: string;
  password?: string;
}

/** A transparent proxy in front of Tor's SocksPort that records each SOCKS5 request it relays. */
async function startSocksRecorder(torPort: number): Promise<{ port: number; connections: () => number; requests: SocksRecord[]; close(): Promise<void> }> {
  const requests: SocksRecord[] = [];
  const relay = await startTcpRelay({ targetPort: torPort, observe: (client) => recordSocksRequest(client, requests) });
  return { ...relay, requests };
}

/** Records the SOCKS5 CONNECT (with its username/password, if any) the client sends first. */
function recordSocksRequest(client: net.Socket, requests: SocksRecord[]): void {
  let buf = Buffer.alloc(0);
  let stage: 'greet' | 'auth-or-request' | 'request' | 'done' = 'greet';
  const rec: Partial<SocksRecord> = {};
  const onData = (d: Buffer): void => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (stage === 'greet') {
        if (buf.length < 2 || buf.length < 2 + buf[1]!) return;
        buf = buf.subarray(2 + buf[1]!);
        stage = 'auth-or-request';
      } else if (stage === 'auth-or-request' && buf[0] === 0x01) {
        if (buf.length < 2) return;
        const ulen = buf[1]!;
        if (buf.length < 3 + ulen || buf.length < 3 + ulen + buf[2 + ulen]!) return;
        const plen = buf[2 + ulen]!;
        rec.user = buf.subarray(2, 2 + ulen).toString();
        rec.password = buf.subarray(3 + ulen, 3 + ulen + plen).toString();
        buf = buf.subarray(3 + ulen + plen);
        stage = 'request';
      } else if (stage === 'auth-or-request' || stage === 'request') {
        if (buf.length < 5) return;
        const atyp = buf[3]!;
        const end = atyp === 0x03 ? 5 + buf[4]! : atyp === 0x01 ? 8 : 20;
        if (buf.length < end + 2) return;
        const host = atyp === 0x03 ? buf.subarray(5, end).toString() : atyp === 0x01 ? [...buf.subarray(4, 8)].join('.') : buf.subarray(4, 20).toString('hex');
        requests.push({ ...rec, atyp, host, port: buf.readUInt16BE(end) });
        stage = 'done';
        client.off('data', onData);
        return;
      } else return;
    }
  };
  client.on('data', onData);
}

interface RelayConnection {
  /** Client sends followed by a server answer: SMTP (and TLS) round trips. */
  roundTrips: number;
  bytesUp: number;
  bytesDown: number;
  closed: boolean;
}

/** A TCP relay (onion target -> daemon B) that counts round trips per connection. */
async function startTurnRelay(target: number): Promise<{ port: number; conns: RelayConnection[]; close(): Promise<void> }> {
  const conns: RelayConnection[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const rec: RelayConnection = { roundTrips: 0, bytesUp: 0, bytesDown: 0, closed: false };
    conns.push(rec);
    let last: 'client' | 'server' | null = null;
    const upstream = net.connect({ host: '127.0.0.1', port: target });
    for (const s of [client, upstream]) {
      s.setNoDelay(true);
      sockets.add(s);
      s.on('close', () => {
        sockets.delete(s);
        rec.closed = true;
      });
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.on('data', (d: Buffer) => {
      last = 'client';
      rec.bytesUp += d.length;
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => {
      if (last === 'client') rec.roundTrips++;
      last = 'server';
      rec.bytesDown += d.length;
      client.write(d);
    });
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as net.AddressInfo).port,
    conns,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// ---------------------------------------------------------------------------------------
// Daemons

interface RunningDaemon {
  dir: string;
  config: string;
  ports: { smtp: number; submission: number };
  child: ChildProcess;
  logs(): LogLine[];
  stop(): Promise<void>;
}

async function startOnionpost(dir: string, config: string, ports: { smtp: number; submission: number }): Promise<RunningDaemon> {
  const daemon = await spawnDaemon(config);
  const { child } = daemon;
  return {
    dir,
    config,
    ports,
    child,
    logs: () => jsonLogLines(daemon.stderr()),
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const killed = await Promise.race([daemon.stop().then(() => false), sleep(10_000).then(() => true)]);
        if (killed) {
          child.kill('SIGKILL');
          await daemon.stop();
        }
      }
    },
  };
}

/** One AUTH PLAIN submission session; resolves with the time of the 250 after DATA. */
async function submit(port: number, user: string, pass: string, messages: Array<{ to: string[]; raw: Buffer }>, from: string): Promise<number[]> {
  const conn = new SMTPConnection({ host: '127.0.0.1', port, ignoreTLS: true, name: 'client.invalid', logger: false });
  conn.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => conn.connect((err?: Error) => (err ? reject(err) : resolve())));
  await new Promise<void>((resolve, reject) => conn.login({ user, pass }, (err?: Error | null) => (err ? reject(err) : resolve())));
  const times: number[] = [];
  for (const m of messages) {
    await new Promise<void>((resolve, reject) => conn.send({ from, to: m.to }, m.raw, (err: Error | null) => (err ? reject(err) : resolve())));
    times.push(Date.now());
  }
  conn.quit();
  return times;
}

// ---------------------------------------------------------------------------------------

describe('outbound delivery through a private Tor network (two onionpost daemons)', { timeout: 120_000 }, () => {
  let dir: string;
  let tor: TorNetwork | undefined;
  let relay: Awaited<ReturnType<typeof startTurnRelay>> | undefined;
  let recorder: Awaited<ReturnType<typeof startSocksRecorder>> | undefined;
  let dns: TestDnsServer | undefined;
  let a: RunningDaemon | undefined;
  let b: RunningDaemon | undefined;
  const A_DOMAIN = randomOnionAddress();
  const DEAD = randomOnionAddress();
  let B_DOMAIN = '';
  /** Relay connections before daemon A ran (tor-testnet's readiness probe). */
  let relayBaseline = 0;
  let deadEntry: QueueEntry | undefined;
  const figures: string[] = [];

  before(
    async () => {
      dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-tor-e2e-'));
      dns = await startDnsServer({});
      const bPrepared = prepareMailDaemon(path.join(dir, 'b'), 'placeholder.invalid', { bob: 'bob password' }, '[tor]\ncontrol = ""\n');
      const bPorts = (await bPrepared).ports;
      relay = await startTurnRelay(bPorts.smtp);
      // Tor takes ~15 s: users (argon2) and the daemons' configuration meanwhile.
      const torReady = startTorNetwork({ dir: path.join(dir, 'tor'), onions: [{ name: 'b', targetPort: relay.port }], readyTimeoutMs: 90_000 });
      torReady.catch(() => undefined);
      const aDir = path.join(dir, 'a');
      await mkdir(aDir, { recursive: true });
      tor = await torReady;
      B_DOMAIN = tor.onions.b!;
      recorder = await startSocksRecorder(tor.socksPort);
      relayBaseline = relay.conns.length;
      // B: the onion's own daemon, with its real domain now that the onion name is known.
      const bConfig = (await bPrepared).config;
      await writeFile(bConfig, (await readFile(bConfig, 'utf8')).replace('placeholder.invalid', B_DOMAIN));
      await writeFile(
        path.join(dir, 'b', 'data', 'users.passwd'),
        (await readFile(path.join(dir, 'b', 'data', 'users.passwd'), 'utf8')).replace(/placeholder\.invalid/g, B_DOMAIN),
      );
      const aPrepared = await prepareMailDaemon(
        aDir,
        A_DOMAIN,
        { alice: 'alice password' },
        `[tor]\ncontrol = ""\nsocks = "127.0.0.1:${recorder.port}"\ndns = "${dns.address}"\n` +
          `[queue]\nretry = ["2s", "3s"]\nmax_age = "8s"\ndelay_warning = ""\n[delivery]\nconnect_timeout = "30s"\n`,
      );
      [a, b] = await Promise.all([startOnionpost(aDir, aPrepared.config, aPrepared.ports), startOnionpost(path.join(dir, 'b'), bConfig, bPorts)]);
      process.stderr.write(`tor network ready in ${tor.readyMs} ms\n`);
    },
    { timeout: 110_000 },
  );

  after(async () => {
    try {
      await Promise.all([a?.stop(), b?.stop()]);
      await tor?.stop();
    } finally {
      await relay?.close();
      await recorder?.close();
      await dns?.close();
      if (dir) {
        assert.deepEqual(findNetworkTors(path.join(dir, 'tor')), [], 'every tor of the test network is gone');
        await rm(dir, { recursive: true, force: true });
      }
      if (figures.length) process.stderr.write(`\n=== delivery through Tor: figures ===\n${figures.join('\n')}\n`);
    }
  });

  it('sendmail to a dead onion is queued (the retries run while the next tests do)', async () => {
    const r = await runCli(['--config', a!.config, 'sendmail', '-oi', `nobody@${DEAD}`], { input: `From: alice@${A_DOMAIN}\nSubject: to a dead onion\n\nnobody hosts this onion\n` });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    const l = await runCli(['--config', a!.config, 'queue', 'list', '--json']);
    deadEntry = (JSON.parse(l.stdout) as QueueEntry[]).find((e) => e.recipients[0]!.address === `nobody@${DEAD}`);
    assert.ok(deadEntry);
  });

  it('alice -> bob@<onion>: delivered through Tor byte for byte (plus Received fields); time and round trips measured', async () => {
    const raw = Buffer.from(
      `From: Alice <alice@${A_DOMAIN}>\r\nTo: Bob <bob@${B_DOMAIN}>\r\nSubject: through Tor\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n` +
        `Message-ID: <e2e-1@${A_DOMAIN}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n` +
        `Grüße über Tor.\r\n.a line that starts with a dot\r\n..and two\r\n\r\n${'x'.repeat(900)}\r\n-- \r\nalice\r\n`,
    );
    const bobBox = path.join(b!.dir, 'data', 'mail', 'bob');
    const connsBefore = relay!.conns.length;
    const [submitted] = await submit(a!.ports.submission, 'alice', 'alice password', [{ to: [`bob@${B_DOMAIN}`], raw }], `alice@${A_DOMAIN}`);
    const got = await waitFor('bob to get the message', async () => (await maildirMessages(bobBox))[0], 30_000);
    const arrived = Date.now();
    const data = got.data;
    assert.ok(data.subarray(data.length - raw.length).equals(raw), 'the message arrives byte for byte');
    const prefix = data.subarray(0, data.length - raw.length).toString();
    const received = prefix.split(/\r\n(?=Received:)/);
    assert.equal(received.length, 2, `exactly two added fields: ${prefix}`);
    assert.match(received[0]!, new RegExp(`^Received: from ${A_DOMAIN}\\r\\n\\tby ${B_DOMAIN} \\(onionpost\\) with ESMTPS id [0-9A-F]+\\r\\n\\tfor <bob@${B_DOMAIN}>; .* \\+0000$`));
    assert.match(received[1]!, new RegExp(`^Received: from unknown\\r\\n\\tby ${A_DOMAIN} \\(onionpost\\) with ESMTPA id [0-9A-F]+\\r\\n\\tfor <bob@${B_DOMAIN}>; .* \\+0000\\r\\n$`));
    assert.doesNotMatch(prefix, /127\.0\.0\.1|\[|localhost/i, 'no address or host name');

    // Figures: latency (submission 250 -> file in bob's Maildir) and SMTP round trips on the wire.
    // (pino writes asynchronously: the log line may come a moment after the file.)
    const delivered = await waitFor('the delivery log line', async () => a!.logs().find((l) => l.msg === 'delivered' && l.to === `bob@${B_DOMAIN}`), 5000);
    const connected = a!.logs().find((l) => l.msg === 'connected' && l.domain === B_DOMAIN)!;
    assert.ok(connected, 'the scheduler logged the connection');
    await waitFor('the connection to close', async () => relay!.conns.slice(connsBefore).every((c) => c.closed), 10_000);
    const conns = relay!.conns.slice(connsBefore);
    assert.equal(conns.length, 1, 'one connection');
    figures.push(
      `submission 250 -> in bob's Maildir through Tor: ${arrived - submitted} ms (scheduler: SOCKS connect incl. rendezvous ${String(connected.connectMs)} ms, SMTP session set-up (greeting, EHLO, STARTTLS, EHLO) ${String(delivered.setupMs)} ms, transaction ${String(delivered.ms)} ms, TLS ${String(delivered.tls)})`,
      `round trips on the wire for one message (relay in front of daemon B): ${conns[0]!.roundTrips} (incl. STARTTLS handshake and QUIT; ${conns[0]!.bytesUp} bytes up, ${conns[0]!.bytesDown} down)`,
    );
    assert.ok(conns[0]!.roundTrips >= 5 && conns[0]!.roundTrips <= 12, `round trips: ${conns[0]!.roundTrips}`);
  });

  it('three messages submitted together reach bob; messages queued meanwhile share a connection', async () => {
    const bobBox = path.join(b!.dir, 'data', 'mail', 'bob');
    const before = (await maildirMessages(bobBox)).length;
    const connsBefore = relay!.conns.length;
    const msgs = [1, 2, 3].map((i) => ({
      to: [`bob@${B_DOMAIN}`],
      raw: Buffer.from(`From: alice@${A_DOMAIN}\r\nTo: bob@${B_DOMAIN}\r\nSubject: burst ${i}\r\nDate: Thu, 26 Nov 2026 12:00:0${i} +0000\r\nMessage-ID: <burst-${i}@${A_DOMAIN}>\r\n\r\nmessage ${i}\r\n`),
    }));
    const t0 = Date.now();
    await submit(a!.ports.submission, 'alice', 'alice password', msgs, `alice@${A_DOMAIN}`);
    const all = await waitFor('three more messages for bob', async () => {
      const m = await maildirMessages(bobBox);
      return m.length >= before + 3 ? m : null;
    }, 30_000);
    const elapsed = Date.now() - t0;
    for (const m of msgs) assert.ok(all.some((x) => x.data.subarray(x.data.length - m.raw.length).equals(m.raw)));
    await waitFor('the connections to close', async () => relay!.conns.slice(connsBefore).every((c) => c.closed), 10_000);
    const conns = relay!.conns.slice(connsBefore);
    assert.ok(conns.length >= 1 && conns.length <= 3);
    const trips = conns.reduce((s, c) => s + c.roundTrips, 0);
    figures.push(`3 messages submitted in one session: all in bob's Maildir after ${elapsed} ms, over ${conns.length} connection(s), ${trips} round trips in all (${(trips / 3).toFixed(1)} per message)`);
  });

  it('the dead onion: retried on schedule, listed with its last error in between, then bounced to alice with an RFC 3464 DSN', async () => {
    assert.ok(deadEntry, 'queued by the first test');
    // In between: `queue list` shows it, with Tor's error.
    const listing = await waitFor(
      'a first failed attempt in `queue list`',
      async () => {
        const l = await runCli(['--config', a!.config, 'queue', 'list']);
        return l.stdout.includes(deadEntry!.id) && /last error:/.test(l.stdout) ? l.stdout : null;
      },
      15_000,
    );
    assert.match(listing, new RegExp(`nobody@${DEAD} +\\(waiting: \\d attempts?, (next in|due now)`));
    assert.match(listing, /last error: the onion service .* is not reachable: its descriptor was not found \(SOCKS f0/);

    const aliceBox = path.join(a!.dir, 'data', 'mail', 'alice');
    const bounce = await waitFor('the bounce in alice INBOX', async () => (await maildirMessages(aliceBox))[0], 25_000);
    const dsn = parseDsn(bounce.data);
    assert.equal(dsn.top.header('from'), `Mail Delivery System <MAILER-DAEMON@${A_DOMAIN}>`);
    assert.equal(dsn.top.header('to'), `<alice@${A_DOMAIN}>`);
    assert.equal(dsn.top.header('subject'), 'Undelivered Mail Returned to Sender');
    assert.equal(dsn.perMessage['reporting-mta'], `dns; ${A_DOMAIN}`);
    assert.equal(dsn.perMessage['x-onionpost-queue-id'], deadEntry!.id);
    assert.equal(dsn.recipients.length, 1);
    const r = dsn.recipients[0]!;
    assert.equal(r['final-recipient'], `rfc822; nobody@${DEAD}`);
    assert.equal(r.action, 'failed');
    assert.equal(r.status, '4.4.7');
    assert.match(r['diagnostic-code']!, /^X-Onionpost; delivery time expired.*descriptor was not found \(SOCKS f0/);
    assert.match(dsn.headers.body, /^Subject: to a dead onion$/m);

    // The schedule: each retry waited its configured time (2s, then 3s), and the last attempt
    // came at the maximum age (8s).
    const attempts = a!
      .logs()
      .filter((l) => l.id === deadEntry!.id && (l.msg === 'delivery deferred' || l.msg === 'delivery failed'))
      .map((l) => ({ at: l.time - deadEntry!.createdAt, msg: l.msg }));
    assert.ok(attempts.length >= 3, JSON.stringify(attempts));
    assert.equal(attempts.at(-1)!.msg, 'delivery failed');
    const starts = a!.logs().filter((l) => l.msg === 'connection failed' && l.domain === DEAD).map((l) => l.time - deadEntry!.createdAt);
    const waits = [2000, 3000, 3000];
    for (let i = 1; i < attempts.length - 1; i++) {
      assert.ok(starts[i]! - attempts[i - 1]!.at >= waits[i - 1]! - 50, `retry ${i} waited ${starts[i]! - attempts[i - 1]!.at} ms: ${JSON.stringify({ attempts, starts })}`);
    }
    assert.ok(attempts.at(-1)!.at >= 8000 && attempts.at(-1)!.at < 14_000, `expired at ${attempts.at(-1)!.at} ms`);
    figures.push(`dead onion: attempts recorded at ${attempts.map((x) => `${(x.at / 1000).toFixed(1)}s`).join(', ')} after queueing (retry 2s, 3s; max_age 8s); bounce delivered to alice`);
    // Gone from the queue.
    await waitFor('an empty queue', async () => JSON.parse((await runCli(['--config', a!.config, 'queue', 'list', '--json'])).stdout).length === 0, 5000);
  });

  it('every outbound connection went through the SOCKS port, by host name, isolated per domain; no DNS query', () => {
    const reqs = recorder!.requests;
    assert.ok(reqs.length >= 4, `SOCKS requests: ${JSON.stringify(reqs)}`);
    assert.equal(recorder!.connections(), reqs.length, 'every connection to the SOCKS port carried one CONNECT');
    for (const r of reqs) {
      assert.equal(r.atyp, 0x03, 'by host name (Tor resolves it)');
      assert.equal(r.port, 25);
      assert.ok([B_DOMAIN, DEAD].includes(r.host), r.host);
      assert.equal(r.user, 'onionpost');
      assert.equal(r.password, isolationCredentials(r.host).password);
    }
    assert.equal(
      reqs.filter((r) => r.host === B_DOMAIN).length,
      relay!.conns.length - relayBaseline,
      `every connection that reached daemon B came through the recording proxy (and Tor): ${JSON.stringify({ reqs, relay: relay!.conns, connected: a!.logs().filter((l) => l.msg === 'connected') })}`,
    );
    const connected = a!.logs().filter((l) => l.msg === 'connected');
    assert.ok(connected.length > 0 && connected.every((l) => l.route === `tor socks 127.0.0.1:${recorder!.port}`));
    assert.deepEqual(dns!.queries, [], 'no DNS query (onion domains need none)');
    assert.equal(b!.logs().filter((l) => l.msg === 'connected').length, 0, 'daemon B sent nothing');
  });
});
