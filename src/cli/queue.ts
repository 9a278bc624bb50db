/**
 * `onionpost queue list|show|flush|delete`: the outbound queue, like mailq / postqueue /
 * postsuper. Works whether or not the daemon runs: the queue is read from the data dir;
 * `flush` leaves a request file that the running daemon picks up at once (or at its next
 * start); `delete` removes the entry atomically (a delivery already in flight may still
 * complete) and tells the daemon (a request file too, wake.ts).
 *
 * Reading a big queue takes a while (`list`, and `flush` without an id, which counts what it
 * retries): a progress line shows on standard error when it is a terminal, and nothing when
 * it is not.
 *
 * Access: these commands (and `onionpost sendmail`) read and write the spool directly, so
 * they need the data dir's permissions: run them as the daemon's user. Run as root, they
 * first switch to the owner of the data dir, so that no file in it ends up owned by root.
 */
import { accessSync, constants as fsConstants, mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { formatDuration } from '../config/duration.js';
import type { Config } from '../config/types.js';
import { wants } from '../delivery/dsn-params.js';
import { OutboundQueue, type QueueEntry, type QueueRecipient } from '../delivery/queue.js';
import { announceDeletion, requestFlush, wakeDirOf } from '../delivery/wake.js';
import { Progress } from '../log/progress.js';
import { fieldsNamed, parseHeader } from '../smtp/message.js';
import { CliError, type CliContext, type CommandGroup } from './command.js';
import { queryStatus } from './status-socket.js';

export const QUEUE_USAGE = `usage: onionpost queue [list] [--json]
       onionpost queue show ID [--message]
       onionpost queue flush [ID...]
       onionpost queue delete ID...

  list     every queued message: id, age, size, sender, recipients with their state and
           last error (like mailq)
  show     one message: envelope, per-recipient state, main header fields (--message: the
           whole message as queued)
  flush    retry now: the messages named, or every message waiting for its next attempt
  delete   remove messages from the queue (no bounce is sent)
`;

/**
 * Makes sure this process may use the data dir's queue: as root, switches to the data dir's
 * owner first; then checks access (`write`: create files). Throws CliError 77 otherwise.
 */
export function enterDataDir(config: Config, write: boolean): void {
  const getuid = process.getuid?.bind(process);
  let st: ReturnType<typeof statSync> | null = null;
  try {
    st = statSync(config.dataDir);
  } catch {
    st = null;
  }
  if (getuid && getuid() === 0 && st && st.uid !== 0 && process.setuid && process.setgid) {
    try {
      process.setgroups?.([Number(st.gid)]);
      process.setgid(Number(st.gid));
      process.setuid(Number(st.uid));
    } catch (err) {
      throw new CliError(`cannot switch to the owner (uid ${st.uid}) of the data dir ${config.dataDir}: ${(err as Error).message}`, 77);
    }
  }
  if (!st) {
    if (!write) return; // nothing queued yet
    try {
      mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new CliError(`cannot create the data dir ${config.dataDir}: ${(err as Error).message} (check data_dir in the config)`, 73);
    }
  }
  const check = (p: string, mode: number): void => {
    try {
      accessSync(p, mode);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      throw new CliError(
        `permission denied on ${p}: the queue is written directly, so run this as the daemon's user (the owner of the data dir) or as root` +
          ` (mail clients of other accounts can use submission instead: port ${config.submission.starttls.port}, with a password)`,
        77,
      );
    }
  };
  const rw = write ? fsConstants.R_OK | fsConstants.W_OK | fsConstants.X_OK : fsConstants.R_OK | fsConstants.X_OK;
  check(config.dataDir, rw);
  check(config.queue.dir, rw);
  check(path.join(config.queue.dir, 'entries'), rw);
  if (write) check(wakeDirOf(config.queue.dir), rw);
}

/** "1.2K", "3.4M", "812" (bytes). */
export function formatSize(n: number): string {
  if (n < 1024) return `${n}`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)}K`;
  return `${(n / 1024 / 1024).toFixed(1)}M`;
}

function recipientState(r: QueueRecipient, now: number): string {
  if (r.status === 'delivered') return `delivered${r.remoteMta ? ` to ${r.remoteMta}` : ''}`;
  if (r.status === 'failed') return `failed${!wants(r.notify, 'FAILURE') ? ' (the sender asked for no report)' : r.bounced ? ', sender notified' : ', bounce pending'}`;
  const attempts = r.attempts === 0 ? 'not tried yet' : `${r.attempts} attempt${r.attempts === 1 ? '' : 's'}`;
  const next = r.nextAttempt === null ? '' : r.nextAttempt <= now ? ', due now' : `, next in ${formatDuration(r.nextAttempt - now)}`;
  return `waiting: ${attempts}${next}`;
}

function listEntries(entries: QueueEntry[], now: number, out: NodeJS.WritableStream): void {
  if (entries.length === 0) {
    out.write('Mail queue is empty\n');
    return;
  }
  out.write(`${'Queue ID'.padEnd(18)} ${'Age'.padStart(7)} ${'Size'.padStart(6)}  Sender / Recipients\n`);
  let waiting = 0;
  for (const e of entries) {
    out.write(`${e.id.padEnd(18)} ${formatDuration(now - e.createdAt).padStart(7)} ${formatSize(e.size).padStart(6)}  ${e.from === '' ? '<> (a bounce)' : e.from}\n`);
    for (const r of e.recipients) {
      if (r.status === 'pending') waiting++;
      out.write(`${' '.repeat(35)}${r.address}  (${recipientState(r, now)})\n`);
      if (r.lastError && r.status !== 'delivered') out.write(`${' '.repeat(37)}last error: ${r.lastError}\n`);
    }
  }
  const n = entries.length;
  out.write(`-- ${formatSize(entries.reduce((s, e) => s + e.size, 0))} in ${n} message${n === 1 ? '' : 's'}, ${waiting} recipient${waiting === 1 ? '' : 's'} waiting\n`);
}

function parse(args: string[], allowed: Array<'json' | 'message'>) {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { json: { type: 'boolean' }, message: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    throw new CliError(`queue: ${(err as Error).message}\n\n${QUEUE_USAGE}`, 64);
  }
  for (const name of ['json', 'message'] as const) {
    if (parsed.values[name] !== undefined && !allowed.includes(name)) throw new CliError(`queue: unknown option --${name}\n\n${QUEUE_USAGE}`, 64);
  }
  return parsed;
}

function openQueue(ctx: CliContext, write: boolean): { config: Config; queue: OutboundQueue } {
  const config = ctx.config();
  enterDataDir(config, write);
  return { config, queue: new OutboundQueue({ dir: config.queue.dir }) };
}

function normalizeId(id: string): string {
  const up = id.trim().toUpperCase();
  if (!/^[0-9A-F]{16,32}$/.test(up)) throw new CliError(`"${id}" is not a queue id (16 hex digits, as \`onionpost queue list\` shows)`, 64);
  return up;
}

