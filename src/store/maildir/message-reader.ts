/**
 * Reading whole message files, with as few round trips to libuv's thread pool as possible.
 *
 * An asynchronous open + read + close costs three thread-pool round trips per file, and on a
 * small machine the hand-offs (wake a pool thread, wait, wake the loop) cost more than the
 * reading itself: a page-cached 30 KB message takes ~10-20 µs to read synchronously. So small
 * files are read synchronously on the event loop, within bounds that keep the loop responsive:
 *
 * - only files up to SYNC_MAX_BYTES (by their recorded size);
 * - at most SYNC_BUDGET_MS of synchronous reading per event-loop turn; past that, reads are
 *   asynchronous until the loop has turned (a pending setImmediate resets the budget), so a
 *   long FETCH yields to other sessions every few milliseconds;
 * - a synchronous read that took longer than SLOW_READ_MS (the file was not in the page
 *   cache, a slow or network file system) turns synchronous reading off for SLOW_COOLDOWN_MS:
 *   at most one such stall per cool-down period.
 *
 * Either way the result is the same: the file's bytes as they are on disk, read to the end
 * (a file bigger than expected is read on in chunks), or the error of open/read (ENOENT when
 * the file was renamed or removed meanwhile; the caller rescans and retries).
 */
import fs from 'node:fs';

/** Files up to this size (recorded size) may be read synchronously. */
export const SYNC_MAX_BYTES = 1024 * 1024;
/** Synchronous reading per event-loop turn stops after this much time. */
export const SYNC_BUDGET_MS = 4;
/** A synchronous read slower than this means the data was not cached... */
export const SLOW_READ_MS = 2;
/** ...and synchronous reads stay off for this long. */
export const SLOW_COOLDOWN_MS = 1000;

/** Chunk size for reading on past the expected size. */
const MORE_CHUNK = 64 * 1024;

let spentMs = 0;
let resetScheduled = false;
let syncOffUntil = 0;

function resetBudget(): void {
  spentMs = 0;
  resetScheduled = false;
}

/** Whether a file of `expected` bytes may be read synchronously now. */
function maySyncRead(expected: number): boolean {
  if (expected > SYNC_MAX_BYTES || spentMs >= SYNC_BUDGET_MS) return false;
  if (syncOffUntil !== 0) {
    if (performance.now() < syncOffUntil) return false;
    syncOffUntil = 0;
  }
  return true;
}

/** Books `ms` of synchronous reading against this turn's budget. */
function account(ms: number): void {
  spentMs += ms;
  if (!resetScheduled) {
    resetScheduled = true;
    setImmediate(resetBudget);
  }
  if (ms > SLOW_READ_MS) syncOffUntil = performance.now() + SLOW_COOLDOWN_MS;
}

/**
 * The whole file at `path`. `expected` is the size the file is expected to have at most (a
 * message's recorded CRLF size): one read of expected + 1 bytes then tells its end.
 */
export function readMessageFile(path: string, expected: number): Promise<Buffer> {
  const size = Math.max(0, expected);
  if (maySyncRead(size)) {
    const t0 = performance.now();
    let data: Buffer | null;
    try {
      data = readSmallSync(path, size);
    } catch (err) {
      account(performance.now() - t0);
      return Promise.reject(err);
    }
    account(performance.now() - t0);
    // bigger than expected: read it again, asynchronously, to its end
    if (data !== null) return Promise.resolve(data);
  }
  return readWholeAsync(path, size);
}

/** The file if it has at most `expected` bytes, else null (the caller reads it otherwise). */
function readSmallSync(path: string, expected: number): Buffer | null {
  const fd = fs.openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(expected + 1);
    let total = 0;
    // a regular file returns everything in one read; loop for the odd short read
    for (;;) {
      const n = fs.readSync(fd, buf, total, buf.length - total, total);
      if (n === 0) break;
      total += n;
      if (total === buf.length) return null;
    }
    return buf.subarray(0, total);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Asynchronously: open, one read of expected + 1 bytes, close (fewer round trips than
 * fs.readFile, which also stats); a file bigger than expected is read on in chunks.
 */
function readWholeAsync(path: string, expected: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    fs.open(path, 'r', (err, fd) => {
      if (err) return reject(err);
      const chunks: Buffer[] = [];
      let total = 0;
      const finish = (error: Error | null): void => {
        fs.close(fd, (closeErr) => {
          if (error || closeErr) reject(error ?? closeErr);
          else resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, total));
        });
      };
      const readMore = (size: number): void => {
        const buf = Buffer.allocUnsafe(size);
        fs.read(fd, buf, 0, size, total, (readErr, n) => {
          if (readErr) return finish(readErr);
          if (n > 0) {
            chunks.push(n === size ? buf : buf.subarray(0, n));
            total += n;
          }
          // a short read of a regular file is its end
          if (n < size) finish(null);
          else readMore(Math.max(MORE_CHUNK, total));
        });
      };
      readMore(expected + 1);
    });
  });
}
