/**
 * The scheduler with a large backlog (a Tor outage): it reads the spool once at start, then
 * only the entries that are due; entries written or deleted by other processes (the real
 * `onionpost sendmail` and `onionpost queue` commands) reach it through their request files;
 * a restart in the middle of a backlog delivers each message exactly once.
 *
 * Real parts: the queue on disk, our SOCKS client through a recording SOCKS5 server on
 * loopback (standing in for Tor), a real onionpost port-25 listener with its own Maildir as
 * the remote MTA, and the CLI in child processes.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Writable } from 'node:stream';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { OutboundQueue, type QueueEntry } from '../src/delivery/queue.js';
import { NextHopResolver } from '../src/delivery/resolver.js';
import { DeliveryScheduler, torConnector, type AttemptEvent, type SchedulerOptions } from '../src/delivery/scheduler.js';
import { createLogger } from '../src/log/logger.js';
import { randomOnionAddress } from '../src/tor/onion-address.js';
import { UserDb } from '../src/users/user-db.js';
import { runCli } from './helpers/cli.js';
import { DOMAIN as PEER, startHarness, type Harness } from './helpers/smtp-harness.js';
import { startSocksServer, type TestSocksServer } from './helpers/socks5-server.js';
import { waitFor } from './helpers/wait-for.js';

const OURS = randomOnionAddress();
const HOUR = 3_600_000;

function message(subject: string): Buffer {
  return Buffer.from(`From: <alice@${OURS}>\r\nTo: <bob@${PEER}>\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@${OURS}>\r\n\r\nbody of ${subject}\r\n`);
}

/** A queue whose get() calls (the scheduler's state-file reads after its start) are counted by id. */
function countingQueue(dir: string): { queue: OutboundQueue; reads: Map<string, number> } {
  const queue = new OutboundQueue({ dir });
  const reads = new Map<string, number>();
  const get = queue.get.bind(queue);
  queue.get = (id: string): Promise<QueueEntry | null> => {
    reads.set(id, (reads.get(id) ?? 0) + 1);
    return get(id);
  };
  return { queue, reads };
}

/** Error and warning lines of a logger, as parsed JSON. */
function capturingLogger(): { logger: ReturnType<typeof createLogger>; lines: Array<{ level: number; msg: string }> } {
  const lines: Array<{ level: number; msg: string }> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as { level: number; msg: string });
      done();
    },
  });
  return { logger: createLogger('warn', { stream, format: 'json' }), lines };
}

