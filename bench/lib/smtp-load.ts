/**
 * The SMTP load generator of `npm run bench:smtp`: N messages from a shared pool, sent by
 * `concurrency` workers, each over connections that carry up to `perConnection` messages
 * (1 = a new connection per message). Where the server advertises PIPELINING, a transaction
 * is one write (MAIL, RCPT, DATA) and the message content travels together with the next
 * transaction's commands (or QUIT), as RFC 2920 allows: one round trip per message.
 *
 * It is written for a small CPU footprint (it shares the machine with the server under
 * test): prebuilt buffers, one writev per group, replies parsed from latin1 strings.
 */
import net from 'node:net';

export interface LoadOptions {
  host: string;
  port: number;
  messages: number;
  concurrency: number;
  /** Messages per connection before QUIT and a new connection; 1: a new connection per message. */
  perConnection: number;
  from: string;
  /** The envelope recipient of message i. */
  rcpt: (i: number) => string;
  /** Message i as buffers: complete, CRLF line endings, already dot-stuffed, ending in CRLF. */
  message: (i: number) => Buffer[];
  /** Stop taking messages from the pool this many ms after the start (the rest is not sent). */
  deadlineMs?: number;
  /** Per-reply timeout, ms (default 60 s). */
  replyTimeoutMs?: number;
  /**
   * Connect + greeting timeout, ms (default 3 s); then the attempt is abandoned and a new
   * connection tried (up to 5 times), as an MTA would. Counted in `retries`. (A listener
   * whose accept queue overflows can leave a connection without its greeting for good.)
   */
  greetingTimeoutMs?: number;
}

export interface LoadResult {
  /** Messages answered with 250 after DATA. */
  accepted: number;
  /** Messages refused or lost with their connection. */
  failed: number;
  /** Messages never sent because the deadline passed. */
  skipped: number;
  connections: number;
  /** Connections abandoned without a greeting and tried again. */
  retries: number;
  /** Whether the server offered PIPELINING (on the last EHLO seen). */
  pipelining: boolean;
  /** ms from the first connect to the last reply. */
  elapsedMs: number;
  /** A few distinct failure descriptions. */
  errors: string[];
}

interface Reply {
  code: number;
  text: string;
}

const DOT = Buffer.from('.\r\n');
const QUIT = Buffer.from('QUIT\r\n');

/** One client connection: writes buffers, hands out complete replies in order. */
class Wire {
  private buf = '';
  private readonly replies: Reply[] = [];
  private lines: string[] = [];
  private waiter: { n: number; resolve: (r: Reply[]) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | null = null;
  private failure: Error | null = null;

  private constructor(
    private readonly socket: net.Socket,
    private readonly replyTimeoutMs: number,
  ) {
    socket.setNoDelay(true);
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => this.fail(new Error('connection closed by the server')));
  }

  static connect(host: string, port: number, replyTimeoutMs: number, connectTimeoutMs: number): Promise<Wire> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Timeout(`no connection within ${connectTimeoutMs} ms`));
      }, connectTimeoutMs);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new Wire(socket, replyTimeoutMs));
      });
    });
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let start = 0;
    for (;;) {
      const nl = this.buf.indexOf('\r\n', start);
      if (nl < 0) break;
      const line = this.buf.slice(start, nl);
      start = nl + 2;
      this.lines.push(line);
      if (line.length === 3 || line.charCodeAt(3) === 0x20) {
        this.replies.push({ code: Number(line.slice(0, 3)), text: this.lines.join('\n') });
        this.lines = [];
      }
    }
    if (start > 0) this.buf = this.buf.slice(start);
    this.deliver();
  }

  private deliver(): void {
    const w = this.waiter;
    if (w === null || this.replies.length < w.n) return;
    this.waiter = null;
    clearTimeout(w.timer);
    w.resolve(this.replies.splice(0, w.n));
  }

  private fail(err: Error): void {
    this.failure ??= err;
    const w = this.waiter;
    if (w === null) return;
    this.waiter = null;
    clearTimeout(w.timer);
    w.reject(this.failure);
  }

  /** The next n replies. */
  read(n: number, timeoutMs = this.replyTimeoutMs): Promise<Reply[]> {
    if (this.replies.length >= n) return Promise.resolve(this.replies.splice(0, n));
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new Timeout(`no reply within ${timeoutMs} ms`)), timeoutMs);
      this.waiter = { n, resolve, reject, timer };
    });
  }

  write(parts: Buffer[]): void {
    if (parts.length === 1) {
      this.socket.write(parts[0]!);
      return;
    }
    this.socket.cork();
    for (const p of parts) this.socket.write(p);
    this.socket.uncork();
  }

  close(): void {
    this.socket.destroy();
  }
}

class SmtpFailure extends Error {}
class Timeout extends Error {}

function expect(reply: Reply, ok: (code: number) => boolean, what: string): void {
  if (!ok(reply.code)) throw new SmtpFailure(`${what}: ${reply.text.split('\n')[0]}`);
}

