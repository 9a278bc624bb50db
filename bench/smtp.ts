/**
 * `npm run bench:smtp [-- options]`: SMTP ingest, onionpost beside OpenSMTPD.
 *
 * For every cell (connection mode x message size x concurrency) the load generator sends
 * --messages messages to one recipient, and the cell's time runs from the first connect
 * until every message is in the recipient's Maildir (new/ + cur/). onionpost answers 250
 * only after the message is fsync'd into the Maildir; OpenSMTPD answers 250 once the message
 * is in its queue (before any fsync) and delivers to the Maildir afterwards, so its column
 * counts its delivery too. Rates are messages per second; ratio = onionpost / OpenSMTPD.
 *
 * Modes: "kept open" - each connection carries up to --per-connection messages, pipelined
 * (one round trip per message); "new conn" - a connection per message (greeting, EHLO,
 * one transaction, QUIT).
 *
 * OpenSMTPD runs when installed and the bench runs as root (see lib/smtp-servers.ts).
 *
 * Options:
 *   --messages N          messages per cell (default 2000)
 *   --concurrency 1,10,50 concurrent connections
 *   --sizes 4,100         message sizes in KB
 *   --modes keep,new      connection modes
 *   --per-connection N    messages per kept-open connection (default 100)
 *   --cell-seconds S      stop sending new messages in a cell after S seconds (default 20);
 *                         the rate is then over the messages sent, marked "*"
 *   --greeting-timeout S  a connection without a greeting after S seconds is abandoned and
 *                         tried again, as an MTA would (default 3; counted as "retried")
 *   --rounds R            run every cell R times (servers in alternating order) and report
 *                         the median run (default 1; the machine may be shared and noisy)
 *   --servers onionpost,opensmtpd
 *   --profile DIR         run the daemon under `node --cpu-prof` and write the profile to DIR
 *   --keep                keep the temp dir (its path is printed)
 */
import { chmod, mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { messageFactory, runLoad, type LoadResult } from './lib/smtp-load.js';
import { summarizeProfile } from './lib/smtp-profile.js';
import {
  emptyMaildir,
  opensmtpdUnavailable,
  startOnionpost,
  startOpensmtpd,
  waitForMaildir,
  type BenchServer,
} from './lib/smtp-servers.js';

const DOMAIN = 'bench.test';
const OPENSMTPD_USER = 'opbench';

interface Args {
  messages: number;
  concurrency: number[];
  sizes: number[];
  modes: Array<'keep' | 'new'>;
  perConnection: number;
  cellSeconds: number;
  greetingSeconds: number;
  rounds: number;
  servers: string[];
  profile: string | null;
  keep: boolean;
}

function usage(msg: string): never {
  console.error(`bench:smtp: ${msg}`);
  console.error('options: --messages N --concurrency 1,10,50 --sizes 4,100 --modes keep,new --per-connection N --cell-seconds S --greeting-timeout S --rounds R --servers onionpost,opensmtpd --profile DIR --keep');
  process.exit(2);
}

function parseArgs(argv: string[]): Args {
  const args: Args = {
    messages: 2000,
    concurrency: [1, 10, 50],
    sizes: [4, 100],
    modes: ['keep', 'new'],
    perConnection: 100,
    cellSeconds: 20,
    greetingSeconds: 3,
    rounds: 1,
    servers: ['onionpost', 'opensmtpd'],
    profile: null,
    keep: false,
  };
  const list = (v: string): number[] =>
    v.split(',').map((x) => {
      const n = Number(x);
      if (!Number.isFinite(n) || n <= 0) usage(`not a positive number: ${x}`);
      return n;
    });
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) usage(`${a} needs a value`);
      return v;
    };
    switch (a) {
      case '--messages':
        args.messages = Math.floor(list(value())[0]!);
        break;
      case '--concurrency':
        args.concurrency = list(value()).map(Math.floor);
        break;
      case '--sizes':
        args.sizes = list(value());
        break;
      case '--modes':
        args.modes = value()
          .split(',')
          .map((m) => (m === 'keep' || m === 'new' ? m : usage(`unknown mode ${m} (keep, new)`)));
        break;
      case '--per-connection':
        args.perConnection = Math.floor(list(value())[0]!);
        break;
      case '--cell-seconds':
        args.cellSeconds = list(value())[0]!;
        break;
      case '--greeting-timeout':
        args.greetingSeconds = list(value())[0]!;
        break;
      case '--rounds':
        args.rounds = Math.floor(list(value())[0]!);
        break;
      case '--servers':
        args.servers = value()
          .split(',')
          .map((s) => (s === 'onionpost' || s === 'opensmtpd' ? s : usage(`unknown server ${s}`)));
        break;
      case '--profile':
        args.profile = path.resolve(value());
        break;
      case '--keep':
        args.keep = true;
        break;
      case '-h':
      case '--help':
        usage('usage');
        break;
      default:
        usage(`unknown option ${a}`);
    }
  }
  return args;
}

