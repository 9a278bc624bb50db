/**
 * MailStore on Dovecot-compatible Maildir++ (see DESIGN.md "Mailbox store").
 *
 * Per user: `<root>/{cur,new,tmp}` is INBOX, `<root>/.A.B` is "A/B" (names in modified
 * UTF-7), `<root>/subscriptions` lists subscribed names. Per folder: dovecot-uidlist,
 * dovecot-keywords, and our onionpost-index.json cache (see folder.ts).
 *
 * Mailbox ids are `<mailbox GUID from dovecot-uidlist>@<user>`: stable across restarts and
 * renames, so an id still resolves after a restart (the folders are scanned for the GUID).
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { silentLogger, type Logger } from '../../log/logger.js';
import {
  DEFAULT_FOLDERS,
  StoreError,
  type AppendOptions,
  type AppendResult,
  type ChangeEntry,
  type ChangeEvent,
  type CopyResult,
  type GetMessagesOptions,
  type MailboxInfo,
  type MailboxSnapshot,
  type MailboxStatus,
  type MailStore,
  type MessageCacheBuilder,
  type MessageMeta,
  type StoreFlagsOptions,
  type StoreFlagsResult,
} from '../types.js';
import { DotlockTimeoutError, updateWithDotlock } from './dotlock.js';
import { fsyncDir, replaceFile } from './durable-write.js';
import { countBareLf } from './crlf.js';
import { classifyFlags } from './flags.js';
import { FOLDER_MARKER, FolderGoneError, MaildirFolder, UIDLIST_FILE, type FolderContext } from './folder.js';
import { DEFAULT_JOURNAL_LIMIT } from './journal.js';
import {
  ancestorsOf,
  dirNameToMailboxPath,
  INBOX,
  isDescendant,
  mailboxPathToDirName,
  MAX_DIR_NAME_BYTES,
  normalizeMailboxPath,
} from './mailbox-name.js';
import { parseSubscriptions, serializeSubscriptions } from './subscriptions.js';
import { guidFromHeaderLine, newMailboxGuid, serializeUidlist } from './uidlist.js';
import { nextUidValidity } from './uidvalidity.js';

export interface MaildirStoreOptions {
  /** Absolute maildir root of a user. */
  maildirFor: (user: string) => string;
  logger?: Logger;
  /** Dotlocks untouched for this long are broken (default 120 s, as Dovecot). */
  lockStaleMs?: number;
  /** How long writers wait for a dotlock before failing with INUSE (default stale + 5 s). */
  lockTimeoutMs?: number;
  /** How long readers wait before serving a partial rescan (default 2 s). */
  readLockTimeoutMs?: number;
  /** Journal entries kept in memory per folder (default 10,000). */
  journalLimit?: number;
  /**
   * A user's storage limit in bytes; null (or 0) for unlimited. Appends and copies that
   * would go over it fail with OVERQUOTA. Asked at every append (keep it cheap).
   */
  quotaFor?: (user: string) => number | null;
  /**
   * Messages bigger than this get no cache slot at append (it is computed at their first
   * metadata FETCH instead): describing costs ~20 ms per MiB on the event loop. Default 1 MiB.
   */
  cacheBuildMaxBytes?: number;
  /**
   * An unwatched mailbox is scanned in the background (UIDs assigned) after this many
   * deliveries no scan has seen yet (default 1000), so that memory for them stays bounded.
   */
  deliveriesPerBackgroundScan?: number;
}

const SUBSCRIPTIONS_FILE = 'subscriptions';
const DELETING_PREFIX = 'onionpost-deleting-';

interface UserState {
  name: string;
  root: string;
  folders: Map<string, MaildirFolder>;
  /** Serialises create/rename/delete of this user's folders. */
  tree: MutexLike;
  /** The user's folders as last listed for quota checks, and when (ms). */
  quotaFolders: MaildirFolder[];
  quotaListedAt: number;
}

/** A file-system watch on one mailbox's new/ and cur/ (counted: one per selecting session). */
interface MailboxWatch {
  count: number;
  watchers: FSWatcher[];
  timer: NodeJS.Timeout | null;
  stopped: boolean;
  /**
   * Rescans the mailbox after `ms` (coalesced with a rescan already due or running).
   * `force`: scan even if the directories' mtimes look unchanged (our own delivery: the
   * change may fall into the clock tick of the last scan).
   */
  rescanSoon(ms: number, force?: boolean): void;
}

