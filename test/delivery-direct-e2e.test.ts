/**
 * Direct delivery (`[delivery] direct = true`: no Tor) end to end, with real daemons
 * (`onionpost start` child processes) and a real DNS server on loopback:
 *
 *   alice --submission/AUTH--> daemon S --TCP--> 127.a.b.N:25 [tap] --> daemon P port 25 --> bob's INBOX
 *                                  |
 *                                  +-- MX, A, AAAA --> test DNS server ([tor] dns of S)
 *
 * The mail exchangers are host names under clearnet-style test domains, known only to the
 * test DNS server; they point at 127.a.b.N addresses (the whole 127/8 is loopback), on
 * port 25: the next-hop port is always 25, and there is no setting for it. The taps on those
 * addresses count connections and pass them to P (the receiving onionpost). Needs the right
 * to bind port 25 (root, or a low ip_unprivileged_port_start); without it the suite is skipped.
 *
 * Covered: byte-exact arrival (apart from the Received fields); MX preference order and
 * fallback to the next MX when the first refuses connections; no MX -> the domain's own
 * A/AAAA (and the next address when the first refuses); a 5xx from the peer -> an RFC 3464
 * bounce in alice's INBOX; the relay policy (clearnet relaying only with `relay.clearnet`,
 * never for unauthenticated clients); and that neither daemon asked the system resolver
 * (a preloaded spy, helpers/dns-spy.ts) or Tor's SOCKS port: every name went to the
 * configured resolver.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { randomOnionAddress } from '../src/tor/onion-address.js';
import { spawnDaemon, type DaemonProcess } from './helpers/daemon.js';
import { startDnsServer, type TestDnsServer } from './helpers/dns-server.js';
import { dnsSpyEnv, parseDnsSpyLog, type DnsSpyRecord } from './helpers/dns-spy.js';
import { maildirMessages } from './helpers/maildir-files.js';
import { parseDsn } from './helpers/mime.js';
import { startTcpRelay } from './helpers/tcp-relay.js';
import { jsonLogLines, prepareMailDaemon, type LogLine } from './helpers/mail-daemon.js';
import { SmtpWire } from './helpers/smtp-wire.js';
import { sleep, waitForEvery } from './helpers/wait-for.js';

const waitFor = waitForEvery(20);

// ---------------------------------------------------------------------------------------
// Loopback addresses on port 25

/** 127.a.b.0/24 with random a, b: unlikely to meet anything else on port 25. */
const NET = `127.${10 + Math.floor(Math.random() * 240)}.${1 + Math.floor(Math.random() * 250)}`;
const IP = { refused: `${NET}.1`, mxA: `${NET}.2`, mxB: `${NET}.3`, bare: `${NET}.4` };

function canListen(host: string, port: number): Promise<string | null> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', (err: NodeJS.ErrnoException) => resolve(`${host} port ${port}: ${err.code ?? err.message}`));
    srv.listen(port, host, () => srv.close(() => resolve(null)));
  });
}

const port25Problem = await canListen(IP.mxA, 25);
const ipv6Problem = port25Problem ?? (await canListen('::1', 25));

interface Tap {
  address: string;
  /** Connections accepted so far. */
  connections: () => number;
  close(): Promise<void>;
}

/** A TCP relay on `host:25` to the receiving daemon's port 25 listener, counting connections. */
async function startTap(host: string, target: number): Promise<Tap> {
  const relay = await startTcpRelay({ host, port: 25, targetPort: target });
  return { address: host, connections: relay.connections, close: relay.close };
}

/** A TCP listener that only counts connections (where Tor's SOCKS port would be). */
async function startTrap(): Promise<{ port: number; connections: () => number; close(): Promise<void> }> {
  let count = 0;
  const server = net.createServer((s) => {
    count++;
    s.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as net.AddressInfo).port,
    connections: () => count,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Resolves with the error code of a connection attempt to `host:port` (null: it connected). */
function connectCode(host: string, port: number): Promise<string | null> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(null);
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

// ---------------------------------------------------------------------------------------
// Daemons

interface RunningDaemon {
  dir: string;
  config: string;
  ports: { smtp: number; submission: number };
  spyFile: string;
  logs(): LogLine[];
  pid: number | undefined;
  spied(): Promise<DnsSpyRecord[]>;
  stop(): Promise<void>;
}

async function startOnionpost(dir: string, domain: string, users: Record<string, string>, extraToml: string): Promise<RunningDaemon> {
  const { config, ports } = await prepareMailDaemon(dir, domain, users, extraToml);
  const spyFile = path.join(dir, 'dns-spy.jsonl');
  const daemon: DaemonProcess = await spawnDaemon(config, { env: dnsSpyEnv(spyFile) });
  const { child } = daemon;
  return {
    dir,
    config,
    ports,
    spyFile,
    pid: child.pid,
    logs: () => jsonLogLines(daemon.stderr()),
    spied: async () => parseDnsSpyLog(await readFile(spyFile, 'utf8').catch(() => '')),
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        // SIGTERM; SIGKILL if it has not exited after 8 s (the timer must not keep the test alive).
        const timer = setTimeout(() => child.kill('SIGKILL'), 8000);
        await daemon.stop();
        clearTimeout(timer);
      }
    },
  };
}

