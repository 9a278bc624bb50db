/**
 * Declarative description of every config key: its TOML path, default, and how to validate it.
 * config/onionpost.example.toml documents the same keys; test/config.test.ts keeps the two in sync.
 */
import type { LogLevel } from './types.js';

export type KeyKind =
  | { type: 'string'; allowEmpty?: boolean }
  | { type: 'host' }
  | { type: 'port' }
  | { type: 'size'; min?: number; max?: number }
  | { type: 'int'; min: number; max: number }
  | { type: 'bool' }
  | { type: 'domain' }
  | { type: 'domains' }
  | { type: 'enum'; values: readonly string[] }
  /** "90s", "5m", "4h", "5d" (see config/duration.ts); `allowOff`: also "" or "0" (disabled). */
  | { type: 'duration'; min: number; max: number; allowOff?: boolean }
  /** A non-empty list of durations. */
  | { type: 'durations'; min: number; max: number }
  /** "IP:PORT" (an IP literal, never a name: no DNS); `allowEmpty`: "" is allowed. */
  | { type: 'hostport'; allowEmpty?: boolean };

export interface KeySpec {
  /** Dotted TOML path, e.g. "smtp.port". */
  key: string;
  kind: KeyKind;
  default: string | number | boolean | string[];
}

export const LOG_LEVELS: readonly LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

export const KEYS: readonly KeySpec[] = [
  { key: 'data_dir', kind: { type: 'string' }, default: 'data' },
  { key: 'domain', kind: { type: 'domain' }, default: 'localhost' },
  { key: 'local_domains', kind: { type: 'domains' }, default: [] },
  { key: 'smtp.host', kind: { type: 'host' }, default: '127.0.0.1' },
  { key: 'smtp.port', kind: { type: 'port' }, default: 2525 },
  { key: 'smtp.max_message_size', kind: { type: 'size' }, default: 25 * 1024 * 1024 },
  { key: 'smtp.max_recipients', kind: { type: 'int', min: 1, max: 100000 }, default: 100 },
  { key: 'submission.host', kind: { type: 'host' }, default: '127.0.0.1' },
  { key: 'submission.port', kind: { type: 'port' }, default: 2587 },
  { key: 'submission.tls_port', kind: { type: 'port' }, default: 2465 },
  { key: 'submission.allow_plaintext_loopback', kind: { type: 'bool' }, default: true },
  { key: 'relay.open_to_onion', kind: { type: 'bool' }, default: false },
  { key: 'relay.onion_rate', kind: { type: 'int', min: 1, max: 100000 }, default: 60 },
  { key: 'relay.clearnet', kind: { type: 'bool' }, default: false },
  { key: 'imap.host', kind: { type: 'host' }, default: '127.0.0.1' },
  { key: 'imap.port', kind: { type: 'port' }, default: 2143 },
  { key: 'imap.tls_port', kind: { type: 'port' }, default: 2993 },
  { key: 'tls.cert', kind: { type: 'string', allowEmpty: true }, default: '' },
  { key: 'tls.key', kind: { type: 'string', allowEmpty: true }, default: '' },
  { key: 'users.file', kind: { type: 'string', allowEmpty: true }, default: '' },
  { key: 'users.aliases', kind: { type: 'string', allowEmpty: true }, default: '' },
  { key: 'users.postmaster', kind: { type: 'string', allowEmpty: true }, default: '' },
  { key: 'store.type', kind: { type: 'enum', values: ['maildir'] }, default: 'maildir' },
  { key: 'store.maildir', kind: { type: 'string' }, default: 'mail/%u' },
  { key: 'quota.default', kind: { type: 'size', min: 0, max: 2 ** 50 }, default: 1024 ** 3 },
  { key: 'log.level', kind: { type: 'enum', values: LOG_LEVELS }, default: 'info' },
  { key: 'log.format', kind: { type: 'enum', values: ['auto', 'json', 'pretty'] }, default: 'auto' },
  { key: 'tor.control', kind: { type: 'string', allowEmpty: true }, default: '127.0.0.1:9051' },
  { key: 'tor.control_password', kind: { type: 'string', allowEmpty: true }, default: '' },
  { key: 'tor.cookie_file', kind: { type: 'string', allowEmpty: true }, default: '' },
  { key: 'tor.socks', kind: { type: 'hostport' }, default: '127.0.0.1:9050' },
  { key: 'tor.dns', kind: { type: 'hostport', allowEmpty: true }, default: '127.0.0.1:9053' },
  { key: 'queue.retry', kind: { type: 'durations', min: 1000, max: 7 * 86_400_000 }, default: ['1m', '5m', '15m', '30m', '1h', '2h', '4h'] },
  { key: 'queue.max_age', kind: { type: 'duration', min: 1000, max: 365 * 86_400_000 }, default: '5d' },
  { key: 'queue.delay_warning', kind: { type: 'duration', min: 1000, max: 365 * 86_400_000, allowOff: true }, default: '4h' },
  { key: 'queue.concurrency', kind: { type: 'int', min: 1, max: 100 }, default: 4 },
  { key: 'delivery.starttls', kind: { type: 'enum', values: ['opportunistic', 'required', 'none'] }, default: 'opportunistic' },
  { key: 'delivery.connect_timeout', kind: { type: 'duration', min: 1000, max: 3_600_000 }, default: '2m' },
  { key: 'delivery.direct', kind: { type: 'bool' }, default: false },
  { key: 'daemon.user', kind: { type: 'string', allowEmpty: true }, default: '' },
  { key: 'daemon.group', kind: { type: 'string', allowEmpty: true }, default: '' },
];
