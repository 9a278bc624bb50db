/**
 * Outbound connections through Tor's SOCKS port. The only module that opens outbound sockets.
 *
 * `openTorConnection` sends SOCKS5 CONNECT with the destination's host *name* (ATYP 3):
 * Tor resolves it (or looks up the onion descriptor); nothing is resolved locally. Each
 * destination domain gets its own SOCKS username/password, so that Tor's IsolateSOCKSAuth
 * (on by default) never lets two destination domains share a circuit.
 *
 * Failures come back as `TorConnectError` with a typed `code`, a `kind` (temporary:
 * retry later; permanent: bounce) and, when Tor answered, the raw SOCKS `reply` code,
 * including Tor's ExtendedErrors for onion services (f0-f7).
 */
import { createHash } from 'node:crypto';
import net from 'node:net';
import { domainToASCII } from 'node:url';
import { SocksClient } from 'socks';
import { isOnionDomain } from '../tor/onion-address.js';

/** Tor's own SocksTimeout is 120 s; a connect through Tor may legitimately take that long. */
export const DEFAULT_TOR_CONNECT_TIMEOUT_MS = 120_000;

export type FailureKind = 'temporary' | 'permanent';

export type TorConnectErrorCode =
  | 'INVALID_DESTINATION'
  | 'SOCKS_UNREACHABLE'
  | 'SOCKS_PROTOCOL'
  | 'SOCKS_AUTH_FAILED'
  | 'TIMEOUT'
  | 'GENERAL_FAILURE'
  | 'NOT_ALLOWED'
  | 'NETWORK_UNREACHABLE'
  | 'HOST_UNREACHABLE'
  | 'CONNECTION_REFUSED'
  | 'TTL_EXPIRED'
  | 'COMMAND_NOT_SUPPORTED'
  | 'ADDRESS_TYPE_NOT_SUPPORTED'
  | 'ONION_DESCRIPTOR_NOT_FOUND'
  | 'ONION_DESCRIPTOR_INVALID'
  | 'ONION_INTRO_FAILED'
  | 'ONION_REND_FAILED'
  | 'ONION_CLIENT_AUTH_MISSING'
  | 'ONION_CLIENT_AUTH_WRONG'
  | 'ONION_INVALID_ADDRESS'
  | 'ONION_INTRO_TIMEOUT'
  | 'UNKNOWN_REPLY'
  | 'CONNECTION_LOST'
  | 'DIRECT_FAILED';

