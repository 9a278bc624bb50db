/**
 * A byte-level SMTP client for tests that need to send exactly what they want (bare LF,
 * NUL bytes, oversized data, pipelining) and read every reply.
 */
import net from 'node:net';
import tls from 'node:tls';

export interface Reply {
  code: number;
  /** Reply lines without the trailing CRLF. */
  lines: string[];
  /** All lines joined with "\n". */
  text: string;
}

export class SmtpWire {
  private socket: net.Socket | tls.TLSSocket;
  private buffer = '';
  private waiters: Array<() => void> = [];
  private ended = false;

  private constructor(socket: net.Socket | tls.TLSSocket) {
    this.socket = socket;
    this.attach(socket);
  }

  static connect(port: number, host = '127.0.0.1'): Promise<SmtpWire> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, host, () => {
        socket.off('error', reject);
        resolve(new SmtpWire(socket));
      });
      socket.once('error', reject);
    });
  }

  /** Connects with implicit TLS (port 465 role). */
  static connectTls(port: number, options: tls.ConnectionOptions, host = '127.0.0.1'): Promise<SmtpWire> {
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ port, host, ...options }, () => {
        socket.off('error', reject);
        resolve(new SmtpWire(socket));
      });
      socket.once('error', reject);
    });
  }

  private attach(socket: net.Socket | tls.TLSSocket): void {
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      this.wake();
    });
    socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
    socket.on('error', () => {
      this.ended = true;
      this.wake();
    });
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** Reads one complete (possibly multi-line) reply. */
  async read(timeoutMs = 5000): Promise<Reply> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lines: string[] = [];
      let offset = 0;
      for (;;) {
        const nl = this.buffer.indexOf('\r\n', offset);
        if (nl < 0) break;
        const line = this.buffer.slice(offset, nl);
        lines.push(line);
        offset = nl + 2;
        if (/^\d{3}(?: |$)/.test(line)) {
          this.buffer = this.buffer.slice(offset);
          return { code: Number(line.slice(0, 3)), lines, text: lines.join('\n') };
        }
      }
      if (this.ended) throw new Error(`connection closed; unparsed: ${JSON.stringify(this.buffer)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no complete reply within ${timeoutMs} ms; got ${JSON.stringify(this.buffer)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  write(data: string | Buffer): void {
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  /** Sends one command line (CRLF added) and reads its reply. */
  async command(line: string | Buffer): Promise<Reply> {
    this.write(Buffer.concat([typeof line === 'string' ? Buffer.from(line, 'latin1') : line, Buffer.from('\r\n')]));
    return this.read();
  }

  /** Upgrades the connection after a 220 reply to STARTTLS. */
  async startTls(options: tls.ConnectionOptions): Promise<tls.TLSSocket> {
    const plain = this.socket as net.Socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('close');
    plain.removeAllListeners('error');
    const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ ...options, socket: plain }, () => resolve(s));
      s.once('error', reject);
    });
    this.socket = secure;
    this.buffer = '';
    this.attach(secure);
    return secure;
  }

  /** True once the server has closed the connection (waits up to timeoutMs). */
  async closed(timeoutMs = 3000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.ended;
  }

  close(): void {
    this.socket.destroy();
  }
}
