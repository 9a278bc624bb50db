/**
 * The outbound queue spool: messages for remote recipients wait here until the scheduler
 * (delivery/scheduler, another module) has delivered them or given up.
 *
 * Layout under the queue dir (`<data_dir>/queue/`):
 *
 *     entries/<id>/message      the message as it will be sent (our Received header on top)
 *     entries/<id>/state.json   envelope and per-recipient state (QueueEntry below)
 *     tmp/                      entries being written or removed; never read as entries
 *
 * Durability: enqueue() writes both files into `tmp/<id>.<random>/`, fsyncs each file and
 * that directory, renames the directory to `entries/<id>` and fsyncs `entries/` before it
 * resolves, so an SMTP 250 is only sent for a message that survives a crash, and a
 * half-written entry is never visible under `entries/` (the rename is atomic). update()
 * replaces state.json the same way (temp file, fsync, rename, directory fsync). remove()
 * first renames the entry into `tmp/` (it disappears atomically), then deletes it.
 * open() deletes leftovers in `tmp/` older than a few minutes (a crash mid-write).
 *
 * Scheduling data: every recipient has `nextAttempt` (epoch ms; null once it is final:
 * delivered or failed), `attempts`, `lastAttempt` and `lastError`. due() lists the entries
 * with a pending recipient whose nextAttempt has come (by reading them all: the scheduler
 * keeps its own index instead, fed by onChange() below and by one read() pass at start).
 *
 * Change notices: onChange() listeners hear of every entry this object writes or removes,
 * once it is durable. Writes by other processes (`onionpost sendmail`, `queue delete`) are
 * not seen here; those processes leave a request file (wake.ts) naming the entry.
 *
 * DSN requests (RFC 3461, dsn-params.ts) are part of the entry: `ret`/`envid` per message,
 * `notify`/`orcpt` per recipient, all optional: entries written without them (older
 * versions, or a sender who asked for nothing) mean the RFC defaults.
 */
import { randomBytes } from 'node:crypto';
import * as fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../log/logger.js';
import { isNotifyList, isOrcpt, type DsnRet, type NotifyValue, type RecipientDsn, type SuccessAction } from './dsn-params.js';

export type QueueRecipientStatus = 'pending' | 'delivered' | 'failed';

export interface QueueRecipient {
  /** The envelope recipient as accepted (local part as written, domain lower case). */
  address: string;
  /** Its domain, lower case: what the scheduler groups by. */
  domain: string;
  status: QueueRecipientStatus;
  attempts: number;
  /** When to try next (epoch ms); null once the recipient is delivered or failed. */
  nextAttempt: number | null;
  lastAttempt?: number;
  /** The last error or remote reply, for logs, `queue` listings and bounces. */
  lastError?: string;
  /** SMTP reply code of lastError, when it was a server's reply. */
  lastCode?: number;
  /** The host that gave lastError (a remote reply) or accepted the message. */
  remoteMta?: string;
  /** RFC 3463 status of the last outcome (e.g. 5.1.1, 4.4.7), for bounces. */
  enhanced?: string;
  /** A failed recipient: its DSN was queued (or none was due: the null sender). */
  bounced?: boolean;
  /** A pending recipient: the delay warning was queued (or none was due). */
  warned?: boolean;
  /** RFC 3461 NOTIFY as the sender gave it; absent: the default (FAILURE, DELAY). */
  notify?: NotifyValue[];
  /** RFC 3461 ORCPT, decoded ("rfc822;address"). */
  orcpt?: string;
  /** A delivered recipient whose sender asked for a success report: what it says. */
  successAction?: SuccessAction;
  /** That success report was queued. */
  successReported?: boolean;
}

/** Where a queued message came from. */
export type QueueOrigin = 'submission' | 'relay' | 'forward' | 'local';

