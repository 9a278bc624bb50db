/**
 * Safe rewrites of small text files that a running daemon reads and the CLI edits (the users
 * file, the aliases file): a lock file serializes writers across processes, and the new
 * content replaces the old one atomically, so readers only ever see a whole old file or a
 * whole new one.
 *
 * - Lock: `<file>.lock`, created with O_EXCL, holding the writer's pid. A lock whose holder
 *   is gone (and that is older than a second), or that is older than 30 s, is stale and
 *   removed (writers hold it for milliseconds).
 * - Write: `.<name>.tmp-*` in the same directory (mode 0600, fsync), rename over the file,
 *   fsync the directory. A symlinked file stays a symlink (the caller passes the target).
 */
import type { Stats } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';

export type FileUpdateErrorCode = 'locked' | 'io';

export class FileUpdateError extends Error {
  constructor(
    readonly code: FileUpdateErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'FileUpdateError';
  }
}

/** A stale lock: its holder is gone (and it is older than this), or it is just very old. */
const LOCK_DEAD_HOLDER_MS = 1000;
const LOCK_MAX_AGE_MS = 30_000;

export function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === code;
}

/** Identity of a file version: a changed inode, size, mtime or ctime means "changed". */
export function fileSignature(st: Stats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
}

export function ioError(what: string, err: unknown): FileUpdateError {
  if (err instanceof FileUpdateError) return err;
  const e = err as NodeJS.ErrnoException;
  return new FileUpdateError('io', `${what}: ${e.code ?? ''}${e.code ? ' ' : ''}${e.message ?? String(err)}`);
}

/** Takes `<file>.lock`, waiting up to timeoutMs; returns its release function. */
export async function lockFile(file: string, timeoutMs: number): Promise<() => Promise<void>> {
  const lockPath = `${file}.lock`;
  const dir = path.dirname(file);
  try {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw ioError(`cannot create ${dir}`, err);
  }
  const deadline = Date.now() + timeoutMs;
  let delay = 5;
  for (;;) {
    try {
      const fh = await fsp.open(lockPath, 'wx', 0o600);
      try {
        await fh.writeFile(`${process.pid}\n`);
      } finally {
        await fh.close();
      }
      return async () => {
        await fsp.unlink(lockPath).catch(() => undefined);
      };
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw ioError(`cannot create the lock file ${lockPath}`, err);
    }
    if (await removeIfStale(lockPath)) continue;
    if (Date.now() >= deadline) {
      const holder = (await fsp.readFile(lockPath, 'utf8').catch(() => '')).trim();
      throw new FileUpdateError(
        'locked',
        `${lockPath} is held${holder ? ` by process ${holder}` : ''}; try again, or remove the file if no onionpost command is running`,
      );
    }
    await new Promise((r) => setTimeout(r, delay + Math.random() * delay));
    delay = Math.min(delay * 2, 100);
  }
}

/**
 * Temp file (0600, fsync) + rename over `target` + directory fsync. When run as root, the
 * file keeps `owner` (the old file's owner, or the directory's for a new file) so the
 * daemon's user can still read it.
 */
export async function writeFileAtomic(target: string, text: string, owner: { uid: number; gid: number } | null): Promise<void> {
  const dir = path.dirname(target);
  const tmp = path.join(dir, `.${path.basename(target)}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(tmp, 'wx', 0o600);
    await fh.writeFile(text, 'utf8');
    await fh.chmod(0o600);
    if (process.getuid?.() === 0) {
      const o = owner ?? (await fsp.stat(dir));
      await fh.chown(o.uid, o.gid);
    }
    await fh.sync();
    await fh.close();
    fh = undefined;
    await fsp.rename(tmp, target);
  } catch (err) {
    await fh?.close().catch(() => undefined);
    await fsp.unlink(tmp).catch(() => undefined);
    throw ioError(`cannot write ${target}`, err);
  }
  await fsyncDir(dir);
}

/** fsync of a directory; file systems that refuse it are tolerated (the rename happened). */
export async function fsyncDir(dir: string): Promise<void> {
  let fh: fsp.FileHandle | undefined;
  try {
    fh = await fsp.open(dir, 'r');
    await fh.sync();
  } catch {
    // Some file systems refuse fsync on directories.
  } finally {
    await fh?.close().catch(() => undefined);
  }
}

/**
 * Removes a lock whose holder died (pid gone, lock older than a second) or that is older
 * than 30 s. The inode is checked again right before the unlink, so a lock that was just
 * re-created by someone else is left alone (a narrow window remains between that check and
 * the unlink).
 */
async function removeIfStale(lockPath: string): Promise<boolean> {
  let st: Stats;
  let content: string;
  try {
    st = await fsp.stat(lockPath);
    content = await fsp.readFile(lockPath, 'utf8');
  } catch (err) {
    return isErrno(err, 'ENOENT'); // released meanwhile: try again at once
  }
  const age = Date.now() - st.mtimeMs;
  const pid = Number.parseInt(content.trim(), 10);
  let dead = false;
  if (Number.isInteger(pid) && pid > 0 && pid !== process.pid) {
    try {
      process.kill(pid, 0);
    } catch (err) {
      dead = isErrno(err, 'ESRCH');
    }
  }
  if (!((dead && age > LOCK_DEAD_HOLDER_MS) || age > LOCK_MAX_AGE_MS)) return false;
  try {
    const again = await fsp.stat(lockPath);
    if (again.ino !== st.ino || again.mtimeMs !== st.mtimeMs) return false;
    await fsp.unlink(lockPath);
    return true;
  } catch (err) {
    return isErrno(err, 'ENOENT');
  }
}
