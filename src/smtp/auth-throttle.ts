/**
 * Delays after failed logins, per user name and globally - never per IP: every onion client
 * arrives from 127.0.0.1, so an IP-based limit would either lock out everybody or nobody.
 *
 * Per user name (case-insensitive, the part before '@', so `alice` and `alice@<domain>`
 * share one counter): the n-th failure in a row is answered after base * 2^(n-1) ms (capped
 * at maxDelayMs), and the next attempt for that name, on any connection, waits until that
 * delay has passed. So guesses against one account are serialized and slow down
 * exponentially however many connections an attacker opens (attempts for one name are
 * also run one at a time). A success resets the counter;
 * counters are forgotten after `forgetAfterMs` without failures.
 *
 * Globally: more than `globalFreeFailures` failures within a minute (any names: a spray over
 * many accounts) delay every failure answer by base ms per excess failure (capped).
 *
 * The price: an attacker who keeps failing for alice also delays alice's own logins, by at
 * most maxDelayMs per attempt (a delay, never a lockout).
 */

export interface AuthThrottleOptions {
  /** Delay after a user's first failure, ms (default 1000). */
  baseDelayMs?: number;
  /** Longest delay, ms (default 15000). */
  maxDelayMs?: number;
  /** A user's counter is forgotten after this long without a failure, ms (default 15 min). */
  forgetAfterMs?: number;
  /** Failures per minute, all users together, before the global delay starts (default 10). */
  globalFreeFailures?: number;
  /** Most user names tracked at once (default 10000; the oldest are forgotten first). */
  maxTracked?: number;
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

interface UserState {
  failures: number;
  lastFailure: number;
  /** No new attempt for this name before this time. */
  notBefore: number;
}

const GLOBAL_WINDOW_MS = 60_000;

export class AuthThrottle {
  private readonly base: number;
  private readonly max: number;
  private readonly forgetAfter: number;
  private readonly globalFree: number;
  private readonly maxTracked: number;
  private readonly now: () => number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly users = new Map<string, UserState>();
  private globalFailures: number[] = [];
  private readonly chains = new Map<string, Promise<void>>();

  constructor(options: AuthThrottleOptions = {}) {
    this.base = options.baseDelayMs ?? 1000;
    this.max = options.maxDelayMs ?? 15_000;
    this.forgetAfter = options.forgetAfterMs ?? 15 * 60_000;
    this.globalFree = options.globalFreeFailures ?? 10;
    this.maxTracked = options.maxTracked ?? 10_000;
    this.now = options.now ?? Date.now;
    this.sleep = options.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  static keyOf(username: string): string {
    const n = username.trim().toLowerCase();
    const at = n.lastIndexOf('@');
    return at === -1 ? n : n.slice(0, at);
  }

  /**
   * Runs `verify` for `username` under the throttle: waits while the name is delayed, and
   * on failure waits the failure delay before resolving. Resolves with verify's result.
   */
  run<T>(username: string, verify: () => Promise<T | null>): Promise<T | null> {
    const key = AuthThrottle.keyOf(username);
    // Attempts for one name run one after the other (parallel connections queue up).
    const prev = this.chains.get(key) ?? Promise.resolve();
    const p = prev.then(() => this.runNow(key, verify));
    const settled = p.then(
      () => undefined,
      () => undefined,
    );
    this.chains.set(key, settled);
    void settled.then(() => {
      if (this.chains.get(key) === settled) this.chains.delete(key);
    });
    return p;
  }

  private async runNow<T>(key: string, verify: () => Promise<T | null>): Promise<T | null> {
    const state = this.current(key);
    if (state) {
      const wait = Math.min(state.notBefore - this.now(), this.max);
      if (wait > 0) await this.sleep(wait);
    }
    const result = await verify();
    if (result !== null) {
      this.users.delete(key);
      return result;
    }
    await this.sleep(this.recordFailure(key));
    return null;
  }

  /** Current delay state of a name (for tests and logs). */
  failuresOf(username: string): number {
    return this.current(AuthThrottle.keyOf(username))?.failures ?? 0;
  }

  /** Records a failure; returns how long to wait before answering, ms. */
  private recordFailure(key: string): number {
    const t = this.now();
    const prev = this.current(key);
    const failures = (prev?.failures ?? 0) + 1;
    const userDelay = Math.min(this.max, this.base * 2 ** Math.min(failures - 1, 30));
    this.users.delete(key); // re-insert: Map order is "least recently failed first"
    this.users.set(key, { failures, lastFailure: t, notBefore: t + userDelay });
    while (this.users.size > this.maxTracked) this.users.delete(this.users.keys().next().value!);

    this.globalFailures.push(t);
    const cutoff = t - GLOBAL_WINDOW_MS;
    let drop = 0;
    while (drop < this.globalFailures.length && this.globalFailures[drop]! <= cutoff) drop++;
    if (drop > 0) this.globalFailures = this.globalFailures.slice(drop);
    if (this.globalFailures.length > 100_000) this.globalFailures = this.globalFailures.slice(-100_000);
    const excess = this.globalFailures.length - this.globalFree;
    const globalDelay = excess > 0 ? Math.min(this.max, this.base * excess) : 0;
    return Math.max(userDelay, globalDelay);
  }

  private current(key: string): UserState | undefined {
    const s = this.users.get(key);
    if (s && this.now() - s.lastFailure > this.forgetAfter) {
      this.users.delete(key);
      return undefined;
    }
    return s;
  }
}