interface Cell {
  mode: 'keep' | 'new';
  sizeKb: number;
  concurrency: number;
}

interface Measure {
  /** Messages in the Maildir per second (first connect -> last one in the Maildir). */
  rate: number;
  /** 250 replies per second (first connect -> last reply). */
  ackRate: number;
  delivered: number;
  /** Server CPU time per delivered message, ms. */
  cpuPerMsg: number;
  load: LoadResult;
  truncated: boolean;
  note: string;
}

function cellName(c: Cell): string {
  return `${c.mode === 'keep' ? 'kept open' : 'new conn '}  ${String(c.sizeKb).padStart(3)} KB  c${String(c.concurrency).padEnd(3)}`;
}

async function measure(server: BenchServer, maildir: string, rcpt: string, cell: Cell, args: Args, tag: string): Promise<Measure> {
  const message = messageFactory(cell.sizeKb * 1024, tag);
  // Warm-up: one message (creates the Maildir on both servers), not timed.
  const warm = await runLoad({ host: '127.0.0.1', port: server.port, messages: 1, concurrency: 1, perConnection: 1, from: 'sender@client.bench.test', rcpt: () => rcpt, message });
  if (warm.accepted !== 1) throw new Error(`${server.name}: warm-up message refused: ${warm.errors.join('; ')}\n${server.log()}`);
  const base = (await waitForMaildir(maildir, 1, 30_000)).count;
  if (base < 1) throw new Error(`${server.name}: warm-up message never reached ${maildir}\n${server.log()}`);

  const cpu0 = server.cpuMs();
  const start = performance.now();
  const load = await runLoad({
    host: '127.0.0.1',
    port: server.port,
    messages: args.messages,
    concurrency: cell.concurrency,
    perConnection: cell.mode === 'keep' ? args.perConnection : 1,
    from: 'sender@client.bench.test',
    rcpt: () => rcpt,
    message,
    deadlineMs: args.cellSeconds * 1000,
    greetingTimeoutMs: args.greetingSeconds * 1000,
  });
  const acked = start + load.elapsedMs;
  const want = base + load.accepted;
  const done = await waitForMaildir(maildir, want, 60_000);
  const delivered = done.count - base;
  const end = Math.max(done.at, acked);
  const cpu = server.cpuMs() - cpu0;
  const notes: string[] = [];
  if (load.failed > 0) notes.push(`${load.failed} failed (${load.errors.join('; ')})`);
  if (delivered < load.accepted) notes.push(`only ${delivered} of ${load.accepted} accepted reached the Maildir`);
  return {
    rate: (delivered / (end - start)) * 1000,
    ackRate: (load.accepted / load.elapsedMs) * 1000,
    delivered,
    cpuPerMsg: delivered > 0 ? cpu / delivered : 0,
    load,
    truncated: load.skipped > 0,
    note: notes.join('; '),
  };
}

