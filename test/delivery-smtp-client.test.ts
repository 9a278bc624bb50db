import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, beforeEach, describe, it } from 'node:test';
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import { runSmtpTransaction, type SmtpTransactionOptions } from '../src/delivery/smtp-client.js';
import { openTorConnection } from '../src/delivery/transport.js';
import { randomOnionAddress } from '../src/tor/onion-address.js';
import { startSocksServer, type TestSocksServer } from './helpers/socks5-server.js';

interface Received {
  ehlo: string;
  secure: boolean;
  from: string;
  to: string[];
  body: Buffer;
  /** MAIL FROM and RCPT TO parameters as smtp-server parsed (and xtext-decoded) them. */
  mailArgs: Record<string, string | true>;
  rcptArgs: Array<Record<string, string | true>>;
}

type Rule = { rcpt?: Record<string, number>; mail?: number; data?: number };

/** An smtp-server on 127.0.0.1 whose replies are set per test through `rule`. */
async function startSmtpServer(extra: Partial<SMTPServerOptions> = {}): Promise<{
  port: number;
  received: Received[];
  rule: Rule;
  close(): Promise<void>;
}> {
  const received: Received[] = [];
  const state = { rule: {} as Rule };
  const fail = (code: number, message: string): Error => Object.assign(new Error(message), { responseCode: code });
  const server = new SMTPServer({
    disableReverseLookup: true, // no DNS from tests either
    authOptional: true,
    logger: false,
    ...extra,
    onMailFrom(address, _session, cb) {
      const code = state.rule.mail;
      cb(code ? fail(code, `sender ${address.address} refused`) : undefined);
    },
    onRcptTo(address, _session, cb) {
      const code = state.rule.rcpt?.[address.address];
      cb(code ? fail(code, `recipient ${address.address} refused`) : undefined);
    },
    onData(stream, session: SMTPServerSession, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        received.push({
          ehlo: session.hostNameAppearsAs,
          secure: session.secure,
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          to: session.envelope.rcptTo.map((r) => r.address),
          body: Buffer.concat(chunks),
          mailArgs: (session.envelope.mailFrom && session.envelope.mailFrom.args) || {},
          rcptArgs: session.envelope.rcptTo.map((r) => r.args || {}),
        });
        const code = state.rule.data;
        cb(code ? fail(code, 'message refused') : null);
      });
    },
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.server.address() as net.AddressInfo).port;
  return {
    port,
    received,
    get rule() {
      return state.rule;
    },
    set rule(r: Rule) {
      state.rule = r;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

function tcp(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => resolve(s));
    s.once('error', reject);
  });
}

const OURS = `${'a'.repeat(56)}.onion`;
const MESSAGE = `From: alice@${OURS}\r\nTo: bob@peer.onion\r\nSubject: hi\r\nMessage-ID: <1@${OURS}>\r\n\r\nHello over Tor.\r\n.leading dot\r\n`;

