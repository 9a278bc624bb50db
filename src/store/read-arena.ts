/**
 * Reused memory for message reads that are written out right away (FETCH of message bodies).
 *
 * Reading each message into a Buffer of its own costs fresh memory per message: page faults
 * on first touch, cache misses when it is written out, garbage to collect. A FETCH that
 * streams many messages instead has the store read them into an arena (MailStore.readMessage's
 * `arena`), writes them out, waits until the output has taken the bytes, and resets the arena
 * for the next few. Arenas are pooled, so the same memory serves the next FETCH too; the pool
 * is emptied when no FETCH has used it for a while.
 *
 * Rule for the caller: a Buffer read into an arena is valid only until the arena is reset or
 * released; reset or release it only once every write of such a Buffer has completed.
 */

/** Idle arenas kept for reuse... */
const POOL_MAX = 2;
/** ...for this long after their last use. */
const POOL_IDLE_MS = 30_000;
const pool: ReadArena[] = [];
let poolTimer: NodeJS.Timeout | null = null;

export class ReadArena {
  private memory: Buffer | null = null;
  private used = 0;

  private constructor(readonly size: number) {}

  /** An arena of at least `size` bytes, from the pool when one is idle. */
  static acquire(size: number): ReadArena {
    const i = pool.findIndex((a) => a.size >= size);
    return i >= 0 ? pool.splice(i, 1)[0] : new ReadArena(size);
  }

  /** Back to the pool (reset). Only once no write of its memory is in progress any more. */
  release(): void {
    this.used = 0;
    if (pool.includes(this)) return;
    pool.push(this);
    if (pool.length > POOL_MAX) pool.sort((a, b) => b.size - a.size).pop();
    poolTimer?.refresh();
    poolTimer ??= setTimeout(() => {
      pool.length = 0;
      poolTimer = null;
    }, POOL_IDLE_MS).unref();
  }

  /**
   * Free memory for `n` bytes at the arena's end, or null when it has no room. Nothing is
   * taken until commit(): a reader reads into it, then commits what it used.
   */
  reserve(n: number): Buffer | null {
    if (n > this.size - this.used) return null;
    this.memory ??= Buffer.allocUnsafeSlow(this.size);
    return this.memory.subarray(this.used, this.used + n);
  }

  /** Takes `n` bytes of the memory last reserved. */
  commit(n: number): void {
    this.used = Math.min(this.size, this.used + n);
  }

  /** Makes all the memory free again: Buffers read into the arena before are invalid now. */
  reset(): void {
    this.used = 0;
  }
}