export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  const { host, port, messages, concurrency, perConnection, from } = options;
  const replyTimeoutMs = options.replyTimeoutMs ?? 60_000;
  const greetingTimeoutMs = options.greetingTimeoutMs ?? 3000;
  const mailFrom = Buffer.from(`MAIL FROM:<${from}>\r\n`, 'latin1');
  const dataCmd = Buffer.from('DATA\r\n');
  const rcptCache = new Map<string, Buffer>();
  const rcptTo = (i: number): Buffer => {
    const rcpt = options.rcpt(i);
    let r = rcptCache.get(rcpt);
    if (r === undefined) {
      r = Buffer.from(`RCPT TO:<${rcpt}>\r\n`, 'latin1');
      rcptCache.set(rcpt, r);
    }
    return r;
  };

  const start = performance.now();
  const deadline = options.deadlineMs === undefined ? Infinity : start + options.deadlineMs;
  let next = 0;
  const take = (): number | null => (next < messages && performance.now() < deadline ? next++ : null);

  const result: LoadResult = { accepted: 0, failed: 0, skipped: 0, connections: 0, retries: 0, pipelining: false, elapsedMs: 0, errors: [] };
  const noteError = (err: unknown): void => {
    const text = err instanceof Error ? err.message : String(err);
    if (result.errors.length < 5 && !result.errors.includes(text)) result.errors.push(text);
  };

  /** One connection: sends messages from the pool, starting with message `first`. */
  async function session(first: number): Promise<void> {
    result.connections++;
    let current: number | null = first;
    // Messages taken from the pool and not answered yet (the current one and, pipelined
    // behind its content, the next): lost if the connection is.
    let unanswered = 1;
    let wire: Wire | null = null;
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          wire = await Wire.connect(host, port, replyTimeoutMs, greetingTimeoutMs);
          expect((await wire.read(1, greetingTimeoutMs))[0]!, (c) => c === 220, 'greeting');
          break;
        } catch (err) {
          wire?.close();
          wire = null;
          if (!(err instanceof Timeout) || attempt >= 5) throw err;
          result.retries++;
          result.connections++;
        }
      }
      wire.write([Buffer.from('EHLO client.bench.test\r\n')]);
      const ehlo = (await wire.read(1))[0]!;
      expect(ehlo, (c) => c === 250, 'EHLO');
      const pipelining = /^250[- ]PIPELINING\b/im.test(ehlo.text);
      result.pipelining = pipelining;

      let sent = 0;
      let pending = false; // MAIL/RCPT/DATA of `current` already written (pipelined)
      while (current !== null) {
        const i: number = current;
        if (pipelining) {
          if (!pending) wire.write([mailFrom, rcptTo(i), dataCmd]);
          const [mail, rcpt, data] = await wire.read(3);
          expect(mail!, (c) => c === 250, 'MAIL');
          expect(rcpt!, (c) => c === 250 || c === 251, 'RCPT');
          expect(data!, (c) => c === 354, 'DATA');
        } else {
          wire.write([mailFrom]);
          expect((await wire.read(1))[0]!, (c) => c === 250, 'MAIL');
          wire.write([rcptTo(i)]);
          expect((await wire.read(1))[0]!, (c) => c === 250 || c === 251, 'RCPT');
          wire.write([dataCmd]);
          expect((await wire.read(1))[0]!, (c) => c === 354, 'DATA');
        }

        sent++;
        current = sent < perConnection ? take() : null;
        const content = options.message(i);
        const group = [...content, DOT];
        if (current !== null) unanswered++;
        if (current !== null && pipelining) {
          group.push(mailFrom, rcptTo(current), dataCmd);
          pending = true;
        } else {
          pending = false;
          // QUIT may follow the content in one write only with PIPELINING.
          if (current === null && pipelining) group.push(QUIT);
        }
        wire.write(group);
        const [done] = await wire.read(1);
        unanswered--;
        if (done!.code === 250) result.accepted++;
        else {
          result.failed++;
          noteError(`after DATA: ${done!.text.split('\n')[0]}`);
        }
      }
      if (!pipelining) wire.write([QUIT]);
      await wire.read(1).catch(() => undefined); // 221
    } catch (err) {
      result.failed += unanswered;
      noteError(err);
    } finally {
      wire?.close();
    }
  }

  async function worker(): Promise<void> {
    for (let i = take(); i !== null; i = take()) await session(i);
  }

  await Promise.all(Array.from({ length: concurrency }, () => worker()));
  result.elapsedMs = performance.now() - start;
  result.skipped = messages - next;
  return result;
}

/**
 * A message of about `size` bytes: a few header fields (a unique Message-ID per index) and
 * a plain-text body of 72-character lines. Returns a function giving message i as buffers
 * (header, shared body).
 */
export function messageFactory(size: number, tag: string): (i: number) => Buffer[] {
  const head = (i: number): string =>
    `From: Bench Sender <sender@client.bench.test>\r\nTo: <rcpt@bench.test>\r\nSubject: bench message ${i}\r\n` +
    `Date: Thu, 05 Nov 2026 10:00:00 +0000\r\nMessage-ID: <${tag}.${i}@client.bench.test>\r\nMIME-Version: 1.0\r\n` +
    `Content-Type: text/plain; charset=us-ascii\r\n\r\n`;
  const words = ['onion', 'service', 'mail', 'relay', 'circuit', 'message', 'bench', 'durable', 'fsync', 'queue', 'lorem', 'ipsum'];
  const lines: string[] = [];
  let bodySize = Math.max(0, size - Buffer.byteLength(head(0)));
  let seed = 1;
  while (bodySize > 0) {
    let line = '';
    while (line.length < 66) {
      seed = (seed * 1103515245 + 12345) >>> 0;
      line += (line ? ' ' : '') + words[seed % words.length];
    }
    line = line.slice(0, Math.max(1, Math.min(72, bodySize - 2)));
    if (line.startsWith('.')) line = `x${line.slice(1)}`;
    lines.push(line);
    bodySize -= line.length + 2;
  }
  const body = Buffer.from(lines.map((l) => `${l}\r\n`).join(''), 'latin1');
  return (i: number) => [Buffer.from(head(i), 'latin1'), body];
}
