/**
 * A tiny SOCKS5 server on 127.0.0.1 for tests. It records each CONNECT request (address type,
 * host, port, username/password), answers with a reply code chosen per request, and on success
 * echoes every byte back after writing a greeting.
 */
import net from 'node:net';

export interface SocksRequestRecord {
  methods: number[];
  userId?: string;
  password?: string;
  atyp: number;
  host: string;
  port: number;
}

export interface TestSocksServer {
  port: number;
  requests: SocksRequestRecord[];
  /** Reply code for a request (default 0x00); `'silent'` never answers the CONNECT. */
  reply: (req: SocksRequestRecord) => number | 'silent';
  /** Sent right after a successful reply (then the server echoes). */
  greeting: string;
  /** When set, a successful CONNECT is forwarded to 127.0.0.1:forwardTo instead (no greeting, no echo). */
  forwardTo?: number;
  close(): Promise<void>;
}

export async function startSocksServer(): Promise<TestSocksServer> {
  const sockets = new Set<net.Socket>();
  const state: TestSocksServer = {
    port: 0,
    requests: [],
    reply: () => 0x00,
    greeting: '220 socks-test ready\r\n',
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => {});
    let buf = Buffer.alloc(0);
    let stage: 'greet' | 'auth' | 'request' | 'done' = 'greet';
    const rec: Partial<SocksRequestRecord> = {};
    sock.on('data', (chunk: Buffer) => {
      if (stage === 'done') {
        sock.write(chunk); // echo
        return;
      }
      buf = Buffer.concat([buf, chunk]);
      for (;;) {
        if (stage === 'greet') {
          if (buf.length < 2 || buf.length < 2 + buf[1]!) return;
          rec.methods = [...buf.subarray(2, 2 + buf[1]!)];
          buf = buf.subarray(2 + buf[1]!);
          if (rec.methods.includes(0x02)) {
            sock.write(Buffer.from([0x05, 0x02]));
            stage = 'auth';
          } else {
            sock.write(Buffer.from([0x05, 0x00]));
            stage = 'request';
          }
        } else if (stage === 'auth') {
          if (buf.length < 2) return;
          const ulen = buf[1]!;
          if (buf.length < 3 + ulen) return;
          const plen = buf[2 + ulen]!;
          if (buf.length < 3 + ulen + plen) return;
          rec.userId = buf.subarray(2, 2 + ulen).toString();
          rec.password = buf.subarray(3 + ulen, 3 + ulen + plen).toString();
          buf = buf.subarray(3 + ulen + plen);
          sock.write(Buffer.from([0x01, 0x00]));
          stage = 'request';
        } else if (stage === 'request') {
          if (buf.length < 5) return;
          const atyp = buf[3]!;
          let host: string;
          let end: number;
          if (atyp === 0x01) {
            end = 4 + 4;
            if (buf.length < end + 2) return;
            host = [...buf.subarray(4, 8)].join('.');
          } else if (atyp === 0x03) {
            end = 5 + buf[4]!;
            if (buf.length < end + 2) return;
            host = buf.subarray(5, end).toString();
          } else {
            end = 4 + 16;
            if (buf.length < end + 2) return;
            host = buf.subarray(4, end).toString('hex');
          }
          const record: SocksRequestRecord = { methods: rec.methods ?? [], userId: rec.userId, password: rec.password, atyp, host, port: buf.readUInt16BE(end) };
          buf = buf.subarray(end + 2);
          state.requests.push(record);
          const code = state.reply(record);
          if (code === 'silent') {
            stage = 'done';
            sock.removeAllListeners('data');
            return;
          }
          const replyBytes = Buffer.from([0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);
          if (code !== 0x00) {
            sock.end(replyBytes);
            stage = 'done';
            return;
          }
          stage = 'done';
          if (state.forwardTo) {
            sock.removeAllListeners('data');
            sock.pause();
            const upstream = net.connect({ host: '127.0.0.1', port: state.forwardTo }, () => {
              sock.write(replyBytes);
              if (buf.length) upstream.write(buf);
              sock.pipe(upstream).pipe(sock);
            });
            upstream.on('error', () => sock.destroy());
            sock.on('close', () => upstream.destroy());
            return;
          }
          // The greeting goes out in the same write as the reply: the client must not lose it.
          sock.write(Buffer.concat([replyBytes, Buffer.from(state.greeting), buf]));
          return;
        } else {
          return;
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  state.port = (server.address() as net.AddressInfo).port;
  return state;
}
