import type net from 'node:net';

/** Reads from `sock` (resuming it: openTorConnection hands sockets over paused) until `pattern` shows up. */
export function readUntil(sock: net.Socket, pattern: RegExp, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`timeout waiting for ${pattern}; got ${JSON.stringify(text)}`)), timeoutMs);
    const onData = (d: Buffer): void => {
      text += d.toString('latin1');
      if (pattern.test(text)) {
        clearTimeout(timer);
        sock.off('data', onData);
        resolve(text);
      }
    };
    sock.on('data', onData);
    sock.resume();
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}