describe('delivery with a backlog: a pass reads only due entries; other processes; restarts', { timeout: 120_000 }, () => {
  let peer: Harness;
  let socks: TestSocksServer;
  let dir: string;
  let config: string;
  const schedulers: DeliveryScheduler[] = [];
  const cli = (args: string[], input = '') => runCli(['--config', config, ...args], { input });

  before(async () => {
    peer = await startHarness();
    socks = await startSocksServer();
    socks.forwardTo = peer.ports.smtp;
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-backlog-'));
    config = path.join(dir, 'onionpost.toml');
    await writeFile(config, `data_dir = "data"\ndomain = "${OURS}"\n[tor]\ncontrol = ""\n`);
    await new UserDb(path.join(dir, 'data', 'users.passwd'), { localDomains: [OURS] }).add('alice', 'alice password');
  });
  after(async () => {
    for (const s of schedulers) await s.stop(500);
    await socks?.close();
    await peer?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  function scheduler(queue: OutboundQueue, options: Partial<SchedulerOptions> = {}): { scheduler: DeliveryScheduler; events: AttemptEvent[] } {
    const s = new DeliveryScheduler({
      queue,
      domain: OURS,
      localDomains: [OURS],
      resolver: new NextHopResolver({ clearnet: false }),
      connect: torConnector({ socks: () => ({ host: '127.0.0.1', port: socks.port }), timeoutMs: 5000 }),
      deliverLocal: async () => ({ status: 'temporary', code: 451, enhanced: '4.3.0', response: 'not in this test' }),
      retryMs: [HOUR],
      delayWarningMs: null,
      greetingTimeoutMs: 5000,
      requestPollMs: 200,
      logger: capturingLogger().logger,
      ...options,
    });
    const events: AttemptEvent[] = [];
    s.onAttempt((e) => events.push(e));
    schedulers.push(s);
    return { scheduler: s, events };
  }

  /** Subjects of the peer's messages for bob that contain `tag`, with their counts. */
  async function arrived(tag: string): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for (const raw of await peer.inbox('bob')) {
      const subject = /^Subject: (.*)\r$/m.exec(raw.toString())?.[1];
      if (subject?.includes(tag)) out.set(subject, (out.get(subject) ?? 0) + 1);
    }
    return out;
  }

  const queueDir = (): string => path.join(dir, 'data', 'queue');
  let running: { scheduler: DeliveryScheduler; events: AttemptEvent[]; reads: Map<string, number>; queue: OutboundQueue } | null = null;
  /** Waiting entries that stay readable (for the CLI's delete and flush). */
  const readable: string[] = [];

  it('reads the spool once at start, then only due entries: 400 waiting entries are never read again (even garbage in them goes unnoticed)', async () => {
    const { queue, reads } = countingQueue(queueDir());
    const dead = Array.from({ length: 20 }, () => randomOnionAddress());
    const waiting: string[] = [];
    for (let i = 0; i < 400; i++) {
      const e = await queue.enqueue({ from: `alice@${OURS}`, recipients: [`bob@${dead[i % dead.length]}`], raw: message(`waiting ${i}`), notBefore: Date.now() + HOUR });
      waiting.push(e.id);
    }
    for (let i = 0; i < 2; i++) {
      const e = await queue.enqueue({ from: `alice@${OURS}`, recipients: [`bob@${PEER}`], raw: message(`readable ${i}`), notBefore: Date.now() + HOUR });
      readable.push(e.id);
    }
    const captured = capturingLogger();
    const { scheduler: s, events } = scheduler(queue, { logger: captured.logger });
    await s.start();
    await s.idle();
    assert.deepEqual(s.queued(), { entries: 402, waiting: 402 });
    assert.deepEqual([...reads.keys()], [], 'the start-up pass reads the spool directly, once');

    // Non-due entries made unreadable behind the scheduler's back: a pass that read them would log errors.
    for (const id of waiting) await writeFile(path.join(queueDir(), 'entries', id, 'state.json'), 'not json {');

    const due: string[] = [];
    for (let i = 0; i < 3; i++) due.push((await queue.enqueue({ from: `alice@${OURS}`, recipients: [`bob@${PEER}`], raw: message(`due ${i} readonly-test`) })).id);
    s.wake();
    await waitFor('3 deliveries', async () => events.filter((e) => e.outcome === 'delivered').length === 3);
    for (let i = 0; i < 20; i++) {
      s.wake();
      await s.idle();
    }
    await waitFor('the delivered entries removed', async () => s.queued().entries === 402);
    assert.deepEqual([...reads.keys()].sort(), [...due].sort(), 'only the due entries were read');
    assert.deepEqual(captured.lines, [], 'no error, no warning');
    assert.deepEqual([...(await arrived('readonly-test')).values()], [1, 1, 1]);
    running = { scheduler: s, events, reads, queue };
  });

  it('an entry that `onionpost sendmail` (another process) queues is read alone, from its request file, and delivered at once', async () => {
    assert.ok(running);
    running.reads.clear();
    const t0 = Date.now();
    const r = await cli(['sendmail', '-f', `alice@${OURS}`, `bob@${PEER}`], `Subject: from another process\n\nhello\n`);
    assert.equal(r.code, 0, r.stderr);
    const id = /queued as ([0-9A-F]{16})/.exec(r.stderr)?.[1];
    assert.ok(id, r.stderr);
    await waitFor('the delivery', async () => running!.events.some((e) => e.id === id && e.outcome === 'delivered'), 5000);
    assert.ok(Date.now() - t0 < 5000);
    await waitFor('the entry removed', async () => running!.scheduler.queued().entries === 402);
    assert.deepEqual([...running.reads.keys()], [id], 'nothing else was read');
  });

  it('`onionpost queue delete` and `queue flush ID` from the CLI reach the scheduler at once', async () => {
    assert.ok(running);
    running.reads.clear();
    const [gone, flushed] = readable as [string, string];
    const del = await cli(['queue', 'delete', gone]);
    assert.equal(del.code, 0, del.stderr);
    await waitFor('the scheduler to forget the deleted entry', async () => running!.scheduler.queued().entries === 401, 5000);

    const flush = await cli(['queue', 'flush', flushed]);
    assert.equal(flush.code, 0, flush.stderr);
    await waitFor('delivery after the flush', async () => running!.events.some((e) => e.id === flushed && e.outcome === 'delivered'), 5000);
    assert.deepEqual([...(await arrived('readable')).keys()], ['readable 1']);
    assert.deepEqual([...running.reads.keys()].sort(), [gone, flushed].sort(), 'only the entries named');
    await running.scheduler.stop(500);
  });

  it('a restart in the middle of a backlog: every message is delivered exactly once, waiting ones stay waiting', async () => {
    const dir2 = path.join(dir, 'restart-queue');
    const first = new OutboundQueue({ dir: dir2 });
    const tag = `restart-${Date.now()}`;
    const n = 80;
    for (let i = 0; i < n; i++) await first.enqueue({ from: `alice@${OURS}`, recipients: [`bob@${PEER}`], raw: message(`${tag} ${i}`) });
    for (let i = 0; i < 50; i++) await first.enqueue({ from: `alice@${OURS}`, recipients: [`bob@${PEER}`], raw: message(`later ${tag} ${i}`), notBefore: Date.now() + HOUR });

    const s1 = scheduler(first, { maxMessagesPerConnection: 10 });
    await s1.scheduler.start();
    await waitFor('some deliveries', async () => s1.events.length >= 15);
    await s1.scheduler.stop(5000); // transactions in flight finish and are recorded
    const before = s1.events.length;
    assert.ok(before < n, `the restart comes in the middle (${before} of ${n} delivered)`);

    const s2 = scheduler(new OutboundQueue({ dir: dir2 }), { maxMessagesPerConnection: 10 });
    await s2.scheduler.start();
    await waitFor('the backlog delivered', async () => s2.scheduler.queued().entries === 50, 60_000);
    await s2.scheduler.idle();
    const got = await arrived(tag);
    const once = [...got].filter(([subject, count]) => !subject.startsWith('later') && count === 1).length;
    assert.equal(once, n, 'each message once');
    assert.equal([...got.values()].reduce((a, b) => a + b, 0), n, 'no duplicate, nothing that was not due');
    assert.equal(before + s2.events.length, n, 'one attempt per message over both runs');
    assert.deepEqual(s2.scheduler.queued(), { entries: 50, waiting: 50 });
  });
});