/** Quota checks list the user's folders again after this long (ms). */
const QUOTA_RELIST_MS = 5_000;
/** File-system events are coalesced for this long before a rescan (ms). */
const WATCH_DEBOUNCE_MS = 5;
/** An unwatched mailbox is scanned in the background after this many unseen deliveries. */
const DELIVERIES_PER_BACKGROUND_SCAN = 1000;

interface MutexLike {
  run<T>(fn: () => Promise<T>): Promise<T>;
}

class SimpleMutex implements MutexLike {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn, fn);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

export class MaildirStore extends EventEmitter implements MailStore {
  private readonly maildirFor: (user: string) => string;
  private readonly logger: Logger;
  private readonly lockStaleMs: number;
  private readonly lockTimeoutMs: number;
  private readonly readLockTimeoutMs: number;
  private readonly journalLimit: number;
  private readonly deliveriesPerBackgroundScan: number;
  private readonly users = new Map<string, UserState>();
  private readonly byId = new Map<string, MaildirFolder>();
  private readonly quotaFor: ((user: string) => number | null) | null;
  private readonly cacheBuildMaxBytes: number;
  private cacheBuilder: MessageCacheBuilder | null = null;
  private readonly watches = new Map<string, MailboxWatch>();
  /** Folders with a background scan (after many unseen deliveries) in flight. */
  private readonly backgroundScans = new Set<MaildirFolder>();
  private closed = false;

  constructor(options: MaildirStoreOptions) {
    super();
    this.maildirFor = options.maildirFor;
    this.logger = options.logger ?? silentLogger();
    this.lockStaleMs = options.lockStaleMs ?? 120_000;
    this.lockTimeoutMs = options.lockTimeoutMs ?? this.lockStaleMs + 5_000;
    this.readLockTimeoutMs = options.readLockTimeoutMs ?? Math.min(2_000, this.lockTimeoutMs);
    this.journalLimit = options.journalLimit ?? DEFAULT_JOURNAL_LIMIT;
    this.deliveriesPerBackgroundScan = options.deliveriesPerBackgroundScan ?? DELIVERIES_PER_BACKGROUND_SCAN;
    this.quotaFor = options.quotaFor ?? null;
    this.cacheBuildMaxBytes = options.cacheBuildMaxBytes ?? 1024 * 1024;
  }

  // -------------------------------------------------------------------------------------
  // Users and folders
  // -------------------------------------------------------------------------------------

  async ensureUser(user: string): Promise<void> {
    const u = this.userState(user);
    await this.guard(() => u.tree.run(async () => {
      const made = await mkdir(u.root, { recursive: true, mode: 0o700 });
      for (const sub of ['cur', 'new', 'tmp']) await mkdir(join(u.root, sub), { recursive: true, mode: 0o700 });
      if (made !== undefined) await fsyncDir(dirname(u.root));
      await this.cleanDeleted(u);
      // INBOX: loading it creates its dovecot-uidlist if missing.
      const inbox = await this.folder(u, INBOX);
      if (inbox === null) throw new StoreError('CANNOT', 'cannot create INBOX');
      await this.loadFolder(inbox);
      const subscriptionsExisted = await isFile(join(u.root, SUBSCRIPTIONS_FILE));
      const created: string[] = [];
      for (const def of DEFAULT_FOLDERS) {
        if (def.path === INBOX) continue;
        if (await isDirectory(join(u.root, mailboxPathToDirName(def.path)))) continue;
        await this.createFolderDir(u, def.path);
        created.push(def.path);
      }
      const toSubscribe = subscriptionsExisted ? created : DEFAULT_FOLDERS.map((d) => d.path);
      if (toSubscribe.length > 0) await this.updateSubscriptions(u, (set) => toSubscribe.forEach((p) => set.add(p)));
      await fsyncDir(u.root);
    }));
  }

  /**
   * Rescans a mailbox for changes made by other software (new files, renames, removals)
   * and journals/announces them. What a file-system watcher calls; `force` rescans even if
   * the directories look unchanged.
   */
  async refresh(user: string, path: string, options: { force?: boolean } = {}): Promise<void> {
    return this.guard(async () => {
      const folder = await this.existingFolder(user, path);
      if (folder === null) return;
      try {
        await this.loadFolder(folder);
        if (options.force) await folder.rescan();
      } catch (err) {
        if (!(err instanceof FolderGoneError)) throw err;
      }
    });
  }

