/** Config file -> validated, typed Config. Every error names the key, the value and what is allowed. */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { parseDuration } from './duration.js';
import { KEYS, type KeyKind, type KeySpec } from './schema.js';
import { parseControlAddress, type ControlAddress } from './tor-address.js';
import type { Config, LogLevel } from './types.js';

export class ConfigError extends Error {
  readonly exitCode = 2;
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export type Value = string | number | boolean | string[];
type TomlTable = { [key: string]: unknown };

const DOMAIN_RE = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;
const HOSTNAME_RE = DOMAIN_RE;
const SIZE_RE = /^(\d+)\s*([kmgt]?)i?b?$/i;

function showSize(bytes: number): string {
  for (const [unit, n] of [['T', 1024 ** 4], ['G', 1024 ** 3], ['M', 1024 ** 2], ['K', 1024]] as const) {
    if (bytes >= n && bytes % n === 0) return `${bytes / n}${unit}`;
  }
  return String(bytes);
}

function show(value: unknown): string {
  return JSON.stringify(value) ?? String(value);
}

function fail(where: string, spec: KeySpec, value: unknown, allowed: string): never {
  throw new ConfigError(`${where}: key "${spec.key}": value ${show(value)} is not allowed: ${allowed}`);
}

function validate(where: string, spec: KeySpec, raw: unknown): Value {
  const kind: KeyKind = spec.kind;
  switch (kind.type) {
    case 'string':
      if (typeof raw !== 'string' || (!kind.allowEmpty && raw.trim() === '')) {
        fail(where, spec, raw, kind.allowEmpty ? 'expected a string' : 'expected a non-empty string');
      }
      return raw;
    case 'host':
      if (typeof raw !== 'string' || !(isIP(raw) !== 0 || HOSTNAME_RE.test(raw.toLowerCase()))) {
        fail(where, spec, raw, 'expected an IP address such as "127.0.0.1" or "::1", or a host name');
      }
      return raw;
    case 'port':
      if (typeof raw !== 'number' || !Number.isInteger(raw) || raw < 0 || raw > 65535) {
        fail(where, spec, raw, 'expected an integer port from 1 to 65535, or 0 to disable');
      }
      return raw;
    case 'int':
      if (typeof raw !== 'number' || !Number.isInteger(raw) || raw < kind.min || raw > kind.max) {
        fail(where, spec, raw, `expected an integer from ${kind.min} to ${kind.max}`);
      }
      return raw;
    case 'size': {
      const allowed = 'expected a size in bytes (an integer) or a string such as "25M", "512K", "1G"';
      let bytes: number;
      if (typeof raw === 'number' && Number.isInteger(raw)) bytes = raw;
      else if (typeof raw === 'string' && SIZE_RE.test(raw.trim())) {
        const m = SIZE_RE.exec(raw.trim())!;
        const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
        bytes = Number(m[1]) * mult;
      } else fail(where, spec, raw, allowed);
      const [min, max] = [kind.min ?? 1024, kind.max ?? 2 * 1024 ** 3];
      if (bytes < min || bytes > max) fail(where, spec, raw, `${allowed}, between ${showSize(min)} and ${showSize(max)}`);
      return bytes;
    }
    case 'domain': {
      if (typeof raw !== 'string' || !DOMAIN_RE.test(raw.toLowerCase())) {
        fail(where, spec, raw, 'expected a domain name such as "example.onion" or "localhost"');
      }
      return raw.toLowerCase();
    }
    case 'domains': {
      if (!Array.isArray(raw) || raw.some((d) => typeof d !== 'string' || !DOMAIN_RE.test(d.toLowerCase()))) {
        fail(where, spec, raw, 'expected a list of domain names, e.g. ["example.onion", "mail.example"]');
      }
      return (raw as string[]).map((d) => d.toLowerCase());
    }
    case 'bool':
      if (typeof raw !== 'boolean') fail(where, spec, raw, 'expected true or false (without quotes)');
      return raw;
    case 'enum':
      if (typeof raw !== 'string' || !kind.values.includes(raw)) {
        fail(where, spec, raw, `expected one of ${kind.values.map((v) => `"${v}"`).join(', ')}`);
      }
      return raw;
    case 'duration': {
      const allowed = `expected a duration such as "90s", "15m", "4h", "5d" (between ${kind.min / 1000}s and ${kind.max / 86_400_000}d)${kind.allowOff ? ', or "" to turn it off' : ''}`;
      if (kind.allowOff && (raw === '' || raw === '0' || raw === 0)) return '';
      const ms = typeof raw === 'string' ? parseDuration(raw) : null;
      if (ms === null || ms < kind.min || ms > kind.max) fail(where, spec, raw, allowed);
      return raw as string;
    }
    case 'durations': {
      const allowed = `expected a list of durations such as ["1m", "5m", "1h"] (each between ${kind.min / 1000}s and ${kind.max / 86_400_000}d)`;
      if (!Array.isArray(raw) || raw.length === 0) fail(where, spec, raw, allowed);
      for (const d of raw as unknown[]) {
        const ms = typeof d === 'string' ? parseDuration(d) : null;
        if (ms === null || ms < kind.min || ms > kind.max) fail(where, spec, raw, allowed);
      }
      return raw as string[];
    }
    case 'hostport': {
      if (typeof raw === 'string' && raw.trim() === '' && kind.allowEmpty) return '';
      if (typeof raw !== 'string' || parseHostPort(raw) === null) {
        fail(where, spec, raw, `expected "IP:PORT" such as "127.0.0.1:9050" (an IP address, not a name)${kind.allowEmpty ? ', or ""' : ''}`);
      }
      return raw.trim();
    }
  }
}

/** "127.0.0.1:9050" / "[::1]:9050" -> host and port; null when malformed or not an IP literal. */
export function parseHostPort(text: string): { host: string; port: number } | null {
  const t = text.trim();
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(t) ?? /^([0-9.]+):(\d{1,5})$/.exec(t);
  if (!m) return null;
  const port = Number(m[2]);
  if (isIP(m[1]!) === 0 || port < 1 || port > 65535) return null;
  return { host: m[1]!, port };
}

function durationOf(value: Value): number | null {
  return typeof value === 'string' && value !== '' ? parseDuration(value) : null;
}

function isTable(v: unknown): v is TomlTable {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Date);
}

