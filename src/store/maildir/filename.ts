/**
 * Maildir file names: `<base>[:2,<flag letters>]` where Dovecot's base is
 * `<unixtime>.M<usec>P<pid>.<host>,S=<size>,W=<vsize>`. We never put the real host name
 * into a file name: HOST_TOKEN stands in for it.
 */
import type { SystemFlag } from '../types.js';

export const HOST_TOKEN = 'onionpost';

/** Maildir info letters of the system flags (P = Passed has no IMAP flag and is kept as is). */
export const LETTER_TO_SYSTEM_FLAG: Readonly<Record<string, SystemFlag>> = {
  D: '\\Draft',
  F: '\\Flagged',
  R: '\\Answered',
  S: '\\Seen',
  T: '\\Deleted',
};

export const SYSTEM_FLAG_TO_LETTER: Readonly<Record<SystemFlag, string>> = {
  '\\Draft': 'D',
  '\\Flagged': 'F',
  '\\Answered': 'R',
  '\\Seen': 'S',
  '\\Deleted': 'T',
};

export interface ParsedFileName {
  /** Everything before the first ':' (what dovecot-uidlist stores). */
  base: string;
  /** The text after ':' ("2,FS"), or null when the name has no info part. */
  info: string | null;
  /** Flag letters when the info is of the "2," kind; '' otherwise. */
  letters: string;
  /** S= value of the base (physical size), if present. */
  size?: number;
  /** W= value of the base (size with CRLF line endings), if present. */
  vsize?: number;
}

export function parseFileName(name: string): ParsedFileName {
  const colon = name.indexOf(':');
  const base = colon < 0 ? name : name.slice(0, colon);
  const info = colon < 0 ? null : name.slice(colon + 1);
  const letters = info !== null && info.startsWith('2,') ? info.slice(2) : '';
  const parsed: ParsedFileName = { base, info, letters };
  // Extension fields live after the first ',' of the base: ",S=123,W=130".
  const comma = base.indexOf(',');
  if (comma >= 0) {
    for (const field of base.slice(comma + 1).split(',')) {
      if (field.startsWith('S=')) {
        const n = parseDecimal(field.slice(2));
        if (n !== undefined) parsed.size = n;
      } else if (field.startsWith('W=')) {
        const n = parseDecimal(field.slice(2));
        if (n !== undefined) parsed.vsize = n;
      }
    }
  }
  return parsed;
}

function parseDecimal(text: string): number | undefined {
  if (!/^\d{1,15}$/.test(text)) return undefined;
  return Number(text);
}

/** Sorted, de-duplicated flag letters (ASCII order: system letters, then keyword letters). */
export function sortLetters(letters: string): string {
  return [...new Set(letters.split(''))].sort().join('');
}

/** `<base>:2,<letters>` (always with the info part, as Dovecot writes files in cur/). */
export function buildFileName(base: string, letters: string): string {
  return `${base}:2,${sortLetters(letters)}`;
}

/**
 * Generates unique base names. Uniqueness in this process comes from strictly increasing
 * (second, microsecond) pairs, like Dovecot; across processes from the pid.
 */
class BaseNameGenerator {
  private lastSec = 0;
  private lastUsec = 0;

  next(size: number, vsize: number, now: number = Date.now()): string {
    let sec = Math.floor(now / 1000);
    let usec = (now % 1000) * 1000 + Math.floor((performance.now() % 1) * 1000);
    if (sec < this.lastSec || (sec === this.lastSec && usec <= this.lastUsec)) {
      sec = this.lastSec;
      usec = this.lastUsec + 1;
      if (usec >= 1_000_000) {
        sec++;
        usec = 0;
      }
    }
    this.lastSec = sec;
    this.lastUsec = usec;
    // usec zero-padded: names of one process then sort in delivery order (Dovecot does not
    // pad; both parse the same).
    return `${sec}.M${String(usec).padStart(6, '0')}P${process.pid}.${HOST_TOKEN},S=${size},W=${vsize}`;
  }
}

const generator = new BaseNameGenerator();

/** A new unique base name for a message of `size` bytes (`vsize` with CRLF line endings). */
export function newBaseName(size: number, vsize: number): string {
  return generator.next(size, vsize);
}
