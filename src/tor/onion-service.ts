/**
 * Our onion service: its key on disk, and keeping it published through Tor's control port.
 *
 * Key storage: `<data_dir>/onion/` is laid out like a Tor HiddenServiceDir (v3), so an admin
 * can hand it to a torrc later (copy it, owned by tor's user), or back:
 *   hs_ed25519_secret_key   "== ed25519v1-secret: type0 ==" NUL-padded to 32 bytes, then the
 *                           64-byte expanded secret key (what ADD_ONION's ED25519-V3 carries)
 *   hs_ed25519_public_key   "== ed25519v1-public: type0 ==" NUL-padded, then 32 bytes
 *   hostname                "<56 chars>.onion\n"
 * The directory is 0700 and the secret key 0600.
 *
 * Publishing: the onion is added without Flags=Detach, so it lives exactly as long as our
 * control connection: the daemon adds it at each start, tor drops it when the daemon exits
 * (or crashes), and nothing is left behind in tor. When the connection is lost (tor restarts)
 * or cannot be made, OnionPublisher retries with backoff (1 s doubling to 60 s) and logs each
 * state change once, loudly.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../log/logger.js';
import { TorControlClient, TorControlError, formatControlAddress, type ControlAddress, type ControlAuth, type OnionPort } from './control-client.js';
import { isValidV3OnionAddress } from './onion-address.js';

export const ONION_DIR_NAME = 'onion';
const SECRET_FILE = 'hs_ed25519_secret_key';
const PUBLIC_FILE = 'hs_ed25519_public_key';
const HOSTNAME_FILE = 'hostname';

function tag(kind: 'secret' | 'public'): Buffer {
  const header = Buffer.alloc(32);
  header.write(`== ed25519v1-${kind}: type0 ==`, 'latin1');
  return header;
}

export interface StoredOnionKey {
  /** "ED25519-V3:<base64>" as ADD_ONION wants it. */
  key: string;
  /** "<56 chars>.onion". */
  hostname: string;
}

export class OnionKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OnionKeyError';
  }
}

/** The directory holding our onion key. */
export function onionKeyDir(dataDir: string): string {
  return path.join(dataDir, ONION_DIR_NAME);
}

/** The stored key, or null when the directory has no secret key. Throws OnionKeyError when it is damaged. */
export async function readOnionKey(dir: string): Promise<StoredOnionKey | null> {
  let raw: Buffer;
  try {
    raw = await readFile(path.join(dir, SECRET_FILE));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new OnionKeyError(`cannot read the onion key ${path.join(dir, SECRET_FILE)}: ${(err as Error).message}`);
  }
  if (raw.length !== 96 || !raw.subarray(0, 32).equals(tag('secret'))) {
    throw new OnionKeyError(`${path.join(dir, SECRET_FILE)} is not a Tor v3 onion secret key (expected 96 bytes starting with "== ed25519v1-secret: type0 ==")`);
  }
  let hostname: string;
  try {
    hostname = (await readFile(path.join(dir, HOSTNAME_FILE), 'utf8')).trim().toLowerCase();
  } catch (err) {
    throw new OnionKeyError(`the onion key in ${dir} has no readable hostname file: ${(err as Error).message}`);
  }
  if (!isValidV3OnionAddress(hostname) || hostname.split('.').length !== 2) {
    throw new OnionKeyError(`${path.join(dir, HOSTNAME_FILE)} does not hold a v3 onion address: ${JSON.stringify(hostname.slice(0, 80))}`);
  }
  return { key: `ED25519-V3:${raw.subarray(32).toString('base64')}`, hostname };
}

/** Stores a key returned by ADD_ONION NEW:ED25519-V3 with its service id. Never overwrites. */
export async function writeOnionKey(dir: string, key: string, serviceId: string): Promise<StoredOnionKey> {
  const hostname = `${serviceId}.onion`;
  if (!isValidV3OnionAddress(hostname)) throw new OnionKeyError(`not a v3 onion service id: ${serviceId}`);
  const secret = Buffer.from(key.replace(/^ED25519-V3:/, ''), 'base64');
  if (secret.length !== 64) throw new OnionKeyError('an ED25519-V3 key has 64 bytes');
  const pub = base32Decode(serviceId).subarray(0, 32);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  // The hostname and public key first: a secret key file without them would be unusable.
  await writeAtomic(path.join(dir, HOSTNAME_FILE), Buffer.from(`${hostname}\n`), 0o600, true);
  await writeAtomic(path.join(dir, PUBLIC_FILE), Buffer.concat([tag('public'), pub]), 0o600, true);
  await writeAtomic(path.join(dir, SECRET_FILE), Buffer.concat([tag('secret'), secret]), 0o600, false);
  return { key, hostname };
}

