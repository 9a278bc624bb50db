/**
 * `npm run bench:queue [-- options]`: the outbound queue with a large backlog (a Tor outage
 * leaves thousands of messages waiting).
 *
 * 1. enqueue: --entries messages (default 20,000), --concurrency enqueues at once (as SMTP
 *    sessions do), each for one of --domains onion domains, none due for a day. Every
 *    enqueue is durable (fsync'd files and directories), so this is the spool's write rate.
 *    It runs in two steps: to a tenth of --entries, then to all of them; 2 and 3 run after
 *    each step, so that the two sizes can be compared.
 * 2. scheduler start: a fresh queue object and scheduler on that spool (a restarted daemon),
 *    in this process: time and CPU until the first pass is done.
 * 3. idle pass: CPU time of one scheduler pass when nothing is due (median of several); it
 *    should not grow with the size of the queue.
 * 4. directory check: the scheduler's periodic safety net (every 5 minutes) for entries
 *    written by other processes: one listing of the entries directory against its index.
 * 5. daemon start: the real `onionpost start` (no listeners, no Tor control port) on the
 *    same data dir, from spawn to "onionpost is running" (printed once the scheduler runs);
 *    also with an empty queue, for the fixed part (node, config, certificate).
 *
 * Options:
 *   --entries N        queue entries (default 20000)
 *   --concurrency C    enqueues at once (default 16)
 *   --domains D        destination domains (default 200)
 *   --passes P         idle passes measured (default 50; fewer if they are slow)
 *   --no-daemon        skip the `onionpost start` measurement
 *   --keep             keep the temp dir (its path is printed)
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { OutboundQueue } from '../src/delivery/queue.js';
import { QueueView } from '../src/delivery/queue-view.js';
import { DeliveryScheduler } from '../src/delivery/scheduler.js';
import { silentLogger } from '../src/log/logger.js';
import { randomOnionAddress } from '../src/tor/onion-address.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = path.join(ROOT, 'bin', 'onionpost.js');
const OURS = randomOnionAddress();

interface Args {
  entries: number;
  concurrency: number;
  domains: number;
  passes: number;
  daemon: boolean;
  keep: boolean;
}

function usage(msg: string): never {
  console.error(`bench:queue: ${msg}`);
  console.error('options: --entries N --concurrency C --domains D --passes P --no-daemon --keep');
  process.exit(2);
}

function parseArgs(argv: string[]): Args {
  const args: Args = { entries: 20_000, concurrency: 16, domains: 200, passes: 50, daemon: true, keep: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const int = (): number => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 1) usage(`${a} needs a positive integer`);
      return v;
    };
    if (a === '--entries') args.entries = int();
    else if (a === '--concurrency') args.concurrency = int();
    else if (a === '--domains') args.domains = int();
    else if (a === '--passes') args.passes = int();
    else if (a === '--no-daemon') args.daemon = false;
    else if (a === '--keep') args.keep = true;
    else usage(`unknown option ${a}`);
  }
  return args;
}

const cpuMs = (u: NodeJS.CpuUsage): number => (u.user + u.system) / 1000;
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const fmt = (n: number, digits = 1): string => n.toFixed(digits);

function message(i: number, to: string): Buffer {
  return Buffer.from(
    `Received: by ${OURS} (bench) id ${i}\r\nFrom: <bench@${OURS}>\r\nTo: <${to}>\r\nSubject: backlog ${i}\r\n` +
      `Message-ID: <bench-${i}@${OURS}>\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\n${'queued while Tor was down\r\n'.repeat(40)}`,
  );
}

/** Enqueues entries number `from` to `to` - 1; returns the time it took, ms. */
async function enqueueRange(queue: OutboundQueue, domains: string[], from: number, to: number, args: Args): Promise<number> {
  const notBefore = Date.now() + 86_400_000;
  let next = from;
  const t0 = performance.now();
  const worker = async (): Promise<void> => {
    for (let i = next++; i < to; i = next++) {
      const rcpt = `user${i % 7}@${domains[i % domains.length]}`;
      await queue.enqueue({ from: `bench@${OURS}`, recipients: [rcpt], raw: message(i, rcpt), origin: 'submission', notBefore });
      if (process.stderr.isTTY && i % 500 === 0) process.stderr.write(`\r\x1b[Kenqueued ${i}/${args.entries}`);
    }
  };
  await Promise.all(Array.from({ length: args.concurrency }, () => worker()));
  return performance.now() - t0;
}

function newScheduler(queue: OutboundQueue): DeliveryScheduler {
  return new DeliveryScheduler({
    queue,
    domain: OURS,
    localDomains: [OURS],
    resolver: { resolve: async () => ({ kind: 'temporary', reason: 'bench: nothing is delivered' }) },
    connect: async () => {
      throw new Error('bench: nothing is delivered');
    },
    deliverLocal: async () => ({ status: 'temporary', code: 451, enhanced: '4.3.0', response: 'bench' }),
    delayWarningMs: null,
    watchRequests: false,
    logger: silentLogger(),
  });
}