  async listMailboxes(user: string): Promise<MailboxInfo[]> {
    return this.guard(async () => {
      const u = this.userState(user);
      let entries: string[];
      try {
        entries = await readdir(u.root);
      } catch (err) {
        if (errno(err) === 'ENOENT') return [];
        throw err;
      }
      const subscribed = new Set(await this.readSubscriptions(u));
      const paths: string[] = [INBOX];
      const checks = entries.map(async (name) => {
        const path = dirNameToMailboxPath(name);
        if (path === null) return null;
        return (await isDirectory(join(u.root, name))) ? path : null;
      });
      for (const path of await Promise.all(checks)) if (path !== null) paths.push(path);
      paths.sort((a, b) => (a === INBOX ? -1 : b === INBOX ? 1 : a < b ? -1 : a > b ? 1 : 0));
      return paths.map((path) => {
        const info: MailboxInfo = { path, subscribed: subscribed.has(path) };
        const specialUse = DEFAULT_FOLDERS.find((d) => d.path === path)?.specialUse;
        if (specialUse !== undefined) info.specialUse = specialUse;
        return info;
      });
    });
  }

  async createMailbox(user: string, path: string): Promise<void> {
    return this.guard(async () => {
      const u = this.userState(user);
      const norm = normalizeMailboxPath(path);
      if (norm === INBOX) throw new StoreError('ALREADYEXISTS', 'INBOX always exists');
      await u.tree.run(async () => {
        if (await isDirectory(join(u.root, mailboxPathToDirName(norm)))) {
          throw new StoreError('ALREADYEXISTS', `Mailbox ${norm} already exists`);
        }
        for (const parent of ancestorsOf(norm)) {
          if (parent === INBOX) continue;
          if (!(await isDirectory(join(u.root, mailboxPathToDirName(parent))))) await this.createFolderDir(u, parent);
        }
        await this.createFolderDir(u, norm);
      });
    });
  }

  async renameMailbox(user: string, from: string, to: string): Promise<void> {
    return this.guard(async () => {
      const u = this.userState(user);
      const src = normalizeMailboxPath(from);
      const dst = normalizeMailboxPath(to);
      if (src === INBOX) throw new StoreError('CANNOT', 'Renaming INBOX is not supported');
      if (dst === INBOX || dst === src) throw new StoreError('ALREADYEXISTS', `Mailbox ${dst} already exists`);
      if (isDescendant(src, dst)) throw new StoreError('CANNOT', 'Cannot move a mailbox into its own hierarchy');
      await u.tree.run(async () => {
        const srcDir = mailboxPathToDirName(src);
        const dstDir = mailboxPathToDirName(dst);
        if (!(await isDirectory(join(u.root, srcDir)))) throw new StoreError('NONEXISTENT', `Mailbox ${src} does not exist`);
        const entries = await readdir(u.root);
        const moves: Array<{ fromName: string; toName: string; fromPath: string; toPath: string }> = [];
        moves.push({ fromName: srcDir, toName: dstDir, fromPath: src, toPath: dst });
        for (const name of entries) {
          if (!name.startsWith(srcDir + '.')) continue;
          const childPath = dirNameToMailboxPath(name);
          if (childPath === null || !isDescendant(src, childPath)) continue;
          const toPath = dst + childPath.slice(src.length);
          moves.push({ fromName: name, toName: dstDir + name.slice(srcDir.length), fromPath: childPath, toPath });
        }
        for (const m of moves) {
          if (Buffer.byteLength(m.toName) > MAX_DIR_NAME_BYTES) throw new StoreError('CANNOT', 'Mailbox name is too long');
          try {
            await stat(join(u.root, m.toName));
            throw new StoreError('ALREADYEXISTS', `Mailbox ${m.toPath} already exists`);
          } catch (err) {
            if (err instanceof StoreError) throw err;
          }
        }
        for (const parent of ancestorsOf(dst)) {
          if (parent === INBOX) continue;
          if (!(await isDirectory(join(u.root, mailboxPathToDirName(parent))))) await this.createFolderDir(u, parent);
        }
        // Quiesce the loaded folders being moved.
        const affected = moves
          .map((m) => ({ m, folder: u.folders.get(m.fromPath) }))
          .filter((x): x is { m: (typeof moves)[number]; folder: MaildirFolder } => x.folder !== undefined && !x.folder.gone);
        const releases = await Promise.all(affected.map((x) => x.folder.mutex.acquire()));
        try {
          const done: typeof moves = [];
          try {
            for (const m of moves) {
              await rename(join(u.root, m.fromName), join(u.root, m.toName));
              done.push(m);
            }
          } catch (err) {
            for (const m of done.reverse()) await rename(join(u.root, m.toName), join(u.root, m.fromName)).catch(() => undefined);
            throw err;
          }
          await fsyncDir(u.root);
          for (const { m, folder } of affected) {
            u.folders.delete(m.fromPath);
            folder.path = m.toPath;
            folder.dir = join(u.root, m.toName);
            u.folders.set(m.toPath, folder);
          }
        } finally {
          for (const release of releases) release();
        }
        await this.updateSubscriptions(u, (set) => {
          for (const p of [...set]) {
            if (p === src || isDescendant(src, p)) {
              set.delete(p);
              set.add(dst + p.slice(src.length));
            }
          }
        });
      });
    });
  }

