/**
 * Pieces shared by the importers: the target store of a user, the resume log, progress
 * (log/progress.ts, re-exported).
 *
 * Resume log: `<data_dir>/import/<user>/<sha256(source)[:16]>.log`, one line per imported
 * message (`<key>\n`, keys made by each importer), appended as each message is stored. A
 * re-run skips every key in it. A crash between storing a message and writing its line can
 * duplicate that one message at the next run (the line is written right after the store's
 * fsync'd append, so the window is one message).
 */
import { createHash } from 'node:crypto';
import { appendFileSync, closeSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Config } from '../config/types.js';
import { silentLogger } from '../log/logger.js';
import { expandMaildirTemplate } from '../store/maildir-location.js';
import { MaildirStore } from '../store/maildir/maildir-store.js';
import { userQuotaBytes } from '../users/quota-rule.js';
import { UserDb } from '../users/user-db.js';

export { Progress } from '../log/progress.js';

export interface ImportTarget {
  /** The user's name as in the users file. */
  user: string;
  store: MaildirStore;
  /** The user's Maildir root. */
  maildir: string;
}

/** Opens the configured store for an existing user (their default folders are created). */
export async function openTarget(config: Config, userName: string): Promise<ImportTarget> {
  const db = new UserDb(config.users.file, { localDomains: config.localDomains });
  const found = db.get(userName);
  if (!found) throw new ImportError(`no user "${userName}" in ${db.file}; add it first with: onionpost user add ${userName}`, 67);
  const maildirFor = (u: string) => expandMaildirTemplate(config.store.maildir, { user: u, home: db.get(u)?.home || undefined }, config.dataDir);
  const quotaFor = (u: string) => {
    const own = userQuotaBytes(db.get(u)?.extraFields ?? {}, () => undefined);
    if (own !== undefined) return own;
    return config.quota.default > 0 ? config.quota.default : null;
  };
  const store = new MaildirStore({ maildirFor, quotaFor, logger: silentLogger() });
  await store.ensureUser(found.name);
  return { user: found.name, store, maildir: maildirFor(found.name) };
}

/** A failure with a message for the user and a sysexits code. */
export class ImportError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'ImportError';
  }
}

/** The append-only set of imported message keys of one (user, source) pair. */
export class ResumeLog {
  readonly file: string;
  private readonly done = new Set<string>();
  private fd: number;

  constructor(dataDir: string, user: string, source: string) {
    const id = createHash('sha256').update(source).digest('hex').slice(0, 16);
    const dir = path.join(dataDir, 'import', user);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.file = path.join(dir, `${id}.log`);
    let text = '';
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const lines = text.split('\n');
    // A partial last line (crash while writing) is ignored.
    if (!text.endsWith('\n')) lines.pop();
    for (const l of lines) if (l !== '') this.done.add(l);
    this.fd = openSync(this.file, 'a', 0o600);
    if (text === '') appendFileSync(this.fd, `# onionpost import of ${source.replace(/[\r\n]/g, ' ')}\n`);
  }

  has(key: string): boolean {
    return this.done.has(key);
  }

  /** Keys starting with `prefix`. */
  keysWithPrefix(prefix: string): string[] {
    const out: string[] = [];
    for (const k of this.done) if (k.startsWith(prefix)) out.push(k);
    return out;
  }

  add(key: string): void {
    if (/[\r\n]/.test(key)) throw new Error('resume key with a line break');
    this.done.add(key);
    appendFileSync(this.fd, `${key}\n`);
  }

  addMany(keys: string[]): void {
    for (const k of keys) this.done.add(k);
    if (keys.length > 0) appendFileSync(this.fd, keys.map((k) => `${k}\n`).join(''));
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** Flags worth importing: drops \Recent (session-only) and anything with spaces/controls. */
export function importableFlags(flags: Iterable<string>): string[] {
  const out: string[] = [];
  for (const f of flags) {
    if (f.toLowerCase() === '\\recent') continue;
    if (!/^[^\s()\]{%*"\\\x00-\x1f\x7f]+$/.test(f) && !/^\\(Seen|Answered|Flagged|Deleted|Draft)$/i.test(f)) continue;
    const sys = /^\\(seen|answered|flagged|deleted|draft)$/i.exec(f);
    out.push(sys ? `\\${sys[1]![0]!.toUpperCase()}${sys[1]!.slice(1).toLowerCase()}` : f);
  }
  return out;
}

export interface ImportSummary {
  folders: number;
  imported: number;
  skipped: number;
  failed: number;
  seconds: number;
}

export function formatSummary(s: ImportSummary, extra = ''): string {
  const rate = s.seconds > 0 ? Math.round(s.imported / s.seconds) : s.imported;
  return `imported ${s.imported} message(s) in ${s.folders} folder(s), skipped ${s.skipped} already imported, ${s.failed} failed; ${s.seconds.toFixed(1)} s (${rate} msg/s)${extra}\n`;
}
