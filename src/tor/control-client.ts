/**
 * A client for Tor's control protocol (control-spec.txt), just what onionpost needs:
 * connect over TCP or a unix socket, authenticate, ADD_ONION / DEL_ONION, GETINFO.
 *
 * Authentication follows PROTOCOLINFO: a configured password is used when Tor offers
 * HASHEDPASSWORD; otherwise NULL when offered; otherwise SAFECOOKIE (preferred: Tor proves it
 * knows the cookie too) or COOKIE with the cookie file (the configured one, else the file Tor
 * names). Every failure is a TorControlError whose `kind` says what to fix:
 *   unreachable  nothing listens at the address (tor not running, ControlPort not set)
 *   auth         authentication refused or impossible (wrong password, unreadable cookie)
 *   refused      tor answered a command with an error (e.g. an onion that already exists)
 *   timeout      no answer in time
 *   closed       the connection ended
 *   protocol     tor said something we do not understand
 * The message is written for the admin and names the fix.
 *
 * Replies come in command order (tor answers commands sequentially), so a FIFO of pending
 * commands is enough. Asynchronous events (6xx) are ignored: we never SETEVENTS.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { formatControlAddress, type ControlAddress } from '../config/tor-address.js';

export { formatControlAddress, parseControlAddress, type ControlAddress } from '../config/tor-address.js';

export type TorControlErrorKind = 'unreachable' | 'auth' | 'refused' | 'timeout' | 'closed' | 'protocol';

export class TorControlError extends Error {
  constructor(
    readonly kind: TorControlErrorKind,
    message: string,
    /** Tor's reply status (e.g. 515, 550), when the error is an answer from tor. */
    readonly status?: number,
  ) {
    super(message);
    this.name = 'TorControlError';
  }
}

export interface ControlAuth {
  /** For HashedControlPassword. */
  password?: string | null;
  /** Cookie file to use instead of the one named in PROTOCOLINFO. */
  cookieFile?: string | null;
}

export interface ConnectOptions {
  /** Connect + authenticate, ms (default 10 s). */
  timeoutMs?: number;
  /** Each later command, ms (default 30 s). */
  commandTimeoutMs?: number;
}

/** One reply: its final status and its lines (without status and separator; data blocks joined with "\n"). */
export interface ControlReply {
  status: number;
  lines: string[];
}

export interface ProtocolInfo {
  methods: string[];
  cookieFile: string | null;
  torVersion: string | null;
}

export interface OnionPort {
  /** Port of the onion address clients connect to (25, 143, ...). */
  virtualPort: number;
  /** Where tor forwards it: "127.0.0.1:2525", "[::1]:2525" or "unix:/path". */
  target: string;
}

export interface AddOnionOptions {
  /** "NEW" for a fresh key, or a stored "ED25519-V3:<base64>" key. */
  key: 'NEW' | string;
  ports: OnionPort[];
  /**
   * false (default): the onion lives as long as this control connection, which is what a
   * daemon wants (it adds it again at each start, and a crash cannot leave it behind).
   * true: it stays until DEL_ONION or tor's restart.
   */
  detach?: boolean;
}

export interface AddOnionResult {
  /** The 56-character service id, without ".onion". */
  serviceId: string;
  /** "ED25519-V3:<base64>", only when the key was NEW. */
  privateKey: string | null;
}

const ED25519_KEY_RE = /^ED25519-V3:[A-Za-z0-9+/]{86}==$/;

export function isEd25519V3Key(key: string): boolean {
  return ED25519_KEY_RE.test(key) && Buffer.from(key.slice('ED25519-V3:'.length), 'base64').length === 64;
}

/** A control-protocol QuotedString. */
export function quoteString(s: string): string {
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\r/g, '\\r').replace(/\n/g, '\\n')}"`;
}

/** Reverses quoteString (the value of KEY="..." in a reply). */
function unquote(s: string): string {
  return s.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c === 'r' ? '\r' : c === 't' ? '\t' : c));
}

const SAFECOOKIE_SERVER_KEY = 'Tor safe cookie authentication server-to-controller hash';
const SAFECOOKIE_CLIENT_KEY = 'Tor safe cookie authentication controller-to-server hash';

interface Pending {
  command: string;
  resolve(reply: ControlReply): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout | null;
}

