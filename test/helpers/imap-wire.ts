/**
 * A byte-level IMAP client for tests that assert exact protocol responses. It reads whole
 * responses (untagged lines with their literals) up to the tagged completion.
 */
import net from 'node:net';
import tls from 'node:tls';

export interface TaggedReply {
  /** Every byte received for the command, tagged line included. */
  raw: Buffer;
  /** The untagged/continuation lines as latin1 strings, literals inline. */
  text: string;
  /** The tagged completion line without CRLF, e.g. "A1 OK done". */
  tagged: string;
}

export class ImapWire {
  private socket: net.Socket | tls.TLSSocket;
  private buffer = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  private closed = false;
  private tagNo = 0;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.attach(socket);
  }

  static connect(port: number, host = '127.0.0.1'): Promise<ImapWire> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, host, () => {
        socket.off('error', reject);
        resolve(new ImapWire(socket));
      });
      socket.once('error', reject);
    });
  }

  private attach(socket: net.Socket | tls.TLSSocket): void {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.wake();
    });
    const end = (): void => {
      this.closed = true;
      this.wake();
    };
    socket.on('close', end);
    socket.on('error', end);
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  private async waitData(deadline: number): Promise<void> {
    if (this.closed) throw new Error('connection closed; got: ' + this.buffer.toString('latin1'));
    const left = deadline - Date.now();
    if (left <= 0) throw new Error('timeout; got: ' + this.buffer.toString('latin1'));
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, left);
      this.waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /** Reads one line (CRLF included), waiting for it. */
  async readLine(timeoutMs = 5000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.buffer.indexOf('\r\n');
      if (i >= 0) {
        const line = this.buffer.subarray(0, i + 2).toString('latin1');
        this.buffer = this.buffer.subarray(i + 2);
        return line;
      }
      await this.waitData(deadline);
    }
  }

  /** Sends `TAG command` and reads everything up to the tagged reply. */
  async command(command: string, timeoutMs = 5000): Promise<TaggedReply> {
    const tag = `W${++this.tagNo}`;
    this.socket.write(`${tag} ${command}\r\n`);
    return this.readTagged(tag, timeoutMs);
  }

  /** Writes raw bytes (continuations, literals, DONE). */
  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  async readTagged(tag: string, timeoutMs = 5000): Promise<TaggedReply> {
    const deadline = Date.now() + timeoutMs;
    const chunks: Buffer[] = [];
    let pos = 0;
    for (;;) {
      const i = this.buffer.indexOf('\r\n', pos);
      if (i < 0) {
        await this.waitData(deadline);
        continue;
      }
      const line = this.buffer.subarray(pos, i).toString('latin1');
      const literal = /\{(\d+)\}$/.exec(line);
      if (literal) {
        const need = i + 2 + Number(literal[1]);
        if (this.buffer.length < need) {
          await this.waitData(deadline);
          continue;
        }
        pos = need;
        continue;
      }
      const lineStart = pos;
      pos = i + 2;
      if (line.startsWith(tag + ' ') && isLineStart(this.buffer, lineStart)) {
        const raw = this.buffer.subarray(0, pos);
        this.buffer = this.buffer.subarray(pos);
        chunks.push(raw);
        const all = Buffer.concat(chunks);
        const text = all.toString('latin1');
        return { raw: all, text: text.slice(0, text.length - line.length - 2), tagged: line };
      }
    }
  }

  /** Upgrades the connection after a tagged OK to STARTTLS (certificate not verified). */
  async startTls(): Promise<void> {
    const plain = this.socket;
    plain.removeAllListeners('data');
    const secure = tls.connect({ socket: plain, rejectUnauthorized: false });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
    });
    this.socket = secure;
    this.attach(secure);
  }

  close(): void {
    this.socket.destroy();
  }
}

function isLineStart(buf: Buffer, at: number): boolean {
  return at === 0 || (buf[at - 2] === 0x0d && buf[at - 1] === 0x0a);
}
