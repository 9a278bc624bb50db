/**
 * Dovecot-compatible dot-locking: `<file>.lock` created with O_EXCL. A lock is stale when
 * its owner (`<pid>:<host>` inside, written by us and Dovecot alike) is a dead process of
 * ours, or when neither the lock nor the protected file changed for `staleMs` (Dovecot
 * uses 2 minutes for dovecot-uidlist). Dovecot's "replace" mode is supported: the new
 * content of the protected file is written into the lock file, which is then renamed over it.
 */
import { open, rename, stat, readFile, utimes } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { HOST_TOKEN } from './filename.js';
import { fsyncDir, unlinkQuietly } from './durable-write.js';

export interface DotlockOptions {
  /** A lock untouched for this long is overridden. Default 120 s (Dovecot's uidlist value). */
  staleMs?: number;
  /** Give up waiting after this long. Default: staleMs + 5 s, so stale locks get broken. */
  timeoutMs?: number;
  /** Write `<pid>:<host>` into the lock (plain locks); false for replace-mode locks. */
  writePid?: boolean;
}

export class DotlockTimeoutError extends Error {
  constructor(readonly lockPath: string) {
    super(`timed out waiting for lock ${lockPath}`);
    this.name = 'DotlockTimeoutError';
  }
}

const DEFAULT_STALE_MS = 120_000;

export class Dotlock {
  private released = false;

  constructor(
    readonly targetPath: string,
    readonly lockPath: string,
    private readonly handle: FileHandle,
    private readonly ino: bigint,
  ) {}

  /** Keeps a long-held lock from looking stale. */
  async touch(): Promise<void> {
    const now = new Date();
    await utimes(this.lockPath, now, now).catch(() => undefined);
  }

  /**
   * Replace mode: the lock file gets `data`, is fsync'd and renamed over the target (the
   * lock is released by doing so).
   */
  async replaceTarget(data: string | Buffer): Promise<void> {
    if (this.released) throw new Error('dotlock already released');
    try {
      await this.handle.truncate(0);
      await this.handle.writeFile(data);
      await this.handle.sync();
      await this.handle.close();
      await rename(this.lockPath, this.targetPath);
      this.released = true;
      await fsyncDir(dirname(this.targetPath));
    } finally {
      if (!this.released) await this.release();
    }
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    await this.handle.close().catch(() => undefined);
    // Only remove the lock if it is still ours (someone may have overridden it as stale).
    try {
      const st = await stat(this.lockPath, { bigint: true });
      if (st.ino === this.ino) await unlinkQuietly(this.lockPath);
    } catch {
      // gone already
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function isStale(lockPath: string, targetPath: string, staleMs: number): Promise<boolean> {
  let lockMtime: number;
  try {
    lockMtime = (await stat(lockPath)).mtimeMs;
  } catch {
    return true; // vanished: just retry
  }
  try {
    const owner = (await readFile(lockPath, 'utf8')).trim();
    const m = /^(\d+):(.*)$/.exec(owner);
    if (m && m[2] === HOST_TOKEN && Number(m[1]) !== process.pid && !processAlive(Number(m[1]))) return true;
  } catch {
    // unreadable: fall back to the time test
  }
  let lastChange = lockMtime;
  try {
    lastChange = Math.max(lastChange, (await stat(targetPath)).mtimeMs);
  } catch {
    // target missing: only the lock's age counts
  }
  return Date.now() - lastChange > staleMs;
}

/** Takes `<targetPath>.lock`, waiting while another live owner holds it. */
export async function acquireDotlock(targetPath: string, options: DotlockOptions = {}): Promise<Dotlock> {
  const staleMs = options.staleMs ?? DEFAULT_STALE_MS;
  const timeoutMs = options.timeoutMs ?? staleMs + 5_000;
  const lockPath = `${targetPath}.lock`;
  const deadline = Date.now() + timeoutMs;
  let delay = 5;
  for (;;) {
    let handle: FileHandle | undefined;
    try {
      handle = await open(lockPath, 'wx', 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    if (handle !== undefined) {
      try {
        if (options.writePid !== false) await handle.write(`${process.pid}:${HOST_TOKEN}`);
        const st = await handle.stat({ bigint: true });
        return new Dotlock(targetPath, lockPath, handle, st.ino);
      } catch (err) {
        await handle.close().catch(() => undefined);
        await unlinkQuietly(lockPath);
        throw err;
      }
    }
    if (await isStale(lockPath, targetPath, staleMs)) {
      await unlinkQuietly(lockPath);
      continue;
    }
    if (Date.now() >= deadline) throw new DotlockTimeoutError(lockPath);
    await sleep(Math.min(delay, Math.max(1, deadline - Date.now())));
    delay = Math.min(delay * 2, 100);
  }
}

/**
 * Dovecot's way of rewriting small control files (dovecot-keywords, subscriptions): take the
 * lock, read the current content (null if missing), compute the new one, write it into the
 * lock file and rename that over the target. `update` returning null means "no change".
 */
export async function updateWithDotlock(
  targetPath: string,
  update: (current: string | null) => string | null,
  options: DotlockOptions = {},
): Promise<string | null> {
  const lock = await acquireDotlock(targetPath, { ...options, writePid: false });
  try {
    let current: string | null = null;
    try {
      current = await readFile(targetPath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const next = update(current);
    if (next === null) return current;
    await lock.replaceTarget(next);
    return next;
  } finally {
    await lock.release();
  }
}