export interface QueueEntry {
  version: 1;
  id: string;
  /** Epoch ms. */
  createdAt: number;
  /** Envelope sender; '' is the null sender (bounces). */
  from: string;
  /** Size of the message file in bytes. */
  size: number;
  origin: QueueOrigin;
  recipients: QueueRecipient[];
  /** RFC 3461 RET; absent: the default (FULL). */
  ret?: DsnRet;
  /** RFC 3461 ENVID, decoded. */
  envid?: string;
}

/** A recipient with its DSN request (RFC 3461 NOTIFY, ORCPT). */
export interface RecipientInput extends RecipientDsn {
  address: string;
}

export interface EnqueueInput {
  from: string;
  /** Addresses, or addresses with their DSN request. */
  recipients: ReadonlyArray<string | RecipientInput>;
  raw: Buffer;
  /** RFC 3461 RET and ENVID of the message. */
  ret?: DsnRet;
  envid?: string;
  /** Queue id (16 to 32 upper-case hex digits); generated when absent. */
  id?: string;
  origin?: QueueOrigin;
  /** First attempt time, epoch ms (default: now). */
  notBefore?: number;
}

/** What onChange() listeners hear: an entry written (enqueued or updated) or removed. */
export type QueueChange = { kind: 'written'; entry: QueueEntry } | { kind: 'removed'; id: string };

export interface ReadOptions {
  /** The entries to read (default: every entry). */
  ids?: readonly string[];
  /** Reads at once (default 16). */
  concurrency?: number;
  /** Called as entries are read: done and total counts. */
  onProgress?: (done: number, total: number) => void;
}

export interface ReadResult {
  /** Entries read, in no particular order. */
  entries: QueueEntry[];
  /** Ids whose state could not be read or is invalid (logged). */
  unreadable: string[];
}

export interface OutboundQueueOptions {
  /** The queue directory (created when missing). */
  dir: string;
  logger?: Logger;
  /** tmp/ leftovers older than this are deleted by open(), ms (default 10 minutes). */
  staleTmpMs?: number;
}

export class QueueError extends Error {
  constructor(
    readonly code: 'invalid' | 'not-found' | 'exists' | 'io',
    message: string,
  ) {
    super(message);
    this.name = 'QueueError';
  }
}

const ID_RE = /^[0-9A-F]{16,32}$/;
const MESSAGE = 'message';
const STATE = 'state.json';

/** Queue ids: 16 upper-case hex digits (also an RFC 5322 atom, used in Received headers). */
export function newQueueId(): string {
  return randomBytes(8).toString('hex').toUpperCase();
}

export class OutboundQueue {
  readonly dir: string;
  private readonly entriesDir: string;
  private readonly tmpDir: string;
  private readonly logger: Logger | undefined;
  private readonly staleTmpMs: number;
  private opened: Promise<void> | null = null;
  /** Serializes update()/remove() of one entry within this process. */
  private readonly chains = new Map<string, Promise<unknown>>();
  private readonly listeners = new Set<(change: QueueChange) => void>();

  constructor(options: OutboundQueueOptions) {
    this.dir = path.resolve(options.dir);
    this.entriesDir = path.join(this.dir, 'entries');
    this.tmpDir = path.join(this.dir, 'tmp');
    this.logger = options.logger;
    this.staleTmpMs = options.staleTmpMs ?? 10 * 60 * 1000;
  }

