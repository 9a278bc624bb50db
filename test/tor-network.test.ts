/**
 * Real Tor, offline: a private Tor network on 127.0.0.1 (scripts/tor-testnet-lib.ts), an onion
 * service in front of a small SMTP-like listener, and the delivery transport and resolver used
 * against the client tor's SocksPort and DNSPort.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startTorNetwork, findNetworkTors, type TorNetwork } from '../scripts/tor-testnet-lib.js';
import { SMTPServer } from 'smtp-server';
import { NextHopResolver } from '../src/delivery/resolver.js';
import { runSmtpTransaction } from '../src/delivery/smtp-client.js';
import { openTorConnection, TorConnectError } from '../src/delivery/transport.js';
import { randomOnionAddress } from '../src/tor/onion-address.js';
import { startDnsServer, type TestDnsServer } from './helpers/dns-server.js';
import { freePort } from './helpers/ports.js';
import { connectTorControl } from './helpers/tor-control.js';
import { startLineServer } from './helpers/line-server.js';
import { readUntil } from './helpers/read-until.js';

/** Greets with a 220 line, then echoes each line back prefixed with "250 ". */
async function startEchoServer(): Promise<{ port: number; connections: () => number; close(): Promise<void> }> {
  let count = 0;
  const server = await startLineServer({
    connection: (sock) => {
      count++;
      sock.setNoDelay(true);
      sock.write('220 onion-mx.test ESMTP ready\r\n');
      return (line) => {
        sock.write(`250 ${line}\r\n`);
      };
    },
  });
  return { port: server.port, connections: () => count, close: server.close };
}