/** Reads `<dir>/hostname` of a Tor HiddenServiceDir and checks it is a v3 onion name. */
export async function readHiddenServiceHostname(dir: string): Promise<string> {
  const file = path.join(dir, HOSTNAME_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const hint =
      code === 'ENOENT'
        ? ': tor writes it when it (re)loads a torrc with this HiddenServiceDir; reload tor first (systemctl reload tor / service tor reload)'
        : code === 'EACCES'
          ? ': permission denied (the directory belongs to tor; run this as root)'
          : '';
    throw new OnionKeyError(`cannot read ${file}${hint} (${(err as Error).message})`);
  }
  const name = text.trim().toLowerCase();
  if (!isValidV3OnionAddress(name) || name.split('.').length !== 2) {
    throw new OnionKeyError(`${file} does not hold a v3 onion address (56 characters + ".onion"): ${JSON.stringify(name.slice(0, 80))}`);
  }
  return name;
}

const B32 = 'abcdefghijklmnopqrstuvwxyz234567';
function base32Decode(text: string): Buffer {
  const out: number[] = [];
  let bits = 0;
  let value = 0;
  for (const ch of text) {
    value = ((value << 5) | B32.indexOf(ch)) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

async function writeAtomic(file: string, data: Buffer, mode: number, replace: boolean): Promise<void> {
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    if (!replace) {
      // Never replace a secret key: that would change the address for good.
      const existing = await readFile(file).catch(() => null);
      if (existing) throw new OnionKeyError(`${file} exists already; not overwriting an onion key`);
    }
    await rename(tmp, file);
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
  const dh = await open(path.dirname(file), 'r');
  try {
    await dh.sync().catch(() => undefined);
  } finally {
    await dh.close();
  }
}

/**
 * The onion's virtual ports and where they go: 25 -> the SMTP listener, 143 -> IMAP,
 * 465 -> submission over TLS, 587 -> submission, 993 -> IMAP over TLS. Listeners that are
 * off (port 0) are left out. A wildcard bind address is reached on loopback.
 */
export function onionPortMap(listeners: Array<{ name: string; host: string; port: number }>): OnionPort[] {
  const VIRTUAL: Record<string, number> = { smtp: 25, imap: 143, submissions: 465, submission: 587, imaps: 993 };
  const out: OnionPort[] = [];
  for (const l of listeners) {
    const virtualPort = VIRTUAL[l.name];
    if (virtualPort === undefined || l.port === 0) continue;
    const host = l.host === '0.0.0.0' || l.host === '::' || l.host === '' ? '127.0.0.1' : l.host;
    out.push({ virtualPort, target: host.includes(':') ? `[${host}]:${l.port}` : `${host}:${l.port}` });
  }
  return out.sort((a, b) => a.virtualPort - b.virtualPort);
}

export type OnionState = 'starting' | 'published' | 'retrying' | 'failed' | 'stopped';

export interface OnionStatus {
  address: string;
  state: OnionState;
  control: string;
  /** Last error while not published. */
  error: string | null;
  /** Since when in this state (epoch ms). */
  since: number;
}

export interface OnionPublisherOptions {
  control: ControlAddress;
  auth: ControlAuth;
  key: StoredOnionKey;
  ports: OnionPort[];
  logger: Logger;
  /** First retry delay, ms (default 1000); doubles up to maxRetryMs (default 60 s). */
  retryMs?: number;
  maxRetryMs?: number;
}

export class OnionPublisher {
  private client: TorControlClient | null = null;
  private timer: NodeJS.Timeout | null = null;
  private delay: number;
  private stopped = false;
  private status: OnionStatus;
  private settled: Array<() => void> = [];
  private attempt: Promise<void> | null = null;

  constructor(private options: OnionPublisherOptions) {
    this.delay = options.retryMs ?? 1000;
    this.status = { address: options.key.hostname, state: 'starting', control: formatControlAddress(options.control), error: null, since: Date.now() };
  }

  get address(): string {
    return this.options.key.hostname;
  }

  state(): OnionStatus {
    return { ...this.status };
  }

  /**
   * Starts publishing; resolves after the first attempt (published or not) or after
   * `waitMs`, whichever comes first. Later attempts run in the background.
   */
  async start(waitMs = 10_000): Promise<OnionStatus> {
    const first = new Promise<void>((resolve) => this.settled.push(resolve));
    this.kick();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([first, new Promise<void>((resolve) => (timer = setTimeout(resolve, waitMs)))]);
    clearTimeout(timer);
    return this.state();
  }

  /** New control settings or port map (SIGHUP): re-publishes when something changed. */
  async update(changes: { control: ControlAddress; auth: ControlAuth; ports: OnionPort[] }): Promise<void> {
    const o = this.options;
    const same =
      formatControlAddress(o.control) === formatControlAddress(changes.control) &&
      (o.auth.password ?? '') === (changes.auth.password ?? '') &&
      (o.auth.cookieFile ?? '') === (changes.auth.cookieFile ?? '') &&
      JSON.stringify(o.ports) === JSON.stringify(changes.ports);
    if (same || this.stopped) return;
    this.options = { ...o, ...changes };
    this.status.control = formatControlAddress(changes.control);
    this.options.logger.info({ control: this.status.control }, 'onion: Tor settings changed; publishing again');
    await this.attempt?.catch(() => undefined);
    this.client?.removeAllListeners('close');
    this.client?.close();
    this.client = null;
    this.delay = this.options.retryMs ?? 1000;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.kick();
  }

  /** Removes the onion (DEL_ONION) and closes the control connection. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    // An attempt in flight closes its own connection once it sees `stopped`; do not wait
    // long for a Tor that hangs.
    if (this.attempt) await Promise.race([this.attempt.catch(() => undefined), new Promise((r) => setTimeout(r, 3000).unref())]);
    const client = this.client;
    this.client = null;
    if (client && !client.closed) {
      client.removeAllListeners('close');
      // Closing the connection removes a non-detached onion too; DEL_ONION makes it immediate.
      await Promise.race([client.delOnion(this.address).catch(() => undefined), new Promise((r) => setTimeout(r, 2000))]);
      client.close();
    }
    this.setState('stopped', null);
  }

  private kick(): void {
    if (this.stopped || this.attempt) return;
    this.attempt = this.publish().finally(() => {
      this.attempt = null;
    });
  }

  private async publish(): Promise<void> {
    const { control, auth, key, ports, logger } = this.options;
    let client: TorControlClient | null = null;
    try {
      client = await TorControlClient.connect(control, auth, { timeoutMs: 10_000 });
      const { serviceId } = await client.addOnion({ key: key.key, ports, detach: false });
      if (`${serviceId}.onion` !== key.hostname) {
        // Tor derived another address from our key: the hostname file does not belong to it.
        await client.delOnion(serviceId).catch(() => undefined);
        client.close();
        this.setState('failed', `the onion key gives ${serviceId}.onion but the hostname file says ${key.hostname}; restore the matching files`);
        logger.error({ onion: key.hostname, actual: `${serviceId}.onion` }, 'onion: key and hostname do not match; not publishing');
        this.settle();
        return;
      }
      if (this.stopped) {
        client.close();
        return;
      }
      this.client = client;
      this.delay = this.options.retryMs ?? 1000;
      client.once('close', (err: TorControlError) => {
        if (this.stopped || this.client !== client) return;
        this.client = null;
        this.setState('retrying', `lost the control connection: ${err.message}`);
        logger.error({ onion: key.hostname, err: err.message }, 'onion: Tor control connection lost; the onion is down until it is back; retrying');
        this.schedule();
      });
      this.setState('published', null);
      logger.info({ onion: key.hostname, control: formatControlAddress(control), ports: ports.map((p) => `${p.virtualPort}->${p.target}`) }, 'onion: service published through Tor');
    } catch (err) {
      client?.close();
      const message = err instanceof Error ? err.message : String(err);
      const wasRetrying = this.status.state === 'retrying' && this.status.error === message;
      this.setState('retrying', message);
      if (!wasRetrying) {
        logger.error(
          { onion: key.hostname, control: formatControlAddress(control), err: message },
          `onion: cannot publish ${key.hostname} through Tor; mail cannot reach this server through the onion until it works; retrying in the background`,
        );
      } else logger.debug({ err: message }, 'onion: still cannot publish');
      this.schedule();
    }
    this.settle();
  }

  private schedule(): void {
    if (this.stopped || this.timer) return;
    const delay = this.delay;
    this.delay = Math.min(this.delay * 2, this.options.maxRetryMs ?? 60_000);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.kick();
    }, delay);
    this.timer.unref();
  }

  private settle(): void {
    for (const s of this.settled.splice(0)) s();
  }

  private setState(state: OnionState, error: string | null): void {
    if (this.status.state !== state || this.status.error !== error) this.status = { ...this.status, state, error, since: Date.now() };
  }
}