  async deleteMailbox(user: string, path: string): Promise<void> {
    return this.guard(async () => {
      const u = this.userState(user);
      const norm = normalizeMailboxPath(path);
      if (norm === INBOX) throw new StoreError('CANNOT', 'INBOX cannot be deleted');
      await u.tree.run(async () => {
        const dir = join(u.root, mailboxPathToDirName(norm));
        if (!(await isDirectory(dir))) throw new StoreError('NONEXISTENT', `Mailbox ${norm} does not exist`);
        const folder = u.folders.get(norm);
        const release = folder !== undefined ? await folder.mutex.acquire() : undefined;
        const trash = join(u.root, DELETING_PREFIX + randomBytes(8).toString('hex'));
        try {
          // Atomic from any reader's point of view; the slow part happens out of sight.
          await rename(dir, trash);
          await fsyncDir(u.root);
          if (folder !== undefined) {
            folder.markGone();
            this.forget(u, folder);
          }
        } finally {
          release?.();
        }
        await rm(trash, { recursive: true, force: true });
      });
    });
  }

  async setSubscribed(user: string, path: string, subscribed: boolean): Promise<void> {
    return this.guard(async () => {
      const u = this.userState(user);
      const norm = normalizeMailboxPath(path);
      await this.updateSubscriptions(u, (set) => {
        if (subscribed) set.add(norm);
        else set.delete(norm);
      });
    });
  }

  // -------------------------------------------------------------------------------------
  // Mailboxes
  // -------------------------------------------------------------------------------------

  async openMailbox(user: string, path: string): Promise<MailboxSnapshot | null> {
    return this.guard(() => this.withLoadedFolder(user, path, (folder) => folder.snapshot()));
  }

  async mailboxStatus(user: string, path: string): Promise<MailboxStatus | null> {
    return this.guard(() => this.withLoadedFolder(user, path, (folder) => folder.status()));
  }

  /**
   * Runs `fn` on the loaded folder at `path` (null: no such mailbox). A folder found gone
   * while loading is looked up once more: a mailbox replaced on disk (another UIDVALIDITY,
   * e.g. a Dovecot-side restore) is then served as the new mailbox it is.
   */
  private async withLoadedFolder<T>(user: string, path: string, fn: (folder: MaildirFolder) => Promise<T>): Promise<T | null> {
    for (let attempt = 0; ; attempt++) {
      const folder = await this.existingFolder(user, path);
      if (folder === null) return null;
      try {
        await this.loadFolder(folder);
        return await fn(folder);
      } catch (err) {
        if (!(err instanceof FolderGoneError)) throw err;
        if (attempt > 0) return null;
      }
    }
  }

  async append(user: string, path: string, raw: Buffer, options: AppendOptions = {}): Promise<AppendResult> {
    return this.guard(async () => {
      const flags = classifyFlags(options.flags ?? []);
      normalizeMailboxPath(path);
      // A second attempt when the folder turns out gone: it may have been replaced on disk.
      for (let attempt = 0; ; attempt++) {
        const folder = await this.existingFolder(user, path);
        if (folder === null) throw new StoreError('TRYCREATE', `Mailbox ${path} does not exist`);
        try {
          // A loaded folder needs no rescan first: the commit re-checks dovecot-uidlist under
          // the lock. (Not queueing behind other commits here is what lets appends batch.)
          if (!folder.loaded || folder.id === '') await this.loadFolder(folder);
          await this.checkQuota(this.userState(user), raw.length + countBareLf(raw));
          const cache = this.buildCache(raw);
          const prepared = await folder.prepareAppend(raw, flags, options.internalDate, cache);
          const [uid] = await folder.commit([prepared], options.origin);
          return { mailboxId: folder.id, uidValidity: folder.uidValidity, uid };
        } catch (err) {
          if (!(err instanceof FolderGoneError)) throw err;
          if (attempt > 0) throw new StoreError('TRYCREATE', `Mailbox ${path} does not exist`);
        }
      }
    });
  }