async function daemonRuns(config: Config): Promise<boolean> {
  return (await queryStatus(config.dataDir, 1500)).kind === 'ok';
}

/** Work over fewer items than this shows no progress line (it is over in a blink). */
const PROGRESS_FROM = 200;

/** Progress of long queue work on stderr (a terminal only). */
function progressOf(ctx: CliContext): { update(label: string, done: number, total: number): void; clear(): void } {
  const progress = new Progress(ctx.io.stderr);
  return {
    update: (label, done, total) => {
      if (total >= PROGRESS_FROM) progress.update(label, done, total, done === total);
    },
    clear: () => progress.clear(),
  };
}

/** Every entry, oldest first, with a progress line while they are read; none when there is no queue. */
async function readQueue(ctx: CliContext, queue: OutboundQueue, queueDir: string): Promise<QueueEntry[]> {
  try {
    statSync(queueDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const progress = progressOf(ctx);
  try {
    return await queue.list({ onProgress: (done, total) => progress.update('reading the queue', done, total) });
  } finally {
    progress.clear();
  }
}

/** Pending recipients waiting for a later attempt (what a flush makes due). */
function waitingRecipients(e: QueueEntry, now: number): number {
  return e.recipients.filter((r) => r.status === 'pending' && r.nextAttempt !== null && r.nextAttempt > now).length;
}

/** Lists the queue like mailq; used by `queue list` and `sendmail -bp`. */
export async function printQueue(ctx: CliContext, json: boolean): Promise<number> {
  const { queue, config } = openQueue(ctx, false);
  const entries = await readQueue(ctx, queue, config.queue.dir);
  if (json) ctx.io.stdout.write(`${JSON.stringify(entries, null, 2)}\n`);
  else listEntries(entries, Date.now(), ctx.io.stdout);
  return 0;
}

const HEADER_FIELDS = ['From', 'To', 'Cc', 'Subject', 'Date', 'Message-ID'];

const queueCommand: CommandGroup = async (args, ctx) => {
  const [sub = 'list', ...rest] = args;
  const out = ctx.io.stdout;
  const usage = (): number => {
    out.write(QUEUE_USAGE);
    return 0;
  };
  switch (sub) {
    case 'list':
    case 'ls': {
      const { values, positionals } = parse(rest, ['json']);
      if (values.help) return usage();
      if (positionals.length > 0) throw new CliError(`queue list takes no arguments\n\n${QUEUE_USAGE}`, 64);
      return printQueue(ctx, values.json ?? false);
    }
    case 'show': {
      const { values, positionals } = parse(rest, ['message']);
      if (values.help) return usage();
      if (positionals.length !== 1) throw new CliError(`queue show needs one queue id\n\n${QUEUE_USAGE}`, 64);
      const id = normalizeId(positionals[0]!);
      const { queue } = openQueue(ctx, false);
      const entry = await queue.get(id);
      if (!entry) throw new CliError(`no message ${id} in the queue (delivered, bounced or deleted?)`, 1);
      const raw = await queue.readMessage(id);
      if (values.message) {
        if (raw) out.write(raw);
        return 0;
      }
      const now = Date.now();
      out.write(`Queue ID:  ${entry.id}\n`);
      out.write(`Queued:    ${new Date(entry.createdAt).toISOString()} (${formatDuration(now - entry.createdAt)} ago), from ${entry.origin}\n`);
      out.write(`Size:      ${entry.size} bytes\n`);
      out.write(`Sender:    ${entry.from === '' ? '<> (null sender: a bounce)' : entry.from}\n`);
      out.write('Recipients:\n');
      for (const r of entry.recipients) {
        out.write(`  ${r.address}\n    state:        ${recipientState(r, now)}\n`);
        if (r.lastAttempt) out.write(`    last attempt: ${new Date(r.lastAttempt).toISOString()}\n`);
        if (r.nextAttempt !== null && r.status === 'pending') out.write(`    next attempt: ${new Date(r.nextAttempt).toISOString()}\n`);
        if (r.lastError) out.write(`    last error:   ${r.lastError}${r.remoteMta ? ` (from ${r.remoteMta})` : ''}\n`);
      }
      if (raw) {
        out.write('Header:\n');
        const fields = parseHeader(raw);
        for (const name of HEADER_FIELDS) for (const f of fieldsNamed(fields, name)) out.write(`  ${f.name}: ${f.value}\n`);
      }
      return 0;
    }
    case 'flush': {
      const { values, positionals } = parse(rest, []);
      if (values.help) return usage();
      const ids = [...new Set(positionals.map(normalizeId))];
      const { queue, config } = openQueue(ctx, true);
      return ids.length > 0 ? flushSome(ctx, queue, config, ids) : flushAll(ctx, queue, config);
    }
    case 'delete':
    case 'del':
    case 'rm': {
      const { values, positionals } = parse(rest, []);
      if (values.help) return usage();
      if (positionals.length === 0) throw new CliError(`queue delete needs at least one queue id\n\n${QUEUE_USAGE}`, 64);
      const ids = positionals.map(normalizeId);
      const { queue, config } = openQueue(ctx, true);
      let missing = 0;
      for (const id of ids) {
        if (!(await queue.get(id))) {
          ctx.io.stderr.write(`onionpost: no message ${id} in the queue\n`);
          missing++;
          continue;
        }
        await queue.remove(id);
        // The daemon forgets it at once (else when it next compares the queue directory).
        await announceDeletion(config.queue.dir, id).catch(() => undefined);
        out.write(`deleted ${id}\n`);
      }
      return missing > 0 ? 1 : 0;
    }
    case 'help':
    case '--help':
    case '-h':
      return usage();
    default:
      throw new CliError(`queue: unknown subcommand "${sub}"\n\n${QUEUE_USAGE}`, 64);
  }
};

/** `queue flush ID...`: checks that each is queued, then leaves one request per message. */
async function flushSome(ctx: CliContext, queue: OutboundQueue, config: Config, ids: string[]): Promise<number> {
  const progress = progressOf(ctx);
  const found: string[] = [];
  try {
    for (const [i, id] of ids.entries()) {
      progress.update('checking', i, ids.length);
      if (await queue.get(id)) found.push(id);
      else {
        progress.clear();
        ctx.io.stderr.write(`onionpost: no message ${id} in the queue (delivered, bounced or deleted?)\n`);
      }
    }
    for (const [i, id] of found.entries()) {
      progress.update('asking the daemon', i, found.length);
      await requestFlush(config.queue.dir, id);
    }
  } finally {
    progress.clear();
  }
  if (found.length === 0) throw new CliError(ids.length === 1 ? `no message ${ids[0]} in the queue (delivered, bounced or deleted?)` : 'none of these messages is in the queue', 1);
  const what = found.length === 1 ? `message ${found[0]}` : `${found.length} messages`;
  if (await daemonRuns(config)) ctx.io.stdout.write(`${what}: the daemon retries now; see \`onionpost queue list\`\n`);
  else ctx.io.stdout.write(`flush of ${what} requested; the daemon is not running: it takes effect when \`onionpost start\` runs\n`);
  return found.length === ids.length ? 0 : 1;
}

/** `queue flush`: counts what waits (reading the queue), then leaves one request for all. */
async function flushAll(ctx: CliContext, queue: OutboundQueue, config: Config): Promise<number> {
  const entries = await readQueue(ctx, queue, config.queue.dir);
  const now = Date.now();
  let messages = 0;
  let recipients = 0;
  for (const e of entries) {
    const n = waitingRecipients(e, now);
    if (n > 0) messages++;
    recipients += n;
  }
  await requestFlush(config.queue.dir);
  const what = `every waiting message (${messages} message${messages === 1 ? '' : 's'}, ${recipients} recipient${recipients === 1 ? '' : 's'})`;
  if (await daemonRuns(config)) ctx.io.stdout.write(`${what}: the daemon retries now; see \`onionpost queue list\`\n`);
  else ctx.io.stdout.write(`flush of ${what} requested; the daemon is not running: it takes effect when \`onionpost start\` runs\n`);
  return 0;
}

export default queueCommand;
