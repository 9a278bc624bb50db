/**
 * The outbound scheduler against real parts: a real queue on disk, our real SOCKS client
 * through a recording SOCKS5 server on loopback (standing in for Tor's SocksPort), and a real
 * onionpost port-25 listener with its own Maildir store as the remote MTA (smtp-harness).
 * Bounces to our own users land in a real Maildir store on our side.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { SMTPServer } from 'smtp-server';
import { createLocalDelivery } from '../src/delivery/local.js';
import { OutboundQueue, type EnqueueInput, type QueueEntry } from '../src/delivery/queue.js';
import type { NextHop, Resolution } from '../src/delivery/resolver.js';
import { NextHopResolver } from '../src/delivery/resolver.js';
import { DeliveryScheduler, torConnector, type AttemptEvent, type Connector, type SchedulerOptions } from '../src/delivery/scheduler.js';
import { isolationCredentials, TorConnectError } from '../src/delivery/transport.js';
import { requestFlush } from '../src/delivery/wake.js';
import { silentLogger } from '../src/log/logger.js';
import { MaildirStore } from '../src/store/maildir/maildir-store.js';
import { randomOnionAddress } from '../src/tor/onion-address.js';
import { RecipientResolver } from '../src/users/recipients.js';
import type { User } from '../src/users/user-db.js';
import { maildirMessagesByAge } from './helpers/maildir-files.js';
import { parseDsn } from './helpers/mime.js';
import { DOMAIN as PEER, startHarness, type Harness } from './helpers/smtp-harness.js';
import { startSocksServer, type TestSocksServer } from './helpers/socks5-server.js';
import { sleep, waitFor } from './helpers/wait-for.js';

const OURS = randomOnionAddress();
function user(name: string): User {
  return { name, localPart: name, domain: null, uid: '', gid: '', home: '', extraFields: {}, scheme: 'ARGON2ID' };
}

function message(subject: string, to: string, from = `carol@${OURS}`): Buffer {
  return Buffer.from(
    `From: Carol <${from}>\r\nTo: ${to}\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@${OURS}>\r\n` +
      `Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\nHello ${subject}.\r\n.dot line\r\n\r\nBye.\r\n`,
  );
}

interface Side {
  dir: string;
  queue: OutboundQueue;
  store: MaildirStore;
  scheduler: DeliveryScheduler;
  events: Array<AttemptEvent & { at: number }>;
  enqueued: EnqueueInput[];
  inbox(user: string): Promise<Buffer[]>;
  close(): Promise<void>;
}

describe('delivery scheduler: queue -> SOCKS -> SMTP, bounces, local delivery', { timeout: 90_000 }, () => {
  let peer: Harness;
  let socks: TestSocksServer;
  const sides: Side[] = [];

  before(async () => {
    peer = await startHarness();
    socks = await startSocksServer();
    socks.forwardTo = peer.ports.smtp;
  });
  after(async () => {
    for (const s of sides) await s.close();
    await socks?.close();
    await peer?.stop();
  });
  beforeEach(() => {
    socks.reply = () => 0x00;
  });

  async function side(options: Partial<SchedulerOptions> = {}): Promise<Side> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-sched-'));
    const queue = new OutboundQueue({ dir: path.join(dir, 'queue') });
    await queue.open();
    const enqueued: EnqueueInput[] = [];
    const realEnqueue = queue.enqueue.bind(queue);
    queue.enqueue = async (input: EnqueueInput) => {
      enqueued.push(input);
      return realEnqueue(input);
    };
    const store = new MaildirStore({ maildirFor: (u) => path.join(dir, 'mail', u) });
    const users = [user('carol'), user('dave')];
    const recipients = new RecipientResolver({ localDomains: [OURS], userDb: { get: (n) => users.find((u) => u.name === n), list: () => users } });
    const scheduler = new DeliveryScheduler({
      queue,
      domain: OURS,
      localDomains: [OURS],
      resolver: new NextHopResolver({ clearnet: false }),
      connect: torConnector({ socks: () => ({ host: '127.0.0.1', port: socks.port }), timeoutMs: 5000 }),
      route: 'test socks',
      deliverLocal: createLocalDelivery({ store, resolveRecipient: (a) => recipients.resolve(a), enqueue: (i) => queue.enqueue(i) }),
      retryMs: [60_000],
      delayWarningMs: null,
      greetingTimeoutMs: 5000,
      requestPollMs: 200,
      logger: silentLogger(),
      ...options,
    });
    const events: Side['events'] = [];
    scheduler.onAttempt((e) => events.push({ ...e, at: Date.now() }));
    const s: Side = {
      dir,
      queue,
      store,
      scheduler,
      events,
      enqueued,
      inbox: (u: string) => maildirMessagesByAge(path.join(dir, 'mail', u)),
      async close() {
        await scheduler.stop(500);
        await store.close();
        await rm(dir, { recursive: true, force: true });
      },
    };
    sides.push(s);
    return s;
  }

  const queueEmpty = (s: Side) => waitFor('an empty queue', async () => (await s.queue.list()).length === 0);

  it('delivers several queued messages to one domain over one SOCKS connection, byte for byte', async () => {
    const s = await side();
    const m1 = message('first', `alice@${PEER}`);
    const m2 = message('second', `bob@${PEER}`);
    await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`alice@${PEER}`], raw: m1 });
    await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`bob@${PEER}`, `alice@${PEER}`], raw: m2 });
    const before = socks.requests.length;
    const aliceBefore = (await peer.inbox('alice')).length;
    await s.scheduler.start();
    await queueEmpty(s);

    const requests = socks.requests.slice(before);
    assert.equal(requests.length, 1, 'one connection for both messages');
    assert.equal(requests[0]!.atyp, 0x03, 'SOCKS CONNECT by host name');
    assert.equal(requests[0]!.host, PEER);
    assert.equal(requests[0]!.port, 25);
    assert.equal(requests[0]!.userId, 'onionpost');
    assert.equal(requests[0]!.password, isolationCredentials(PEER).password, 'per-domain isolation credentials');

    const alice = (await peer.inbox('alice')).slice(aliceBefore);
    assert.equal(alice.length, 2);
    for (const [stored, raw] of [
      [alice[0]!, m1],
      [alice[1]!, m2],
    ] as const) {
      assert.ok(stored.subarray(stored.length - raw.length).equals(raw), 'the message arrives byte for byte');
      assert.match(stored.subarray(0, stored.length - raw.length).toString(), new RegExp(`^Received: from ${OURS}\\r\\n\\tby ${PEER}`), 'only the peer Received header is added; our EHLO name is the onion');
    }
    assert.ok((await peer.inbox('bob')).some((b) => b.subarray(b.length - m2.length).equals(m2)));
    assert.deepEqual(
      s.events.map((e) => [e.recipient, e.outcome]),
      [
        [`alice@${PEER}`, 'delivered'],
        [`bob@${PEER}`, 'delivered'],
        [`alice@${PEER}`, 'delivered'],
      ],
    );
    assert.equal(s.enqueued.length, 2, 'no bounce');
  });

  it('mail queued while a connection to its domain is open goes over that connection', async () => {
    const s = await side();
    const m1 = message('open-1', `alice@${PEER}`);
    const m2 = message('open-2', `bob@${PEER}`);
    await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`alice@${PEER}`], raw: m1 });
    const before = socks.requests.length;
    await s.scheduler.start();
    await waitFor('the connection', async () => socks.requests.length > before, 5000);
    await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`bob@${PEER}`], raw: m2 });
    s.scheduler.wake();
    await queueEmpty(s);
    assert.equal(socks.requests.length - before, 1, 'one connection for both');
    assert.deepEqual(s.events.map((e) => e.outcome), ['delivered', 'delivered']);
  });

  it('5xx at RCPT is recorded per recipient: one delivered, one bounced with an RFC 3464 DSN; RSET before the next message', async () => {
    const s = await side();
    const m1 = message('partly', `alice@${PEER}, nobody@${PEER}`);
    const m2 = message('refused', `ghost@${PEER}`);
    const m3 = message('after-rset', `bob@${PEER}`);
    const e1 = await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`alice@${PEER}`, `nobody@${PEER}`], raw: m1 });
    await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`ghost@${PEER}`], raw: m2 });
    await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`bob@${PEER}`], raw: m3 });
    const before = socks.requests.length;
    await s.scheduler.start();
    await queueEmpty(s);
    assert.equal(socks.requests.length - before, 1, 'one connection; the refused transaction is reset and the next one runs');
    assert.ok((await peer.inbox('bob')).some((b) => b.subarray(b.length - m3.length).equals(m3)), 'the message after the RSET arrived');

    const bounces = s.enqueued.filter((e) => e.from === '');
    assert.equal(bounces.length, 2, 'one DSN per failed message');
    for (const b of bounces) assert.deepEqual(b.recipients, [`carol@${OURS}`], 'to the envelope sender, from the null sender');
    const inbox = await s.inbox('carol');
    assert.equal(inbox.length, 2, 'the DSNs were delivered locally into the sender INBOX');
    const dsn = inbox.map((raw) => parseDsn(raw)).find((d) => d.recipients.some((r) => r['final-recipient'] === `rfc822; nobody@${PEER}`))!;
    assert.ok(dsn, 'a DSN about nobody@');
    assert.equal(dsn.top.header('from'), `Mail Delivery System <MAILER-DAEMON@${OURS}>`);
    assert.equal(dsn.top.header('to'), `<carol@${OURS}>`);
    assert.equal(dsn.top.header('auto-submitted'), 'auto-replied');
    assert.match(dsn.top.header('message-id') ?? '', new RegExp(`@${OURS}>$`));
    assert.equal(dsn.perMessage['reporting-mta'], `dns; ${OURS}`);
    assert.ok(dsn.perMessage['arrival-date'] && !Number.isNaN(Date.parse(dsn.perMessage['arrival-date'])));
    assert.equal(dsn.recipients.length, 1, 'only the failed recipient is reported');
    const r = dsn.recipients[0]!;
    assert.equal(r.action, 'failed');
    assert.equal(r.status, '5.1.1');
    assert.equal(r['remote-mta'], `dns; ${PEER}`);
    assert.match(r['diagnostic-code']!, /^smtp; 550 5\.1\.1 .*nobody@/);
    assert.ok(!Number.isNaN(Date.parse(r['last-attempt-date']!)));
    assert.equal(dsn.returned, 'message', 'no RET given: the whole message comes back (RFC 3461 default)');
    assert.match(dsn.headers.body, /^Subject: partly$/m);
    assert.match(dsn.headers.body, /Hello partly/);
    assert.ok(m1.toString('latin1').startsWith(dsn.headers.body), 'the returned message is the queued one, byte for byte');
    assert.match(dsn.human.body, /nobody@/);
    assert.equal((await s.queue.get(e1.id)), null);
  });

  it('a dead onion is retried on schedule (retry list, capped at the maximum age), warned about once, then expires with a 4.4.7 bounce', async () => {
    const dead = randomOnionAddress();
    socks.reply = (req) => (req.host === dead ? 0xf0 : 0x00);
    const s = await side({ retryMs: [300, 700], maxAgeMs: 2000, delayWarningMs: 500 });
    const entry = await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`bob@${dead}`], raw: message('dead', `bob@${dead}`) });
    await s.scheduler.start();
    const queued = await s.queue.get(entry.id);
    await waitFor('the bounce', async () => (await s.inbox('carol')).length >= 2, 8000);
    await queueEmpty(s);

    const times = s.events.filter((e) => e.recipient === `bob@${dead}`).map((e) => e.at - queued!.createdAt);
    assert.deepEqual(
      s.events.filter((e) => e.recipient === `bob@${dead}`).map((e) => e.outcome),
      ['deferred', 'deferred', 'deferred', 'deferred', 'failed'],
      `attempts at ${times.join(', ')} ms`,
    );
    // 0, +300, +700, +700, then at the maximum age (2000) rather than after another +700.
    const expected = [0, 300, 1000, 1700, 2000];
    times.forEach((t, i) => assert.ok(t >= expected[i]! - 20 && t < expected[i]! + 250, `attempt ${i + 1} at ${t} ms, expected ~${expected[i]} ms (all: ${times.join(', ')})`));

    const dsns = (await s.inbox('carol')).map((raw) => parseDsn(raw));
    assert.equal(dsns.length, 2, 'one delay warning, one bounce');
    const [warning, bounce] = dsns[0]!.recipients[0]!.action === 'delayed' ? [dsns[0]!, dsns[1]!] : [dsns[1]!, dsns[0]!];
    assert.equal(warning.top.header('subject'), 'Delayed Mail (still being retried)');
    assert.equal(warning.recipients[0]!.status, '4.4.1');
    assert.ok(warning.recipients[0]!['will-retry-until']);
    assert.match(warning.recipients[0]!['diagnostic-code']!, /^X-Onionpost; .*descriptor was not found \(SOCKS f0/);
    assert.equal(bounce.top.header('subject'), 'Undelivered Mail Returned to Sender');
    assert.equal(bounce.recipients[0]!.action, 'failed');
    assert.equal(bounce.recipients[0]!.status, '4.4.7');
    assert.equal(bounce.recipients[0]!['remote-mta'], undefined, 'no remote MTA answered');
    assert.match(bounce.recipients[0]!['diagnostic-code']!, /delivery time expired.*descriptor was not found/);
  });

  it('never bounces a message from the null sender (no bounce loops)', async () => {
    const s = await side();
    await s.queue.enqueue({ from: '', recipients: [`nobody@${PEER}`], raw: message('bounce-of-bounce', `nobody@${PEER}`) });
    const enqueuedBefore = s.enqueued.length;
    await s.scheduler.start();
    await queueEmpty(s);
    assert.deepEqual(s.events.map((e) => e.outcome), ['failed']);
    assert.equal(s.enqueued.length, enqueuedBefore, 'nothing new was queued');
    assert.equal((await s.inbox('carol')).length, 0);
  });

  it('local domains never leave the process: delivered into the store; unknown local users bounce 5.1.1', async () => {
    const s = await side();
    const raw = message('local', `dave@${OURS}`);
    await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`dave@${OURS}`, `nobody@${OURS}`], raw, origin: 'local' });
    const before = socks.requests.length;
    await s.scheduler.start();
    await queueEmpty(s);
    assert.equal(socks.requests.length, before, 'no outbound connection');
    const dave = await s.inbox('dave');
    assert.equal(dave.length, 1);
    assert.ok(dave[0]!.equals(raw));
    const dsn = parseDsn((await s.inbox('carol'))[0]!);
    assert.equal(dsn.recipients[0]!['final-recipient'], `rfc822; nobody@${OURS}`);
    assert.equal(dsn.recipients[0]!.status, '5.1.1');
  });

  it('next hops in order: when the first host cannot be reached the next one is used', async () => {
    const down = randomOnionAddress();
    socks.reply = (req) => (req.host === down ? 0xf0 : 0x00);
    const resolver = {
      resolve: async (): Promise<Resolution> => ({
        kind: 'hosts',
        hosts: [
          { host: down, port: 25, preference: 10 },
          { host: PEER, port: 25, preference: 20 },
        ],
      }),
    };
    const s = await side({ resolver });
    await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`alice@${PEER}`], raw: message('fallback', `alice@${PEER}`) });
    const before = socks.requests.length;
    await s.scheduler.start();
    await queueEmpty(s);
    assert.deepEqual(
      socks.requests.slice(before).map((r) => r.host),
      [down, PEER],
    );
    assert.deepEqual(s.events.map((e) => e.outcome), ['delivered']);
  });

  it('works on at most `concurrency` domains at once, and each domain once', async () => {
    let running = 0;
    let peak = 0;
    const calls: string[] = [];
    const connect: Connector = async (hop: NextHop, domain: string): Promise<net.Socket> => {
      calls.push(domain);
      running++;
      peak = Math.max(peak, running);
      await sleep(150);
      running--;
      throw new TorConnectError('test: down', 'ONION_DESCRIPTOR_NOT_FOUND', 'temporary', hop.host, hop.port, 0xf0);
    };
    const s = await side({ connect, concurrency: 2 });
    const domains = Array.from({ length: 5 }, () => randomOnionAddress());
    for (const d of domains) await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`a@${d}`, `b@${d}`], raw: message('many', `a@${d}`) });
    await s.scheduler.start();
    await waitFor('every domain tried', async () => s.events.length === 10);
    await s.scheduler.idle();
    assert.equal(peak, 2);
    assert.deepEqual([...calls].sort(), [...domains].sort(), 'one connection attempt per domain for both its recipients');
    for (const e of await s.queue.list()) assert.ok(e.recipients.every((r) => r.attempts === 1 && r.status === 'pending'));
  });

  it('a delivery cut off by a stop (or a crash) stays queued and is delivered by the next start', async () => {
    const hanging: Connector = () => new Promise<net.Socket>(() => undefined);
    const s1 = await side({ connect: hanging });
    const raw = message('survivor', `alice@${PEER}`);
    const entry = await s1.queue.enqueue({ from: `carol@${OURS}`, recipients: [`alice@${PEER}`], raw });
    await s1.scheduler.start();
    await sleep(200);
    await s1.scheduler.stop(100);
    const after = await s1.queue.get(entry.id);
    assert.equal(after!.recipients[0]!.status, 'pending');
    assert.ok(after!.recipients[0]!.nextAttempt! <= Date.now(), 'still due');

    // A new scheduler (a restarted daemon) on the same queue directory.
    const s2 = new DeliveryScheduler({
      queue: new OutboundQueue({ dir: s1.queue.dir }),
      domain: OURS,
      localDomains: [OURS],
      resolver: new NextHopResolver({ clearnet: false }),
      connect: torConnector({ socks: () => ({ host: '127.0.0.1', port: socks.port }), timeoutMs: 5000 }),
      deliverLocal: async () => ({ status: 'temporary', code: 451, enhanced: '4.3.0', response: 'unused' }),
      logger: silentLogger(),
    });
    try {
      const aliceBefore = (await peer.inbox('alice')).length;
      await s2.start();
      await waitFor('delivery after the restart', async () => (await s1.queue.get(entry.id)) === null);
      const alice = (await peer.inbox('alice')).slice(aliceBefore);
      assert.ok(alice.some((b) => b.subarray(b.length - raw.length).equals(raw)));
    } finally {
      await s2.stop(500);
    }
  });

  it('`queue flush` from another process (a request file) makes a waiting message due at once', async () => {
    const s = await side();
    const raw = message('flushed', `bob@${PEER}`);
    const entry: QueueEntry = await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`bob@${PEER}`], raw, notBefore: Date.now() + 3_600_000 });
    await s.scheduler.start();
    await sleep(300);
    assert.equal(s.events.length, 0, 'not due yet');
    const t0 = Date.now();
    await requestFlush(s.queue.dir, entry.id);
    await queueEmpty(s);
    assert.ok(Date.now() - t0 < 3000);
    assert.deepEqual(s.events.map((e) => e.outcome), ['delivered']);
  });

  describe('DSN requests (RFC 3461)', () => {
    it('NOTIFY=NEVER: no bounce; NOTIFY=FAILURE with RET=HDRS: a bounce with the header only, ENVID and ORCPT echoed', async () => {
      const s = await side();
      await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [{ address: `nobody@${PEER}`, notify: ['NEVER'] }], raw: message('never', `nobody@${PEER}`) });
      await s.queue.enqueue({
        from: `carol@${OURS}`,
        recipients: [{ address: `ghost@${PEER}`, notify: ['FAILURE'], orcpt: `rfc822;Ghost+x@${PEER}` }],
        raw: message('headers only', `ghost@${PEER}`),
        ret: 'HDRS',
        envid: 'envelope 7',
      });
      await s.scheduler.start();
      await queueEmpty(s);
      assert.deepEqual(s.events.filter((e) => e.domain === PEER).map((e) => e.outcome), ['failed', 'failed']);
      assert.equal(s.enqueued.filter((e) => e.from === '').length, 1, 'one bounce: none for NOTIFY=NEVER');
      const inbox = await s.inbox('carol');
      assert.equal(inbox.length, 1);
      const dsn = parseDsn(inbox[0]!);
      assert.deepEqual(dsn.recipients.map((r) => r['final-recipient']), [`rfc822; ghost@${PEER}`]);
      assert.equal(dsn.recipients[0]!['original-recipient'], `rfc822; Ghost+x@${PEER}`);
      assert.equal(dsn.perMessage['original-envelope-id'], 'envelope 7');
      assert.equal(dsn.returned, 'headers', 'RET=HDRS');
      assert.equal(dsn.headers.header('content-type'), 'text/rfc822-headers');
      assert.match(dsn.headers.body, /^Subject: headers only\r$/m);
      assert.doesNotMatch(dsn.headers.body, /Hello headers only/, 'no body');
    });

    it('no RET: the bounce returns the whole message, unless it is larger than returnLimit (then its header)', async () => {
      const small = message('small', `nobody@${PEER}`);
      const s = await side({ returnLimit: small.length });
      await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`nobody@${PEER}`], raw: small });
      await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [`ghost@${PEER}`], raw: message('larger message', `ghost@${PEER}`) });
      await s.scheduler.start();
      await queueEmpty(s);
      const dsns = (await s.inbox('carol')).map((raw) => parseDsn(raw));
      const returned = Object.fromEntries(dsns.map((d) => [d.recipients[0]!['final-recipient'], d.returned]));
      assert.deepEqual(returned, { [`rfc822; nobody@${PEER}`]: 'message', [`rfc822; ghost@${PEER}`]: 'headers' });
    });

    it('NOTIFY without DELAY: no delay warning, but the bounce at expiry', async () => {
      const dead = randomOnionAddress();
      socks.reply = (req) => (req.host === dead ? 0xf0 : 0x00);
      const s = await side({ retryMs: [200], maxAgeMs: 1200, delayWarningMs: 300 });
      await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [{ address: `bob@${dead}`, notify: ['FAILURE'] }], raw: message('no warning', `bob@${dead}`) });
      await s.scheduler.start();
      await queueEmpty(s);
      assert.ok(s.events.filter((e) => e.outcome === 'deferred').length >= 2, 'retried while a warning was due');
      const dsns = (await s.inbox('carol')).map((raw) => parseDsn(raw));
      assert.deepEqual(dsns.map((d) => d.recipients[0]!.action), ['failed'], 'the bounce only');
    });

    it('a next hop that advertises DSN gets NOTIFY/ORCPT/RET/ENVID and reports itself: its success report, not ours', async () => {
      const s = await side();
      const peerBefore = new Set((await peer.queue.list()).map((e) => e.id));
      await s.queue.enqueue({
        from: `carol@${OURS}`,
        recipients: [{ address: `alice@${PEER}`, notify: ['SUCCESS', 'FAILURE'], orcpt: `rfc822;Alice+x=1@${PEER}` }, `bob@${PEER}`],
        raw: message('passed on', `alice@${PEER}`),
        ret: 'HDRS',
        envid: 'id +1=2',
      });
      await s.scheduler.start();
      await queueEmpty(s);
      assert.deepEqual(s.events.map((e) => e.outcome), ['delivered', 'delivered']);
      assert.equal(s.enqueued.filter((e) => e.from === '').length, 0, 'no report from us');
      const reports = (await peer.queue.list()).filter((e) => !peerBefore.has(e.id) && e.from === '');
      assert.equal(reports.length, 1, 'the peer queued one success report');
      assert.deepEqual(reports[0]!.recipients.map((r) => r.address), [`carol@${OURS}`]);
      const dsn = parseDsn((await peer.queue.readMessage(reports[0]!.id))!);
      assert.equal(dsn.perMessage['original-envelope-id'], 'id +1=2', 'ENVID arrived intact (xtext both ways)');
      assert.equal(dsn.perMessage['reporting-mta'], `dns; ${PEER}`);
      assert.deepEqual(
        dsn.recipients.map((r) => [r['original-recipient'], r['final-recipient'], r.action]),
        [[`rfc822; Alice+x=1@${PEER}`, `rfc822; alice@${PEER}`, 'delivered']],
        'bob asked for nothing',
      );
      for (const e of reports) await peer.queue.remove(e.id);
    });

    it('a next hop without DSN: NOTIFY=SUCCESS is answered by us with Action: relayed', async () => {
      const plain = new SMTPServer({
        disableReverseLookup: true,
        authOptional: true,
        disabledCommands: ['STARTTLS'],
        logger: false,
        onData(stream, _session, callback) {
          stream.resume();
          stream.on('end', () => callback());
        },
      });
      await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', () => resolve()));
      const saved = socks.forwardTo;
      socks.forwardTo = (plain.server.address() as net.AddressInfo).port;
      try {
        const s = await side();
        await s.queue.enqueue({
          from: `carol@${OURS}`,
          recipients: [{ address: `alice@${PEER}`, notify: ['SUCCESS'], orcpt: `rfc822;alice@${PEER}` }, `bob@${PEER}`],
          raw: message('relayed', `alice@${PEER}`),
          envid: 'r1',
        });
        await s.scheduler.start();
        await queueEmpty(s);
        const inbox = await s.inbox('carol');
        assert.equal(inbox.length, 1);
        const dsn = parseDsn(inbox[0]!);
        assert.equal(dsn.top.header('subject'), 'Successful Mail Delivery Report');
        assert.equal(dsn.perMessage['original-envelope-id'], 'r1');
        assert.deepEqual(
          dsn.recipients.map((r) => [r['original-recipient'], r['final-recipient'], r.action, r.status, r['remote-mta']]),
          [[`rfc822; alice@${PEER}`, `rfc822; alice@${PEER}`, 'relayed', '2.0.0', `dns; ${PEER}`]],
        );
        assert.equal(dsn.returned, 'headers');
      } finally {
        socks.forwardTo = saved;
        await new Promise<void>((resolve) => plain.close(() => resolve()));
      }
    });

    it('local delivery to an alias: "expanded" with several targets (remote ones forwarded with FAILURE only, ORCPT the alias); one remote target keeps the request', async () => {
      const s = await side();
      const targets: Record<string, { kind: 'alias'; users: string[]; remote: string[] }> = {
        [`team@${OURS}`]: { kind: 'alias', users: ['dave'], remote: [`zed@${PEER}`] },
        [`fwd@${OURS}`]: { kind: 'alias', users: [], remote: [`zed@${PEER}`] },
      };
      const deliver = createLocalDelivery({ store: s.store, resolveRecipient: (a) => targets[a]!, enqueue: (i) => s.queue.enqueue(i) });
      const raw = message('alias', `team@${OURS}`);
      const team = await deliver(`team@${OURS}`, raw, `carol@${OURS}`, '00000000000000C1', { notify: ['SUCCESS', 'FAILURE', 'DELAY'], ret: 'HDRS', envid: 'e9' });
      assert.equal(team.status, 'delivered');
      assert.equal(team.success, 'expanded');
      const fwd = await deliver(`fwd@${OURS}`, raw, `carol@${OURS}`, '00000000000000C2', { notify: ['SUCCESS'], orcpt: `rfc822;FWD@${OURS}` });
      assert.equal(fwd.success, null, 'the forwarded entry reports');
      const entries = await s.queue.list();
      assert.equal(entries.length, 2);
      const e1 = entries.find((e) => e.envid === 'e9');
      const e2 = entries.find((e) => e.envid === undefined);
      assert.deepEqual([e1!.origin, e1!.ret, e1!.envid, e1!.recipients[0]!.notify, e1!.recipients[0]!.orcpt], ['forward', 'HDRS', 'e9', ['FAILURE', 'DELAY'], `rfc822;team@${OURS}`]);
      assert.deepEqual([e2!.ret, e2!.envid, e2!.recipients[0]!.notify, e2!.recipients[0]!.orcpt], [undefined, undefined, ['SUCCESS'], `rfc822;FWD@${OURS}`]);
    });

    it('local delivery with NOTIFY=SUCCESS: Action delivered; the entry stays until the report is queued', async () => {
      const s = await side();
      await s.queue.enqueue({ from: `carol@${OURS}`, recipients: [{ address: `dave@${OURS}`, notify: ['SUCCESS'] }], raw: message('local success', `dave@${OURS}`), origin: 'local' });
      await s.scheduler.start();
      await queueEmpty(s);
      assert.equal((await s.inbox('dave')).length, 1);
      const inbox = await s.inbox('carol');
      assert.equal(inbox.length, 1);
      const dsn = parseDsn(inbox[0]!);
      assert.deepEqual(dsn.recipients.map((r) => [r['final-recipient'], r.action, r.status]), [[`rfc822; dave@${OURS}`, 'delivered', '2.0.0']]);
      assert.equal(dsn.recipients[0]!['remote-mta'], undefined);
    });
  });
});
