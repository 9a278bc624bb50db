import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { isolationCredentials, openDirectConnection, openTorConnection, TorConnectError } from '../src/delivery/transport.js';
import { isValidV3OnionAddress, randomOnionAddress } from '../src/tor/onion-address.js';
import { readUntil } from './helpers/read-until.js';
import { startSocksServer, type TestSocksServer } from './helpers/socks5-server.js';


async function expectTorError(p: Promise<unknown>): Promise<TorConnectError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof TorConnectError, `expected TorConnectError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected the connection to fail');
}

describe('delivery/transport against a SOCKS5 server on 127.0.0.1', () => {
  let socks: TestSocksServer;
  const onion = randomOnionAddress();
  const connect = (host: string, isolationKey = host, timeoutMs?: number): Promise<net.Socket> =>
    openTorConnection({ socks: { host: '127.0.0.1', port: socks.port }, host, port: 25, isolationKey, timeoutMs });

  before(async () => {
    socks = await startSocksServer();
  });
  after(async () => {
    await socks?.close();
  });

  it('sends CONNECT with the host name (ATYP 3), never an address, and the stream carries data', async () => {
    socks.reply = () => 0x00;
    const sock = await connect(onion);
    const greeting = readUntil(sock, /ready\r\n/); // attached in the same tick as the promise resolved
    assert.match(await greeting, /^220 socks-test ready/);
    sock.write('EHLO x\r\n');
    assert.match(await readUntil(sock, /EHLO x\r\n/), /EHLO x/);
    sock.destroy();
    const req = socks.requests.at(-1)!;
    assert.equal(req.atyp, 0x03);
    assert.equal(req.host, onion);
    assert.equal(req.port, 25);
    assert.ok(req.methods.includes(0x02), 'offers username/password');

    (await connect('Mail.Example.TEST.')).destroy();
    const clear = socks.requests.at(-1)!;
    assert.equal(clear.atyp, 0x03);
    assert.equal(clear.host, 'mail.example.test');
  });

  it('hands the socket over paused, without losing bytes that came with the SOCKS reply', async () => {
    socks.reply = () => 0x00;
    const sock = await connect(onion);
    assert.ok(sock.isPaused(), 'paused');
    await new Promise((r) => setTimeout(r, 100)); // a slow consumer
    assert.match(await readUntil(sock, /ready\r\n/), /^220 socks-test ready\r\n$/);
    sock.destroy();
  });

  it('isolation: each destination domain gets its own stable SOCKS credentials', async () => {
    socks.reply = () => 0x00;
    const other = randomOnionAddress();
    const creds: string[] = [];
    for (const [host, key] of [
      [onion, onion],
      [other, other],
      [`smtp.${onion}`, onion],
      ['mx1.example.test', 'example.test'],
      ['mx2.example.test', 'EXAMPLE.test'],
    ] as const) {
      (await connect(host, key)).destroy();
      const r = socks.requests.at(-1)!;
      assert.ok(r.userId && r.password, 'credentials sent');
      assert.deepEqual({ userId: r.userId, password: r.password }, isolationCredentials(key));
      creds.push(`${r.userId}:${r.password}`);
      assert.ok(!r.password!.includes(key.toLowerCase()), 'the password does not spell out the domain');
    }
    assert.notEqual(creds[0], creds[1], 'two domains, two credential pairs');
    assert.equal(creds[0], creds[2], 'same domain, same pair');
    assert.equal(creds[3], creds[4], 'case does not matter');
    assert.notEqual(creds[0], creds[3]);
  });

  const cases: [number, string, 'temporary' | 'permanent', RegExp][] = [
    [0x01, 'GENERAL_FAILURE', 'temporary', /nothing accepted the connection on port 25/],
    [0x02, 'NOT_ALLOWED', 'temporary', /exit/],
    [0x03, 'NETWORK_UNREACHABLE', 'temporary', /unreachable/],
    [0x04, 'HOST_UNREACHABLE', 'temporary', /unreachable/],
    [0x05, 'CONNECTION_REFUSED', 'temporary', /does not offer port 25/],
    [0x06, 'TTL_EXPIRED', 'temporary', /timed out/],
    [0x07, 'COMMAND_NOT_SUPPORTED', 'temporary', /CONNECT/],
    [0x08, 'ADDRESS_TYPE_NOT_SUPPORTED', 'temporary', /host names/],
    [0xf0, 'ONION_DESCRIPTOR_NOT_FOUND', 'temporary', /descriptor was not found/],
    [0xf1, 'ONION_DESCRIPTOR_INVALID', 'temporary', /invalid descriptor/],
    [0xf2, 'ONION_INTRO_FAILED', 'temporary', /introduction .* failed/],
    [0xf3, 'ONION_REND_FAILED', 'temporary', /rendezvous/],
    [0xf4, 'ONION_CLIENT_AUTH_MISSING', 'permanent', /requires client authorization/],
    [0xf5, 'ONION_CLIENT_AUTH_WRONG', 'temporary', /rejected the client authorization/],
    [0xf6, 'ONION_INVALID_ADDRESS', 'permanent', /not a valid onion address/],
    [0xf7, 'ONION_INTRO_TIMEOUT', 'temporary', /timed out/],
    [0x42, 'UNKNOWN_REPLY', 'temporary', /unknown reply code 42/],
  ];
  for (const [reply, code, kind, message] of cases) {
    it(`SOCKS reply ${reply.toString(16).padStart(2, '0')} -> ${code} (${kind})`, async () => {
      socks.reply = () => reply;
      const err = await expectTorError(connect(onion));
      assert.equal(err.code, code);
      assert.equal(err.kind, kind);
      assert.equal(err.temporary, kind === 'temporary');
      assert.equal(err.reply, reply);
      assert.equal(err.host, onion);
      assert.equal(err.port, 25);
      assert.match(err.message, message);
      assert.ok(err.message.includes(onion), err.message);
    });
  }

  it('non-onion wording for 01 and 05', async () => {
    socks.reply = () => 0x05;
    assert.match((await expectTorError(connect('mx.example.test'))).message, /mx\.example\.test:25 refused the connection/);
    socks.reply = () => 0x01;
    assert.match((await expectTorError(connect('mx.example.test'))).message, /general failure/);
  });

  it('a SOCKS server that never answers the CONNECT -> TIMEOUT (temporary) after timeoutMs', async () => {
    socks.reply = () => 'silent';
    const t0 = Date.now();
    const err = await expectTorError(connect(onion, onion, 400));
    const took = Date.now() - t0;
    assert.equal(err.code, 'TIMEOUT');
    assert.equal(err.kind, 'temporary');
    assert.ok(took >= 350 && took < 3000, `took ${took} ms`);
  });

  it('a closed SOCKS port -> SOCKS_UNREACHABLE (temporary) with a clear message', async () => {
    const srv = net.createServer();
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
    const port = (srv.address() as net.AddressInfo).port;
    await new Promise<void>((resolve) => srv.close(() => resolve()));
    const err = await expectTorError(openTorConnection({ socks: { host: '127.0.0.1', port }, host: onion, port: 25, isolationKey: onion }));
    assert.equal(err.code, 'SOCKS_UNREACHABLE');
    assert.equal(err.kind, 'temporary');
    assert.match(err.message, /ECONNREFUSED/);
    assert.match(err.message, /SOCKS port/);
  });

  it('invalid destinations fail before any connection', async () => {
    const before = socks.requests.length;
    for (const [host, port] of [
      ['', 25],
      ['x'.repeat(300), 25],
      [onion, 0],
      [onion, 70000],
    ] as const) {
      const err = await expectTorError(openTorConnection({ socks: { host: '127.0.0.1', port: socks.port }, host, port, isolationKey: 'k' }));
      assert.equal(err.code, 'INVALID_DESTINATION');
      assert.equal(err.kind, 'permanent');
    }
    assert.equal(socks.requests.length, before);
  });

  it('direct mode connects to the given address only; a name without one is refused, never looked up', async () => {
    const srv = net.createServer((s) => s.end('220 direct\r\n'));
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
    const port = (srv.address() as net.AddressInfo).port;
    try {
      const sock = await openDirectConnection({ host: 'mx.example.invalid', address: '127.0.0.1', port });
      assert.equal(await readUntil(sock, /\r\n/), '220 direct\r\n');
      sock.destroy();
      for (const host of ['localhost', 'mx.example.invalid']) {
        const err = await expectTorError(openDirectConnection({ host, port }));
        assert.equal(err.code, 'DIRECT_FAILED');
        assert.equal(err.kind, 'temporary');
        assert.match(err.message, /no address for .*configured resolver/);
      }
      const onionErr = await expectTorError(openDirectConnection({ host: onion, address: '127.0.0.1', port }));
      assert.match(onionErr.message, /only be reached through Tor/);
    } finally {
      await new Promise<void>((resolve) => srv.close(() => resolve()));
    }
  });

  it('onion address helpers: generated addresses are valid v3, tampered ones are not', () => {
    const a = randomOnionAddress();
    assert.match(a, /^[a-z2-7]{56}\.onion$/);
    assert.ok(isValidV3OnionAddress(a));
    assert.ok(isValidV3OnionAddress(`mail.${a.toUpperCase()}`));
    const flipped = (a[0] === 'a' ? 'b' : 'a') + a.slice(1);
    assert.ok(!isValidV3OnionAddress(flipped));
    assert.ok(!isValidV3OnionAddress('expyuzz4wqqyqhjn.onion'));
  });
});
