/**
 * A minimal raw IMAP client for benchmarks: one command at a time per connection, literals
 * followed byte-exactly, responses counted rather than parsed, so that the client costs the
 * same against any server and almost nothing next to it.
 */
import net from 'node:net';

export interface Result {
  status: 'OK' | 'NO' | 'BAD';
  text: string;
  /** Untagged responses seen while the command ran. */
  count: number;
  /** Bytes of all responses (untagged and tagged) of the command. */
  bytes: number;
  /** The untagged responses themselves, when asked for (keep: true). */
  responses: Buffer[];
}

interface Pending {
  tag: string;
  keep: boolean;
  count: number;
  bytes: number;
  responses: Buffer[];
  resolve: (r: Result) => void;
  reject: (e: Error) => void;
  onContinue?: () => void;
}

const LITERAL_AT_END = /\{(\d+)\+?\}\r?\n$/;

/** The last `n` bytes (or fewer) of the line made of parts[from..], as a 'binary' string. */
function lineTail(parts: Buffer[], from: number, n: number): string {
  let tail = '';
  for (let i = parts.length - 1; i >= from && tail.length < n; i--) {
    const p = parts[i];
    tail = p.toString('latin1', Math.max(0, p.length - (n - tail.length))) + tail;
  }
  return tail;
}

