/**
 * The daemon's local status socket, `<data_dir>/onionpost.sock` (mode 0600, owned by the
 * daemon's user): a client writes "status\n" and reads one JSON line back, then the
 * connection ends. Nothing else is accepted, and nothing can be changed through it.
 *
 * A unix socket rather than a status file: the answer is live (connection counts, the onion's
 * state), a stale answer after a crash is impossible (nobody listens), and permissions are
 * those of the data dir.
 */
import { chmodSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Logger } from '../log/logger.js';

export const STATUS_SOCKET = 'onionpost.sock';

/** Longest unix socket path the platforms we run on accept (sun_path: 108 Linux, 104 BSD). */
const MAX_SOCKET_PATH = 103;

export function statusSocketPath(dataDir: string): string {
  return path.join(dataDir, STATUS_SOCKET);
}

export interface StatusServer {
  close(): Promise<void>;
}

export async function serveStatus(dataDir: string, getStatus: () => Promise<unknown>, logger: Logger): Promise<StatusServer | null> {
  const file = statusSocketPath(dataDir);
  if (Buffer.byteLength(file) > MAX_SOCKET_PATH) {
    logger.warn({ file }, '`onionpost status` cannot reach this daemon: the data dir path is too long for a unix socket');
    return null;
  }
  try {
    unlinkSync(file); // left by a daemon that died; we hold the data dir's pid lock
  } catch {
    /* none */
  }
  const server = net.createServer((sock) => {
    sock.setTimeout(2000, () => sock.destroy());
    sock.on('error', () => undefined);
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      if (buf.length > 64) return sock.destroy();
      if (!buf.includes('\n')) return;
      if (buf.trim() !== 'status') {
        sock.end('{"error":"unknown request"}\n');
        return;
      }
      getStatus().then(
        (status) => sock.end(`${JSON.stringify(status)}\n`),
        (err: unknown) => sock.end(`${JSON.stringify({ error: String(err) })}\n`),
      );
    });
  });
  server.unref();
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(file, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(file, 0o600);
  } catch (err) {
    logger.warn({ file, err: (err as Error).message }, '`onionpost status` cannot reach this daemon: cannot create the status socket');
    return null;
  }
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        try {
          unlinkSync(file);
        } catch {
          /* gone */
        }
      }),
  };
}

export type StatusAnswer = { kind: 'ok'; status: unknown } | { kind: 'absent' } | { kind: 'error'; message: string };

/** Asks the daemon of `dataDir`; 'absent' when nobody listens there. */
export function queryStatus(dataDir: string, timeoutMs = 5000): Promise<StatusAnswer> {
  const file = statusSocketPath(dataDir);
  return new Promise((resolve) => {
    const sock = net.connect({ path: file });
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      resolve({ kind: 'error', message: `no answer from ${file} within ${timeoutMs} ms` });
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write('status\n'));
    sock.on('data', (d: string) => (buf += d));
    sock.on('end', () => {
      clearTimeout(timer);
      try {
        resolve({ kind: 'ok', status: JSON.parse(buf) });
      } catch {
        resolve({ kind: 'error', message: `unexpected answer from ${file}` });
      }
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') resolve({ kind: 'absent' });
      else if (err.code === 'EACCES') resolve({ kind: 'error', message: `permission denied on ${file}: run this as the daemon's user or root` });
      else resolve({ kind: 'error', message: `${file}: ${err.message}` });
    });
  });
}