export class TorConnectError extends Error {
  override readonly name = 'TorConnectError';
  constructor(
    message: string,
    readonly code: TorConnectErrorCode,
    readonly kind: FailureKind,
    readonly host: string,
    readonly port: number,
    /** The SOCKS5 reply code Tor sent (0x01-0x08, 0xf0-0xf7), when it sent one. */
    readonly reply?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
  get temporary(): boolean {
    return this.kind === 'temporary';
  }
}

interface ReplyInfo {
  code: TorConnectErrorCode;
  kind: FailureKind;
  describe: (dest: string, port: number, onion: boolean) => string;
}

/**
 * SOCKS5 reply codes (RFC 1928) and Tor's extended onion-service codes (tor's socks-extensions.txt,
 * sent with `SocksPort ... ExtendedErrors`). Only a destination that can never work is permanent;
 * anything that a local misconfiguration or a down service could cause is temporary.
 */
const REPLIES: Record<number, ReplyInfo> = {
  0x01: {
    code: 'GENERAL_FAILURE',
    kind: 'temporary',
    describe: (d, p, onion) =>
      onion
        ? `the onion service ${d} is up, but nothing accepted the connection on port ${p} (SOCKS 01: nothing listens on the service's target)`
        : `Tor reported a general failure connecting to ${d}:${p} (SOCKS 01)`,
  },
  0x02: {
    code: 'NOT_ALLOWED',
    kind: 'temporary',
    describe: (d, p) => `no Tor exit allows a connection to ${d}:${p} (SOCKS 02; exit policies usually reject port 25)`,
  },
  0x03: { code: 'NETWORK_UNREACHABLE', kind: 'temporary', describe: (d, p) => `network unreachable for ${d}:${p} (SOCKS 03)` },
  0x04: {
    code: 'HOST_UNREACHABLE',
    kind: 'temporary',
    describe: (d, p) => `${d}:${p} is unreachable through Tor (SOCKS 04; the exit could not resolve or reach the host)`,
  },
  0x05: {
    code: 'CONNECTION_REFUSED',
    kind: 'temporary',
    describe: (d, p, onion) =>
      onion
        ? `the onion service ${d} does not offer port ${p} (SOCKS 05)`
        : `${d}:${p} refused the connection (SOCKS 05)`,
  },
  0x06: { code: 'TTL_EXPIRED', kind: 'temporary', describe: (d, p) => `Tor timed out connecting to ${d}:${p} (SOCKS 06)` },
  0x07: {
    code: 'COMMAND_NOT_SUPPORTED',
    kind: 'temporary',
    describe: (d, p) => `the SOCKS proxy does not support CONNECT (to ${d}:${p}, SOCKS 07): is the configured SOCKS port Tor's?`,
  },
  0x08: {
    code: 'ADDRESS_TYPE_NOT_SUPPORTED',
    kind: 'temporary',
    describe: (d, p) =>
      `the SOCKS proxy does not accept host names (to ${d}:${p}, SOCKS 08): is the configured SOCKS port Tor's?`,
  },
  0xf0: {
    code: 'ONION_DESCRIPTOR_NOT_FOUND',
    kind: 'temporary',
    describe: (d) => `the onion service ${d} is not reachable: its descriptor was not found (SOCKS f0; down or not yet published)`,
  },
  0xf1: {
    code: 'ONION_DESCRIPTOR_INVALID',
    kind: 'temporary',
    describe: (d) => `the onion service ${d} published an invalid descriptor (SOCKS f1)`,
  },
  0xf2: {
    code: 'ONION_INTRO_FAILED',
    kind: 'temporary',
    describe: (d) => `introduction to the onion service ${d} failed (SOCKS f2)`,
  },
  0xf3: {
    code: 'ONION_REND_FAILED',
    kind: 'temporary',
    describe: (d) => `rendezvous with the onion service ${d} failed (SOCKS f3)`,
  },
  0xf4: {
    code: 'ONION_CLIENT_AUTH_MISSING',
    kind: 'permanent',
    describe: (d) => `the onion service ${d} requires client authorization, which we do not have (SOCKS f4)`,
  },
  0xf5: {
    code: 'ONION_CLIENT_AUTH_WRONG',
    kind: 'temporary',
    describe: (d) => `the onion service ${d} rejected the client authorization configured in our Tor (SOCKS f5)`,
  },
  0xf6: {
    code: 'ONION_INVALID_ADDRESS',
    kind: 'permanent',
    describe: (d) => `${d} is not a valid onion address (SOCKS f6)`,
  },
  0xf7: {
    code: 'ONION_INTRO_TIMEOUT',
    kind: 'temporary',
    describe: (d) => `introduction to the onion service ${d} timed out (SOCKS f7)`,
  },
};

/**
 * The SOCKS username/password for a destination. Tor's IsolateSOCKSAuth puts streams with
 * different credentials on different circuits; the same domain always maps to the same pair.
 * Only our local Tor sees them; the password is a hash, so the domain is not repeated in
 * Tor's logs.
 */
export function isolationCredentials(isolationKey: string): { userId: string; password: string } {
  const key = isolationKey.trim().toLowerCase().replace(/\.$/, '');
  return {
    userId: 'onionpost',
    password: createHash('sha256').update('onionpost-isolation\0').update(key).digest('hex'),
  };
}

export interface TorConnectionOptions {
  /** Tor's SOCKS port (loopback). */
  socks: { host: string; port: number };
  /** Destination host *name* (an onion name or, for clearnet, a DNS name). Never resolved locally. */
  host: string;
  port: number;
  /** Normally the destination domain: streams with different keys never share a circuit. */
  isolationKey: string;
  /** Whole connect (TCP to the SOCKS port + SOCKS handshake + Tor's circuit work). Default 120 s. */
  timeoutMs?: number;
}

/** Normalizes the destination name: lower-case A-labels, no trailing dot; throws if unusable. */
function normalizeHost(host: string, port: number): string {
  const trimmed = host.trim().replace(/\.$/, '');
  const ascii = net.isIP(trimmed) ? trimmed : domainToASCII(trimmed).toLowerCase();
  if (!ascii || Buffer.byteLength(ascii) > 255 || !/^[\x21-\x7e]+$/.test(ascii)) {
    throw new TorConnectError(`invalid destination host name ${JSON.stringify(host)}`, 'INVALID_DESTINATION', 'permanent', host, port);
  }
  return ascii;
}

/**
 * Watches the bytes the SOCKS server sends during the handshake, to learn its reply code
 * (the `socks` package reports codes it does not know, such as Tor's f0-f7, as undefined).
 */
class ReplyTap {
  private bytes = Buffer.alloc(0);
  reply: number | undefined;
  readonly onData = (chunk: Buffer): void => {
    if (this.reply !== undefined) return;
    this.bytes = Buffer.concat([this.bytes, chunk]);
    if (this.bytes.length < 2) return;
    // [ver, method] then, for username/password (0x02), [ver, status], then [ver, REP, ...].
    const replyAt = this.bytes[1] === 0x02 ? 4 : 2;
    if (this.bytes.length >= replyAt + 2) this.reply = this.bytes[replyAt + 1];
  };
}

/**
 * Opens a TCP stream to `host:port` through Tor. Resolves with the connected socket, positioned
 * after the SOCKS handshake and **paused**: attach listeners, then call `resume()` (or `pipe()`);
 * nodemailer's SMTPConnection does so itself. Bytes that arrived together with the SOCKS reply
 * (an early SMTP greeting) are kept for the first reader.
 */
export async function openTorConnection(options: TorConnectionOptions): Promise<net.Socket> {
  const { port } = options;
  const timeoutMs = options.timeoutMs ?? DEFAULT_TOR_CONNECT_TIMEOUT_MS;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new TorConnectError(`invalid destination port ${port}`, 'INVALID_DESTINATION', 'permanent', options.host, port);
  }
  const host = normalizeHost(options.host, port);
  const onion = isOnionDomain(host);
  const started = Date.now();
  const proxy = `${options.socks.host}:${options.socks.port}`;

