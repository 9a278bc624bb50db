/** A FIFO async mutex: operations on one folder run one at a time, in arrival order. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();
  private held = 0;

  /** Resolves with a release function once the mutex is ours. */
  acquire(): Promise<() => void> {
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const previous = this.tail;
    this.tail = previous.then(() => released);
    this.held++;
    return previous.then(() => {
      let done = false;
      return () => {
        if (done) return;
        done = true;
        this.held--;
        release();
      };
    });
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** True while someone holds or waits for the mutex. */
  get busy(): boolean {
    return this.held > 0;
  }
}
