/**
 * `onionpost init`: everything between "Tor is installed" and "add a user":
 *
 * 1. The config file (./onionpost.toml or --config FILE): written from the commented example
 *    when missing (or with --force); an existing one is kept and only the keys init decides
 *    (domain, [tor] settings given on the command line) are edited in place, comments intact.
 * 2. The data dir (0700).
 * 3. The onion service, first match wins:
 *    --domain NAME             no onion: NAME is the mail domain (tests, LAN setups)
 *    --onion-dir DIR           a torrc HiddenServiceDir: DIR/hostname is the domain
 *    <data_dir>/onion/ has a key   that onion again (init is safe to re-run)
 *    Tor's control port reachable  ADD_ONION NEW:ED25519-V3, key stored in <data_dir>/onion/
 *    otherwise                 prints the torrc lines and the `--onion-dir` command to run next
 * 4. The domain goes into the config; the self-signed certificate is (re)issued for it.
 * 5. When run as root with [daemon] user set, the data dir is given to that user.
 * A daemon running on the data dir makes init refuse (it would change things under it).
 */
import { X509Certificate } from 'node:crypto';
import { chmodSync, closeSync, existsSync, fsyncSync, linkSync, mkdirSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { setConfigKey } from '../config/edit.js';
import { loadConfig } from '../config/load.js';
import { parseControlAddress, formatControlAddress, type ControlAddress } from '../config/tor-address.js';
import { ensureCertificate } from '../tls/certificate.js';
import { TorControlClient, TorControlError } from '../tor/control-client.js';
import { isOnionDomain, isValidV3OnionAddress } from '../tor/onion-address.js';
import { onionKeyDir, onionPortMap, readHiddenServiceHostname, readOnionKey, writeOnionKey, OnionKeyError } from '../tor/onion-service.js';
import { CliError, type CliIO, type CommandGroup } from './command.js';
import { PidFile } from './instance-lock.js';
import { chownTree, configuredAccount } from './privileges.js';
import { readOneLine } from './user.js';

export const INIT_USAGE = `usage: onionpost init [--config FILE] [options]

Creates the config file (./onionpost.toml or --config FILE), the data dir, a self-signed
TLS certificate, and the onion service whose address becomes the mail domain.

options:
  --data-dir DIR         data directory of a new config file (default: "data" beside it)
  --tor-control ADDR     Tor's control port: HOST:PORT or unix:/PATH (default: [tor] control,
                         127.0.0.1:9051); saved in the config
  --tor-cookie FILE      Tor's control cookie file (default: the one Tor names); saved
  --tor-password-stdin   read Tor's control password (HashedControlPassword) from standard
                         input; saved in the config, which is then made private (0600)
  --onion-dir DIR        use the onion of a torrc HiddenServiceDir: reads DIR/hostname
  --no-tor               do not contact Tor: print the torrc lines to add instead
  --domain NAME          use NAME as the mail domain, no onion service
  --force                rewrite an existing config file from scratch

Without a reachable control port, init prints the torrc lines (HiddenServiceDir,
HiddenServicePort); after reloading Tor, run \`onionpost init --onion-dir DIR\`.
`;

interface InitArgs {
  dataDir: string | null;
  torControl: string | null;
  torCookie: string | null;
  torPasswordStdin: boolean;
  onionDir: string | null;
  noTor: boolean;
  domain: string | null;
  force: boolean;
  help: boolean;
}

function parseInitArgs(args: string[]): InitArgs {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        'data-dir': { type: 'string' },
        'tor-control': { type: 'string' },
        'tor-cookie': { type: 'string' },
        'tor-password-stdin': { type: 'boolean' },
        'onion-dir': { type: 'string' },
        'no-tor': { type: 'boolean' },
        domain: { type: 'string' },
        force: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new CliError(`init: ${(err as Error).message}\n\n${INIT_USAGE}`, 64);
  }
  const a: InitArgs = {
    dataDir: values['data-dir'] ?? null,
    torControl: values['tor-control'] ?? null,
    torCookie: values['tor-cookie'] ?? null,
    torPasswordStdin: values['tor-password-stdin'] ?? false,
    onionDir: values['onion-dir'] ?? null,
    noTor: values['no-tor'] ?? false,
    domain: values.domain?.toLowerCase() ?? null,
    force: values.force ?? false,
    help: values.help ?? false,
  };
  if (a.domain !== null && !(DOMAIN_RE.test(a.domain) && (!isOnionDomain(a.domain) || isValidV3OnionAddress(a.domain)))) {
    throw new CliError(`init: --domain ${JSON.stringify(a.domain)} is not a domain name${isOnionDomain(a.domain) ? ' (not a valid v3 onion address)' : ''}`, 64);
  }
  if (a.domain !== null && a.onionDir !== null) throw new CliError('init: --domain and --onion-dir exclude each other: the onion address is the domain', 64);
  if (a.torControl !== null) {
    try {
      parseControlAddress(a.torControl);
    } catch (err) {
      throw new CliError(`init: --tor-control ${(err as Error).message}`, 64);
    }
  }
  return a;
}