describe('delivery/smtp-client (nodemailer SMTP over a given socket) against smtp-server', { timeout: 60_000 }, () => {
  let smtp: Awaited<ReturnType<typeof startSmtpServer>>;
  let plain: Awaited<ReturnType<typeof startSmtpServer>>;
  let socks: TestSocksServer;

  before(async () => {
    smtp = await startSmtpServer(); // STARTTLS offered with smtp-server's built-in certificate
    plain = await startSmtpServer({ disabledCommands: ['STARTTLS'] });
    socks = await startSocksServer();
  });
  after(async () => {
    await smtp?.close();
    await plain?.close();
    await socks?.close();
  });
  beforeEach(() => {
    smtp.rule = {};
    plain.rule = {};
  });

  const run = async (port: number, over: Partial<SmtpTransactionOptions> = {}) =>
    runSmtpTransaction({
      socket: await tcp(port),
      host: 'peer.onion',
      ehloName: OURS,
      envelope: { from: `alice@${OURS}`, to: ['bob@peer.onion', 'carol@peer.onion'] },
      message: MESSAGE,
      greetingTimeoutMs: 5000,
      ...over,
    });

  it('delivers to every recipient, EHLO with our onion name, over opportunistic STARTTLS (unverified cert)', async () => {
    const before = smtp.received.length;
    const r = await run(smtp.port);
    assert.deepEqual(
      r.recipients.map((x) => [x.recipient, x.status, x.code]),
      [
        ['bob@peer.onion', 'delivered', 250],
        ['carol@peer.onion', 'delivered', 250],
      ],
    );
    assert.equal(r.tls, true);
    const got = smtp.received.slice(before);
    assert.equal(got.length, 1);
    assert.equal(got[0]!.ehlo, OURS);
    assert.equal(got[0]!.secure, true);
    assert.equal(got[0]!.from, `alice@${OURS}`);
    assert.deepEqual(got[0]!.to, ['bob@peer.onion', 'carol@peer.onion']);
    assert.equal(got[0]!.body.toString(), MESSAGE, 'the message arrives byte for byte (dot-stuffing undone)');
  });

  it("startTls 'none' stays in plaintext; a server without STARTTLS is fine when opportunistic", async () => {
    const r1 = await run(smtp.port, { startTls: 'none' });
    assert.equal(r1.tls, false);
    assert.equal(smtp.received.at(-1)!.secure, false);
    assert.ok(r1.recipients.every((x) => x.status === 'delivered'));
    const r2 = await run(plain.port);
    assert.equal(r2.tls, false);
    assert.ok(r2.recipients.every((x) => x.status === 'delivered'));
  });

  it("startTls 'required' against a server without STARTTLS fails every recipient temporarily", async () => {
    const before = plain.received.length;
    const r = await run(plain.port, { startTls: 'required' });
    assert.ok(r.recipients.every((x) => x.status === 'temporary'), JSON.stringify(r));
    assert.equal(r.failedAt, 'STARTTLS');
    assert.equal(plain.received.length, before);
  });

  it('per-recipient results: 250 delivered, 550 permanent, 451 temporary', async () => {
    smtp.rule = { rcpt: { 'carol@peer.onion': 550, 'dave@peer.onion': 451 } };
    const r = await run(smtp.port, { envelope: { from: `alice@${OURS}`, to: ['bob@peer.onion', 'carol@peer.onion', 'dave@peer.onion'] } });
    assert.deepEqual(
      r.recipients.map((x) => [x.recipient, x.status, x.code]),
      [
        ['bob@peer.onion', 'delivered', 250],
        ['carol@peer.onion', 'permanent', 550],
        ['dave@peer.onion', 'temporary', 451],
      ],
    );
    assert.match(r.recipients[1]!.response, /carol@peer\.onion refused/);
    assert.deepEqual(smtp.received.at(-1)!.to, ['bob@peer.onion']);
  });

  it('every recipient refused: each keeps its own reply; no DATA', async () => {
    const before = smtp.received.length;
    smtp.rule = { rcpt: { 'bob@peer.onion': 550, 'carol@peer.onion': 452 } };
    const r = await run(smtp.port);
    assert.deepEqual(
      r.recipients.map((x) => [x.recipient, x.status, x.code]),
      [
        ['bob@peer.onion', 'permanent', 550],
        ['carol@peer.onion', 'temporary', 452],
      ],
    );
    assert.equal(r.failedAt, 'RCPT TO');
    assert.equal(smtp.received.length, before);
  });

  it('MAIL FROM refused: 553 permanent / 451 temporary for everyone', async () => {
    smtp.rule = { mail: 553 };
    const r1 = await run(smtp.port);
    assert.ok(r1.recipients.every((x) => x.status === 'permanent' && x.code === 553), JSON.stringify(r1));
    assert.equal(r1.failedAt, 'MAIL FROM');
    smtp.rule = { mail: 451 };
    const r2 = await run(smtp.port);
    assert.ok(r2.recipients.every((x) => x.status === 'temporary' && x.code === 451), JSON.stringify(r2));
  });

  it('message refused after DATA: 554 permanent / 452 temporary', async () => {
    smtp.rule = { data: 554 };
    const r1 = await run(smtp.port);
    assert.ok(r1.recipients.every((x) => x.status === 'permanent' && x.code === 554), JSON.stringify(r1));
    smtp.rule = { data: 452 };
    const r2 = await run(smtp.port);
    assert.ok(r2.recipients.every((x) => x.status === 'temporary' && x.code === 452), JSON.stringify(r2));
  });

  it('a peer that never greets or hangs up -> temporary for everyone', async () => {
    const silent = net.createServer((s) => s.on('error', () => {}));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', () => resolve()));
    const hangup = net.createServer((s) => s.destroy());
    await new Promise<void>((resolve) => hangup.listen(0, '127.0.0.1', () => resolve()));
    try {
      const t0 = Date.now();
      const r1 = await run((silent.address() as net.AddressInfo).port, { greetingTimeoutMs: 500 });
      assert.ok(r1.recipients.every((x) => x.status === 'temporary'), JSON.stringify(r1));
      assert.ok(Date.now() - t0 < 5000);
      const r2 = await run((hangup.address() as net.AddressInfo).port);
      assert.ok(r2.recipients.every((x) => x.status === 'temporary'), JSON.stringify(r2));
    } finally {
      silent.close();
      hangup.close();
    }
  });

  it('runs over a socket from openTorConnection (paused hand-over) through a SOCKS5 proxy', async () => {
    socks.forwardTo = smtp.port;
    const peer = randomOnionAddress();
    const socket = await openTorConnection({ socks: { host: '127.0.0.1', port: socks.port }, host: peer, port: 25, isolationKey: peer, timeoutMs: 5000 });
    const r = await runSmtpTransaction({ socket, host: peer, ehloName: OURS, envelope: { from: `alice@${OURS}`, to: [`bob@${peer}`] }, message: MESSAGE });
    assert.deepEqual(r.recipients.map((x) => x.status), ['delivered']);
    assert.equal(r.tls, true);
    assert.equal(socks.requests.at(-1)!.host, peer);
    assert.equal(smtp.received.at(-1)!.ehlo, OURS);
  });

  it('DSN: per-recipient NOTIFY/ORCPT and RET/ENVID go out in xtext when the server advertises DSN (pipelined or not); nothing otherwise', async () => {
    const dsnServers = [await startSmtpServer({ hideDSN: false, disabledCommands: ['STARTTLS'] }), await startSmtpServer({ hideDSN: false, hidePIPELINING: true, disabledCommands: ['STARTTLS'] })];
    const dsn = {
      ret: 'HDRS' as const,
      envid: 'e 1+=',
      recipients: new Map([
        ['bob@peer.onion', { notify: ['SUCCESS' as const, 'FAILURE' as const], orcpt: 'rfc822;Bob+x=y@peer.onion' }],
        ['carol@peer.onion', { notify: ['NEVER' as const] }],
      ]),
    };
    const to = ['bob@peer.onion', 'carol@peer.onion', 'dave@peer.onion'];
    /** Runs one transaction and returns the command lines our side wrote. */
    const send = async (port: number): Promise<{ lines: string[]; result: Awaited<ReturnType<typeof runSmtpTransaction>> }> => {
      const socket = await tcp(port);
      const written: string[] = [];
      const write = socket.write.bind(socket) as (...args: unknown[]) => boolean;
      socket.write = ((...args: unknown[]) => {
        written.push(Buffer.from(args[0] as string | Uint8Array).toString('latin1'));
        return write(...args);
      }) as typeof socket.write;
      const result = await runSmtpTransaction({ socket, host: 'peer.onion', ehloName: OURS, envelope: { from: `alice@${OURS}`, to, dsn }, message: MESSAGE, greetingTimeoutMs: 5000 });
      return { lines: written.join('').split('\r\n').filter((l) => /^(MAIL|RCPT) /.test(l)), result };
    };
    try {
      for (const server of dsnServers) {
        const { lines, result } = await send(server.port);
        assert.deepEqual(result.recipients.map((x) => x.status), ['delivered', 'delivered', 'delivered']);
        assert.equal(result.dsn, true);
        assert.deepEqual(lines, [
          `MAIL FROM:<alice@${OURS}> RET=HDRS ENVID=e+201+2B+3D`,
          'RCPT TO:<bob@peer.onion> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Bx+3Dy@peer.onion',
          'RCPT TO:<carol@peer.onion> NOTIFY=NEVER',
          'RCPT TO:<dave@peer.onion>',
        ]);
        const got = server.received.at(-1)!;
        assert.deepEqual([got.mailArgs.RET, got.mailArgs.ENVID], ['HDRS', 'e 1+='], 'decoded by the server as sent');
        assert.deepEqual(got.rcptArgs[0], { NOTIFY: 'SUCCESS,FAILURE', ORCPT: 'rfc822;Bob+x=y@peer.onion' });
      }
      const { lines, result } = await send(plain.port);
      assert.equal(result.dsn, false, 'smtp-server hides DSN by default');
      assert.deepEqual(lines, [`MAIL FROM:<alice@${OURS}>`, 'RCPT TO:<bob@peer.onion>', 'RCPT TO:<carol@peer.onion>', 'RCPT TO:<dave@peer.onion>']);
    } finally {
      for (const server of dsnServers) await server.close();
    }
  });

  it('refuses to run without an EHLO name (the default would leak the host name)', async () => {
    const socket = await tcp(smtp.port);
    try {
      await assert.rejects(
        runSmtpTransaction({ socket, host: 'peer.onion', ehloName: ' ', envelope: { from: 'a@b.onion', to: ['c@d.onion'] }, message: 'x' }),
        /ehloName/,
      );
    } finally {
      socket.destroy();
    }
  });
});
