import { pino, type Logger } from 'pino';
import type { LogLevel } from '../config/types.js';

export type { Logger };

/**
 * One JSON line per event on stderr. Never pass passwords or message bodies to it.
 */
export function createLogger(level: LogLevel = 'info'): Logger {
  return pino({ level, base: { name: 'onionpost' } }, pino.destination({ fd: 2, sync: false }));
}

/** A logger that drops everything (tests, one-shot CLI commands). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
