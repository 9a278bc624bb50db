/** Writes that survive a crash: data fsync'd before it becomes visible, directories fsync'd. */
import { constants } from 'node:fs';
import { open, rename, unlink, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';

/** fsync a directory so that entries created/renamed/removed in it are durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export async function unlinkQuietly(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch {
    // already gone, or nothing more we can do
  }
}

export interface NewFileOptions {
  /** Modification time to give the file (Maildir's internal date). */
  mtime?: Date;
  mode?: number;
}

/**
 * Creates `path` exclusively, writes `data`, sets the mtime and fsyncs it. On failure the
 * file is removed and the error rethrown. Returns the file's mtime in ms.
 */
export async function writeNewFile(path: string, data: Buffer, options: NewFileOptions = {}): Promise<number> {
  const handle = await open(path, 'wx', options.mode ?? 0o600);
  let ok = false;
  try {
    let written = 0;
    while (written < data.length) {
      const { bytesWritten } = await handle.write(data, written, data.length - written);
      if (bytesWritten <= 0) throw new Error(`short write to ${path}`);
      written += bytesWritten;
    }
    if (options.mtime !== undefined) await handle.utimes(new Date(), options.mtime);
    await handle.sync();
    const st = await handle.stat();
    ok = true;
    return st.mtimeMs;
  } finally {
    await handle.close().catch(() => undefined);
    if (!ok) await unlinkQuietly(path);
  }
}

/**
 * Replaces `path` atomically: writes `tmpPath`, fsyncs it, renames it over `path`, fsyncs the
 * directory. The temp file is removed on failure.
 */
export async function replaceFile(path: string, data: string | Buffer, tmpPath = `${path}.tmp`): Promise<void> {
  const handle = await open(tmpPath, 'w', 0o600);
  let renamed = false;
  try {
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmpPath, path);
    renamed = true;
    await fsyncDir(dirname(path));
  } finally {
    if (!renamed) await unlinkQuietly(tmpPath);
  }
}

/** Exclusive create, every write reaching the disk before it returns (where the OS has O_DSYNC). */
const CREATE_DSYNC = constants.O_DSYNC === undefined ? null : constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_DSYNC;

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * Creates `path` exclusively and writes `data` durably (the data and the file size are on
 * disk when this resolves), in as few system calls as the OS allows: open with O_DSYNC,
 * write, close (falls back to write + fdatasync). The mtime is left as "now". On failure a
 * file this call created is removed.
 */
export async function writeNewFileDurably(path: string, data: Buffer, mode = 0o600): Promise<void> {
  if (CREATE_DSYNC === null) {
    await writeNewFile(path, data, { mode });
    return;
  }
  try {
    await writeFile(path, data, { flag: CREATE_DSYNC, mode });
  } catch (err) {
    if (errno(err) !== 'EEXIST') await unlinkQuietly(path);
    throw err;
  }
}

/**
 * Coalesces fsyncs of one directory: every caller's promise resolves after an fsync that
 * started after the call, but callers arriving while one runs share the next one. Under
 * load that is one fsync per batch of renames instead of one per file.
 */
export class DirectorySyncer {
  private running: Promise<void> | null = null;
  private queued: Promise<void> | null = null;

  constructor(readonly dir: string) {}

  sync(): Promise<void> {
    if (this.queued !== null) return this.queued;
    if (this.running === null) return this.start();
    const after = this.running.catch(() => undefined);
    const next = after.then(() => {
      this.queued = null;
      return this.start();
    });
    this.queued = next;
    return next;
  }

  private start(): Promise<void> {
    const run = fsyncDir(this.dir).finally(() => {
      if (this.running === run) this.running = null;
    });
    this.running = run;
    return run;
  }
}
