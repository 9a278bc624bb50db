/** Writes that survive a crash: data fsync'd before it becomes visible, directories fsync'd. */
import { open, rename, unlink } from 'node:fs/promises';
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