  /** Calls `fn` after each durable write or removal made through this object; returns the unsubscribe. */
  onChange(fn: (change: QueueChange) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(change: QueueChange): void {
    for (const fn of this.listeners) {
      try {
        fn(change);
      } catch (err) {
        this.logger?.error({ err }, 'queue change listener failed');
      }
    }
  }

  /** Creates the directories and removes stale tmp/ leftovers. Called by every other method. */
  open(): Promise<void> {
    this.opened ??= this.doOpen().catch((err: unknown) => {
      this.opened = null;
      throw err;
    });
    return this.opened;
  }

  private async doOpen(): Promise<void> {
    for (const d of [this.dir, this.entriesDir, this.tmpDir]) {
      await fsp.mkdir(d, { recursive: true, mode: 0o700 });
    }
    const now = Date.now();
    for (const name of await fsp.readdir(this.tmpDir)) {
      const p = path.join(this.tmpDir, name);
      try {
        const st = await fsp.lstat(p);
        if (now - st.mtimeMs > this.staleTmpMs) {
          await fsp.rm(p, { recursive: true, force: true });
          this.logger?.warn({ entry: name }, 'removed an incomplete queue entry');
        }
      } catch {
        // gone meanwhile
      }
    }
  }

  /** Writes a new entry durably; resolves only once it is on disk (files and directories fsync'd). */
  async enqueue(input: EnqueueInput): Promise<QueueEntry> {
    await this.open();
    const id = input.id ?? newQueueId();
    if (!ID_RE.test(id)) throw new QueueError('invalid', `invalid queue id "${id}"`);
    if (input.recipients.length === 0) throw new QueueError('invalid', 'a queue entry needs at least one recipient');
    const now = Date.now();
    const recipients: QueueRecipient[] = [];
    for (const item of input.recipients) {
      const { address, ...dsn } = typeof item === 'string' ? { address: item } : item;
      const at = address.lastIndexOf('@');
      if (at <= 0 || at === address.length - 1 || /[\s<>\x00-\x1f\x7f]/.test(address)) {
        throw new QueueError('invalid', `invalid recipient address "${address}"`);
      }
      const domain = address.slice(at + 1).toLowerCase().replace(/\.$/, '');
      const normalized = `${address.slice(0, at)}@${domain}`;
      if (recipients.some((r) => r.address.toLowerCase() === normalized.toLowerCase())) continue;
      recipients.push({
        address: normalized,
        domain,
        status: 'pending',
        attempts: 0,
        nextAttempt: input.notBefore ?? now,
        ...(dsn.notify ? { notify: [...dsn.notify] } : {}),
        ...(dsn.orcpt !== undefined ? { orcpt: dsn.orcpt } : {}),
      });
    }
    const entry: QueueEntry = {
      version: 1,
      id,
      createdAt: now,
      from: input.from,
      size: input.raw.length,
      origin: input.origin ?? 'submission',
      recipients,
      ...(input.ret ? { ret: input.ret } : {}),
      ...(input.envid !== undefined ? { envid: input.envid } : {}),
    };
    validateEntry(entry);

    const work = path.join(this.tmpDir, `${id}.${randomBytes(4).toString('hex')}`);
    const final = path.join(this.entriesDir, id);
    try {
      await fsp.mkdir(work, { mode: 0o700 });
      // Both files at once: their fsyncs run in parallel on libuv's thread pool.
      const written = await Promise.allSettled([writeDurably(path.join(work, MESSAGE), input.raw), writeDurably(path.join(work, STATE), serialize(entry))]);
      for (const w of written) if (w.status === 'rejected') throw w.reason;
      await fsyncDir(work);
      try {
        await fsp.access(final);
        throw new QueueError('exists', `queue entry ${id} already exists`);
      } catch (err) {
        if (err instanceof QueueError) throw err;
      }
      await fsp.rename(work, final);
    } catch (err) {
      await fsp.rm(work, { recursive: true, force: true }).catch(() => undefined);
      if (err instanceof QueueError) throw err;
      throw new QueueError('io', `cannot write queue entry ${id}: ${(err as Error).message}`);
    }
    // The rename's durability: fsync of the directory it landed in (tmp/ needs none: after a
    // crash an entry is either still under tmp/, and cleaned up, or in entries/).
    await fsyncDir(this.entriesDir, true);
    this.logger?.debug({ id, recipients: recipients.length, size: entry.size }, 'queued');
    this.emit({ kind: 'written', entry });
    return entry;
  }

  /** The ids of every entry (one directory listing; no state is read). */
  async ids(): Promise<string[]> {
    await this.open();
    return (await fsp.readdir(this.entriesDir)).filter((n) => ID_RE.test(n));
  }

  /**
   * Reads many entries, several at once. Entries gone meanwhile are left out; entries whose
   * state cannot be read are logged, listed in `unreadable` and left out.
   */
  async readMany(options: ReadOptions = {}): Promise<ReadResult> {
    const ids = options.ids ?? (await this.ids());
    await this.open();
    const result: ReadResult = { entries: [], unreadable: [] };
    let next = 0;
    let done = 0;
    const worker = async (): Promise<void> => {
      for (let i = next++; i < ids.length; i = next++) {
        const id = ids[i]!;
        try {
          const e = ID_RE.test(id) ? await this.read(id) : null;
          if (e) result.entries.push(e);
        } catch (err) {
          result.unreadable.push(id);
          this.logger?.error({ id, err: (err as Error).message }, 'unreadable queue entry; skipped');
        }
        options.onProgress?.(++done, ids.length);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(options.concurrency ?? 16, ids.length)) }, () => worker()));
    return result;
  }

  /** Every entry, oldest first. Entries whose state cannot be read are logged and skipped. */
  async list(options: Pick<ReadOptions, 'onProgress'> = {}): Promise<QueueEntry[]> {
    const { entries } = await this.readMany(options);
    return entries.sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id));
  }

  /** Entries with at least one pending recipient whose nextAttempt <= now. */
  async due(now: number = Date.now()): Promise<QueueEntry[]> {
    return (await this.list()).filter((e) => e.recipients.some((r) => r.status === 'pending' && r.nextAttempt !== null && r.nextAttempt <= now));
  }

  /** The entry, or null when there is none with that id. */
  async get(id: string): Promise<QueueEntry | null> {
    await this.open();
    if (!ID_RE.test(id)) return null;
    return this.read(id);
  }

  /** Absolute path of an entry's message file (for streaming it to the transport). */
  messagePath(id: string): string {
    if (!ID_RE.test(id)) throw new QueueError('invalid', `invalid queue id "${id}"`);
    return path.join(this.entriesDir, id, MESSAGE);
  }

  /** The message bytes, or null when the entry is gone. */
  async readMessage(id: string): Promise<Buffer | null> {
    await this.open();
    try {
      return await fsp.readFile(this.messagePath(id));
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return null;
      throw err;
    }
  }

  /**
   * Replaces the recipients' state durably (temp file + fsync + rename + directory fsync).
   * `state` is the new recipient list, or a function of the current entry returning it.
   * The envelope (id, from, createdAt, size, origin) never changes.
   */
  update(id: string, state: { recipients: QueueRecipient[] } | ((entry: QueueEntry) => { recipients: QueueRecipient[] })): Promise<QueueEntry> {
    return this.serial(id, async () => {
      await this.open();
      const current = await this.get(id);
      if (!current) throw new QueueError('not-found', `no queue entry ${id}`);
      const next = typeof state === 'function' ? state(current) : state;
      const entry: QueueEntry = { ...current, recipients: next.recipients.map((r) => ({ ...r })) };
      validateEntry(entry);
      const dir = path.join(this.entriesDir, id);
      const tmp = path.join(dir, `.${STATE}.${randomBytes(4).toString('hex')}`);
      try {
        await writeDurably(tmp, serialize(entry));
        await fsp.rename(tmp, path.join(dir, STATE));
      } catch (err) {
        await fsp.rm(tmp, { force: true }).catch(() => undefined);
        throw new QueueError('io', `cannot update queue entry ${id}: ${(err as Error).message}`);
      }
      await fsyncDir(dir, true);
      this.emit({ kind: 'written', entry });
      return entry;
    });
  }

  /** Deletes an entry (after it is delivered or bounced). Missing entries are not an error. */
  remove(id: string): Promise<void> {
    return this.serial(id, async () => {
      await this.open();
      if (!ID_RE.test(id)) throw new QueueError('invalid', `invalid queue id "${id}"`);
      const doomed = path.join(this.tmpDir, `${id}.removed.${randomBytes(4).toString('hex')}`);
      try {
        await fsp.rename(path.join(this.entriesDir, id), doomed);
      } catch (err) {
        if (isErrno(err, 'ENOENT')) {
          this.emit({ kind: 'removed', id }); // gone already (another process)
          return;
        }
        throw new QueueError('io', `cannot remove queue entry ${id}: ${(err as Error).message}`);
      }
      await fsyncDir(this.entriesDir, true);
      this.emit({ kind: 'removed', id });
      await fsp.rm(doomed, { recursive: true, force: true });
    });
  }

  private async read(id: string): Promise<QueueEntry | null> {
    let text: string;
    try {
      text = await fsp.readFile(path.join(this.entriesDir, id, STATE), 'utf8');
    } catch (err) {
      if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR')) return null;
      throw err;
    }
    const entry = JSON.parse(text) as QueueEntry;
    validateEntry(entry);
    if (entry.id !== id) throw new QueueError('invalid', `queue entry ${id} says it is ${entry.id}`);
    return entry;
  }

  private serial<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.chains.get(id) ?? Promise.resolve();
    const p = prev.then(fn, fn);
    const settled = p.catch(() => undefined);
    this.chains.set(id, settled);
    void settled.then(() => {
      if (this.chains.get(id) === settled) this.chains.delete(id);
    });
    return p;
  }
}