function fmtRate(m: Measure | undefined): string {
  if (!m) return '-';
  return `${m.rate >= 100 ? m.rate.toFixed(0) : m.rate.toFixed(1)}${m.truncated ? '*' : ' '}`;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const cells: Cell[] = [];
  for (const mode of args.modes) for (const sizeKb of args.sizes) for (const concurrency of args.concurrency) cells.push({ mode, sizeKb, concurrency });

  const tmp = await mkdtemp(path.join(os.tmpdir(), 'onionpost-bench-smtp-'));
  const servers: BenchServer[] = [];
  let stopping = false;
  const cleanup = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    for (const s of servers.splice(0).reverse()) await s.stop().catch((e: unknown) => console.error(`bench: stopping ${s.name}: ${String(e)}`));
    if (args.keep) console.log(`temp dir kept: ${tmp}`);
    else await rm(tmp, { recursive: true, force: true });
  };
  const onSignal = (): void => {
    void cleanup().then(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const results = new Map<string, Map<string, Measure>>();
  try {
    let op: BenchServer | null = null;
    let os_: BenchServer | null = null;
    const users = Array.from({ length: cells.length * args.rounds }, (_, i) => `bench${String(i + 1).padStart(3, '0')}`);
    if (args.servers.includes('onionpost')) {
      op = await startOnionpost({ dir: path.join(tmp, 'onionpost'), domain: DOMAIN, users, cpuProfDir: args.profile ?? undefined });
      servers.push(op);
    }
    let skipNote = '';
    if (args.servers.includes('opensmtpd')) {
      const why = opensmtpdUnavailable();
      if (why === null) {
        // OpenSMTPD delivers as a system user whose home is below tmp: let it through.
        await chmod(tmp, 0o711);
        try {
          os_ = await startOpensmtpd({ dir: path.join(tmp, 'opensmtpd'), domain: DOMAIN, user: OPENSMTPD_USER, maxMails: Math.max(1000, args.perConnection + 10) });
          servers.push(os_);
        } catch (err) {
          skipNote = `OpenSMTPD skipped: ${err instanceof Error ? err.message : String(err)}`;
        }
      } else skipNote = `OpenSMTPD skipped: ${why}`;
    }
    if (skipNote) console.log(skipNote);
    console.log(
      `bench:smtp - ${args.messages} messages per cell (at most ${args.cellSeconds} s of sending)${args.rounds > 1 ? `, ${args.rounds} rounds` : ''}, ` +
        `${os.cpus().length} CPUs, Node ${process.version}; kept-open connections carry up to ${args.perConnection} messages, pipelined where offered`,
    );

    for (const [ci, cell] of cells.entries()) {
      const row = new Map<string, Measure>();
      results.set(cellName(cell), row);
      const runs = new Map<string, Measure[]>();
      for (let round = 0; round < args.rounds; round++) {
        // Alternate who goes first, so that neither always runs on a warmer (or busier) machine.
        for (const server of round % 2 === 0 ? [op, os_] : [os_, op]) {
          if (server === null) continue;
          const rcptUser = server === op ? users[ci * args.rounds + round]! : OPENSMTPD_USER;
          const maildir = server.maildirOf(rcptUser);
          if (server === os_) await emptyMaildir(maildir);
          const m = await measure(server, maildir, `${rcptUser}@${DOMAIN}`, cell, args, `c${ci}.r${round}.${server.name}`);
          runs.set(server.name, [...(runs.get(server.name) ?? []), m]);
          process.stderr.write(
            `  ${cellName(cell)} ${server.name.padEnd(9)} ${fmtRate(m).padStart(7)} msg/s in Maildir, 250s at ${m.ackRate.toFixed(0)}/s, CPU ${m.cpuPerMsg.toFixed(2)} ms/msg, ${m.delivered} messages, ${m.load.connections} connections${m.load.retries ? ` (${m.load.retries} retried: no greeting within ${args.greetingSeconds} s)` : ''}${m.load.pipelining ? '' : ', no PIPELINING'}${m.note ? `; ${m.note}` : ''}\n`,
          );
          if (m.load.failed > 0 && process.env.BENCH_SMTP_DEBUG) process.stderr.write(`--- ${server.name} log (unusual lines) ---\n${server.log().split('\n').filter((l) => !/ mda delivery .*result=Ok| smtp (message|envelope|connected|disconnected reason=quit) /.test(l)).slice(-60).join('\n')}\n`);
          if (server === os_) await emptyMaildir(maildir);
        }
      }
      // The median run of each server (the lower middle one for an even count).
      for (const [name, list] of runs) row.set(name, [...list].sort((a, b) => a.rate - b.rate)[Math.floor((list.length - 1) / 2)]!);
    }

    // The table.
    const lines: string[] = [];
    const haveOs = os_ !== null;
    const haveOp = op !== null;
    lines.push('');
    lines.push(
      `${'cell'.padEnd(25)}${haveOp ? 'onionpost'.padStart(11) + 'CPU'.padStart(7) : ''}` +
        `${haveOs ? 'OpenSMTPD'.padStart(11) + '(250s/s)'.padStart(10) + 'CPU'.padStart(7) : ''}${haveOp && haveOs ? 'ratio'.padStart(8) : ''}`,
    );
    for (const [name, row] of results) {
      const a = row.get('onionpost');
      const b = row.get('OpenSMTPD');
      let line = name.padEnd(25);
      if (haveOp) line += fmtRate(a).padStart(11) + (a ? a.cpuPerMsg.toFixed(2) : '-').padStart(7);
      if (haveOs) line += fmtRate(b).padStart(11) + (b ? `(${b.ackRate.toFixed(0)})` : '').padStart(10) + (b ? b.cpuPerMsg.toFixed(2) : '-').padStart(7);
      if (haveOp && haveOs) line += (a && b ? `${(a.rate / b.rate).toFixed(2)}x` : '-').padStart(8);
      lines.push(line);
    }
    lines.push('msg/s: until every message is in the Maildir; onionpost fsyncs each message before its 250.');
    if (haveOs) lines.push('OpenSMTPD replies 250 first (at the "250s/s" rate) and delivers to the Maildir after.');
    lines.push('CPU: server CPU time per message, ms (all its processes).');
    if (args.rounds > 1) lines.push(`Each cell: the median of ${args.rounds} runs (servers in alternating order).`);
    if ([...results.values()].some((r) => [...r.values()].some((m) => m.truncated))) lines.push(`* sending stopped after ${args.cellSeconds} s; rate over the messages sent`);
    if (haveOp && haveOs) {
      const target = (mode: 'keep' | 'new', c: number, factor: number): string => {
        const parts: string[] = [];
        for (const [ci, cell] of cells.entries()) {
          if (cell.mode !== mode || cell.concurrency !== c) continue;
          const row = results.get(cellName(cells[ci]!))!;
          const a = row.get('onionpost');
          const b = row.get('OpenSMTPD');
          if (!a || !b) continue;
          const r = a.rate / b.rate;
          parts.push(`${cell.sizeKb} KB ${r.toFixed(2)}x ${r >= factor ? 'ok' : 'MISSED'}`);
        }
        return parts.length ? parts.join(', ') : 'not measured';
      };
      lines.push(`target kept open, c10 >= 2x OpenSMTPD: ${target('keep', 10, 2)}`);
      lines.push(`target new conn,   c50 >= 1x OpenSMTPD: ${target('new', 50, 1)}`);
    }
    console.log(lines.join('\n'));

    if (op && args.profile) {
      await op.stop();
      servers.splice(servers.indexOf(op), 1);
      const files = (await readdir(args.profile)).filter((f) => f.endsWith('.cpuprofile')).sort();
      const latest = files[files.length - 1];
      if (latest) {
        console.log(`\nonionpost daemon CPU profile: ${path.join(args.profile, latest)}`);
        console.log(await summarizeProfile(path.join(args.profile, latest), 25));
      }
    }
  } finally {
    await cleanup();
  }
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.stack ?? err.message : err);
  process.exitCode = 1;
});