const DOMAIN_RE = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

function exampleConfigText(): string {
  const example = new URL('../../../config/onionpost.example.toml', import.meta.url);
  try {
    return readFileSync(example, 'utf8');
  } catch {
    return '# onionpost configuration; every key is documented in config/onionpost.example.toml\ndata_dir = "data"\ndomain = "localhost"\n';
  }
}

/** Writes `text` to `file` atomically; without `replace`, fails if the file exists. */
function writeConfigFile(file: string, text: string, mode: number, replace: boolean): void {
  const tmp = `${file}.${process.pid}.tmp`;
  const fd = openSync(tmp, 'w', mode);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    chmodSync(tmp, mode);
    if (replace) renameSync(tmp, file);
    else {
      try {
        linkSync(tmp, file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new CliError(`${file} appeared meanwhile; not overwriting it`, 73);
        throw err;
      }
    }
  } finally {
    try {
      unlinkSync(tmp);
    } catch {
      /* renamed */
    }
  }
}

function torrcHints(): { torrc: string; dir: string; reload: string } {
  const bsd = process.platform === 'freebsd' || process.platform === 'openbsd' || process.platform === 'netbsd';
  return bsd
    ? { torrc: '/usr/local/etc/tor/torrc', dir: '/var/db/tor/onionpost', reload: 'service tor reload' }
    : { torrc: '/etc/tor/torrc', dir: '/var/lib/tor/onionpost', reload: 'systemctl reload tor' };
}