async function expectTorError(p: Promise<unknown>): Promise<TorConnectError> {
  try {
    const sock = await p;
    (sock as net.Socket).destroy();
  } catch (err) {
    assert.ok(err instanceof TorConnectError, `expected TorConnectError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected the connection to fail');
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

describe('private Tor network: transport and resolver through real tor', { timeout: 180_000 }, () => {
  let dir: string;
  let tor: TorNetwork | undefined;
  let mx: Awaited<ReturnType<typeof startEchoServer>>;
  let exitDns: TestDnsServer;
  let smtp: SMTPServer;
  let smtpPort: number;
  const smtpReceived: { ehlo: string; secure: boolean; to: string[]; body: string }[] = [];
  const socks = (): { host: string; port: number } => ({ host: '127.0.0.1', port: tor!.socksPort });

  before(
    async () => {
      dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-tor-'));
      mx = await startEchoServer();
      exitDns = await startDnsServer({ 'mail.example.test': { a: ['127.0.0.1'] } });
      smtp = new SMTPServer({
        disableReverseLookup: true,
        authOptional: true,
        logger: false,
        onData(stream, session, cb) {
          let body = '';
          stream.setEncoding('utf8');
          stream.on('data', (d: string) => (body += d));
          stream.on('end', () => {
            smtpReceived.push({ ehlo: session.hostNameAppearsAs, secure: session.secure, to: session.envelope.rcptTo.map((r) => r.address), body });
            cb(null);
          });
        },
      });
      await new Promise<void>((resolve) => smtp.listen(0, '127.0.0.1', () => resolve()));
      smtpPort = (smtp.server.address() as net.AddressInfo).port;
      const closedPort = await freePort();
      tor = await startTorNetwork({
        dir,
        onions: [
          { name: 'mx', targetPort: mx.port },
          { name: 'closed', targetPort: closedPort },
          { name: 'smtp', targetPort: smtpPort },
        ],
        exitDns: exitDns.address,
        readyTimeoutMs: 100_000,
      });
      process.stderr.write(`tor network ready in ${tor.readyMs} ms (consensus ${tor.consensusMs} ms)\n`);
    },
    { timeout: 120_000 },
  );

  after(async () => {
    try {
      await tor?.stop();
    } finally {
      await mx?.close();
      if (smtp) await new Promise<void>((resolve) => smtp.close(() => resolve()));
      await exitDns?.close();
      if (dir) {
        assert.deepEqual(findNetworkTors(dir), [], 'every tor of the test network is gone');
        await rm(dir, { recursive: true, force: true });
      }
    }
  });

  it('connects to <onion>:25 by name through the SocksPort and carries bytes both ways', async () => {
    const latencies: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      // A fresh isolation key per connection forces a fresh rendezvous circuit.
      const sock = await openTorConnection({ socks: socks(), host: tor!.onions.mx!, port: 25, isolationKey: `fresh-${i}`, timeoutMs: 60_000 });
      const greeting = readUntil(sock, /\r\n/, 30_000);
      latencies.push(performance.now() - t0);
      assert.match(await greeting, /^220 onion-mx\.test ESMTP ready/);
      sock.write(`EHLO client-${i}.onion\r\n`);
      assert.match(await readUntil(sock, /\r\n/, 30_000), new RegExp(`^250 EHLO client-${i}\\.onion`));
      sock.destroy();
    }
    process.stderr.write(`fresh onion connects (SOCKS CONNECT done): ${latencies.map((l) => l.toFixed(0)).join(', ')} ms; median ${median(latencies).toFixed(0)} ms\n`);
  });

  it('one SMTP transaction over Tor to an onion MX (smtp-server), with STARTTLS and our onion EHLO name', async () => {
    const ours = tor!.onions.mx!; // any onion name of ours will do as the EHLO name
    const peer = tor!.onions.smtp!;
    const t0 = performance.now();
    const socket = await openTorConnection({ socks: socks(), host: peer, port: 25, isolationKey: peer, timeoutMs: 60_000 });
    const connected = performance.now() - t0;
    const message = `From: alice@${ours}\r\nTo: bob@${peer}\r\nSubject: over tor\r\n\r\nHello through an onion.\r\n`;
    const result = await runSmtpTransaction({
      socket,
      host: peer,
      ehloName: ours,
      envelope: { from: `alice@${ours}`, to: [`bob@${peer}`] },
      message,
      greetingTimeoutMs: 30_000,
    });
    const total = performance.now() - t0;
    process.stderr.write(`SMTP over Tor: connect ${connected.toFixed(0)} ms, whole transaction (STARTTLS) ${total.toFixed(0)} ms\n`);
    assert.deepEqual(result.recipients.map((r) => [r.recipient, r.status]), [[`bob@${peer}`, 'delivered']]);
    assert.equal(result.tls, true);
    const got = smtpReceived.at(-1)!;
    assert.equal(got.ehlo, ours);
    assert.equal(got.secure, true);
    assert.equal(got.body, message);
  });

  it('streams with the same isolation key share a circuit; different keys never do', async () => {
    const onion = tor!.onions.mx!;
    const open = (key: string): Promise<net.Socket> => openTorConnection({ socks: socks(), host: onion, port: 25, isolationKey: key, timeoutMs: 60_000 });
    const a1 = await open('domain-a.onion');
    const a2 = await open('DOMAIN-A.onion');
    const b = await open('domain-b.onion');
    const control = await connectTorControl(tor!.controlPort, tor!.controlCookieFile);
    try {
      const streams = (await control.getInfo('stream-status'))
        .split('\r\n')
        .filter(Boolean)
        .map((l) => l.split(' '))
        .filter((f) => f[1] === 'SUCCEEDED' && f[3] === `${onion}:25`);
      assert.equal(streams.length, 3, `three open streams: ${JSON.stringify(streams)}`);
      const circuits = new Set(streams.map((f) => f[2]));
      assert.equal(circuits.size, 2, `two circuits for two isolation keys: ${JSON.stringify(streams)}`);
    } finally {
      control.close();
      for (const s of [a1, a2, b]) s.destroy();
    }
  });

  it('a valid v3 onion that nobody hosts -> ONION_DESCRIPTOR_NOT_FOUND (f0), temporary', async () => {
    const dead = randomOnionAddress();
    const t0 = Date.now();
    const err = await expectTorError(openTorConnection({ socks: socks(), host: dead, port: 25, isolationKey: dead, timeoutMs: 60_000 }));
    process.stderr.write(`f0 for an unhosted onion after ${Date.now() - t0} ms\n`);
    assert.equal(err.code, 'ONION_DESCRIPTOR_NOT_FOUND', err.message);
    assert.equal(err.reply, 0xf0);
    assert.equal(err.kind, 'temporary');
    assert.match(err.message, new RegExp(dead.replace(/\./g, '\\.')));
  });

  it('an onion that is up but whose target does not listen -> 01, temporary', async () => {
    const onion = tor!.onions.closed!;
    const err = await expectTorError(openTorConnection({ socks: socks(), host: onion, port: 25, isolationKey: onion, timeoutMs: 60_000 }));
    assert.equal(err.code, 'GENERAL_FAILURE', err.message);
    assert.equal(err.reply, 0x01);
    assert.equal(err.kind, 'temporary');
    assert.match(err.message, /nothing accepted the connection on port 25/);
  });

  it('a port the onion does not offer -> 05, temporary', async () => {
    const onion = tor!.onions.mx!;
    const err = await expectTorError(openTorConnection({ socks: socks(), host: onion, port: 587, isolationKey: `${onion}-587`, timeoutMs: 60_000 }));
    assert.equal(err.code, 'CONNECTION_REFUSED', err.message);
    assert.equal(err.reply, 0x05);
    assert.equal(err.kind, 'temporary');
    assert.match(err.message, /does not offer port 587/);
  });

  it('a malformed onion address -> ONION_INVALID_ADDRESS (f6), permanent', async () => {
    const good = randomOnionAddress();
    const bad = `${good[0] === 'a' ? 'b' : 'a'}${good.slice(1)}`; // checksum no longer matches
    const err = await expectTorError(openTorConnection({ socks: socks(), host: bad, port: 25, isolationKey: bad, timeoutMs: 60_000 }));
    assert.equal(err.code, 'ONION_INVALID_ADDRESS', err.message);
    assert.equal(err.reply, 0xf6);
    assert.equal(err.kind, 'permanent');
  });

  it('a clearnet name goes to Tor as a name: the exit resolves it (not us) and connects', async () => {
    const before = exitDns.queries.length;
    const sock = await openTorConnection({ socks: socks(), host: 'mail.example.test', port: mx.port, isolationKey: 'example.test', timeoutMs: 60_000 });
    try {
      assert.match(await readUntil(sock, /\r\n/, 30_000), /^220 onion-mx\.test/);
    } finally {
      sock.destroy();
    }
    const asked = exitDns.queries.slice(before);
    assert.ok(
      asked.some((q) => q.name.toLowerCase() === 'mail.example.test' && q.type === 'A'),
      `the exit asked the test DNS server for the name: ${JSON.stringify(asked)}`,
    );
  });

  it("resolver against Tor's DNSPort: MX -> NOTIMP -> implicit MX; onion names never queried", async () => {
    const resolver = new NextHopResolver({ clearnet: true, resolver: `127.0.0.1:${tor!.dnsPort}`, timeoutMs: 5000, tries: 1 });
    try {
      const t0 = Date.now();
      assert.deepEqual(await resolver.resolve('Example.TEST'), { kind: 'hosts', hosts: [{ host: 'example.test', port: 25, preference: 0 }] });
      assert.ok(Date.now() - t0 < 4000, 'NOTIMP comes at once');
      const onion = tor!.onions.mx!;
      assert.deepEqual(await resolver.resolve(onion), { kind: 'hosts', hosts: [{ host: onion, port: 25, preference: 0 }] });
    } finally {
      resolver.close();
    }
    const direct = new NextHopResolver({ clearnet: false });
    assert.equal((await direct.resolve('example.test')).kind, 'permanent');
  });
});
