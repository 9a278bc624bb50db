/**
 * Reading whole message files, with as few round trips to libuv's thread pool as possible.
 *
 * An asynchronous open + read + close costs three thread-pool round trips per file, and on a
 * small machine the hand-offs (wake a pool thread, wait, wake the loop) cost more than the
 * reading itself: a page-cached 30 KB message takes ~10-20 µs to read synchronously. So
 * files are read synchronously on the event loop, within bounds that keep the loop responsive:
 *
 * - only files up to SYNC_MAX_BYTES (by their recorded size); bigger ones asynchronously;
 * - at most SYNC_BUDGET_MS of synchronous reading per event-loop turn; past that, reads wait
 *   for the next turn (setImmediate, after the loop has polled for I/O), so a long FETCH
 *   lets other sessions in every few milliseconds;
 * - two synchronous reads in a row that took longer than SLOW_READ_MS each (the files were
 *   not in the page cache, or a slow or network file system) turn synchronous reading off
 *   for a cool-down period: MIN_COOLDOWN_MS at first, doubled (up to MAX_COOLDOWN_MS) each
 *   time the first reads after it are slow again, and back to the minimum after FAST_STREAK
 *   fast reads in a row. One slow read alone is not enough: on a busy machine the thread is
 *   now and then preempted for a few milliseconds in the middle of a read. So on a cold
 *   cache or a slow file system there are at most two stalls per cool-down period, and
 *   those periods quickly grow long.
 *
 * Either way the result is the same: the file's bytes as they are on disk, read to the end
 * (a file bigger than expected is read again, asynchronously, in chunks), or the error of
 * open/read (ENOENT when the file was renamed or removed meanwhile: the caller rescans and
 * retries). Message files are never written in place (Maildir delivers into tmp/ and
 * renames), so a file that can be opened is complete.
 */
import fs from 'node:fs';
import type { ReadArena } from '../read-arena.js';
import { toCrlf } from './crlf.js';

export type { ReadArena };

/** Files up to this size (recorded size) may be read synchronously. */
export const SYNC_MAX_BYTES = 1024 * 1024;
/** Synchronous reading per event-loop turn stops after this much time. */
export const SYNC_BUDGET_MS = 4;
/** A synchronous read slower than this may not have been served from the page cache. */
export const SLOW_READ_MS = 2;
/** Cool-down after slow reads: starts here, doubles while slow reads recur... */
export const MIN_COOLDOWN_MS = 50;
/** ...up to this... */
export const MAX_COOLDOWN_MS = 5000;
/** ...and is back to the minimum after this many fast synchronous reads in a row. */
export const FAST_STREAK = 256;

/** Chunk size for reading on past the expected size. */
const MORE_CHUNK = 64 * 1024;

/** Synchronous reading done in this event-loop turn, ms. */
let spentMs = 0;
/** A turn of the loop, once the budget is spent: reads waiting for it, then the reset. */
let nextTurn: Promise<void> | null = null;
let resetScheduled = false;
/** Synchronous reads are off until this time (performance.now()), 0 when on. */
let syncOffUntil = 0;
let cooldownMs = MIN_COOLDOWN_MS;
let fastStreak = 0;
/** Whether the last synchronous read was slow. */
let lastSlow = false;

function resetBudget(): void {
  spentMs = 0;
  resetScheduled = false;
}

/** Resolves in the next turn of the event loop, with a fresh budget. */
function waitForNextTurn(): Promise<void> {
  return (nextTurn ??= new Promise((resolve) =>
    setImmediate(() => {
      nextTurn = null;
      resetBudget();
      resolve();
    }),
  ));
}

/** Whether synchronous reads are allowed at all now (not in a cool-down). */
function syncReadsOn(): boolean {
  if (syncOffUntil === 0) return true;
  if (performance.now() < syncOffUntil) return false;
  syncOffUntil = 0;
  return true;
}