export class TorControlClient extends EventEmitter {
  private buffer = '';
  private current: { lines: string[]; data: string[] | null } = { lines: [], data: null };
  private readonly pending: Pending[] = [];
  private closedError: TorControlError | null = null;
  private commandTimeoutMs: number;

  private constructor(
    private readonly socket: net.Socket,
    readonly address: ControlAddress,
  ) {
    super();
    this.commandTimeoutMs = 30_000;
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.fail(new TorControlError('closed', `connection to Tor's control port ${formatControlAddress(address)} failed: ${err.message}`)));
    socket.on('close', () => this.fail(new TorControlError('closed', `Tor closed the control connection ${formatControlAddress(address)}`)));
  }

  /** Connects and authenticates. */
  static async connect(address: ControlAddress, auth: ControlAuth = {}, options: ConnectOptions = {}): Promise<TorControlClient> {
    const where = formatControlAddress(address);
    const timeoutMs = options.timeoutMs ?? 10_000;
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = address.kind === 'unix' ? net.connect({ path: address.path }) : net.connect({ host: address.host, port: address.port });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new TorControlError('timeout', `Tor's control port ${where} did not accept a connection within ${timeoutMs} ms`));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        resolve(s);
      });
      s.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(connectError(address, err));
      });
    });
    const client = new TorControlClient(socket, address);
    client.commandTimeoutMs = timeoutMs;
    try {
      await client.authenticate(auth);
    } catch (err) {
      client.close();
      throw err;
    }
    client.commandTimeoutMs = options.commandTimeoutMs ?? 30_000;
    return client;
  }

  get closed(): boolean {
    return this.closedError !== null;
  }

  /** Sends one command line and resolves with a 250 reply; other replies reject (kind "refused"). */
  async command(line: string): Promise<ControlReply> {
    const reply = await this.send(line);
    if (reply.status !== 250) {
      const verb = line.split(' ', 1)[0]!;
      throw new TorControlError('refused', `Tor refused ${verb}: ${reply.status} ${reply.lines.join(' ')}`, reply.status);
    }
    return reply;
  }

  async protocolInfo(): Promise<ProtocolInfo> {
    const reply = await this.command('PROTOCOLINFO 1');
    let methods: string[] = [];
    let cookieFile: string | null = null;
    let torVersion: string | null = null;
    for (const line of reply.lines) {
      const auth = /^AUTH METHODS=(\S+)(?: COOKIEFILE=("(?:[^"\\]|\\.)*"))?/.exec(line);
      if (auth) {
        methods = auth[1]!.split(',');
        if (auth[2]) cookieFile = unquote(auth[2].slice(1, -1));
      }
      const version = /^VERSION Tor=("(?:[^"\\]|\\.)*")/.exec(line);
      if (version) torVersion = unquote(version[1]!.slice(1, -1));
    }
    if (methods.length === 0) throw new TorControlError('protocol', `unexpected PROTOCOLINFO reply from Tor: ${reply.lines.join(' | ')}`);
    return { methods, cookieFile, torVersion };
  }

  /** GETINFO; returns key -> value (multi-line values joined with "\n"). */
  async getInfo(...keys: string[]): Promise<Record<string, string>> {
    const reply = await this.command(`GETINFO ${keys.join(' ')}`);
    const out: Record<string, string> = {};
    for (const line of reply.lines) {
      const eq = line.indexOf('=');
      if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1).replace(/^\n/, '');
    }
    return out;
  }

  async addOnion(options: AddOnionOptions): Promise<AddOnionResult> {
    const key = options.key === 'NEW' ? 'NEW:ED25519-V3' : options.key;
    if (options.key !== 'NEW' && !isEd25519V3Key(options.key)) {
      throw new TorControlError('protocol', 'the stored onion key is not an "ED25519-V3:<base64 of 64 bytes>" key');
    }
    if (options.ports.length === 0) throw new TorControlError('protocol', 'ADD_ONION needs at least one port');
    const ports = options.ports.map((p) => {
      if (!Number.isInteger(p.virtualPort) || p.virtualPort < 1 || p.virtualPort > 65535 || /[\s]/.test(p.target)) {
        throw new TorControlError('protocol', `invalid onion port mapping ${p.virtualPort} -> ${p.target}`);
      }
      return `Port=${p.virtualPort},${p.target}`;
    });
    const flags = options.detach ? ' Flags=Detach' : '';
    let reply: ControlReply;
    try {
      reply = await this.command(`ADD_ONION ${key}${flags} ${ports.join(' ')}`);
    } catch (err) {
      if (err instanceof TorControlError && err.kind === 'refused' && /collision/i.test(err.message)) {
        throw new TorControlError(
          'refused',
          `${err.message} (tor already hosts this onion: another program added it, or a torrc HiddenServiceDir uses the same key; remove that one)`,
          err.status,
        );
      }
      throw err;
    }
    let serviceId: string | null = null;
    let privateKey: string | null = null;
    for (const line of reply.lines) {
      if (line.startsWith('ServiceID=')) serviceId = line.slice('ServiceID='.length);
      else if (line.startsWith('PrivateKey=')) privateKey = line.slice('PrivateKey='.length);
    }
    if (!serviceId || !/^[a-z2-7]{56}$/.test(serviceId)) throw new TorControlError('protocol', `ADD_ONION: no valid ServiceID in Tor's reply`);
    if (options.key === 'NEW' && (!privateKey || !isEd25519V3Key(privateKey))) {
      throw new TorControlError('protocol', 'ADD_ONION: Tor did not return the new ED25519-V3 private key');
    }
    return { serviceId, privateKey: options.key === 'NEW' ? privateKey : null };
  }

  async delOnion(serviceId: string): Promise<void> {
    const id = serviceId.replace(/\.onion$/, '');
    if (!/^[a-z2-7]{56}$/.test(id)) throw new TorControlError('protocol', `not an onion service id: ${serviceId}`);
    await this.command(`DEL_ONION ${id}`);
  }

  /** Closes the connection (tor then removes every non-detached onion it added). */
  close(): void {
    if (!this.closedError) {
      this.socket.end('QUIT\r\n');
      this.socket.destroySoon();
    }
    this.fail(new TorControlError('closed', 'the control connection was closed'));
  }

  // -------------------------------------------------------------------------------------

  private async authenticate(auth: ControlAuth): Promise<void> {
    const info = await this.protocolInfo();
    const where = formatControlAddress(this.address);
    const has = (m: string): boolean => info.methods.includes(m);
    const password = auth.password ?? '';
    let line: string;
    let how: string;
    if (password && has('HASHEDPASSWORD')) {
      line = `AUTHENTICATE ${quoteString(password)}`;
      how = 'the control password';
    } else if (has('NULL')) {
      line = 'AUTHENTICATE';
      how = 'no authentication';
    } else if (has('SAFECOOKIE') || has('COOKIE')) {
      const file = auth.cookieFile || info.cookieFile;
      if (!file) throw new TorControlError('auth', `Tor at ${where} wants cookie authentication but names no cookie file; set [tor] cookie_file`);
      let cookie: Buffer;
      try {
        cookie = await readFile(file);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        const hint =
          code === 'EACCES'
            ? ` (permission denied: run onionpost as a user in the group that owns it, e.g. "debian-tor" on Debian or "_tor" on BSD, and set CookieAuthFileGroupReadable 1 in torrc; or use a control password)`
            : code === 'ENOENT'
              ? ' (no such file: is [tor] cookie_file right?)'
              : '';
        throw new TorControlError('auth', `cannot read Tor's control cookie ${file}: ${(err as Error).message}${hint}`);
      }
      if (cookie.length !== 32) throw new TorControlError('auth', `Tor's control cookie ${file} has ${cookie.length} bytes, expected 32`);
      if (has('SAFECOOKIE')) {
        line = `AUTHENTICATE ${await this.safeCookie(cookie)}`;
        how = `the cookie ${file} (SAFECOOKIE)`;
      } else {
        line = `AUTHENTICATE ${cookie.toString('hex')}`;
        how = `the cookie ${file}`;
      }
    } else if (has('HASHEDPASSWORD')) {
      throw new TorControlError('auth', `Tor at ${where} asks for a control password: set [tor] control_password (or --tor-password-stdin)`);
    } else {
      throw new TorControlError('auth', `Tor at ${where} offers no authentication method we support (${info.methods.join(', ')})`);
    }
    const reply = await this.send(line);
    if (reply.status !== 250) {
      throw new TorControlError(
        'auth',
        `Tor at ${where} refused authentication with ${how}: ${reply.status} ${reply.lines.join(' ')}` +
          (how === 'the control password' ? ' (check [tor] control_password against HashedControlPassword in torrc)' : ''),
        reply.status,
      );
    }
  }

  private async safeCookie(cookie: Buffer): Promise<string> {
    const clientNonce = randomBytes(32);
    const reply = await this.send(`AUTHCHALLENGE SAFECOOKIE ${clientNonce.toString('hex')}`);
    const m = /^AUTHCHALLENGE SERVERHASH=([0-9A-Fa-f]{64}) SERVERNONCE=([0-9A-Fa-f]{64})$/.exec(reply.lines[0] ?? '');
    if (reply.status !== 250 || !m) {
      throw new TorControlError('auth', `Tor refused AUTHCHALLENGE: ${reply.status} ${reply.lines.join(' ')}`, reply.status);
    }
    const serverNonce = Buffer.from(m[2]!, 'hex');
    const material = Buffer.concat([cookie, clientNonce, serverNonce]);
    const expected = createHmac('sha256', SAFECOOKIE_SERVER_KEY).update(material).digest();
    if (!timingSafeEqual(expected, Buffer.from(m[1]!, 'hex'))) {
      throw new TorControlError('auth', `the process at ${formatControlAddress(this.address)} does not know Tor's cookie (SAFECOOKIE server hash mismatch): is it really Tor, and is the cookie file the right one?`);
    }
    return createHmac('sha256', SAFECOOKIE_CLIENT_KEY).update(material).digest('hex');
  }

  private send(line: string): Promise<ControlReply> {
    if (this.closedError) return Promise.reject(this.closedError);
    if (/[\r\n]/.test(line)) return Promise.reject(new TorControlError('protocol', 'a control command cannot contain a line break'));
    return new Promise((resolve, reject) => {
      const entry: Pending = { command: line.split(' ', 1)[0]!, resolve, reject, timer: null };
      entry.timer = setTimeout(() => {
        this.fail(new TorControlError('timeout', `Tor did not answer ${entry.command} within ${this.commandTimeoutMs} ms`));
        this.socket.destroy();
      }, this.commandTimeoutMs);
      this.pending.push(entry);
      this.socket.write(`${line}\r\n`);
    });
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    if (this.buffer.length > 1_000_000) {
      this.fail(new TorControlError('protocol', 'reply from Tor too long'));
      this.socket.destroy();
      return;
    }
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).replace(/\r$/, '');
      this.buffer = this.buffer.slice(nl + 1);
      this.onLine(line);
    }
  }

  private onLine(line: string): void {
    const cur = this.current;
    if (cur.data) {
      if (line === '.') {
        cur.lines[cur.lines.length - 1] += `\n${cur.data.join('\n')}`;
        cur.data = null;
      } else cur.data.push(line.startsWith('..') ? line.slice(1) : line);
      return;
    }
    const m = /^(\d{3})([ +-])(.*)$/.exec(line);
    if (!m) {
      this.fail(new TorControlError('protocol', `unexpected line from Tor: ${JSON.stringify(line.slice(0, 100))}`));
      this.socket.destroy();
      return;
    }
    const status = Number(m[1]);
    if (status >= 600) return; // asynchronous event: not ours
    cur.lines.push(m[3]!);
    if (m[2] === '+') cur.data = [];
    else if (m[2] === ' ') {
      this.current = { lines: [], data: null };
      const p = this.pending.shift();
      if (p) {
        if (p.timer) clearTimeout(p.timer);
        p.resolve({ status, lines: cur.lines });
      }
    }
  }

  private fail(err: TorControlError): void {
    const first = !this.closedError;
    this.closedError ??= err;
    for (const p of this.pending.splice(0)) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(err);
    }
    if (first) this.emit('close', err);
  }
}

function connectError(address: ControlAddress, err: NodeJS.ErrnoException): TorControlError {
  const where = formatControlAddress(address);
  switch (err.code) {
    case 'ECONNREFUSED':
    case 'ENOENT':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EADDRNOTAVAIL':
      return new TorControlError(
        'unreachable',
        `no Tor control port at ${where} (${err.code}): is tor running with "ControlPort ${address.kind === 'unix' ? `unix:${address.path}` : address.port}" and CookieAuthentication 1 (or HashedControlPassword) in its torrc?`,
      );
    case 'EACCES':
      return new TorControlError('unreachable', `permission denied for Tor's control socket ${where}: run onionpost as a user in tor's group`);
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new TorControlError('unreachable', `cannot resolve the control port host of ${where}: use an IP address`);
    default:
      return new TorControlError('unreachable', `cannot connect to Tor's control port ${where}: ${err.message}`);
  }
}
