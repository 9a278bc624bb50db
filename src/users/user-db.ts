/**
 * The user database: a Dovecot passwd-file (see passwd-file.ts).
 *
 * Readers (the daemon) keep the parsed file in memory and notice changes made by other
 * processes (the `onionpost user` CLI, an editor) with a cheap stat at most every
 * `checkIntervalMs` (default 1 s): a changed inode, size, mtime or ctime means reload.
 * `reload()` forces a re-read (SIGHUP). A missing file means "no users"; a malformed line is
 * reported as file:line and skipped; a read error keeps the last good state.
 *
 * Writers (add / setPassword / remove) take `<file>.lock` (O_EXCL, holding our pid), re-read
 * the file from disk, change it, write `.<name>.tmp-*` in the same directory (mode 0600,
 * fsync), rename it over the file and fsync the directory. Readers therefore only ever see a
 * whole old file or a whole new one, and two writers never lose each other's changes.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { Logger } from '../log/logger.js';
import { FileUpdateError } from './file-update.js';
import { WatchedFile, type WatchedFileOptions } from './watched-file.js';
import { checkPassword, describeScheme, hashPassword, MAX_PASSWORD_BYTES } from './password-hash.js';
import {
  appendLine,
  entryOf,
  newEntryLine,
  parseExtraFields,
  parsePasswd,
  serializePasswd,
  setEntryPassword,
  validateUserName,
  type PasswdDocument,
  type PasswdEntryLine,
  type PasswdProblem,
} from './passwd-file.js';

export interface User {
  /** The name as in the file, lower-cased: `alice`, or `alice@example.onion` in Dovecot files. */
  name: string;
  /** The part before '@' (the whole name when there is no '@'). */
  localPart: string;
  /** The part after '@', or null for a bare name (valid in every local domain). */
  domain: string | null;
  /** uid, gid and home fields as written ('' when empty). */
  uid: string;
  gid: string;
  home: string;
  /** extra_fields as key/value pairs. */
  extraFields: Record<string, string>;
  /** The password scheme (e.g. 'ARGON2ID'), for display. Never the hash itself. */
  scheme: string;
}

export interface UserDbOptions extends WatchedFileOptions {
  /** Domains whose addresses name our users (`alice@<domain>` logs in as `alice`). Lower case. */
  localDomains?: string[];
  /**
   * Password checks running at once; more wait their turn. Default 2. An argon2id check
   * takes ~180 ms and 64 MiB on libuv's thread pool (4 threads by default), which the
   * file-system calls of the mail store share: a login flood must not starve them.
   */
  maxConcurrentVerifications?: number;
}

export type UserDbErrorCode = 'exists' | 'unknown-user' | 'invalid-name' | 'invalid-password' | 'locked' | 'io';

/** An error of a user-db write; `code` says which kind (the CLI maps it to an exit code). */
export class UserDbError extends Error {
  constructor(
    readonly code: UserDbErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'UserDbError';
  }
}

interface Entry {
  user: User;
  password: string;
}

interface Snapshot {
  byName: Map<string, Entry>;
  order: Entry[];
}

const EMPTY: Snapshot = { byName: new Map(), order: [] };

let dummyHash: Promise<string> | null = null;
/** A hash of a random password, with our default scheme: unknown users cost the same work. */
function getDummyHash(): Promise<string> {
  dummyHash ??= hashPassword(randomBytes(18).toString('base64')).catch((err: unknown) => {
    dummyHash = null; // try again next time
    throw err;
  });
  return dummyHash;
}

function isLogger(x: Logger | UserDbOptions): x is Logger {
  return typeof (x as Logger).warn === 'function' && typeof (x as Logger).child === 'function';
}

export class UserDb {
  readonly file: string;
  private readonly logger: Logger | undefined;
  private readonly localDomains: string[];
  private readonly maxVerifications: number;
  private verifying = 0;
  private readonly verifyQueue: Array<() => void> = [];

  private readonly watched: WatchedFile<Snapshot>;

  /**
   * `new UserDb(file)`, `new UserDb(file, logger, options)` or
   * `new UserDb(file, { logger, localDomains, ... })`.
   */
  constructor(file: string, loggerOrOptions?: Logger | UserDbOptions, options: UserDbOptions = {}) {
    if (loggerOrOptions !== undefined && !isLogger(loggerOrOptions)) {
      options = { ...loggerOrOptions, ...options };
      loggerOrOptions = loggerOrOptions.logger;
    }
    this.file = path.resolve(file);
    this.logger = loggerOrOptions ?? options.logger;
    this.localDomains = (options.localDomains ?? []).map((d) => d.toLowerCase());
    this.watched = new WatchedFile<Snapshot>({ file: this.file, noun: 'users', empty: EMPTY, parse: (text) => this.build(text) }, { ...options, logger: this.logger });
    this.maxVerifications = Math.max(1, options.maxConcurrentVerifications ?? 2);
  }