/** Books `ms` of synchronous reading against this turn's budget, and watches for slow reads. */
function account(ms: number): void {
  spentMs += ms;
  if (!resetScheduled) {
    resetScheduled = true;
    setImmediate(resetBudget);
  }
  if (ms <= SLOW_READ_MS) {
    lastSlow = false;
    if (++fastStreak >= FAST_STREAK) cooldownMs = MIN_COOLDOWN_MS;
  } else if (!lastSlow) {
    lastSlow = true;
  } else {
    lastSlow = false;
    syncOffUntil = performance.now() + cooldownMs;
    // slow again soon after a cool-down: the next one is longer
    cooldownMs = fastStreak < FAST_STREAK ? Math.min(MAX_COOLDOWN_MS, cooldownMs * 2) : MIN_COOLDOWN_MS;
    fastStreak = 0;
  }
}

/**
 * The whole file at `path`. `expected` is the size the file is expected to have at most (a
 * message's recorded CRLF size): one read of expected + 1 bytes then tells its end. With an
 * arena, a file read synchronously goes into the arena's memory when it has room (see
 * ReadArena for how long such a Buffer stays valid).
 */
export async function readMessageFile(path: string, expected: number, arena?: ReadArena): Promise<Buffer> {
  const [data] = await readMessageFiles([{ path, expected }], arena);
  if (data instanceof Error) throw data;
  return data;
}

/**
 * Several files, each as readMessageFile reads it (in order: its bytes or its error); the
 * synchronous reads run in one loop, so a batch costs a promise, not a few per file.
 */
export async function readMessageFiles(files: ReadonlyArray<{ path: string; expected: number }>, arena?: ReadArena): Promise<Array<Buffer | Error>> {
  const out = new Array<Buffer | Error>(files.length);
  const later: Array<Promise<void>> = [];
  for (let i = 0; i < files.length; i++) {
    const path = files[i].path;
    const size = Math.max(0, files[i].expected);
    if (size <= SYNC_MAX_BYTES) {
      while (spentMs >= SYNC_BUDGET_MS) await waitForNextTurn();
      if (syncReadsOn()) {
        const t0 = performance.now();
        let data: Buffer | null;
        try {
          data = readSmallSync(path, size, arena);
        } catch (err) {
          out[i] = err as Error;
          continue;
        } finally {
          account(performance.now() - t0);
        }
        if (data !== null) {
          out[i] = data;
          continue;
        }
      }
    }
    later.push(
      readWholeAsync(path, size).then(
        (data) => void (out[i] = data),
        (err: Error) => void (out[i] = err),
      ),
    );
  }
  await Promise.all(later);
  return out;
}

/** The file if it has at most `expected` bytes, else null (the caller reads it otherwise). */
function readSmallSync(path: string, expected: number, arena: ReadArena | undefined): Buffer | null {
  const fd = fs.openSync(path, fs.constants.O_RDONLY);
  try {
    const fromArena = arena?.reserve(expected + 1) ?? null;
    const buf = fromArena ?? Buffer.allocUnsafe(expected + 1);
    const n = fs.readSync(fd, buf, 0, buf.length, 0);
    // a short read of a regular file is its end
    if (n === buf.length) return null;
    if (fromArena) arena!.commit(n);
    return buf.subarray(0, n);
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

/**
 * The message with CRLF line endings. A message's recorded size is its CRLF size (its size
 * on disk plus one byte per bare LF), so a file of exactly that size has no bare LF and the
 * scan for them is skipped; unless its first line ends in a bare LF, which means the
 * recorded size is wrong: then it is scanned (and the caller corrects the size).
 */
export function withCrlf(data: Buffer, crlfSize: number): Buffer {
  if (data.length === crlfSize) {
    const lf = data.indexOf(0x0a);
    if (lf < 0 || (lf > 0 && data[lf - 1] === 0x0d)) return data;
  }
  return toCrlf(data);
}