const init: CommandGroup = async (args, ctx) => {
  const a = parseInitArgs(args);
  const out = ctx.io.stdout;
  if (a.help) {
    out.write(INIT_USAGE);
    return 0;
  }
  const password = a.torPasswordStdin ? await readPassword(ctx.io) : null;

  // 1. The config file.
  const defaultFile = path.resolve('onionpost.toml');
  const configFile = path.resolve(ctx.configFile() ?? defaultFile);
  // How to name the config in the commands we suggest: nothing when it is found by default.
  const cfg = configFile === defaultFile ? '' : ` --config ${configFile}`;
  const existed = existsSync(configFile);
  let text: string;
  let wroteConfig: 'written' | 'rewritten' | 'kept' | 'updated';
  if (existed && !a.force) {
    text = readFileSync(configFile, 'utf8');
    loadConfig(configFile); // a broken config stops here (exit 2), before anything is created
    if (a.dataDir !== null) throw new CliError(`init: ${configFile} exists; --data-dir only applies to a new config (edit data_dir in it, or use --force)`, 64);
    wroteConfig = 'kept';
  } else {
    text = `# Written by \`onionpost init\`; edit freely. Every key is shown with its default.\n${exampleConfigText()}`;
    if (a.dataDir !== null) text = setConfigKey(text, 'data_dir', a.dataDir);
    wroteConfig = existed ? 'rewritten' : 'written';
  }
  const original = text;
  if (a.torControl !== null) text = setConfigKey(text, 'tor.control', a.torControl);
  if (a.torCookie !== null) text = setConfigKey(text, 'tor.cookie_file', path.resolve(a.torCookie));
  if (password !== null) text = setConfigKey(text, 'tor.control_password', password);
  let onDisk = existed;
  const save = (): void => {
    // A config holding a password is private; otherwise an existing file keeps its mode.
    const privateConfig = /^\s*control_password\s*=\s*"[^"]/m.test(text);
    const mode = privateConfig ? 0o600 : onDisk ? statSync(configFile).mode & 0o777 : 0o644;
    mkdirSync(path.dirname(configFile), { recursive: true });
    writeConfigFile(configFile, text, mode, onDisk);
    onDisk = true;
    if (wroteConfig === 'kept') wroteConfig = 'updated';
  };
  if (wroteConfig !== 'kept' || text !== original) save();
  let config = loadConfig(configFile);

  // 2. The data dir, and nobody else working on it.
  try {
    mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new CliError(`cannot create the data dir ${config.dataDir}: ${(err as Error).message}`, 73);
  }
  const lock = PidFile.acquire(path.join(config.dataDir, 'onionpost.pid'), `the data dir ${config.dataDir} (init changes it: stop the daemon first)`);
  try {
    // 3. The domain.
    let domain = config.domain;
    let onionNote: string;
    let pending = false;
    const keyDir = onionKeyDir(config.dataDir);
    const ports = onionPortMap([
      { name: 'smtp', ...config.smtp.inbound },
      { name: 'submission', ...config.submission.starttls },
      { name: 'submissions', ...config.submission.tls },
      { name: 'imap', ...config.imap.plain },
      { name: 'imaps', ...config.imap.tls },
    ]);
    const stored = await readOnionKey(keyDir).catch((err: unknown) => {
      throw new CliError((err as Error).message, 65);
    });
    const control: ControlAddress | null = a.torControl !== null ? parseControlAddress(a.torControl) : config.tor.control;
    if (a.domain !== null) {
      domain = a.domain;
      onionNote = 'set with --domain (no onion service)';
    } else if (a.onionDir !== null) {
      domain = await readHiddenServiceHostname(path.resolve(a.onionDir)).catch((err: unknown) => {
        throw new CliError(err instanceof OnionKeyError ? err.message : String(err), 66);
      });
      onionNote = `onion service of the torrc HiddenServiceDir ${path.resolve(a.onionDir)}`;
      if (stored && stored.hostname !== domain) {
        out.write(`note: ${keyDir} holds the key of another onion (${stored.hostname}); onionpost start will publish that one too. Remove that directory if you do not want it.\n`);
      }
    } else if (stored) {
      domain = stored.hostname;
      onionNote = `onion service key in ${keyDir} (kept; published at each start through Tor's control port)`;
    } else if (!a.noTor && control) {
      const created = await createOnion(control, { password: password ?? config.tor.controlPassword, cookieFile: a.torCookie ? path.resolve(a.torCookie) : config.tor.cookieFile }, ports);
      if (created.kind === 'created') {
        const saved = await writeOnionKey(keyDir, created.key, created.serviceId).catch((err: unknown) => {
          throw new CliError(`cannot store the onion key: ${(err as Error).message}`, 73);
        });
        domain = saved.hostname;
        onionNote = `new onion service, created through Tor's control port ${formatControlAddress(control)}; key in ${keyDir}`;
      } else {
        pending = true;
        onionNote = `not set up yet: ${created.reason}`;
      }
    } else {
      pending = true;
      onionNote = a.noTor ? 'not set up yet (--no-tor)' : 'not set up yet ([tor] control is empty)';
    }

    if (domain !== config.domain) {
      text = setConfigKey(text, 'domain', domain);
      save();
      config = loadConfig(configFile);
    }

    // 4. The certificate, for the final domain.
    let certNote: string;
    if (!config.tls.configured && existsSync(config.tls.cert)) {
      let forDomain = false;
      try {
        forDomain = new X509Certificate(readFileSync(config.tls.cert)).checkHost(config.domain) !== undefined;
      } catch {
        forDomain = false;
      }
      if (!forDomain) unlinkSync(config.tls.cert); // ours, for another name: reissued below for the same key
    }
    try {
      const tls = await ensureCertificate({ certFile: config.tls.cert, keyFile: config.tls.key, domain: config.domain, generate: !config.tls.configured });
      const x = new X509Certificate(tls.cert);
      const forDomain = x.checkHost(config.domain) !== undefined;
      certNote = `${config.tls.cert} (${tls.generated ? 'new, ' : ''}${config.tls.configured ? 'yours' : 'self-signed'}${forDomain ? ` for ${config.domain}` : `, NOT for ${config.domain}`})\n               SHA-256 ${x.fingerprint256}`;
    } catch (err) {
      throw new CliError(`certificate: ${(err as Error).message}`, 65);
    }

    // 5. Ownership for a daemon that drops privileges.
    const account = configuredAccount(config.daemon);
    let ownerNote = '';
    if (account && process.getuid?.() === 0) {
      chownTree(config.dataDir, account.uid, account.gid);
      ownerNote = ` (owned by ${account.name})`;
    }

    out.write(`onionpost init\n`);
    out.write(`  config       ${configFile} (${wroteConfig})\n`);
    out.write(`  data         ${config.dataDir}${ownerNote}\n`);
    out.write(`  domain       ${config.domain}\n`);
    out.write(`  onion        ${onionNote}\n`);
    if (pending || isOnionDomain(config.domain)) out.write(`  onion ports  ${ports.map((p) => `${p.virtualPort} -> ${p.target}`).join(', ')}\n`);
    out.write(`  certificate  ${certNote}\n`);
    if (pending) {
      const h = torrcHints();
      const hsDir = h.dir;
      out.write(
        `\nThe onion service is not set up yet. Either enable Tor's control port (torrc: "ControlPort 9051" and\n` +
          `"CookieAuthentication 1") and run \`onionpost init\` again, or add these lines to ${h.torrc}:\n\n` +
          `HiddenServiceDir ${hsDir}/\n` +
          ports.map((p) => `HiddenServicePort ${p.virtualPort} ${p.target}\n`).join('') +
          `\nthen reload Tor (${h.reload}) and run:\n\n` +
          `  onionpost${cfg} init --onion-dir ${hsDir}\n`,
      );
      return 0;
    }
    out.write(`\nNext:\n  onionpost${cfg} user add alice\n  onionpost${cfg} start\n`);
    return 0;
  } finally {
    lock.release();
  }
};

