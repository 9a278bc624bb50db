/** A minimal Tor control-port client for tests: cookie authentication and GETINFO. */
import { readFile } from 'node:fs/promises';
import net from 'node:net';

export interface TorControl {
  getInfo(key: string): Promise<string>;
  close(): void;
}

export async function connectTorControl(port: number, cookieFile: string): Promise<TorControl> {
  const cookie = (await readFile(cookieFile)).toString('hex');
  const sock = net.connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', () => resolve());
    sock.once('error', reject);
  });
  let buffer = '';
  let waiter: ((reply: string) => void) | null = null;
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => {
    buffer += d;
    // A reply ends with a line "250 ..." / "5xx ..." (code, space).
    const m = /(^|\r\n)(\d{3}) [^\r\n]*\r\n$/.exec(buffer);
    if (m && waiter) {
      const reply = buffer;
      buffer = '';
      const w = waiter;
      waiter = null;
      w(reply);
    }
  });
  const command = (line: string): Promise<string> =>
    new Promise((resolve, reject) => {
      waiter = (reply) => (/(^|\r\n)250 /.test(reply) ? resolve(reply) : reject(new Error(`tor control: ${line.split(' ')[0]} -> ${reply.trim()}`)));
      sock.write(`${line}\r\n`);
    });
  await command(`AUTHENTICATE ${cookie}`);
  return {
    getInfo: async (key) => {
      const reply = await command(`GETINFO ${key}`);
      const single = new RegExp(`^250-${key}=(.*)\\r\\n`).exec(reply);
      if (single) return single[1]!;
      const multi = new RegExp(`^250\\+${key}=\\r\\n([\\s\\S]*?)\\r\\n\\.\\r\\n`).exec(reply);
      return multi ? multi[1]! : '';
    },
    close: () => sock.destroy(),
  };
}
