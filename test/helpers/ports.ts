import net from 'node:net';

/** Ports this process handed out already: the kernel may offer a just-closed port again. */
const handedOut = new Set<number>();

function probe(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** A TCP port that was free on 127.0.0.1 a moment ago, never one this process gave out before. */
export async function freePort(): Promise<number> {
  for (let i = 0; i < 100; i++) {
    const port = await probe();
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error('freePort: the kernel keeps offering ports this process already handed out');
}
