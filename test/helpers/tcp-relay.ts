/** A counting TCP relay for tests: everything a client sends goes to a loopback target port and back. */
import net from 'node:net';

export interface TcpRelay {
  /** The port it listens on. */
  port: number;
  /** Connections accepted so far. */
  connections(): number;
  close(): Promise<void>;
}

export interface TcpRelayOptions {
  /** Port on 127.0.0.1 to relay to. */
  targetPort: number;
  /** Where to listen (default 127.0.0.1, a free port). */
  host?: string;
  port?: number;
  /** Sees each client socket (e.g. to record what it sends); the relay pipes it anyway. */
  observe?: (client: net.Socket) => void;
}

export async function startTcpRelay(options: TcpRelayOptions): Promise<TcpRelay> {
  let count = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    count++;
    const upstream = net.connect({ host: '127.0.0.1', port: options.targetPort });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    options.observe?.(client);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => resolve());
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    connections: () => count,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