  async deliver(user: string, raw: Buffer): Promise<void> {
    return this.guard(async () => {
      const gone = (): StoreError => new StoreError('TRYCREATE', `The mail storage of ${user} does not exist`);
      const folder = await this.existingFolder(user, INBOX);
      if (folder === null) throw gone();
      await this.checkQuota(this.userState(user), raw.length + countBareLf(raw));
      try {
        await folder.deliver(raw);
      } catch (err) {
        if (err instanceof FolderGoneError || (err as NodeJS.ErrnoException).code === 'ENOENT') throw gone();
        throw err;
      }
      this.scanDelivered(folder);
    });
  }

  /**
   * After a delivery into new/: a watched mailbox (a session has it selected) is scanned at
   * once, so that IDLE reports the message; otherwise the next look at the mailbox assigns
   * the UID, or a background scan once many deliveries piled up unseen.
   */
  private scanDelivered(folder: MaildirFolder): void {
    const w = folder.id === '' ? undefined : this.watches.get(folder.id);
    if (w !== undefined && !w.stopped) {
      w.rescanSoon(0, true);
      return;
    }
    if (folder.unscannedDeliveries < this.deliveriesPerBackgroundScan || this.backgroundScans.has(folder)) return;
    this.backgroundScans.add(folder);
    folder
      .rescan()
      .catch((err: unknown) => {
        if (!(err instanceof FolderGoneError)) this.logger.warn({ err, mailbox: folder.path }, 'background scan after deliveries failed');
      })
      .finally(() => this.backgroundScans.delete(folder));
  }

  async getMessages(mailboxId: string, uids: number[], options: GetMessagesOptions = {}): Promise<MessageMeta[]> {
    return this.guard(async () => (await this.folderById(mailboxId)).getMessages(uids, options.cache === true));
  }

  async setMessageCache(mailboxId: string, entries: ReadonlyArray<{ uid: number; cache: string }>): Promise<void> {
    if (entries.length === 0) return;
    return this.guard(async () => (await this.folderById(mailboxId)).setCache(entries));
  }

  setMessageCacheBuilder(builder: MessageCacheBuilder | null): void {
    this.cacheBuilder = builder;
  }

  /** The cache slot for a new message, if a builder is set and the message is not too big. */
  private buildCache(raw: Buffer): string | undefined {
    const builder = this.cacheBuilder;
    if (builder === null || raw.length > this.cacheBuildMaxBytes) return undefined;
    try {
      return builder(raw) ?? undefined;
    } catch (err) {
      this.logger.warn({ err }, 'message cache builder failed');
      return undefined;
    }
  }

  async readMessage(mailboxId: string, uid: number, arena?: import('../read-arena.js').ReadArena): Promise<Buffer | null> {
    return this.guard(async () => (await this.folderById(mailboxId)).readMessage(uid, arena));
  }

  async readMessages(mailboxId: string, uids: number[], arena?: import('../read-arena.js').ReadArena): Promise<Array<Buffer | null>> {
    return this.guard(async () => (await this.folderById(mailboxId)).readMessages(uids, arena));
  }

  async storeFlags(mailboxId: string, uids: number[], options: StoreFlagsOptions): Promise<StoreFlagsResult> {
    return this.guard(async () => {
      const folder = await this.folderById(mailboxId);
      return folder.storeFlags(uids, options.action, options.flags, options.unchangedSince, options.origin);
    });
  }

  async expunge(mailboxId: string, uids?: number[], origin?: string): Promise<number[]> {
    return this.guard(async () => (await this.folderById(mailboxId)).removeMessages(uids, true, origin));
  }

  async copyMessages(mailboxId: string, uids: number[], targetPath: string, origin?: string): Promise<CopyResult> {
    return this.guard(async () => this.copy(mailboxId, uids, targetPath, origin, false));
  }

  async moveMessages(mailboxId: string, uids: number[], targetPath: string, origin?: string): Promise<CopyResult> {
    return this.guard(async () => this.copy(mailboxId, uids, targetPath, origin, true));
  }

  async changesSince(mailboxId: string, sinceModseq: number): Promise<ChangeEntry[]> {
    return this.guard(async () => (await this.folderById(mailboxId)).changesSince(sinceModseq));
  }

  async quota(user: string): Promise<{ used: number; limit: number | null }> {
    const used = await this.usage(user);
    return { used, limit: this.limitOf(user) };
  }

  private limitOf(user: string): number | null {
    const limit = this.quotaFor?.(user) ?? null;
    return limit !== null && Number.isFinite(limit) && limit > 0 ? limit : null;
  }