  const tcp = await new Promise<net.Socket>((resolve, reject) => {
    const sock = net.connect({ host: options.socks.host, port: options.socks.port });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(
        new TorConnectError(`Tor's SOCKS port ${proxy} did not accept a connection within ${timeoutMs} ms`, 'SOCKS_UNREACHABLE', 'temporary', host, port),
      );
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      resolve(sock);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      sock.destroy();
      reject(
        new TorConnectError(
          `cannot reach Tor's SOCKS port ${proxy} (${err.code ?? err.message}): is tor running, and is the SOCKS port configured right?`,
          'SOCKS_UNREACHABLE',
          'temporary',
          host,
          port,
          undefined,
          { cause: err },
        ),
      );
    });
  });

  const tap = new ReplyTap();
  tcp.prependListener('data', tap.onData);
  const { userId, password } = isolationCredentials(options.isolationKey);
  try {
    const remaining = Math.max(1, timeoutMs - (Date.now() - started));
    const { socket } = await SocksClient.createConnection({
      command: 'connect',
      proxy: { host: options.socks.host, port: options.socks.port, type: 5, userId, password },
      destination: { host, port },
      timeout: remaining,
      existing_socket: tcp,
    });
    return await handOver(socket, host, port);
  } catch (err) {
    tcp.destroy();
    if (err instanceof TorConnectError) throw err;
    throw classifySocksFailure(err, tap.reply, host, port, onion, proxy, timeoutMs);
  } finally {
    tcp.removeListener('data', tap.onData);
  }
}

/**
 * The `socks` package re-emits the bytes that came with its reply as a synthetic 'data' event
 * and resumes the socket on its next setImmediate: a reader that attaches later would lose them
 * (a greeting sent at once by the server). Catch them here, keep the socket from flowing, and put
 * the bytes back at the head of its buffer, so the caller gets a paused socket with nothing lost.
 */
async function handOver(socket: net.Socket, host: string, port: number): Promise<net.Socket> {
  const early: Buffer[] = [];
  const collect = (chunk: Buffer): void => {
    early.push(chunk);
  };
  let failure: Error | undefined;
  const onError = (err: Error): void => {
    failure = err;
  };
  socket.on('data', collect);
  socket.on('error', onError);
  // Queued after the package's own setImmediate (it was queued when the reply was parsed).
  socket.resume = function resumeLater(this: net.Socket) {
    return this;
  };
  try {
    await new Promise<void>((resolve) => setImmediate(resolve));
  } finally {
    delete (socket as { resume?: unknown }).resume; // back to the prototype's resume()
    socket.off('data', collect);
    socket.off('error', onError);
  }
  if (failure || socket.destroyed) {
    socket.destroy();
    throw new TorConnectError(
      `the stream to ${host}:${port} broke right after Tor opened it${failure ? ` (${failure.message})` : ''}`,
      'CONNECTION_LOST',
      'temporary',
      host,
      port,
      undefined,
      { cause: failure },
    );
  }
  socket.pause();
  if (early.length > 0) socket.unshift(Buffer.concat(early));
  return socket;
}