  /** Problems found the last time the file was read ("file:line: message"). */
  get problems(): readonly string[] {
    return this.watched.problems;
  }

  /**
   * The user called `name`: `alice`, `Alice`, or `alice@<local domain>` all find the
   * entry `alice`, and `alice` finds `alice@<local domain>` when only that is in the file.
   */
  get(name: string): User | undefined {
    return this.find(this.watched.snapshot, name)?.user;
  }

  /** All users, in file order. */
  list(): User[] {
    return this.watched.snapshot.order.map((e) => e.user);
  }

  /**
   * Checks a login. Accepts `alice` or `alice@<local domain>`. Unknown users, unusable
   * hashes and over-long input cost one verification of a dummy hash all the same, so the
   * time taken does not tell which users exist.
   */
  async authenticate(username: string, password: string | Buffer): Promise<User | null> {
    await this.verifySlot();
    try {
      return await this.authenticateNow(username, password);
    } finally {
      const next = this.verifyQueue.shift();
      if (next) next(); // hand the slot over
      else this.verifying--;
    }
  }

  private async verifySlot(): Promise<void> {
    if (this.verifying < this.maxVerifications) {
      this.verifying++;
      return;
    }
    await new Promise<void>((resolve) => this.verifyQueue.push(resolve));
  }

  private async authenticateNow(username: string, password: string | Buffer): Promise<User | null> {
    const snap = this.watched.snapshot;
    const pwBytes = typeof password === 'string' ? Buffer.byteLength(password) : password.length;
    const entry = username.length <= 320 && pwBytes <= MAX_PASSWORD_BYTES ? this.find(snap, username) : undefined;
    if (!entry) {
      await this.dummyVerify(password);
      return null;
    }
    const r = await checkPassword(entry.password, password);
    if (r.reason) {
      this.logger?.warn({ user: entry.user.name, reason: r.reason }, 'password of user cannot be checked');
      await this.dummyVerify(password);
      return null;
    }
    return r.ok ? entry.user : null;
  }

  /** Re-reads the file now (SIGHUP). */
  reload(): void {
    this.watched.reload();
  }

  /** Adds a user (a bare name) with a new {ARGON2ID} hash. */
  async add(name: string, password: string): Promise<User> {
    const err = validateUserName(name);
    if (err) throw new UserDbError('invalid-name', err);
    const hash = await this.hashNew(password); // before taking the lock: it is the slow part
    let added: User | undefined;
    await this.modify((doc, snap) => {
      const existing = this.find(snap, name);
      if (existing) throw new UserDbError('exists', `user "${existing.user.name}" already exists`);
      appendLine(doc, newEntryLine(name, hash));
    }, (snap) => {
      added = snap.byName.get(name)?.user;
    });
    return added!;
  }

  /**
   * Adds users that already have a hash (a Dovecot passwd-file being migrated): each line's
   * fields are kept as they are (hash, uid, gid, home, extra fields). Names already in the
   * file are left alone and returned in `existing`. One locked write for all of them.
   */
  async importEntries(lines: readonly PasswdEntryLine[], options: { dryRun?: boolean } = {}): Promise<{ added: string[]; existing: string[] }> {
    const added: string[] = [];
    const existing: string[] = [];
    const decide = (snap: Snapshot, doc: PasswdDocument | null) => {
      for (const line of lines) {
        const found = this.find(snap, line.key) ?? snap.byName.get(line.key);
        if (found || added.includes(line.key)) {
          existing.push(line.key);
          continue;
        }
        added.push(line.key);
        if (doc) appendLine(doc, { kind: 'entry', lineNo: 0, fields: [...line.fields], cr: false, key: line.key });
      }
    };
    if (options.dryRun) {
      this.reload();
      decide(this.watched.snapshot, null);
      return { added, existing };
    }
    await this.modify((doc, snap) => {
      added.length = 0;
      existing.length = 0;
      decide(snap, doc);
    });
    return { added, existing };
  }