/** `onionpost start` on `dir` with no listeners: ms from spawn to "onionpost is running". */
async function timeDaemonStart(dir: string): Promise<number> {
  const config = path.join(dir, 'onionpost.toml');
  await writeFile(
    config,
    `data_dir = "data"\ndomain = "${OURS}"\n[tor]\ncontrol = ""\n[smtp]\nport = 0\n[submission]\nport = 0\ntls_port = 0\n[imap]\nport = 0\ntls_port = 0\n[log]\nlevel = "warn"\n`,
  );
  const t0 = performance.now();
  const child = spawn(process.execPath, [BIN, '--config', config, 'start'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    return await new Promise<number>((resolve, reject) => {
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('onionpost is running')) resolve(performance.now() - t0);
      });
      void exited.then((code) => reject(new Error(`onionpost start exited with ${code}\n${out}\n${err}`)));
    });
  } finally {
    child.kill('SIGTERM');
    await exited;
  }
}

/** Scheduler start, idle passes and the directory check on the spool as it is. */
async function measureScheduler(queueDir: string, n: number, args: Args, row: (name: string, value: string) => void): Promise<void> {
  const queue = new OutboundQueue({ dir: queueDir });
  const scheduler = newScheduler(queue);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await scheduler.start();
  await scheduler.idle();
  const startMs = performance.now() - t0;
  row(`scheduler start, ${n} queued`, `${fmt(startMs, 0)} ms wall, ${fmt(cpuMs(process.cpuUsage(cpu0)), 0)} ms CPU (in process, to the end of its first pass)`);

  const samples: number[] = [];
  const deadline = performance.now() + 20_000;
  for (let i = 0; i < args.passes && (i < 3 || performance.now() < deadline); i++) {
    const c = process.cpuUsage();
    scheduler.wake();
    await scheduler.idle();
    samples.push(cpuMs(process.cpuUsage(c)));
  }
  row(`idle pass, ${n} queued`, `${fmt(median(samples), 3)} ms CPU (median of ${samples.length}; min ${fmt(Math.min(...samples), 3)}, max ${fmt(Math.max(...samples), 3)})`);
  await scheduler.stop(1000);

  const view = new QueueView(queue, { delayWarningMs: null, logger: silentLogger() });
  await view.load();
  const c = process.cpuUsage();
  const t1 = performance.now();
  await view.reconcile();
  row(`directory check, ${n} queued`, `${fmt(performance.now() - t1, 1)} ms wall, ${fmt(cpuMs(process.cpuUsage(c)), 1)} ms CPU (safety net, every 5 min)`);
  view.close();
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-bench-queue-'));
  const queueDir = path.join(dir, 'data', 'queue');
  await mkdir(path.join(dir, 'data'), { recursive: true, mode: 0o700 });
  const row = (name: string, value: string): void => console.log(`${name.padEnd(34)} ${value}`);
  try {
    console.log(`bench:queue: ${args.entries} entries, ${args.domains} domains, enqueue concurrency ${args.concurrency} (node ${process.version}, ${os.cpus().length} CPUs)`);
    let emptyStart: number | null = null;
    if (args.daemon) {
      await timeDaemonStart(dir); // the first start creates the certificate: not timed
      emptyStart = await timeDaemonStart(dir);
    }
    const domains = Array.from({ length: args.domains }, () => randomOnionAddress());
    const queue = new OutboundQueue({ dir: queueDir });
    const tenth = Math.max(1, Math.floor(args.entries / 10));
    let enqueueMs = await enqueueRange(queue, domains, 0, tenth, args);
    await measureScheduler(queueDir, tenth, args, row);
    enqueueMs += await enqueueRange(queue, domains, tenth, args.entries, args);
    if (process.stderr.isTTY) process.stderr.write('\r\x1b[K');
    row("enqueue (fsync'd)", `${fmt((args.entries / enqueueMs) * 1000, 0)} msg/s (${fmt(enqueueMs / 1000, 2)} s for ${args.entries})`);
    await measureScheduler(queueDir, args.entries, args, row);

    if (args.daemon && emptyStart !== null) {
      const full = await timeDaemonStart(dir);
      row('daemon start, empty queue', `${fmt(emptyStart, 0)} ms (spawn to "onionpost is running")`);
      row(`daemon start, ${args.entries} queued`, `${fmt(full, 0)} ms`);
    }
    if (args.keep) console.log(`kept: ${dir}`);
  } finally {
    if (!args.keep) {
      process.stderr.write(`removing ${dir} ...\n`);
      await rm(dir, { recursive: true, force: true });
    }
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