export default init;

type Created = { kind: 'created'; serviceId: string; key: string } | { kind: 'unavailable'; reason: string };

/** ADD_ONION NEW:ED25519-V3 (non-detached: it disappears again when we close the connection). */
async function createOnion(control: ControlAddress, auth: { password: string; cookieFile: string | null }, ports: ReturnType<typeof onionPortMap>): Promise<Created> {
  let client: TorControlClient;
  try {
    client = await TorControlClient.connect(control, { password: auth.password || null, cookieFile: auth.cookieFile }, { timeoutMs: 10_000 });
  } catch (err) {
    if (err instanceof TorControlError && (err.kind === 'unreachable' || err.kind === 'timeout')) return { kind: 'unavailable', reason: err.message };
    throw new CliError(`Tor: ${(err as Error).message}`, 69);
  }
  try {
    const { serviceId, privateKey } = await client.addOnion({ key: 'NEW', ports, detach: false });
    // Only the key matters: `onionpost start` publishes the onion with it.
    await client.delOnion(serviceId).catch(() => undefined);
    return { kind: 'created', serviceId, key: privateKey! };
  } catch (err) {
    throw new CliError(`Tor: ${(err as Error).message}`, 69);
  } finally {
    client.close();
  }
}

async function readPassword(io: CliIO): Promise<string> {
  const line = await readOneLine(io.stdin);
  if (line === null || line === '') throw new CliError('--tor-password-stdin: give the control password as one line on standard input', 65);
  return line;
}