  /** Replaces a user's password (with a new {ARGON2ID} hash); other fields stay. */
  async setPassword(name: string, password: string): Promise<User> {
    const hash = await this.hashNew(password);
    let key = '';
    let changed: User | undefined;
    await this.modify((doc, snap) => {
      const entry = this.find(snap, name);
      if (!entry) throw new UserDbError('unknown-user', `no user "${name}" in ${this.file}`);
      key = entry.user.name;
      setEntryPassword(findLine(doc, key)!, hash);
    }, (snap) => {
      changed = snap.byName.get(key)?.user;
    });
    return changed!;
  }

  /** Removes a user's line. Their mail is not touched. */
  async remove(name: string): Promise<User> {
    let removed: User | undefined;
    await this.modify((doc, snap) => {
      const entry = this.find(snap, name);
      if (!entry) throw new UserDbError('unknown-user', `no user "${name}" in ${this.file}`);
      removed = entry.user;
      const line = findLine(doc, entry.user.name)!;
      doc.lines.splice(doc.lines.indexOf(line), 1);
    });
    return removed!;
  }

  // -------------------------------------------------------------------------------------

  private async hashNew(password: string): Promise<string> {
    if (password.length === 0) throw new UserDbError('invalid-password', 'the password is empty');
    if (Buffer.byteLength(password) > MAX_PASSWORD_BYTES) {
      throw new UserDbError('invalid-password', `the password is longer than ${MAX_PASSWORD_BYTES} bytes`);
    }
    if (/[\r\n\0]/.test(password)) {
      throw new UserDbError('invalid-password', 'the password contains a line break or NUL character');
    }
    return hashPassword(password);
  }

  private async dummyVerify(password: string | Buffer): Promise<void> {
    const pw = typeof password === 'string' ? password.slice(0, MAX_PASSWORD_BYTES) : password.subarray(0, MAX_PASSWORD_BYTES);
    await checkPassword(await getDummyHash(), pw);
  }

  private find(snap: Snapshot, name: string): Entry | undefined {
    const n = name.toLowerCase();
    const exact = snap.byName.get(n);
    if (exact) return exact;
    const at = n.lastIndexOf('@');
    if (at === -1) {
      for (const d of this.localDomains) {
        const e = snap.byName.get(`${n}@${d}`);
        if (e) return e;
      }
      return undefined;
    }
    const domain = n.slice(at + 1).replace(/\.$/, '');
    if (!this.localDomains.includes(domain)) return undefined;
    const local = n.slice(0, at);
    return snap.byName.get(local) ?? snap.byName.get(`${local}@${domain}`);
  }

  private build(text: string): { doc: PasswdDocument; snap: Snapshot; problems: PasswdProblem[] } {
    const { doc, problems } = parsePasswd(text);
    const snap: Snapshot = { byName: new Map(), order: [] };
    for (const line of doc.lines) {
      if (line.kind !== 'entry') continue;
      const e = entryOf(line);
      const name = line.key;
      const at = name.indexOf('@');
      const entry: Entry = {
        password: e.password,
        user: {
          name,
          localPart: at === -1 ? name : name.slice(0, at),
          domain: at === -1 ? null : name.slice(at + 1),
          uid: e.uid,
          gid: e.gid,
          home: e.home,
          extraFields: parseExtraFields(e.extraFields),
          scheme: describeScheme(e.password).scheme,
        },
      };
      snap.byName.set(name, entry);
      snap.order.push(entry);
    }
    return { doc, snap, problems };
  }

  /**
   * Read-modify-write under the lock. `change` edits the freshly read document (it may
   * throw a UserDbError to abort); `after` sees the snapshot that was written.
   */
  /** Locked read-modify-write of the file; `after` sees the snapshot as written. */
  private async modify(change: (doc: PasswdDocument, snap: Snapshot) => void, after?: (snap: Snapshot) => void): Promise<void> {
    let written: Snapshot;
    try {
      written = await this.watched.update((text) => {
        const { doc, snap } = this.build(text);
        change(doc, snap);
        return serializePasswd(doc);
      });
    } catch (err) {
      throw toUserDbError(err);
    }
    after?.(written);
  }
}

function findLine(doc: PasswdDocument, key: string): PasswdEntryLine | undefined {
  return doc.lines.find((l): l is PasswdEntryLine => l.kind === 'entry' && l.key === key);
}

function ioError(what: string, err: unknown): UserDbError {
  if (err instanceof UserDbError) return err;
  const e = err as NodeJS.ErrnoException;
  return new UserDbError('io', `${what}: ${e.code ?? ''}${e.code ? ' ' : ''}${e.message ?? String(err)}`);
}

function toUserDbError(err: unknown): UserDbError {
  if (err instanceof FileUpdateError) return new UserDbError(err.code, err.message);
  return ioError('cannot update the users file', err);
}