function serialize(entry: QueueEntry): Buffer {
  return Buffer.from(JSON.stringify(entry, null, 1) + '\n', 'utf8');
}

function validateEntry(e: QueueEntry): void {
  const bad = (what: string): never => {
    throw new QueueError('invalid', `invalid queue state: ${what}`);
  };
  if (typeof e !== 'object' || e === null) bad('not an object');
  if (e.version !== 1) bad(`unknown version ${String(e.version)}`);
  if (typeof e.id !== 'string' || !ID_RE.test(e.id)) bad('id');
  if (typeof e.from !== 'string') bad('from');
  if (!Array.isArray(e.recipients) || e.recipients.length === 0) bad('recipients');
  for (const r of e.recipients) {
    if (typeof r.address !== 'string' || typeof r.domain !== 'string') bad('recipient address');
    if (!['pending', 'delivered', 'failed'].includes(r.status)) bad(`recipient status ${String(r.status)}`);
    if (typeof r.attempts !== 'number' || r.attempts < 0) bad('recipient attempts');
    if (r.nextAttempt !== null && typeof r.nextAttempt !== 'number') bad('recipient nextAttempt');
    if (r.status !== 'pending' && r.nextAttempt !== null) bad(`a ${r.status} recipient has a nextAttempt`);
    if (r.notify !== undefined && !isNotifyList(r.notify)) bad(`recipient NOTIFY ${JSON.stringify(r.notify)}`);
    if (r.orcpt !== undefined && (typeof r.orcpt !== 'string' || !isOrcpt(r.orcpt))) bad(`recipient ORCPT ${JSON.stringify(r.orcpt)}`);
    if (r.successAction !== undefined && !['delivered', 'relayed', 'expanded'].includes(r.successAction)) bad(`recipient successAction ${String(r.successAction)}`);
  }
  if (e.ret !== undefined && e.ret !== 'FULL' && e.ret !== 'HDRS') bad(`RET ${String(e.ret)}`);
  if (e.envid !== undefined && (typeof e.envid !== 'string' || !/^[\x20-\x7e]{1,100}$/.test(e.envid))) bad('ENVID');
}

async function writeDurably(file: string, data: Buffer): Promise<void> {
  const fh = await fsp.open(file, 'wx', 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * fsync of a directory. With `required`, a failure is an error (the entry's visibility
 * depends on it); otherwise it is ignored (some file systems refuse it).
 */
async function fsyncDir(dir: string, required = false): Promise<void> {
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(dir, 'r');
    await fh.sync();
  } catch (err) {
    if (required && !isErrno(err, 'EINVAL') && !isErrno(err, 'ENOTSUP')) {
      throw new QueueError('io', `cannot sync ${dir}: ${(err as Error).message}`);
    }
  } finally {
    await fh?.close().catch(() => undefined);
  }
}

function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === code;
}
