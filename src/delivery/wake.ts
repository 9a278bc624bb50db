/**
 * How the CLI (`onionpost sendmail`, `onionpost queue flush|delete`), a separate process,
 * tells the daemon's scheduler about the queue: a request file in `<queue dir>/wake/`.
 *
 *     wake/new-<ID>.<random>       entry ID was queued: read it and deliver what is due
 *     wake/deleted-<ID>.<random>   entry ID was deleted: forget it
 *     wake/new.<random>            something was queued (no id; also what earlier versions
 *                                  wrote): compare the entries directory with what is known
 *     wake/flush-all.<random>      retry every waiting message now
 *     wake/flush-<ID>.<random>     retry this message now
 *
 * The scheduler keeps the queue's schedule in memory and reads only the entries named here,
 * so a request with an id costs one read whatever the size of the queue.
 *
 * The daemon watches the directory (fs.watch, plus a poll every few seconds in case the file
 * system does not report changes), handles each request and deletes its file. A request made
 * while the daemon is not running stays and is handled at its next start. Files rather than a
 * socket: the queue directory already has the right owner and permissions, the request is
 * durable, and nothing listens that the daemon would have to guard.
 */
import { randomBytes } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import * as fsp from 'node:fs/promises';
import path from 'node:path';

export const WAKE_DIR = 'wake';
const ID_RE = /^[0-9A-F]{16,32}$/;

export function wakeDirOf(queueDir: string): string {
  return path.join(queueDir, WAKE_DIR);
}

async function drop(queueDir: string, name: string): Promise<void> {
  const dir = wakeDirOf(queueDir);
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = path.join(dir, `.${name}.${randomBytes(6).toString('hex')}`);
  await fsp.writeFile(tmp, `${Date.now()}\n`, { mode: 0o600 });
  await fsp.rename(tmp, path.join(dir, `${name}.${randomBytes(6).toString('hex')}`));
}

/** Tells the daemon that entry `id` was queued (no id: something was, look for it). */
export function requestWake(queueDir: string, id?: string): Promise<void> {
  if (id !== undefined && !ID_RE.test(id)) throw new Error(`invalid queue id "${id}"`);
  return drop(queueDir, id ? `new-${id}` : 'new');
}

/** Tells the daemon that entry `id` was deleted. */
export function announceDeletion(queueDir: string, id: string): Promise<void> {
  if (!ID_RE.test(id)) throw new Error(`invalid queue id "${id}"`);
  return drop(queueDir, `deleted-${id}`);
}

/** Asks the daemon to retry one message (`id`) or every waiting message now. */
export function requestFlush(queueDir: string, id?: string): Promise<void> {
  if (id !== undefined && !ID_RE.test(id)) throw new Error(`invalid queue id "${id}"`);
  return drop(queueDir, id ? `flush-${id}` : 'flush-all');
}

export interface WakeRequests {
  /** Any request at all (new mail or flush). */
  any: boolean;
  flushAll: boolean;
  /** Queue ids to retry now. */
  flush: string[];
  /** Queue ids written or deleted by another process: to be read again. */
  changed: string[];
  /** Something was queued without saying what: compare the entries directory. */
  rescan: boolean;
}

/** Reads and deletes the pending requests. */
export async function takeRequests(queueDir: string): Promise<WakeRequests> {
  const dir = wakeDirOf(queueDir);
  const out: WakeRequests = { any: false, flushAll: false, flush: [], changed: [], rescan: false };
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch {
    return out;
  }
  const flush = new Set<string>();
  const changed = new Set<string>();
  for (const name of names) {
    if (name.startsWith('.')) continue;
    try {
      await fsp.unlink(path.join(dir, name));
    } catch {
      continue; // taken by someone else meanwhile
    }
    out.any = true;
    const kind = name.split('.', 1)[0]!;
    const dash = kind.indexOf('-');
    const [verb, id] = dash < 0 ? [kind, ''] : [kind.slice(0, dash), kind.slice(dash + 1)];
    if (kind === 'flush-all') out.flushAll = true;
    else if (kind === 'new') out.rescan = true;
    else if (!ID_RE.test(id)) continue;
    else if (verb === 'flush') flush.add(id);
    else if (verb === 'new' || verb === 'deleted') changed.add(id);
  }
  out.flush = [...flush];
  out.changed = [...changed];
  return out;
}

export interface WakeWatcher {
  close(): void;
}

/** Calls `onRequest` when a request file appears (watch + poll every `pollMs`, default 5 s). */
export async function watchRequests(queueDir: string, onRequest: () => void, pollMs = 5000): Promise<WakeWatcher> {
  const dir = wakeDirOf(queueDir);
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  let watcher: FSWatcher | null = null;
  try {
    watcher = watch(dir, { persistent: false }, (_event, name) => {
      if (!name || !String(name).startsWith('.')) onRequest();
    });
    watcher.on('error', () => undefined);
  } catch {
    watcher = null; // polling only
  }
  const poll = setInterval(() => {
    fsp.readdir(dir).then(
      (names) => {
        if (names.some((n) => !n.startsWith('.'))) onRequest();
      },
      () => undefined,
    );
  }, pollMs);
  poll.unref();
  return {
    close: () => {
      clearInterval(poll);
      watcher?.close();
    },
  };
}