/** Flattens a TOML document into dotted keys and rejects keys the schema does not know. */
function flatten(where: string, doc: TomlTable): Map<string, unknown> {
  const known = new Set(KEYS.map((k) => k.key));
  const sections = new Set(KEYS.filter((k) => k.key.includes('.')).map((k) => k.key.split('.')[0]!));
  const out = new Map<string, unknown>();
  const walk = (table: TomlTable, prefix: string): void => {
    for (const [name, value] of Object.entries(table)) {
      const key = prefix ? `${prefix}.${name}` : name;
      if (known.has(key)) out.set(key, value);
      else if (!prefix && sections.has(name) && isTable(value)) walk(value, key);
      else {
        const hint = sections.has(name) ? ` ([${name}] is a section)` : '';
        throw new ConfigError(
          `${where}: unknown key "${key}"${hint}; known keys are: ${[...known].join(', ')}` +
            ` (see config/onionpost.example.toml)`,
        );
      }
    }
  };
  walk(doc, '');
  return out;
}

/**
 * Reads and validates a config. `file` null means the embedded default (no file), with
 * relative paths resolved against `baseDir` (the current directory).
 */
export function loadConfig(file: string | null, baseDir: string = process.cwd()): Config {
  return loadConfigDetailed(file, baseDir).config;
}