function classifySocksFailure(
  err: unknown,
  reply: number | undefined,
  host: string,
  port: number,
  onion: boolean,
  proxy: string,
  timeoutMs: number,
): TorConnectError {
  const message = err instanceof Error ? err.message : String(err);
  if (reply !== undefined && reply !== 0x00) {
    const info = REPLIES[reply];
    const hex = reply.toString(16).padStart(2, '0');
    if (!info) {
      return new TorConnectError(`SOCKS proxy ${proxy} refused ${host}:${port} with unknown reply code ${hex}`, 'UNKNOWN_REPLY', 'temporary', host, port, reply, {
        cause: err,
      });
    }
    return new TorConnectError(info.describe(host, port, onion), info.code, info.kind, host, port, reply, { cause: err });
  }
  if (/timed out/i.test(message)) {
    return new TorConnectError(`no answer through Tor for ${host}:${port} within ${timeoutMs} ms`, 'TIMEOUT', 'temporary', host, port, undefined, {
      cause: err,
    });
  }
  if (/authentication/i.test(message)) {
    return new TorConnectError(`SOCKS proxy ${proxy} rejected our username/password (${message})`, 'SOCKS_AUTH_FAILED', 'temporary', host, port, undefined, {
      cause: err,
    });
  }
  return new TorConnectError(`SOCKS handshake with ${proxy} for ${host}:${port} failed: ${message}`, 'SOCKS_PROTOCOL', 'temporary', host, port, undefined, {
    cause: err,
  });
}

export interface DirectConnectionOptions {
  /** The mail host's name (messages, errors). */
  host: string;
  /**
   * The IP address to connect to, looked up through the configured resolver
   * (`NextHop.address`). Nothing is resolved here: without it, `host` must be an address.
   */
  address?: string;
  port: number;
  timeoutMs?: number;
}

/**
 * Direct mode (`[delivery] direct = true`): a plain TCP connection WITHOUT Tor, to an address
 * the resolver looked up through the configured DNS server (`[tor] dns`); the system resolver
 * is never asked (a host name without an address is refused). It reveals this machine's
 * address and its DNS queries, and cannot reach onion services; it exists for tests and
 * clearnet-only setups, and the scheduler logs a warning for every such connection. Resolves
 * with a paused socket, like `openTorConnection`. Failures are temporary TorConnectErrors
 * (code DIRECT_FAILED).
 */
export async function openDirectConnection(options: DirectConnectionOptions): Promise<net.Socket> {
  const { port } = options;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new TorConnectError(`invalid destination port ${port}`, 'INVALID_DESTINATION', 'permanent', options.host, port);
  }
  const host = normalizeHost(options.host, port);
  if (isOnionDomain(host)) {
    throw new TorConnectError(`${host} is an onion service: it can only be reached through Tor, not in direct mode`, 'DIRECT_FAILED', 'temporary', host, port);
  }
  const address = options.address ?? host;
  if (net.isIP(address) === 0) {
    throw new TorConnectError(
      `no address for ${host}: direct mode connects only to addresses looked up through the configured resolver ([tor] dns), never through the system resolver`,
      'DIRECT_FAILED',
      'temporary',
      host,
      port,
    );
  }
  const where = address === host ? `${net.isIPv6(host) ? `[${host}]` : host}:${port}` : `${host} [${address}]:${port}`;
  const timeoutMs = options.timeoutMs ?? DEFAULT_TOR_CONNECT_TIMEOUT_MS;
  return new Promise<net.Socket>((resolve, reject) => {
    const sock = net.connect({ host: address, port });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new TorConnectError(`no connection to ${where} within ${timeoutMs} ms (direct, without Tor)`, 'DIRECT_FAILED', 'temporary', host, port));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      sock.pause();
      resolve(sock);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      sock.destroy();
      reject(new TorConnectError(`cannot connect to ${where} (direct, without Tor): ${err.code ?? err.message}`, 'DIRECT_FAILED', 'temporary', host, port, undefined, { cause: err }));
    });
  });
}