export class ImapClient {
  private readonly socket: net.Socket;
  private parts: Buffer[] = [];
  /** Index in `parts` where the current line starts (after the last literal). */
  private lineStart = 0;
  private literalLeft = 0;
  private pending: Pending | null = null;
  private tagNo = 0;
  private closed = false;
  private greeting: ((line: Buffer) => void) | null = null;
  /** Called with every untagged response (e.g. `* 5001 EXISTS` during IDLE). */
  onUntagged: ((response: Buffer) => void) | null = null;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    const fail = (err: Error): void => {
      this.closed = true;
      const p = this.pending;
      this.pending = null;
      p?.reject(err);
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('connection closed')));
  }

  static connect(port: number, host = '127.0.0.1', timeoutMs = 30_000): Promise<ImapClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, host);
      const client = new ImapClient(socket);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`no IMAP greeting from ${host}:${port} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      client.greeting = (line) => {
        clearTimeout(timer);
        if (line.toString('latin1').startsWith('* OK')) resolve(client);
        else reject(new Error(`unexpected greeting: ${line.toString('latin1').trim()}`));
      };
    });
  }

  static async login(port: number, user: string, password: string): Promise<ImapClient> {
    const c = await ImapClient.connect(port);
    await c.run(`LOGIN ${quote(user)} ${quote(password)}`);
    return c;
  }

  private onData(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length) {
      if (this.literalLeft > 0) {
        const take = Math.min(this.literalLeft, chunk.length - pos);
        this.parts.push(chunk.subarray(pos, pos + take));
        this.literalLeft -= take;
        pos += take;
        if (this.literalLeft === 0) this.lineStart = this.parts.length;
        continue;
      }
      const nl = chunk.indexOf(10, pos);
      if (nl === -1) {
        this.parts.push(chunk.subarray(pos));
        return;
      }
      this.parts.push(chunk.subarray(pos, nl + 1));
      pos = nl + 1;
      const m = LITERAL_AT_END.exec(lineTail(this.parts, this.lineStart, 24));
      if (m) {
        this.literalLeft = Number(m[1]);
        if (this.literalLeft === 0) this.lineStart = this.parts.length;
        continue;
      }
      if (this.countOnly()) {
        // an untagged response nobody looks at: count it without putting it together
        let bytes = 0;
        for (const part of this.parts) bytes += part.length;
        this.parts = [];
        this.lineStart = 0;
        this.pending!.count++;
        this.pending!.bytes += bytes;
        continue;
      }
      const response = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts);
      this.parts = [];
      this.lineStart = 0;
      this.handle(response);
    }
  }

  /** Whether the response in `parts` is untagged and only counted (not kept, no onUntagged). */
  private countOnly(): boolean {
    const p = this.pending;
    return p !== null && !p.keep && this.greeting === null && this.onUntagged === null && this.parts[0][0] === 0x2a /* * */;
  }

  private handle(response: Buffer): void {
    if (this.greeting) {
      const g = this.greeting;
      this.greeting = null;
      g(response);
      return;
    }
    const p = this.pending;
    const first = response[0];
    if (first === 0x2a /* * */) {
      if (p) {
        p.count++;
        p.bytes += response.length;
        if (p.keep) p.responses.push(response);
      }
      this.onUntagged?.(response);
      return;
    }
    if (first === 0x2b /* + */) {
      p?.onContinue?.();
      return;
    }
    const line = response.toString('latin1');
    const m = /^(\S+) (OK|NO|BAD)\b ?(.*)\r?\n$/s.exec(line);
    if (!p || !m || m[1] !== p.tag) return; // not ours (e.g. a BYE race): ignore
    this.pending = null;
    p.bytes += response.length;
    p.resolve({ status: m[2] as Result['status'], text: m[3].trim(), count: p.count, bytes: p.bytes, responses: p.responses });
  }

  private start(keep: boolean): { tag: string; done: Promise<Result>; pending: Pending } {
    if (this.closed) throw new Error('connection closed');
    if (this.pending) throw new Error(`command ${this.pending.tag} still running`);
    const tag = `T${++this.tagNo}`;
    let pending!: Pending;
    const done = new Promise<Result>((resolve, reject) => {
      pending = { tag, keep, count: 0, bytes: 0, responses: [], resolve, reject };
    });
    this.pending = pending;
    return { tag, done, pending };
  }

  /** Runs one command; rejects unless the server answers OK (allowNo: NO resolves too). */
  async run(command: string, options: { keep?: boolean; allowNo?: boolean } = {}): Promise<Result> {
    const { tag, done } = this.start(options.keep ?? false);
    this.socket.write(`${tag} ${command}\r\n`);
    const r = await done;
    if (r.status !== 'OK' && !(options.allowNo && r.status === 'NO')) throw new Error(`${command.slice(0, 60)} -> ${r.status} ${r.text}`);
    return r;
  }

  /** APPEND with a synchronizing literal (what every server understands). */
  async append(mailbox: string, message: Buffer, flags: string[] = []): Promise<Result> {
    const { tag, done, pending } = this.start(false);
    pending.onContinue = () => {
      pending.onContinue = undefined;
      this.socket.write(message);
      this.socket.write('\r\n');
    };
    this.socket.write(`${tag} APPEND ${quote(mailbox)} (${flags.join(' ')}) {${message.length}}\r\n`);
    const r = await done;
    if (r.status !== 'OK') throw new Error(`APPEND -> ${r.status} ${r.text}`);
    return r;
  }

  /** Starts IDLE; resolves once the server accepted it. Call the returned function to end it. */
  async idle(): Promise<() => Promise<Result>> {
    const { tag, done, pending } = this.start(false);
    const accepted = new Promise<void>((resolve, reject) => {
      pending.onContinue = () => {
        pending.onContinue = undefined;
        resolve();
      };
      done.then((r) => reject(new Error(`IDLE -> ${r.status} ${r.text}`)), reject);
    });
    this.socket.write(`${tag} IDLE\r\n`);
    await accepted;
    return async () => {
      this.socket.write('DONE\r\n');
      return done;
    };
  }

  /** LOGOUT if possible, then close the socket. */
  async close(): Promise<void> {
    if (!this.closed && !this.pending) await this.run('LOGOUT').catch(() => undefined);
    this.destroy();
  }

  destroy(): void {
    this.closed = true;
    this.socket.destroy();
  }
}

export function quote(s: string): string {
  return `"${s.replace(/["\\]/g, (c) => `\\${c}`)}"`;
}
