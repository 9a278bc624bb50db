/**
 * How the CLI (`onionpost sendmail`, `onionpost queue flush`), a separate process, tells the
 * daemon's scheduler to look at the queue now: a request file in `<queue dir>/wake/`.
 *
 *     wake/new.<random>            new mail was queued: deliver what is due
 *     wake/flush-all.<random>      retry every waiting message now
 *     wake/flush-<ID>.<random>     retry this message now
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

/** Asks the daemon to deliver what is due (after new mail was queued). */
export function requestWake(queueDir: string): Promise<void> {
  return drop(queueDir, 'new');
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
}

/** Reads and deletes the pending requests. */
export async function takeRequests(queueDir: string): Promise<WakeRequests> {
  const dir = wakeDirOf(queueDir);
  const out: WakeRequests = { any: false, flushAll: false, flush: [] };
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch {
    return out;
  }
  for (const name of names) {
    if (name.startsWith('.')) continue;
    try {
      await fsp.unlink(path.join(dir, name));
    } catch {
      continue; // taken by someone else meanwhile
    }
    out.any = true;
    const kind = name.split('.', 1)[0]!;
    if (kind === 'flush-all') out.flushAll = true;
    else if (kind.startsWith('flush-') && ID_RE.test(kind.slice(6)) && !out.flush.includes(kind.slice(6))) out.flush.push(kind.slice(6));
  }
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
