import { pino, type DestinationStream, type Logger } from 'pino';
import type { LogLevel } from '../config/types.js';

export type { Logger };

export type LogFormat = 'auto' | 'json' | 'pretty';

export interface LoggerOptions {
  /** auto (default): pretty when `stream` is a terminal, else JSON. */
  format?: LogFormat;
  /** Where lines go; default standard error. */
  stream?: NodeJS.WritableStream & { isTTY?: boolean };
}

/**
 * Field names whose values never reach the log, wherever a caller puts them by mistake
 * (credentials, message contents). Logged as "[redacted]".
 */
export const REDACTED_PATHS = [
  'password',
  'pass',
  'secret',
  'raw',
  'body',
  '*.password',
  '*.pass',
  '*.secret',
  '*.raw',
  '*.body',
  'auth.pass',
  'auth.password',
];

/**
 * One line per event on stderr: JSON (pino) by default, a short readable line on a terminal
 * (`format` "auto") or when asked ("pretty"). Lines of one connection carry its `cid`.
 * Never pass passwords or message bodies to it (common field names are redacted anyway).
 */
export function createLogger(level: LogLevel = 'info', options: LoggerOptions = {}): Logger {
  const stream = options.stream ?? process.stderr;
  const format = options.format ?? 'auto';
  const pretty = format === 'pretty' || (format === 'auto' && stream.isTTY === true);
  const base = { level, base: { name: 'onionpost' }, redact: { paths: REDACTED_PATHS, censor: '[redacted]' } };
  if (pretty) return pino(base, prettyStream(stream, stream.isTTY === true));
  if (options.stream) return pino(base, options.stream as DestinationStream);
  return pino(base, pino.destination({ fd: 2, sync: false }));
}

/** A logger that drops everything (tests, one-shot CLI commands). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const LEVEL_COLORS: Record<number, string> = { 10: '90', 20: '36', 30: '32', 40: '33', 50: '31', 60: '35' };
/** Fields shown in the line's head, or not at all. */
const HEAD_FIELDS = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'name', 'component', 'cid', 'v']);

/**
 * pino's JSON line -> `12:34:56.789 INFO  imap      [cid] message key=value ...`.
 * Errors show their message (and stack for error level and above). Not JSON: passed through.
 */
export function formatPretty(line: string, color = false): string {
  let obj: Record<string, unknown>;
  try {
    obj = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line.endsWith('\n') ? line : `${line}\n`;
  }
  const levelNum = typeof obj.level === 'number' ? obj.level : 30;
  const time = typeof obj.time === 'number' ? new Date(obj.time).toISOString().slice(11, 23) : '';
  let levelText = (LEVEL_NAMES[levelNum] ?? String(levelNum)).padEnd(5);
  if (color) levelText = `\x1b[${LEVEL_COLORS[levelNum] ?? '0'}m${levelText}\x1b[0m`;
  const parts = [time, levelText];
  if (typeof obj.component === 'string') parts.push(obj.component);
  if (obj.cid !== undefined) parts.push(`[${String(obj.cid)}]`);
  let msg = typeof obj.msg === 'string' ? obj.msg : '';
  // imap-core starts its messages with "[<cid>] " itself
  if (obj.cid !== undefined && msg.startsWith(`[${String(obj.cid)}] `)) msg = msg.slice(String(obj.cid).length + 3);
  parts.push(msg);
  let stack = '';
  for (const [k, v] of Object.entries(obj)) {
    if (HEAD_FIELDS.has(k)) continue;
    if (k === 'err' && v && typeof v === 'object') {
      const e = v as { message?: unknown; code?: unknown; stack?: unknown };
      parts.push(`err=${JSON.stringify(String(e.message ?? ''))}${e.code ? ` code=${String(e.code)}` : ''}`);
      if (levelNum >= 50 && typeof e.stack === 'string') stack = `\n    ${e.stack.split('\n').slice(1).join('\n    ').trim()}`;
      continue;
    }
    parts.push(`${k}=${typeof v === 'string' && /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v)}`);
  }
  return `${parts.filter((p) => p !== '').join(' ')}${stack}\n`;
}

function prettyStream(out: NodeJS.WritableStream, color: boolean): DestinationStream {
  return {
    write(chunk: string): void {
      // pino writes one line per call (with its "\n").
      for (const line of chunk.split('\n')) if (line !== '') out.write(formatPretty(line, color));
    },
  };
}
