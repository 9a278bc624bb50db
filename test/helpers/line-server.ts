/**
 * A CRLF line-based TCP server on 127.0.0.1 (or a unix socket) for tests that play the peer
 * of a line protocol: every connection gets its own handler, called with each line (without
 * the CRLF). close() ends the connections still open, then the server.
 */
import net from 'node:net';

/** Handles one line of a connection; 'stop' ignores the rest of what arrived with it. */
export type LineHandler = (line: string) => void | 'stop';

export interface LineServerOptions {
  /** Listen on this unix socket instead of a free port on 127.0.0.1. */
  path?: string;
  /** How received bytes become text (default utf8). */
  encoding?: BufferEncoding;
  /** A new connection: set it up (a greeting, say) and return the handler of its lines. */
  connection(sock: net.Socket): LineHandler;
}

export interface LineServer {
  /** The TCP port; 0 on a unix socket. */
  port: number;
  close(): Promise<void>;
}

export async function startLineServer(options: LineServerOptions): Promise<LineServer> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    const onLine = options.connection(sock);
    let buf = '';
    sock.setEncoding(options.encoding ?? 'utf8');
    sock.on('data', (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\r\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (onLine(line) === 'stop') return;
      }
    });
  });
  await new Promise<void>((resolve) => (options.path ? server.listen(options.path, () => resolve()) : server.listen(0, '127.0.0.1', () => resolve())));
  const addr = server.address();
  return {
    port: typeof addr === 'object' && addr !== null ? addr.port : 0,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