/** One AUTH PLAIN submission session through nodemailer's SMTP client. */
async function submit(port: number, user: string, pass: string, from: string, to: string[], raw: Buffer): Promise<void> {
  const conn = new SMTPConnection({ host: '127.0.0.1', port, ignoreTLS: true, name: 'client.invalid', logger: false });
  conn.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => conn.connect((err?: Error) => (err ? reject(err) : resolve())));
  await new Promise<void>((resolve, reject) => conn.login({ user, pass }, (err?: Error | null) => (err ? reject(err) : resolve())));
  await new Promise<void>((resolve, reject) => conn.send({ from, to }, raw, (err: Error | null) => (err ? reject(err) : resolve())));
  conn.quit();
}

function plain(user: string, pass: string): string {
  return Buffer.from(`\0${user}\0${pass}`, 'utf8').toString('base64');
}

// ---------------------------------------------------------------------------------------

const SENDER = randomOnionAddress();
const SENDER2 = randomOnionAddress();
const PEER = 'peer.example';
const ALICE_PW = 'alice password';

describe('direct delivery (no Tor): MX and addresses from the configured resolver, two onionpost daemons', { timeout: 20_000, skip: port25Problem ? `cannot listen on port 25 (${port25Problem})` : false }, () => {
  let dir = '';
  let dns: TestDnsServer | undefined;
  let trap: Awaited<ReturnType<typeof startTrap>> | undefined;
  const taps: Record<'mxA' | 'mxB' | 'bare', Tap | undefined> & { v6?: Tap } = { mxA: undefined, mxB: undefined, bare: undefined };
  /** S: direct mode, clearnet relaying on. */
  let s: RunningDaemon | undefined;
  /** S2: direct mode, clearnet relaying off (the default). */
  let s2: RunningDaemon | undefined;
  /** P: the receiving MTA for the test domains. */
  let p: RunningDaemon | undefined;
  const bobBox = (): string => path.join(p!.dir, 'data', 'mail', 'bob');
  const counts = (): Record<string, number> => ({
    mxA: taps.mxA!.connections(),
    mxB: taps.mxB!.connections(),
    bare: taps.bare!.connections(),
    v6: taps.v6?.connections() ?? 0,
  });

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-direct-e2e-'));
    assert.equal(await connectCode(IP.refused, 25), 'ECONNREFUSED', `nothing may listen on ${IP.refused}:25 (the refusing MX)`);
    dns = await startDnsServer({
      // MX records out of preference order: the order must come from the preferences.
      [PEER]: {
        mx: [
          { preference: 20, exchange: 'mx-b.peer.example' },
          { preference: 10, exchange: 'mx-a.peer.example' },
        ],
      },
      'mx-a.peer.example': { a: [IP.mxA] },
      'mx-b.peer.example': { a: [IP.mxB] },
      'fallback.example': {
        mx: [
          { preference: 15, exchange: 'live.fallback.example' },
          { preference: 5, exchange: 'dead.fallback.example' },
          { preference: 30, exchange: 'mx-a.peer.example' },
        ],
      },
      'dead.fallback.example': { a: [IP.refused] },
      'live.fallback.example': { a: [IP.mxB] },
      // No MX (NOERROR, no data): the domain itself, by its addresses.
      'bare.example': { a: [IP.bare] },
      'dual.example': { a: [IP.refused], aaaa: ['::1'] },
    });
    trap = await startTrap();
    const [sender, sender2, peer] = await Promise.all([
      startOnionpost(
        path.join(dir, 's'),
        SENDER,
        { alice: ALICE_PW },
        `[relay]\nclearnet = true\n[tor]\ncontrol = ""\nsocks = "127.0.0.1:${trap.port}"\ndns = "${dns.address}"\n` +
          `[queue]\nretry = ["1s"]\nmax_age = "1m"\ndelay_warning = ""\n[delivery]\ndirect = true\nconnect_timeout = "5s"\n`,
      ),
      startOnionpost(
        path.join(dir, 's2'),
        SENDER2,
        { alice: ALICE_PW },
        `[tor]\ncontrol = ""\nsocks = "127.0.0.1:${trap.port}"\ndns = "${dns.address}"\n[delivery]\ndirect = true\nconnect_timeout = "5s"\n`,
      ),
      startOnionpost(
        path.join(dir, 'p'),
        PEER,
        { bob: 'bob password' },
        `local_domains = ["fallback.example", "bare.example", "dual.example"]\n[tor]\ncontrol = ""\ndns = ""\n`,
      ),
    ]);
    [s, s2, p] = [sender, sender2, peer];
    taps.mxA = await startTap(IP.mxA, peer.ports.smtp);
    taps.mxB = await startTap(IP.mxB, peer.ports.smtp);
    taps.bare = await startTap(IP.bare, peer.ports.smtp);
    if (!ipv6Problem) taps.v6 = await startTap('::1', peer.ports.smtp);
  });

  after(async () => {
    try {
      await Promise.all([s?.stop(), s2?.stop(), p?.stop()]);
    } finally {
      for (const t of Object.values(taps)) await t?.close();
      await trap?.close();
      await dns?.close();
      if (dir) await rm(dir, { recursive: true, force: true });
    }
  });

  /** Submits one message from alice (daemon S) and waits for it in bob's INBOX at P. */
  async function deliverToBob(to: string, subject: string): Promise<{ raw: Buffer; data: Buffer }> {
    const raw = Buffer.from(
      `From: Alice <alice@${SENDER}>\r\nTo: <${to}>\r\nSubject: ${subject}\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n` +
        `Message-ID: <${subject.replace(/\W+/g, '-')}@${SENDER}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n` +
        `Grüße, direkt.\r\n.a line that starts with a dot\r\n..and two\r\n.\r\n\r\n${'x'.repeat(1200)}\r\n-- \r\nalice\r\n`,
    );
    const before = (await maildirMessages(bobBox())).length;
    await submit(s!.ports.submission, 'alice', ALICE_PW, `alice@${SENDER}`, [to], raw);
    const all = await waitFor(`the message to ${to} in bob's INBOX`, async () => {
      const m = await maildirMessages(bobBox());
      return m.length > before ? m : null;
    }, 5000).catch((err: Error) => {
      const domain = to.slice(to.indexOf('@') + 1);
      const lines = s!.logs().filter((l) => l.domain === domain && l.component === 'delivery');
      throw new Error(`${err.message}; the sender's last log lines for ${domain}: ${JSON.stringify(lines.slice(-3).map(({ msg, host, address, err, reply }) => ({ msg, host, address, err, reply })))}`);
    });
    const got = all.find((m) => m.data.includes(`Subject: ${subject}\r\n`));
    assert.ok(got, `the message "${subject}" is in bob's INBOX`);
    return { raw, data: got.data };
  }

  const failedConnections = (domain: string): LogLine[] => s!.logs().filter((l) => l.msg === 'connection failed' && l.domain === domain);

  it('alice -> bob@peer.example: to the preferred MX (found through the configured resolver), byte for byte plus the Received fields', async () => {
    const c0 = counts();
    const { raw, data } = await deliverToBob(`bob@${PEER}`, 'direct to the best MX');
    assert.ok(data.subarray(data.length - raw.length).equals(raw), 'the message arrives byte for byte');
    const prefix = data.subarray(0, data.length - raw.length).toString();
    const received = prefix.split(/\r\n(?=Received:)/);
    assert.equal(received.length, 2, `only the two Received fields are added: ${prefix}`);
    assert.match(received[0]!, new RegExp(`^Received: from ${SENDER}\\r\\n\\tby ${PEER} \\(onionpost\\) with ESMTPS? id [0-9A-F]+\\r\\n\\tfor <bob@${PEER}>; `));
    assert.match(received[1]!, new RegExp(`^Received: from unknown\\r\\n\\tby ${SENDER} \\(onionpost\\) with ESMTPA id [0-9A-F]+\\r\\n\\tfor <bob@${PEER}>; `));
    assert.doesNotMatch(prefix, /127\.\d|\[|localhost/i, 'no address or host name in the added fields');
    assert.deepEqual(counts(), { ...c0, mxA: c0.mxA + 1 }, 'one connection, to the MX of preference 10 (listed second)');
    assert.deepEqual(failedConnections(PEER), []);
    const asked = dns!.queries.map((q) => `${q.type} ${q.name.toLowerCase()}`);
    assert.ok(asked.includes(`MX ${PEER}`), JSON.stringify(asked));
    assert.ok(asked.includes('A mx-a.peer.example'), `the MX host's address came from the test DNS server: ${JSON.stringify(asked)}`);
    const connected = await waitFor('the "connected" log line', async () => s!.logs().find((l) => l.msg === 'connected' && l.domain === PEER));
    assert.equal(connected.host, 'mx-a.peer.example');
    assert.equal(connected.route, 'DIRECT (no Tor)');
  });

  it('the first MX refuses connections: the next one by preference gets the message', async () => {
    const c0 = counts();
    const { raw, data } = await deliverToBob('bob@fallback.example', 'direct via the second MX');
    assert.ok(data.subarray(data.length - raw.length).equals(raw), 'byte for byte');
    assert.deepEqual(counts(), { ...c0, mxB: c0.mxB + 1 }, 'delivered through live.fallback.example (preference 15), not the one of preference 30');
    const failed = await waitFor('the failed connection in the log', async () => (failedConnections('fallback.example').length > 0 ? failedConnections('fallback.example') : null), 2000);
    assert.equal(failed.length, 1, JSON.stringify(failed));
    assert.equal(failed[0]!.host, 'dead.fallback.example');
    assert.match(String(failed[0]!.err), /ECONNREFUSED/);
  });

  it("no MX: the domain's own A record; and its AAAA when the A address refuses", async (t) => {
    const c0 = counts();
    const bare = await deliverToBob('bob@bare.example', 'direct without MX');
    assert.ok(bare.data.subarray(bare.data.length - bare.raw.length).equals(bare.raw), 'byte for byte');
    assert.deepEqual(counts(), { ...c0, bare: c0.bare + 1 }, 'to the address of bare.example');
    const asked = dns!.queries.map((q) => `${q.type} ${q.name.toLowerCase()}`);
    assert.ok(asked.includes('MX bare.example') && asked.includes('A bare.example'), JSON.stringify(asked));
    assert.deepEqual(failedConnections('bare.example'), []);

    if (ipv6Problem) {
      t.skip(`IPv6: ${ipv6Problem}`);
      return;
    }
    const c1 = counts();
    const dual = await deliverToBob('bob@dual.example', 'direct to an IPv6 address');
    assert.ok(dual.data.subarray(dual.data.length - dual.raw.length).equals(dual.raw), 'byte for byte');
    assert.deepEqual(counts(), { ...c1, v6: c1.v6 + 1 }, 'to [::1]:25');
    const failed = await waitFor('the failed connection in the log', async () => (failedConnections('dual.example').length > 0 ? failedConnections('dual.example') : null), 2000);
    assert.equal(failed.length, 1, `first the A address (refused): ${JSON.stringify(failed)}`);
    assert.match(String(failed[0]!.err), new RegExp(`${IP.refused.replace(/\./g, '\\.')}.*ECONNREFUSED|ECONNREFUSED.*${IP.refused.replace(/\./g, '\\.')}`));
  });

  it('a 5xx from the peer: an RFC 3464 bounce in alice\'s INBOX', async () => {
    const aliceBox = path.join(s!.dir, 'data', 'mail', 'alice');
    const raw = Buffer.from(`From: alice@${SENDER}\r\nTo: nobody@${PEER}\r\nSubject: to nobody\r\nMessage-ID: <nobody@${SENDER}>\r\n\r\nnobody reads this\r\n`);
    await submit(s!.ports.submission, 'alice', ALICE_PW, `alice@${SENDER}`, [`nobody@${PEER}`], raw);
    const bounce = await waitFor('the bounce in alice INBOX', async () => (await maildirMessages(aliceBox))[0], 5000);
    const dsn = parseDsn(bounce.data);
    assert.equal(dsn.top.header('from'), `Mail Delivery System <MAILER-DAEMON@${SENDER}>`);
    assert.equal(dsn.top.header('to'), `<alice@${SENDER}>`);
    assert.equal(dsn.perMessage['reporting-mta'], `dns; ${SENDER}`);
    assert.equal(dsn.recipients.length, 1);
    const r = dsn.recipients[0]!;
    assert.equal(r['final-recipient'], `rfc822; nobody@${PEER}`);
    assert.equal(r.action, 'failed');
    assert.equal(r.status, '5.1.1');
    assert.equal(r['remote-mta'], 'dns; mx-a.peer.example');
    assert.match(r['diagnostic-code']!, /^smtp; 550 5\.1\.1 <nobody@peer\.example>: Recipient address rejected: User unknown/);
    assert.equal(dsn.returned, 'message');
    assert.match(dsn.headers.body, /^Subject: to nobody\r?$/m);
    await waitFor('the failed entry gone from the queue', async () => s!.logs().some((l) => l.msg === 'removed from the queue: done' && l.failed === 1));
  });

  it('the relay policy still applies: clearnet relaying needs relay.clearnet, and never without AUTH', async () => {
    const c0 = counts();
    // S2: direct mode, relay.clearnet off.
    const w = await SmtpWire.connect(s2!.ports.submission);
    try {
      assert.equal((await w.read()).code, 220);
      assert.equal((await w.command('EHLO client.invalid')).code, 250);
      assert.equal((await w.command(`AUTH PLAIN ${plain('alice', ALICE_PW)}`)).code, 235);
      assert.equal((await w.command(`MAIL FROM:<alice@${SENDER2}>`)).code, 250);
      const refused = await w.command(`RCPT TO:<bob@${PEER}>`);
      assert.equal(refused.code, 550, refused.text);
      assert.match(refused.text, /5\.7\.1 .*relaying to clearnet \(non-onion\) domains is disabled.*relay\.clearnet = false/);
      const onion = await w.command(`RCPT TO:<someone@${randomOnionAddress()}>`);
      assert.equal(onion.code, 250, `an onion recipient is accepted there: ${onion.text}`);
      await w.command('QUIT');
    } finally {
      await w.closed();
    }
    // S: relay.clearnet on, but its port 25 relays for nobody.
    const u = await SmtpWire.connect(s!.ports.smtp);
    try {
      assert.equal((await u.read()).code, 220);
      assert.equal((await u.command('EHLO client.invalid')).code, 250);
      assert.equal((await u.command('MAIL FROM:<someone@elsewhere.example>')).code, 250);
      const denied = await u.command(`RCPT TO:<bob@${PEER}>`);
      assert.equal(denied.code, 550, denied.text);
      assert.match(denied.text, /5\.7\.1 Relaying denied/);
      await u.command('QUIT');
    } finally {
      await u.closed();
    }
    await sleep(300);
    assert.deepEqual(counts(), c0, 'no connection to a mail exchanger');
    assert.deepEqual(
      s2!.logs().filter((l) => l.msg === 'connected' || l.msg === 'connection failed'),
      [],
      'S2 made no outbound connection',
    );
  });

  it('no question to the system resolver and no connection to Tor: only the configured resolver was asked', async () => {
    const asked = dns!.queries.map((q) => `${q.type} ${q.name.toLowerCase()}`);
    const expected = new Set([
      `MX ${PEER}`,
      'A mx-a.peer.example',
      'AAAA mx-a.peer.example',
      'A mx-b.peer.example',
      'AAAA mx-b.peer.example',
      'MX fallback.example',
      'A dead.fallback.example',
      'AAAA dead.fallback.example',
      'A live.fallback.example',
      'AAAA live.fallback.example',
      'MX bare.example',
      'A bare.example',
      'AAAA bare.example',
      'MX dual.example',
      'A dual.example',
      'AAAA dual.example',
    ]);
    assert.deepEqual(
      asked.filter((q) => !expected.has(q)),
      [],
      'only MX and address questions for the destination domains and their mail exchangers',
    );
    for (const d of [s!, s2!, p!]) {
      const records = await d.spied();
      assert.deepEqual(records[0], { api: 'spy', fn: 'install', name: `pid ${d.pid}` }, `${d.dir}: the spy ran in the daemon`);
      assert.deepEqual(
        records.filter((r) => r.api === 'system'),
        [],
        `${d.dir}: no question to the system resolver (getaddrinfo, resolv.conf)`,
      );
      assert.deepEqual(
        records.filter((r) => r.api === 'resolver' && (r.servers ?? []).join(',') !== dns!.address),
        [],
        'every Resolver object asked only the configured server',
      );
    }
    const sRecords = await s!.spied();
    assert.ok(
      sRecords.some((r) => r.api === 'resolver' && r.fn === 'resolveMx'),
      `the spy saw the daemon's MX queries (so it was loaded and would have seen a system lookup): ${JSON.stringify(sRecords)}`,
    );
    assert.equal(trap!.connections(), 0, 'nothing connected to the SOCKS port');
    const connected = s!.logs().filter((l) => l.msg === 'connected');
    assert.ok(connected.length >= 4 && connected.every((l) => l.route === 'DIRECT (no Tor)'), JSON.stringify(connected));
    assert.ok(
      s!.logs().some((l) => l.msg === 'DIRECT MODE: connecting WITHOUT Tor (this reveals our address and DNS queries)'),
      'every direct connection is logged as a warning',
    );
  });
});
