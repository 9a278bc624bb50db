/** Waiting in tests: a plain sleep, and polling until a condition holds. */

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Calls `fn` until it returns something truthy, and resolves with that; rejects once
 * `timeoutMs` (default 10 s) have passed without it.
 */
export type WaitFor = <T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs?: number) => Promise<T>;

/** A waitFor that pauses `pollMs` between two calls of `fn`. */
export function waitForEvery(pollMs: number): WaitFor {
  return async (what, fn, timeoutMs = 10_000) => {
    const t0 = Date.now();
    for (;;) {
      const v = await fn();
      if (v) return v;
      if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await sleep(pollMs);
    }
  };
}

export const waitFor: WaitFor = waitForEvery(25);