/** loadConfig plus every key's validated value and which keys the file set (`onionpost check`). */
export function loadConfigDetailed(
  file: string | null,
  baseDir: string = process.cwd(),
): { config: Config; values: ReadonlyMap<string, Value>; given: ReadonlySet<string> } {
  let doc: TomlTable = {};
  let where = 'embedded default config';
  let base = baseDir;
  let absFile: string | null = null;
  if (file !== null) {
    absFile = path.resolve(baseDir, file);
    where = absFile;
    base = path.dirname(absFile);
    let text: string;
    try {
      text = readFileSync(absFile, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : String(err);
      throw new ConfigError(`cannot read config file ${absFile}: ${why} (create it from config/onionpost.example.toml)`);
    }
    try {
      doc = parseToml(text) as TomlTable;
    } catch (err) {
      const msg = err instanceof TomlError ? err.message.split('\n')[0] : String(err);
      const line = err instanceof TomlError ? `:${err.line}` : '';
      throw new ConfigError(`${absFile}${line}: not valid TOML: ${msg}`);
    }
  }
  const given = flatten(where, doc);
  const values = new Map<string, Value>();
  for (const spec of KEYS) {
    values.set(spec.key, given.has(spec.key) ? validate(where, spec, given.get(spec.key)) : spec.default);
  }
  const str = (k: string): string => values.get(k) as string;
  const num = (k: string): number => values.get(k) as number;
  const bool = (k: string): boolean => values.get(k) as boolean;

  const dataDir = path.resolve(base, str('data_dir'));
  const inData = (p: string): string => path.resolve(dataDir, p);
  const domain = str('domain');
  const localDomains = [domain, ...(values.get('local_domains') as string[]).filter((d) => d !== domain)];

  const certGiven = str('tls.cert') !== '';
  const keyGiven = str('tls.key') !== '';
  if (certGiven !== keyGiven) {
    throw new ConfigError(
      `${where}: keys "tls.cert" and "tls.key" go together: set both (your own certificate) or neither (a self-signed one is generated in the data dir)`,
    );
  }
  const ports: Array<[string, number]> = [
    ['smtp.port', num('smtp.port')],
    ['submission.port', num('submission.port')],
    ['submission.tls_port', num('submission.tls_port')],
    ['imap.port', num('imap.port')],
    ['imap.tls_port', num('imap.tls_port')],
  ];
  for (let i = 0; i < ports.length; i++) {
    for (let j = i + 1; j < ports.length; j++) {
      if (ports[i]![1] !== 0 && ports[i]![1] === ports[j]![1]) {
        throw new ConfigError(
          `${where}: keys "${ports[i]![0]}" and "${ports[j]![0]}" both use port ${ports[i]![1]}: give each listener its own port`,
        );
      }
    }
  }

  const config: Config = {
    file: absFile,
    dataDir,
    domain,
    localDomains,
    smtp: {
      inbound: { host: str('smtp.host'), port: num('smtp.port') },
      maxMessageSize: num('smtp.max_message_size'),
      maxRecipients: num('smtp.max_recipients'),
    },
    submission: {
      starttls: { host: str('submission.host'), port: num('submission.port') },
      tls: { host: str('submission.host'), port: num('submission.tls_port') },
      allowPlaintextLoopback: bool('submission.allow_plaintext_loopback'),
    },
    relay: {
      openToOnion: bool('relay.open_to_onion'),
      onionRatePerMinute: num('relay.onion_rate'),
      clearnet: bool('relay.clearnet'),
    },
    imap: {
      plain: { host: str('imap.host'), port: num('imap.port') },
      tls: { host: str('imap.host'), port: num('imap.tls_port') },
    },
    tls: {
      cert: certGiven ? path.resolve(base, str('tls.cert')) : inData('tls/cert.pem'),
      key: keyGiven ? path.resolve(base, str('tls.key')) : inData('tls/key.pem'),
      configured: certGiven,
    },
    users: {
      file: str('users.file') !== '' ? path.resolve(base, str('users.file')) : inData('users.passwd'),
      aliases: str('users.aliases') !== '' ? path.resolve(base, str('users.aliases')) : inData('aliases'),
      postmaster: str('users.postmaster').trim() || null,
    },
    queue: {
      dir: inData('queue'),
      retry: (values.get('queue.retry') as string[]).map((d) => parseDuration(d)!),
      maxAge: durationOf(values.get('queue.max_age')!)!,
      delayWarning: durationOf(values.get('queue.delay_warning')!),
      concurrency: num('queue.concurrency'),
    },
    delivery: {
      starttls: str('delivery.starttls') as Config['delivery']['starttls'],
      connectTimeout: durationOf(values.get('delivery.connect_timeout')!)!,
      direct: bool('delivery.direct'),
    },
    store: { type: 'maildir', maildir: str('store.maildir') },
    quota: { default: num('quota.default') },
    log: { level: str('log.level') as LogLevel, format: str('log.format') as Config['log']['format'] },
    tor: {
      control: torControl(where, str('tor.control')),
      controlPassword: str('tor.control_password'),
      cookieFile: str('tor.cookie_file') !== '' ? path.resolve(base, str('tor.cookie_file')) : null,
      socks: parseHostPort(str('tor.socks'))!,
      dns: str('tor.dns') !== '' ? str('tor.dns') : null,
    },
    daemon: { user: str('daemon.user').trim() || null, group: str('daemon.group').trim() || null },
  };
  return { config, values, given: new Set(given.keys()) };
}

function torControl(where: string, text: string): ControlAddress | null {
  if (text.trim() === '') return null;
  try {
    return parseControlAddress(text);
  } catch (err) {
    throw new ConfigError(`${where}: key "tor.control": ${(err as Error).message}; or "" to never use Tor's control port`);
  }
}