  /**
   * Refuses to store `adding` more bytes for a user at or over quota. Usage comes from the
   * folders' in-memory state (listed again every few seconds), so it costs no I/O per call;
   * concurrent appends may together end a little over the limit (as with Dovecot's grace).
   */
  private async checkQuota(u: UserState, adding: number): Promise<void> {
    const limit = this.limitOf(u.name);
    if (limit === null) return;
    const now = Date.now();
    if (now - u.quotaListedAt > QUOTA_RELIST_MS) {
      const folders: MaildirFolder[] = [];
      for (const info of await this.listMailboxes(u.name)) {
        const folder = await this.folder(u, info.path);
        if (folder === null) continue;
        try {
          if (!folder.loaded) await this.loadFolder(folder);
          folders.push(folder);
        } catch (err) {
          if (!(err instanceof FolderGoneError)) throw err;
        }
      }
      u.quotaFolders = folders;
      u.quotaListedAt = now;
    }
    let used = 0;
    for (const folder of u.quotaFolders) if (!folder.gone) used += folder.sizeNow();
    if (used + adding > limit) {
      throw new StoreError('OVERQUOTA', `Quota exceeded: ${used} of ${limit} bytes in use, the message needs ${adding}`);
    }
  }

  /**
   * Watches the mailbox's new/ and cur/ (inotify/kqueue through fs.watch) and rescans it a
   * few milliseconds after other software changed something, so that sessions waiting in
   * IDLE learn about it at once. Counted per mailbox; the returned function ends one watch.
   */
  watchMailbox(mailboxId: string): () => void {
    let w = this.watches.get(mailboxId);
    if (w === undefined) {
      const watch = this.newWatch(mailboxId);
      this.watches.set(mailboxId, watch);
      void this.startWatch(mailboxId, watch);
      w = watch;
    }
    const entry = w;
    entry.count++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--entry.count > 0) return;
      this.stopWatch(mailboxId, entry);
    };
  }

  private stopWatch(mailboxId: string, w: MailboxWatch): void {
    w.stopped = true;
    if (w.timer !== null) clearTimeout(w.timer);
    w.timer = null;
    for (const watcher of w.watchers.splice(0)) watcher.close();
    if (this.watches.get(mailboxId) === w) this.watches.delete(mailboxId);
  }

  /**
   * A watch whose rescans never overlap: a request while one runs leads to exactly one
   * more rescan after it (whatever changed meanwhile is then seen).
   */
  private newWatch(mailboxId: string): MailboxWatch {
    let running = false;
    let again = false;
    let force = false;
    const w: MailboxWatch = {
      count: 0,
      watchers: [],
      timer: null,
      stopped: false,
      rescanSoon: (ms: number, forced = false) => {
        if (w.stopped || this.closed) return;
        if (forced) force = true;
        if (running) {
          again = true;
          return;
        }
        if (w.timer !== null) {
          if (ms > 0) return;
          clearTimeout(w.timer);
          w.timer = null;
        }
        if (ms > 0) w.timer = setTimeout(rescan, ms);
        else rescan();
      },
    };
    const rescan = (): void => {
      w.timer = null;
      if (w.stopped || this.closed) return;
      running = true;
      again = false;
      const forced = force;
      force = false;
      this.folderById(mailboxId)
        .then(async (folder) => {
          await (forced ? folder.rescan() : folder.load());
          // a change in the same clock tick as the one just seen: look again once it is safe
          const later = folder.recheckInMs();
          if (later !== null && !again) w.timer ??= setTimeout(rescan, later);
        })
        .catch((err: unknown) => {
          if (err instanceof FolderGoneError || err instanceof StoreError) this.stopWatch(mailboxId, w);
          else this.logger.warn({ err, mailboxId }, 'rescan of a watched mailbox failed');
        })
        .finally(() => {
          running = false;
          if (again && !w.stopped && !this.closed) {
            if (w.timer !== null) clearTimeout(w.timer);
            rescan();
          }
        });
    };
    return w;
  }

  /** Watches the mailbox's new/ and cur/ (inotify/kqueue through fs.watch) for outside changes. */
  private async startWatch(mailboxId: string, w: MailboxWatch): Promise<void> {
    let folder: MaildirFolder;
    try {
      folder = await this.folderById(mailboxId);
    } catch {
      return; // gone: nothing to watch
    }
    if (w.stopped || this.closed) return;
    const onEvent = (): void => w.rescanSoon(WATCH_DEBOUNCE_MS);
    for (const sub of ['new', 'cur']) {
      try {
        const watcher = watch(join(folder.dir, sub), { persistent: false }, onEvent);
        watcher.on('error', () => watcher.close());
        w.watchers.push(watcher);
      } catch (err) {
        this.logger.warn({ err, mailbox: folder.path }, 'cannot watch the mailbox for outside changes (they are seen at the next command)');
      }
    }
  }

  async usage(user: string): Promise<number> {
    return this.guard(async () => {
      let total = 0;
      for (const info of await this.listMailboxes(user)) {
        const status = await this.mailboxStatus(user, info.path);
        if (status !== null) total += status.size;
      }
      return total;
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const [id, w] of [...this.watches]) this.stopWatch(id, w);
    // Let operations in flight finish.
    for (const u of this.users.values()) {
      await u.tree.run(async () => undefined);
      for (const folder of u.folders.values()) await folder.mutex.run(async () => undefined);
    }
    this.users.clear();
    this.byId.clear();
  }

  override on(event: 'change', listener: (event: ChangeEvent) => void): this {
    return super.on(event, listener);
  }

  override emit(event: 'change', payload: ChangeEvent): boolean {
    return super.emit(event, payload);
  }

  // -------------------------------------------------------------------------------------
  // Internals
  // -------------------------------------------------------------------------------------

  private async copy(mailboxId: string, uids: number[], targetPath: string, origin: string | undefined, move: boolean): Promise<CopyResult> {
    const source = await this.folderById(mailboxId);
    normalizeMailboxPath(targetPath);
    const target = await this.existingFolder(source.user, targetPath);
    if (target === null) throw new StoreError('TRYCREATE', `Mailbox ${targetPath} does not exist`);
    try {
      await this.loadFolder(target);
    } catch (err) {
      if (err instanceof FolderGoneError) throw new StoreError('TRYCREATE', `Mailbox ${targetPath} does not exist`);
      throw err;
    }
    if (!move) await this.checkQuota(this.userState(source.user), source.sizeOf(uids));
    const sources = await source.linkInto(target, uids);
    if (sources.length === 0) return { uidValidity: target.uidValidity, sourceUids: [], destinationUids: [] };
    let destinationUids: number[];
    try {
      destinationUids = await target.commit(sources.map((s) => s.file));
    } catch (err) {
      if (err instanceof FolderGoneError) throw new StoreError('TRYCREATE', `Mailbox ${targetPath} does not exist`);
      throw err;
    }
    const sourceUids = sources.map((s) => s.uid);
    if (move) await source.removeMessages(sourceUids, false, origin);
    return { uidValidity: target.uidValidity, sourceUids, destinationUids };
  }

  /** Maps internal errors to StoreError codes; refuses calls after close(). */
  private async guard<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new StoreError('CANNOT', 'The mail store is closed');
    try {
      return await fn();
    } catch (err) {
      if (err instanceof FolderGoneError) throw new StoreError('NONEXISTENT', err.message);
      if (err instanceof DotlockTimeoutError) throw new StoreError('INUSE', 'Mailbox is locked by another process, try again later');
      throw err;
    }
  }

  private userState(user: string): UserState {
    let u = this.users.get(user);
    if (u === undefined) {
      const root = this.maildirFor(user);
      if (!isAbsolute(root)) throw new Error(`maildirFor(${user}) must return an absolute path`);
      u = { name: user, root, folders: new Map(), tree: new SimpleMutex(), quotaFolders: [], quotaListedAt: 0 };
      this.users.set(user, u);
    }
    return u;
  }

  /** The folder object for a path, or null when its directory does not exist. */
  private async folder(u: UserState, path: string): Promise<MaildirFolder | null> {
    let norm: string;
    try {
      norm = normalizeMailboxPath(path);
    } catch {
      return null;
    }
    const known = u.folders.get(norm);
    if (known !== undefined && !known.gone) return known;
    if (known !== undefined) this.forget(u, known);
    const dir = norm === INBOX ? u.root : join(u.root, mailboxPathToDirName(norm));
    if (!(await isDirectory(dir))) return null;
    const again = u.folders.get(norm);
    if (again !== undefined && !again.gone) return again;
    const folder = new MaildirFolder(u.name, norm, dir, this.folderContext(u));
    u.folders.set(norm, folder);
    return folder;
  }

  private async existingFolder(user: string, path: string): Promise<MaildirFolder | null> {
    return this.folder(this.userState(user), path);
  }

  private folderContext(u: UserState): FolderContext {
    return {
      logger: this.logger,
      lockStaleMs: this.lockStaleMs,
      lockTimeoutMs: this.lockTimeoutMs,
      readLockTimeoutMs: this.readLockTimeoutMs,
      journalLimit: this.journalLimit,
      root: u.root,
      onChange: (folder) => {
        if (folder.gone || folder.id === '') return;
        this.emit('change', { user: folder.user, mailboxId: folder.id, path: folder.path });
      },
    };
  }

  /** Loads a folder and registers its id (giving it a new GUID if another folder has it). */
  private async loadFolder(folder: MaildirFolder): Promise<void> {
    await folder.load();
    const other = this.byId.get(folder.id);
    if (other === folder) return;
    if (other !== undefined && !other.gone && other.dir !== folder.dir) {
      this.logger.warn({ mailbox: folder.path, other: other.path }, 'two folders share one mailbox GUID; giving one a new GUID');
      await folder.regenerateGuid();
    }
    this.byId.set(folder.id, folder);
  }

  private forget(u: UserState, folder: MaildirFolder): void {
    if (u.folders.get(folder.path) === folder) u.folders.delete(folder.path);
    if (this.byId.get(folder.id) === folder) this.byId.delete(folder.id);
  }

  /** Resolves a mailbox id, scanning the user's folders for its GUID if needed. */
  private async folderById(id: string): Promise<MaildirFolder> {
    const known = this.byId.get(id);
    if (known !== undefined && !known.gone) return known;
    const m = /^([0-9a-f]{32})@(.*)$/s.exec(id);
    if (m === null) throw new StoreError('NONEXISTENT', 'Unknown mailbox');
    const [, guid, user] = m;
    const u = this.userState(user);
    for (const info of await this.listMailboxes(user)) {
      const dir = info.path === INBOX ? u.root : join(u.root, mailboxPathToDirName(info.path));
      if ((await readHeaderGuid(join(dir, UIDLIST_FILE))) !== guid) continue;
      const folder = await this.folder(u, info.path);
      if (folder === null) break;
      await this.loadFolder(folder);
      if (folder.id === id) return folder;
    }
    throw new StoreError('NONEXISTENT', 'Unknown mailbox');
  }

  /** Creates `<root>/.Name` with cur/new/tmp, maildirfolder and a fresh dovecot-uidlist. */
  private async createFolderDir(u: UserState, path: string): Promise<void> {
    const dir = join(u.root, mailboxPathToDirName(path));
    try {
      await mkdir(dir, { mode: 0o700 });
    } catch (err) {
      if (errno(err) === 'EEXIST') throw new StoreError('ALREADYEXISTS', `Mailbox ${path} already exists`);
      if (errno(err) === 'ENOENT') throw new StoreError('NONEXISTENT', 'The user has no mail storage yet');
      throw err;
    }
    for (const sub of ['cur', 'new', 'tmp']) await mkdir(join(dir, sub), { mode: 0o700 });
    await writeFile(join(dir, FOLDER_MARKER), '', { mode: 0o600 });
    await fsyncDir(dir);
    const uidlist = serializeUidlist({ uidValidity: await nextUidValidity(u.root), nextUid: 1, guid: newMailboxGuid(), headerExt: [], records: [] });
    await replaceFile(join(dir, UIDLIST_FILE), uidlist);
    await fsyncDir(u.root);
  }

  private async readSubscriptions(u: UserState): Promise<string[]> {
    try {
      return parseSubscriptions(await readFile(join(u.root, SUBSCRIPTIONS_FILE), 'utf8'));
    } catch (err) {
      if (errno(err) === 'ENOENT') return [];
      throw err;
    }
  }

  private async updateSubscriptions(u: UserState, change: (set: Set<string>) => void): Promise<void> {
    await updateWithDotlock(
      join(u.root, SUBSCRIPTIONS_FILE),
      (current) => {
        const before = current === null ? [] : parseSubscriptions(current);
        const set = new Set(before);
        change(set);
        const next = serializeSubscriptions(set);
        return next === current ? null : next;
      },
      { staleMs: 30_000, timeoutMs: this.lockTimeoutMs },
    );
  }

  /** Removes leftovers of deletions interrupted by a crash. */
  private async cleanDeleted(u: UserState): Promise<void> {
    for (const name of await readdir(u.root)) {
      if (name.startsWith(DELETING_PREFIX)) await rm(join(u.root, name), { recursive: true, force: true });
    }
  }
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

async function readHeaderGuid(path: string): Promise<string | null> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch {
    return null;
  }
  try {
    const buf = Buffer.alloc(512);
    const { bytesRead } = await handle.read(buf, 0, buf.length, 0);
    return guidFromHeaderLine(buf.subarray(0, bytesRead).toString('utf8'));
  } finally {
    await handle.close();
  }
}
