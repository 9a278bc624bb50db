/**
 * One Maildir folder (INBOX or a Maildir++ ".Name" directory) and its in-memory state:
 * UID map from dovecot-uidlist, flags from file names and dovecot-keywords, modseqs and
 * cached sizes/dates from our index, and the change journal.
 *
 * Every operation runs under the folder's in-process mutex. Anything that changes
 * dovecot-uidlist (assigning UIDs, dropping expunged ones) also holds Dovecot's dotlock
 * `dovecot-uidlist.lock`, and re-reads the uidlist first if another process changed it.
 *
 * Change detection is cheap: the mtimes of new/ and cur/ and the uidlist's identity are
 * compared with what the last scan saw. Because file-system timestamps are coarse (a
 * kernel clock tick), a directory changed "just now" at scan time may change again with
 * the same mtime; such a scan is marked racy and the first access after the racy window
 * rescans once (Dovecot's "delayed refresh", with a window of one tick instead of one second
 * on file systems with fine timestamps). Changes by other software within the same clock
 * tick as one of ours are thus seen up to ~50 ms late, never lost.
 */
import { copyFile, link, mkdir, open, readdir, readFile, rename, stat, unlink, utimes } from 'node:fs/promises';
import { join, sep } from 'node:path';
import type { Logger } from '../../log/logger.js';
import {
  StoreError,
  type ChangeEntry,
  type FlagAction,
  type MailboxSnapshot,
  type MailboxStatus,
  type MessageMeta,
  type StoreFlagsResult,
} from '../types.js';
import { appendCacheLines, cacheLine, readCacheFile, removeCacheFile, rewriteCacheFile, CACHE_FILE } from './cache-file.js';
import { countBareLf } from './crlf.js';
import { readMessageFile, readMessageFiles, withCrlf, type ReadArena } from './message-reader.js';
import { acquireDotlock, DotlockTimeoutError, updateWithDotlock, type Dotlock } from './dotlock.js';
import { DirectorySyncer, fsyncDir, replaceFile, unlinkQuietly, writeNewFile, writeNewFileDurably } from './durable-write.js';
import { buildFileName, newBaseName, parseFileName, sortLetters } from './filename.js';
import { applyFlagAction, classifyFlags, lettersToFlags, preservedLetters, type ClassifiedFlags } from './flags.js';
import {
  appendIndexLog,
  logLineHighest,
  logLineRemove,
  logLineSet,
  readFolderIndex,
  writeFolderIndex,
  type IndexEntry,
  type LoadedIndex,
} from './index-file.js';
import { Journal } from './journal.js';
import {
  findKeyword,
  letterForIndex,
  MAX_KEYWORDS,
  parseKeywords,
  serializeKeywords,
  type KeywordTable,
} from './keywords.js';
import { Mutex } from './mutex.js';
import {
  getExt,
  newMailboxGuid,
  parseUidlist,
  serializeRecords,
  serializeUidlist,
  UidlistFormatError,
  withExt,
  type Uidlist,
} from './uidlist.js';
import { nextUidValidity } from './uidvalidity.js';

export const UIDLIST_FILE = 'dovecot-uidlist';
export const KEYWORDS_FILE = 'dovecot-keywords';
export const FOLDER_MARKER = 'maildirfolder';

type Sub = 'new' | 'cur';

export interface MessageRecord {
  uid: number;
  /** Base file name (uidlist key). */
  base: string;
  sub: Sub;
  /** Current full file name inside `sub`. */
  fileName: string;
  /** Flag letters after ":2," (sorted). */
  letters: string;
  modseq: number;
  /** CRLF size. */
  size: number;
  /** Internal date (file mtime), ms. */
  idate: number;
  /** uidlist extension fields. */
  ext: string[];
  /** The message's cache slot (MailStore.setMessageCache), once known. */
  cache?: string;
}

/** A message file written into the folder's tmp/, waiting to be committed. */
export interface PreparedFile {
  /** File name inside tmp/ (also the new base name). */
  base: string;
  flags: ClassifiedFlags;
  /** Letters to carry over verbatim (e.g. P from a copied message). */
  extraLetters: string;
  size: number;
  idate: number;
  /** Cache slot for the new message. */
  cache?: string;
}

export interface FolderContext {
  logger: Logger;
  lockStaleMs: number;
  lockTimeoutMs: number;
  readLockTimeoutMs: number;
  journalLimit: number;
  /** The maildir root of the folder's user (for UIDVALIDITY allocation). */
  root: string;
  /** Called after the journal grew. */
  onChange(folder: MaildirFolder): void;
}

/** The folder's directory vanished or was replaced (new UIDVALIDITY). */
export class FolderGoneError extends Error {
  constructor(path: string) {
    super(`mailbox ${path} no longer exists`);
    this.name = 'FolderGoneError';
  }
}

interface Stamp {
  mtimeNs: bigint;
  ino: bigint;
  size: bigint;
}

interface Stamps {
  newDir: Stamp | null;
  curDir: Stamp | null;
  uidlist: Stamp | null;
  keywords: Stamp | null;
}

interface ScannedFile {
  sub: Sub;
  name: string;
  base: string;
  letters: string;
  info: string | null;
  vsize?: number;
}

interface CommitGroup {
  files: PreparedFile[];
  origin?: string;
  resolve(uids: number[]): void;
  reject(err: unknown): void;
}

interface CopySource {
  uid: number;
  file: PreparedFile;
}

/** Racy window for file-system timestamps: > one kernel clock tick, or > 1 s on coarse FSes. */
const RACY_NS = 50_000_000n;
const RACY_COARSE_NS = 1_100_000_000n;
const IO_CONCURRENCY = 64;
const TMP_MAX_AGE_MS = 36 * 3600 * 1000;
/** The index log is folded into a snapshot when longer than this or the message count. */
const INDEX_LOG_MIN_LINES = 1000;

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

async function statStamp(path: string): Promise<Stamp | null> {
  try {
    const st = await stat(path, { bigint: true });
    return { mtimeNs: st.mtimeNs, ino: st.ino, size: st.size };
  } catch (err) {
    if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') return null;
    throw err;
  }
}

function sameStamp(a: Stamp | null, b: Stamp | null): boolean {
  if (a === null || b === null) return a === b;
  return a.mtimeNs === b.mtimeNs && a.ino === b.ino && a.size === b.size;
}

/** Racy window (ms) of a directory stamp taken at `nowNs`: 0 when its mtime is old enough. */
function racyWindowMs(s: Stamp | null, nowNs: bigint): number {
  if (s === null) return 0;
  const window = s.mtimeNs % 1_000_000_000n === 0n ? RACY_COARSE_NS : RACY_NS;
  return nowNs - s.mtimeNs < window ? Number(window / 1_000_000n) : 0;
}

function sortedUnique(uids: readonly number[]): number[] {
  return [...new Set(uids)].filter((u) => Number.isInteger(u) && u > 0).sort((a, b) => a - b);
}

async function mapLimit<T, R>(items: readonly T[], fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(IO_CONCURRENCY, items.length) }, worker));
  return out;
}

export class MaildirFolder {
  /** `<mailbox guid>@<user>`; set when first loaded. */
  id = '';
  loaded = false;
  gone = false;
  uidValidity = 0;
  nextUid = 1;
  guid = '';
  highestModseq = 1;
  readonly mutex = new Mutex();

  private headerExt: string[] = [];
  private records = new Map<number, MessageRecord>();
  private byBase = new Map<string, MessageRecord>();
  private uidCache: number[] | null = null;
  /** Sum of the records' sizes (sizeNow), computed when asked after a change. */
  private sizeMemo: number | null = null;
  /** Messages dropped into new/ by `deliver` that no scan has seen yet: base name -> size. */
  private delivered = new Map<string, number>();
  private deliveredBytes = 0;
  private newDirSync: DirectorySyncer | null = null;
  private keywords: KeywordTable = [];
  private journal: Journal;
  private stamps: Stamps = { newDir: null, curDir: null, uidlist: null, keywords: null };
  /** The last scan may have missed a change made within the same clock tick. */
  private racy = false;
  /** When `racy`, rescan at the first access from this time (ms) on. */
  private racyDeadline = 0;
  private uidlistDirty = false;
  /** dovecot-uidlist on disk is exactly our state and ends cleanly: new lines may be appended. */
  private uidlistAppendable = false;
  /** What the index files hold (to write only differences). */
  private persisted = new Map<number, IndexEntry>();
  private persistedHighest = 0;
  /** Lines in the index log; -1: no usable log, write a snapshot. */
  private logLines = -1;
  /**
   * UIDs our own operations changed, added or removed since the last index save, so that
   * saving costs O(changes), not O(messages). A scan of the disk (other software's changes)
   * sets `indexFullScan` instead: the next save compares every record.
   */
  private dirtyUids = new Set<number>();
  private indexFullScan = true;
  private pending: CommitGroup[] = [];
  private flushScheduled = false;
  /** onionpost-cache has been read into the records' cache slots. */
  private cacheLoaded = false;
  /** onionpost-cache on disk can be appended to (header checked, no partial last line). */
  private cacheWritable = false;
  /** Lines in onionpost-cache (known after loading; counted since). */
  private cacheLines = 0;

  constructor(
    readonly user: string,
    public path: string,
    public dir: string,
    private readonly ctx: FolderContext,
  ) {
    this.journal = new Journal(ctx.journalLimit);
  }

  // -------------------------------------------------------------------------------------
  // Public operations (each takes the mutex)
  // -------------------------------------------------------------------------------------

  /** Loads the folder (first call) or picks up changes made by other software. */
  async load(): Promise<void> {
    await this.mutex.run(() => this.ensureFresh());
  }

  /** A full rescan even if the directories look unchanged. */
  async rescan(): Promise<void> {
    await this.mutex.run(() => this.ensureFresh({ force: true }));
  }

  async snapshot(): Promise<MailboxSnapshot> {
    return this.mutex.run(async () => {
      await this.ensureFresh();
      return {
        id: this.id,
        path: this.path,
        uidValidity: this.uidValidity,
        uidNext: this.nextUid,
        highestModseq: this.highestModseq,
        uids: [...this.uidList()],
        keywords: this.keywords.filter((k): k is string => k !== undefined),
      };
    });
  }

  async status(): Promise<MailboxStatus> {
    return this.mutex.run(async () => {
      await this.ensureFresh();
      return this.statusNow();
    });
  }

  async getMessages(uids: readonly number[], withCache = false): Promise<MessageMeta[]> {
    return this.mutex.run(async () => {
      await this.ensureFresh();
      if (withCache) await this.loadCache();
      const out: MessageMeta[] = [];
      for (const uid of sortedUnique(uids)) {
        const rec = this.records.get(uid);
        if (rec === undefined) continue;
        const meta = this.meta(rec);
        if (withCache && rec.cache !== undefined) meta.cache = rec.cache;
        out.push(meta);
      }
      return out;
    });
  }

  /** Fills cache slots and appends them to onionpost-cache. */
  async setCache(entries: ReadonlyArray<{ uid: number; cache: string }>): Promise<void> {
    await this.mutex.run(async () => {
      if (this.gone) throw new FolderGoneError(this.path);
      const changed: MessageRecord[] = [];
      for (const { uid, cache } of entries) {
        const rec = this.records.get(uid);
        if (rec === undefined || rec.cache === cache || cacheLine(uid, rec.base, cache) === null) continue;
        rec.cache = cache;
        changed.push(rec);
      }
      await this.persistCache(changed);
    });
  }

  async readMessage(uid: number, arena?: ReadArena): Promise<Buffer | null> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const rec = await this.mutex.run(async () => {
        // A known UID needs no freshness check first (4 stats per message otherwise): if
        // other software renamed or removed its file, the read fails and we rescan then.
        if (attempt === 0) {
          if (this.gone) throw new FolderGoneError(this.path);
          const known = this.loaded ? this.records.get(uid) : undefined;
          if (known !== undefined) return known;
          await this.ensureFresh();
        } else {
          await this.ensureFresh({ force: true });
        }
        return this.records.get(uid);
      });
      if (rec === undefined) return null;
      let data: Buffer;
      try {
        data = await readMessageFile(join(this.dir, rec.sub, rec.fileName), rec.size, arena);
      } catch (err) {
        // Renamed (flags) or moved to cur/ by someone else meanwhile: rescan and retry.
        if (errno(err) === 'ENOENT') continue;
        throw err;
      }
      return this.crlfChecked(rec, data);
    }
    return null;
  }

  /**
   * readMessage for several UIDs (null for those gone), their files read in one go
   * (readMessageFiles). A UID not known yet or whose file was renamed or removed meanwhile
   * goes through readMessage (which rescans).
   */
  async readMessages(uids: readonly number[], arena?: ReadArena): Promise<Array<Buffer | null>> {
    const recs = await this.mutex.run(async () => {
      if (this.gone) throw new FolderGoneError(this.path);
      return uids.map((uid) => (this.loaded ? this.records.get(uid) : undefined));
    });
    const known = recs.flatMap((rec, i) => (rec === undefined ? [] : [i]));
    const read = await readMessageFiles(
      // (plain concatenation, cheaper than join(): the system resolves it the same way)
      known.map((i) => ({ path: `${this.dir}${sep}${recs[i]!.sub}${sep}${recs[i]!.fileName}`, expected: recs[i]!.size })),
      arena,
    );
    const out = new Array<Buffer | null | Promise<Buffer | null>>(uids.length);
    known.forEach((i, k) => {
      const data = read[k];
      if (!(data instanceof Error)) out[i] = this.crlfChecked(recs[i]!, data);
      else if (errno(data) === 'ENOENT') out[i] = this.readMessage(uids[i], arena);
      else out[i] = Promise.reject(data);
    });
    recs.forEach((rec, i) => {
      if (rec === undefined) out[i] = this.readMessage(uids[i], arena);
    });
    return Promise.all(out);
  }

  /** The message read from `rec`'s file, with CRLF; a recorded size found wrong is corrected. */
  private crlfChecked(rec: MessageRecord, data: Buffer): Buffer {
    const out = withCrlf(data, rec.size);
    if (out.length !== rec.size) {
      this.ctx.logger.warn({ mailbox: this.path, uid: rec.uid, recorded: rec.size, actual: out.length }, 'message size differs from its recorded size');
      rec.size = out.length;
      this.sizeMemo = null;
      this.dirtyUids.add(rec.uid);
    }
    return out;
  }

  async storeFlags(
    uids: readonly number[],
    action: FlagAction,
    flagList: readonly string[],
    unchangedSince: number | undefined,
    origin: string | undefined,
  ): Promise<StoreFlagsResult> {
    const flags = classifyFlags(flagList);
    const changed: MessageMeta[] = [];
    const modified: number[] = [];
    try {
      await this.mutex.run(async () => {
        try {
          await this.ensureFresh();
          const letterOf = await this.keywordLetters(flags.keywords, action !== 'remove');
          for (const uid of sortedUnique(uids)) {
            for (let attempt = 0; attempt < 2; attempt++) {
              const rec = this.records.get(uid);
              if (rec === undefined) break;
              if (unchangedSince !== undefined && rec.modseq > unchangedSince) {
                modified.push(uid);
                break;
              }
              const letters = applyFlagAction(rec.letters, this.keywords, action, flags, letterOf);
              if (letters === rec.letters) break;
              const to = buildFileName(rec.base, letters);
              try {
                await rename(join(this.dir, rec.sub, rec.fileName), join(this.dir, 'cur', to));
              } catch (err) {
                if (errno(err) !== 'ENOENT') throw err;
                if (attempt > 0) break;
                // Someone else renamed or removed it: rescan, then apply to what is there now.
                await this.ensureFresh({ force: true });
                continue;
              }
              rec.sub = 'cur';
              rec.fileName = to;
              rec.letters = letters;
              rec.modseq = ++this.highestModseq;
              this.dirtyUids.add(uid);
              const meta = this.meta(rec);
              this.journal.add({ command: 'FETCH', uid, modseq: rec.modseq, flags: [...meta.flags], ...(origin ? { origin } : {}) });
              changed.push(meta);
              break;
            }
          }
        } finally {
          if (changed.length > 0) {
            await this.noteOwnChange();
            await this.saveIndex();
          }
        }
      });
    } finally {
      if (changed.length > 0) this.ctx.onChange(this);
    }
    return { changed, modified };
  }

  /** Removes messages (with \Deleted when `requireDeleted`). Returns the removed UIDs. */
  async removeMessages(uids: readonly number[] | undefined, requireDeleted: boolean, origin?: string): Promise<number[]> {
    const removed = await this.mutex.run(() =>
      this.withLock(async () => {
        const done: MessageRecord[] = [];
        let failure: unknown = undefined;
        let candidates = uids === undefined ? [...this.uidList()] : sortedUnique(uids);
        try {
          for (let attempt = 0; attempt < 2 && candidates.length > 0; attempt++) {
            const missing: number[] = [];
            for (const uid of candidates) {
              const rec = this.records.get(uid);
              if (rec === undefined || (requireDeleted && !rec.letters.includes('T'))) continue;
              try {
                await unlink(join(this.dir, rec.sub, rec.fileName));
                done.push(rec);
              } catch (err) {
                if (errno(err) !== 'ENOENT') throw err;
                missing.push(uid);
              }
            }
            if (missing.length === 0) break;
            // Renamed by someone else meanwhile (or already gone): rescan and retry those.
            await this.syncFromDisk(true);
            candidates = missing;
          }
        } catch (err) {
          // Record what did happen; the caller gets the error, so its session has not
          // reported these removals: journal them for everyone (no origin).
          failure = err;
          origin = undefined;
        }
        if (done.length === 0) {
          if (failure !== undefined) throw failure;
          return [];
        }
        for (const rec of done) {
          this.records.delete(rec.uid);
          this.dirtyUids.add(rec.uid);
          this.byBase.delete(rec.base);
        }
        this.recordsChanged();
        try {
          await this.writeUidlist();
        } catch (err) {
          // The files are gone; the uidlist will be rewritten by the next locked sync.
          this.uidlistDirty = true;
          this.ctx.logger.error({ err, mailbox: this.path }, 'could not rewrite dovecot-uidlist after expunge');
        }
        done.sort((a, b) => a.uid - b.uid);
        for (const rec of done) {
          this.journal.add({ command: 'EXPUNGE', uid: rec.uid, modseq: ++this.highestModseq, ...(origin ? { origin } : {}) });
        }
        await this.noteOwnChange();
        await this.saveIndex();
        if (failure !== undefined) {
          this.ctx.onChange(this);
          throw failure;
        }
        return done.map((r) => r.uid);
      }),
    );
    if (removed.length > 0) this.ctx.onChange(this);
    return removed;
  }

  /**
   * Writes a new message into tmp/ (fsync'd, mtime = internal date). The file is not yet
   * visible; `commit` makes it so.
   */
  async prepareAppend(raw: Buffer, flags: ClassifiedFlags, internalDate?: Date, cache?: string): Promise<PreparedFile> {
    const vsize = raw.length + countBareLf(raw);
    const base = newBaseName(raw.length, vsize);
    const idate = await writeNewFile(join(this.dir, 'tmp', base), raw, { mtime: internalDate });
    return { base, flags, extraLetters: '', size: vsize, idate, ...(cache !== undefined ? { cache } : {}) };
  }

  /**
   * A delivery agent's drop: the message is written to tmp/ (on disk before the write
   * returns), renamed into new/, and new/ is fsync'd (one fsync shared by concurrent
   * deliveries). No lock and no UID: like any file other software drops into new/, it gets
   * its UID at the next scan. Resolves once the message is durable.
   */
  async deliver(raw: Buffer): Promise<void> {
    if (this.gone) throw new FolderGoneError(this.path);
    const vsize = raw.length + countBareLf(raw);
    const base = newBaseName(raw.length, vsize);
    const dir = this.dir;
    const tmp = join(dir, 'tmp', base);
    await writeNewFileDurably(tmp, raw);
    try {
      await rename(tmp, join(dir, 'new', base));
    } catch (err) {
      await unlinkQuietly(tmp);
      throw err;
    }
    if (this.loaded) {
      this.delivered.set(base, vsize);
      this.deliveredBytes += vsize;
    }
    if (this.newDirSync === null || this.newDirSync.dir !== join(dir, 'new')) this.newDirSync = new DirectorySyncer(join(dir, 'new'));
    await this.newDirSync.sync();
  }

  /** How many delivered messages no scan has seen yet (see `deliver`). */
  get unscannedDeliveries(): number {
    return this.delivered.size;
  }

  /** Removes prepared files that will not be committed. */
  async discardPrepared(files: readonly PreparedFile[]): Promise<void> {
    for (const f of files) await unlinkQuietly(join(this.dir, 'tmp', f.base));
  }

  /**
   * Moves prepared files into cur/ and gives them UIDs, all or nothing for the group.
   * Concurrent commits are batched: one dotlock, one directory fsync and one uidlist write
   * per batch. Resolves with the new UIDs once everything is durable.
   */
  commit(files: PreparedFile[], origin?: string): Promise<number[]> {
    return new Promise<number[]>((resolve, reject) => {
      this.pending.push({ files, origin, resolve, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        void this.mutex.run(() => this.flushCommits());
      }
    });
  }

  /**
   * For COPY/MOVE: hard-links (or, across file systems, copies) the messages into
   * `target`'s tmp/. The caller commits them in the target.
   */
  async linkInto(target: MaildirFolder, uids: readonly number[]): Promise<CopySource[]> {
    return this.mutex.run(async () => {
      await this.ensureFresh();
      // the copies get the same cache slots (same bytes)
      await this.loadCache().catch(() => undefined);
      const out: CopySource[] = [];
      try {
        for (const uid of sortedUnique(uids)) {
          for (let attempt = 0; attempt < 2; attempt++) {
            const rec = this.records.get(uid);
            if (rec === undefined) break;
            const src = join(this.dir, rec.sub, rec.fileName);
            const parsed = parseFileName(rec.fileName);
            let size = parsed.size;
            try {
              if (size === undefined) size = (await stat(src)).size;
              const base = newBaseName(size, rec.size);
              await this.linkOrCopy(src, join(target.dir, 'tmp', base), rec.idate);
              const flags = classifyFlags(lettersToFlags(rec.letters, this.keywords));
              const extraLetters = preservedLetters(rec.letters, this.keywords).replace(/[a-z]/g, '');
              out.push({ uid, file: { base, flags, extraLetters, size: rec.size, idate: rec.idate, ...(rec.cache !== undefined ? { cache: rec.cache } : {}) } });
              break;
            } catch (err) {
              if (errno(err) !== 'ENOENT' || attempt > 0) throw err;
              await this.ensureFresh({ force: true });
            }
          }
        }
      } catch (err) {
        await target.discardPrepared(out.map((c) => c.file));
        throw err;
      }
      return out;
    });
  }

  async changesSince(modseq: number): Promise<ChangeEntry[]> {
    return this.mutex.run(async () => {
      await this.ensureFresh();
      return this.journal.since(modseq);
    });
  }

  /** Gives the folder a fresh mailbox GUID (used when two folders share one). */
  async regenerateGuid(): Promise<void> {
    await this.mutex.run(() =>
      this.withLock(async () => {
        this.guid = newMailboxGuid();
        this.id = `${this.guid}@${this.user}`;
        await this.writeUidlist();
        await this.noteOwnChange();
        await this.saveIndex(true);
        // onionpost-cache names the old GUID: start it again from what memory holds
        if (this.cacheLoaded) await this.rewriteCache().catch(() => undefined);
        else await removeCacheFile(this.dir);
        this.cacheWritable = this.cacheLoaded;
      }),
    );
  }

  /** Marks the folder as deleted: every later operation fails with FolderGoneError. */
  markGone(): void {
    this.gone = true;
    this.cacheLoaded = false;
    this.cacheWritable = false;
    this.journal.clear();
    this.records.clear();
    this.byBase.clear();
    this.delivered.clear();
    this.deliveredBytes = 0;
    this.recordsChanged();
  }

  // -------------------------------------------------------------------------------------
  // Freshness and synchronisation with the disk
  // -------------------------------------------------------------------------------------

  private async readStamps(): Promise<Stamps> {
    const read = (): Promise<Array<Stamp | null>> =>
      Promise.all([
        statStamp(join(this.dir, 'new')),
        statStamp(join(this.dir, 'cur')),
        statStamp(join(this.dir, UIDLIST_FILE)),
        statStamp(join(this.dir, KEYWORDS_FILE)),
      ]);
    let [newDir, curDir, uidlist, keywords] = await read();
    if (newDir === null || curDir === null || (!this.loaded && (await statStamp(join(this.dir, 'tmp'))) === null)) {
      if ((await statStamp(this.dir)) === null) {
        this.markGone();
        throw new FolderGoneError(this.path);
      }
      // A folder made by other software without all of cur/new/tmp: complete it.
      for (const sub of ['cur', 'new', 'tmp']) await mkdir(join(this.dir, sub), { recursive: true, mode: 0o700 });
      [newDir, curDir, uidlist, keywords] = await read();
    }
    return { newDir, curDir, uidlist, keywords };
  }

  private unchanged(now: Stamps, dirsToo: boolean): boolean {
    if (!this.loaded) return false;
    if (!sameStamp(now.uidlist, this.stamps.uidlist) || !sameStamp(now.keywords, this.stamps.keywords)) return false;
    if (!dirsToo) return true;
    if (this.racy && Date.now() >= this.racyDeadline) return false;
    return sameStamp(now.newDir, this.stamps.newDir) && sameStamp(now.curDir, this.stamps.curDir);
  }

  /**
   * Makes the in-memory state current (caller holds the mutex). Takes the dotlock when a
   * scan is needed; if another process holds it for long, does a partial scan that
   * assigns no UIDs (new files then show up at the next scan).
   */
  private async ensureFresh(options: { force?: boolean } = {}): Promise<void> {
    if (this.gone) throw new FolderGoneError(this.path);
    const now = await this.readStamps();
    if (!options.force && this.unchanged(now, true)) return;
    let lock: Dotlock | null = null;
    try {
      lock = await acquireDotlock(join(this.dir, UIDLIST_FILE), {
        staleMs: this.ctx.lockStaleMs,
        timeoutMs: this.loaded ? this.ctx.readLockTimeoutMs : this.ctx.lockTimeoutMs,
      });
    } catch (err) {
      if (!(err instanceof DotlockTimeoutError)) throw err;
      if (!this.loaded) throw err;
      this.ctx.logger.warn({ mailbox: this.path }, 'dovecot-uidlist is locked by another process; partial rescan');
    }
    try {
      await this.syncFromDisk(lock !== null);
    } finally {
      await lock?.release();
    }
  }

  /**
   * Runs `fn` holding the uidlist dotlock, after re-reading the uidlist if another process
   * changed it (caller holds the mutex).
   */
  private async withLock<T>(fn: () => Promise<T>): Promise<T> {
    if (this.gone) throw new FolderGoneError(this.path);
    const lock = await acquireDotlock(join(this.dir, UIDLIST_FILE), {
      staleMs: this.ctx.lockStaleMs,
      timeoutMs: this.ctx.lockTimeoutMs,
    });
    try {
      const now = await this.readStamps();
      // Only a changed uidlist/keywords file matters for writers; new files in the
      // directories get their UIDs at the next read-side scan.
      if (!this.unchanged(now, false) || this.uidlistDirty) await this.syncFromDisk(true);
      return await fn();
    } finally {
      await lock.release();
    }
  }

  private async loadKeywords(): Promise<void> {
    try {
      this.keywords = parseKeywords(await readFile(join(this.dir, KEYWORDS_FILE), 'utf8'));
    } catch (err) {
      if (errno(err) !== 'ENOENT') throw err;
      this.keywords = [];
    }
  }

  private async readUidlist(): Promise<Uidlist | null> {
    let text: string;
    try {
      text = await readFile(join(this.dir, UIDLIST_FILE), 'utf8');
    } catch (err) {
      if (errno(err) === 'ENOENT') return null;
      throw err;
    }
    try {
      return parseUidlist(text);
    } catch (err) {
      if (!(err instanceof UidlistFormatError)) throw err;
      this.ctx.logger.error({ mailbox: this.path, reason: err.message }, 'broken dovecot-uidlist; rebuilding it');
      return null;
    }
  }

  private async scanDirs(): Promise<Map<string, ScannedFile>> {
    const found = new Map<string, ScannedFile>();
    // Names we already know need no parsing (the common case of a rescan).
    const known = new Map<string, MessageRecord>();
    for (const rec of this.records.values()) if (rec.sub === 'cur') known.set(rec.fileName, rec);
    // new/ first: a file moved new/ -> cur/ during the scan is then still seen in cur/.
    for (const sub of ['new', 'cur'] as const) {
      let names: string[];
      try {
        names = await readdir(join(this.dir, sub));
      } catch (err) {
        if (errno(err) === 'ENOENT') continue;
        throw err;
      }
      for (const name of names) {
        const rec = sub === 'cur' ? known.get(name) : undefined;
        if (rec !== undefined) {
          found.set(rec.base, { sub, name, base: rec.base, letters: rec.letters, info: `2,${rec.letters}` });
          continue;
        }
        if (name.startsWith('.') || name.includes('\n') || name.includes('\r')) continue;
        const p = parseFileName(name);
        const prev = found.get(p.base);
        if (prev !== undefined && prev.sub === sub) {
          // Two files with one base name in one directory: the record keeps the first.
          this.ctx.logger.warn({ mailbox: this.path, name }, 'duplicate maildir base name ignored');
          continue;
        }
        found.set(p.base, { sub, name, base: p.base, letters: sortLetters(p.letters), info: p.info, vsize: p.vsize });
      }
    }
    return found;
  }

  /** Full scan: uidlist + keywords + directories, reconciled with memory (mutex held). */
  private async syncFromDisk(locked: boolean): Promise<void> {
    const initial = !this.loaded;
    let vanished = false;
    let list: Uidlist | null = null;
    let scan = new Map<string, ScannedFile>();
    let before: Stamps = await this.readStamps();
    // Stamps of the uidlist/keywords files as they were just before we read them: if they
    // change after our read (another writer), the next check must see a difference.
    let readWith: Stamps = before;
    for (let attempt = 0; attempt < 4; attempt++) {
      readWith = before;
      // The files we wrote last are what memory holds: skip re-reading them if unchanged.
      if (!this.loaded || !sameStamp(before.keywords, this.stamps.keywords)) await this.loadKeywords();
      const uidlistSame = this.loaded && !this.uidlistDirty && sameStamp(before.uidlist, this.stamps.uidlist);
      list = uidlistSame ? this.toUidlist() : await this.readUidlist();
      scan = await this.scanDirs();
      const after = await this.readStamps();
      const stable = sameStamp(before.newDir, after.newDir) && sameStamp(before.curDir, after.curDir);
      before = after;
      if (stable) break;
    }

    let uidlistChanged = this.uidlistDirty;
    if (list === null) {
      if (this.loaded) {
        // Lost or broken: rebuild it from memory so that UIDs stay the same.
        list = this.toUidlist();
      } else if (!locked) {
        throw new DotlockTimeoutError(join(this.dir, UIDLIST_FILE + '.lock'));
      } else {
        list = { uidValidity: await nextUidValidity(this.ctx.root), nextUid: 1, guid: newMailboxGuid(), headerExt: [], records: [] };
      }
      uidlistChanged = true;
    }
    if (this.loaded && list.uidValidity !== this.uidValidity) {
      this.ctx.logger.warn({ mailbox: this.path }, 'UIDVALIDITY changed on disk; the mailbox was replaced');
      this.markGone();
      throw new FolderGoneError(this.path);
    }
    if (list.needsRewrite === true) uidlistChanged = true;
    if (list.guid === '') {
      list.guid = this.guid !== '' ? this.guid : newMailboxGuid();
      uidlistChanged = true;
    }

    if (initial && locked) await this.cleanTmp();
    const index = initial ? await this.readIndex(list) : null;
    if (initial) {
      this.highestModseq = Math.max(1, index?.highestModseq ?? 1);
      this.persisted = new Map(index?.messages ?? []);
      this.persistedHighest = index?.highestModseq ?? 0;
      this.logLines = index?.logLines ?? -1;
    }
    let indexStale = initial && (index === null || index.messages.size !== list.records.length);

    const expunged: MessageRecord[] = [];
    const flagChanged: MessageRecord[] = [];
    const added: MessageRecord[] = [];
    const next = new Map<number, MessageRecord>();
    const known = new Set<string>();
    const needIo: Array<{ rec: MessageRecord; needSize: boolean; needDate: boolean }> = [];

    for (const r of list.records) {
      const f = scan.get(r.base);
      if (f === undefined) {
        uidlistChanged = true; // drop the line of a file that is gone
        continue;
      }
      known.add(r.base);
      const old = this.records.get(r.uid);
      if (old !== undefined && old.base === r.base) {
        old.sub = f.sub;
        old.fileName = f.name;
        old.ext = r.ext;
        if (old.letters !== f.letters) {
          old.letters = f.letters;
          flagChanged.push(old);
        }
        next.set(r.uid, old);
        continue;
      }
      const cached: IndexEntry | undefined = index?.messages.get(r.uid);
      const extW = getExt(r.ext, 'W');
      const size = f.vsize ?? (extW !== undefined && /^\d+$/.test(extW) ? Number(extW) : cached?.size);
      const rec: MessageRecord = {
        uid: r.uid,
        base: r.base,
        sub: f.sub,
        fileName: f.name,
        letters: f.letters,
        modseq: 0,
        size: size ?? 0,
        idate: cached?.idate ?? 0,
        ext: r.ext,
      };
      if (initial && cached !== undefined && cached.letters === f.letters && cached.modseq <= this.highestModseq) {
        rec.modseq = cached.modseq;
      } else if (initial) {
        indexStale = true;
        if (index === null) rec.modseq = 1;
        else flagChanged.push(rec);
      } else {
        added.push(rec);
      }
      if (size === undefined || cached === undefined) needIo.push({ rec, needSize: size === undefined, needDate: cached === undefined });
      next.set(r.uid, rec);
    }
    for (const [uid, old] of this.records) if (!next.has(uid)) expunged.push(old);

    // Files without a UID: give them one (only with the lock), oldest name first. Never go
    // back below a UID we handed out already, whatever the file says (Dovecot does the same).
    let nextUid = this.loaded ? Math.max(list.nextUid, this.nextUid) : list.nextUid;
    if (nextUid !== list.nextUid) uidlistChanged = true;
    if (locked) {
      const fresh = [...scan.values()].filter((f) => !known.has(f.base)).sort((a, b) => (a.base < b.base ? -1 : a.base > b.base ? 1 : 0));
      for (const f of fresh) {
        const dropped = this.delivered.get(f.base);
        if (dropped !== undefined) {
          this.delivered.delete(f.base);
          this.deliveredBytes -= dropped;
        }
        const rec: MessageRecord = {
          uid: nextUid++,
          base: f.base,
          sub: f.sub,
          fileName: f.name,
          letters: f.letters,
          modseq: 0,
          size: f.vsize ?? 0,
          idate: 0,
          ext: [],
        };
        needIo.push({ rec, needSize: f.vsize === undefined, needDate: true });
        next.set(rec.uid, rec);
        added.push(rec);
        uidlistChanged = true;
        indexStale = true;
      }
    }

    // Sizes (files without W=) and internal dates (file mtimes) we do not know yet.
    await mapLimit(needIo, async ({ rec, needSize, needDate }) => {
      const path = join(this.dir, rec.sub, rec.fileName);
      try {
        if (needDate) rec.idate = (await stat(path)).mtimeMs;
        if (needSize) {
          const data = await readFile(path);
          rec.size = data.length + countBareLf(data);
          rec.ext = withExt(rec.ext, 'W', String(rec.size));
          uidlistChanged = true;
        }
      } catch (err) {
        if (errno(err) !== 'ENOENT') throw err;
        // Vanished meanwhile: the next scan drops it.
        vanished = true;
      }
    });

    // new/ -> cur/ (like Dovecot), keeping any info part the file already has.
    if (locked) {
      for (const rec of next.values()) {
        if (rec.sub !== 'new') continue;
        const info = parseFileName(rec.fileName).info;
        const to = info === null ? `${rec.fileName}:2,` : rec.fileName;
        try {
          await rename(join(this.dir, 'new', rec.fileName), join(this.dir, 'cur', to));
          rec.sub = 'cur';
          rec.fileName = to;
        } catch (err) {
          if (errno(err) !== 'ENOENT') throw err;
          vanished = true;
        }
      }
    }

    // Commit the new state.
    this.indexFullScan = true;
    const sorted = [...next.values()].sort((a, b) => a.uid - b.uid);
    this.records = new Map(sorted.map((r) => [r.uid, r]));
    this.byBase = new Map(sorted.map((r) => [r.base, r]));
    this.recordsChanged();
    this.uidValidity = list.uidValidity;
    this.nextUid = nextUid;
    this.guid = list.guid;
    this.headerExt = list.headerExt;
    if (this.id === '') this.id = `${this.guid}@${this.user}`;

    if (uidlistChanged) {
      if (locked) {
        await this.writeUidlist();
      } else {
        this.uidlistDirty = true;
      }
    }
    this.uidlistAppendable = !this.uidlistDirty;

    const journalled = !initial && (expunged.length > 0 || flagChanged.length > 0 || added.length > 0);
    for (const rec of expunged) this.journal.add({ command: 'EXPUNGE', uid: rec.uid, modseq: ++this.highestModseq });
    for (const rec of flagChanged) {
      rec.modseq = ++this.highestModseq;
      if (!initial) this.journal.add({ command: 'FETCH', uid: rec.uid, modseq: rec.modseq, flags: this.flagsOf(rec) });
    }
    for (const rec of added.sort((a, b) => a.uid - b.uid)) {
      rec.modseq = ++this.highestModseq;
      if (!initial) this.journal.add({ command: 'EXISTS', uid: rec.uid, modseq: rec.modseq });
    }
    this.loaded = true;
    const final = await this.readStamps();
    if (!(uidlistChanged && locked)) final.uidlist = readWith.uidlist;
    final.keywords = readWith.keywords;
    this.updateStamps(final);
    if (vanished) {
      this.racy = true;
      this.racyDeadline = 0;
    }

    if (journalled || indexStale || uidlistChanged) await this.saveIndex();
    if (journalled) this.ctx.onChange(this);
  }

  /** Removes what crashed deliveries left in tmp/ (older than 36 h, like Dovecot). */
  private async cleanTmp(): Promise<void> {
    const tmp = join(this.dir, 'tmp');
    let names: string[];
    try {
      names = await readdir(tmp);
    } catch {
      return;
    }
    const limit = Date.now() - TMP_MAX_AGE_MS;
    for (const name of names) {
      try {
        const st = await stat(join(tmp, name));
        if (st.isFile() && st.mtimeMs < limit && st.ctimeMs < limit) await unlink(join(tmp, name));
      } catch {
        // raced with someone else: fine
      }
    }
  }

  private async readIndex(list: Uidlist): Promise<LoadedIndex | null> {
    const index = await readFolderIndex(this.dir);
    if (index === null) return null;
    if (index.uidValidity !== list.uidValidity || (list.guid !== '' && index.guid !== list.guid)) return null;
    return index;
  }

  private async flushCommits(): Promise<void> {
    this.flushScheduled = false;
    const batch = this.pending.splice(0);
    if (batch.length === 0) return;
    // Groups are settled only at the end, once the lock is released and all is on disk.
    const failed = new Map<CommitGroup, unknown>();
    const fail = async (group: CommitGroup, err: unknown): Promise<void> => {
      if (failed.has(group)) return;
      failed.set(group, err);
      await this.discardPrepared(group.files);
    };
    const done: Array<{ group: CommitGroup; uids: number[] }> = [];
    try {
      await this.withLock(async () => {
        // Final names (keyword letters come from this folder's dovecot-keywords).
        const names = new Map<CommitGroup, string[]>();
        for (const group of batch) {
          try {
            const keywords = group.files.flatMap((f) => f.flags.keywords);
            const letterOf = await this.keywordLetters(keywords, true);
            names.set(
              group,
              group.files.map((f) => buildFileName(f.base, applyFlagAction(f.extraLetters, this.keywords, 'set', f.flags, letterOf))),
            );
          } catch (err) {
            await fail(group, err);
          }
        }
        // Into cur/, all or nothing per group.
        const moved: Array<{ group: CommitGroup; names: string[] }> = [];
        for (const group of batch) {
          const groupNames = names.get(group);
          if (groupNames === undefined || failed.has(group)) continue;
          const renamed: string[] = [];
          try {
            for (let i = 0; i < group.files.length; i++) {
              await rename(join(this.dir, 'tmp', group.files[i].base), join(this.dir, 'cur', groupNames[i]));
              renamed.push(groupNames[i]);
            }
            moved.push({ group, names: groupNames });
          } catch (err) {
            for (const name of renamed) await unlinkQuietly(join(this.dir, 'cur', name));
            await fail(group, err);
          }
        }
        if (moved.length === 0) return;
        const firstUid = this.nextUid;
        const fresh: MessageRecord[] = [];
        try {
          await fsyncDir(join(this.dir, 'cur'));
          let uid = firstUid;
          for (const { group, names: groupNames } of moved) {
            const uids: number[] = [];
            group.files.forEach((f, i) => {
              const p = parseFileName(groupNames[i]);
              fresh.push({
                uid,
                base: f.base,
                sub: 'cur',
                fileName: groupNames[i],
                letters: p.letters,
                modseq: 0,
                size: f.size,
                idate: f.idate,
                ext: [],
                ...(f.cache !== undefined ? { cache: f.cache } : {}),
              });
              uids.push(uid++);
            });
            done.push({ group, uids });
          }
          this.nextUid = uid;
          await this.addToUidlist(fresh);
        } catch (err) {
          // The UIDs stay used up: a reader may have seen them in the file already.
          done.length = 0;
          for (const { names: groupNames } of moved) {
            for (const name of groupNames) await unlinkQuietly(join(this.dir, 'cur', name));
          }
          await fsyncDir(join(this.dir, 'cur')).catch(() => undefined);
          for (const { group } of moved) await fail(group, err);
          return;
        }
        for (const rec of fresh) {
          rec.modseq = ++this.highestModseq;
          this.records.set(rec.uid, rec);
          this.dirtyUids.add(rec.uid);
          this.byBase.set(rec.base, rec);
        }
        this.recordsChanged();
        for (const { group, uids } of done) {
          for (const uid of uids) {
            const rec = this.records.get(uid);
            if (rec !== undefined) {
              this.journal.add({ command: 'EXISTS', uid, modseq: rec.modseq, ...(group.origin ? { origin: group.origin } : {}) });
            }
          }
        }
        await this.noteOwnChange();
      });
    } catch (err) {
      // Lock timeout, folder gone, ...: whatever is not committed fails.
      for (const group of batch) if (!done.some((d) => d.group === group)) await fail(group, err);
    }
    if (done.length > 0) {
      await this.saveIndex();
      this.ctx.onChange(this);
      const cached: MessageRecord[] = [];
      for (const { uids } of done) {
        for (const uid of uids) {
          const rec = this.records.get(uid);
          if (rec?.cache !== undefined) cached.push(rec);
        }
      }
      await this.persistCache(cached);
    }
    for (const { group, uids } of done) group.resolve(uids);
    for (const [group, err] of failed) group.reject(err);
  }

  // -------------------------------------------------------------------------------------
  // Helpers
  // -------------------------------------------------------------------------------------

  private async linkOrCopy(src: string, dst: string, idate: number): Promise<void> {
    try {
      await link(src, dst);
      return;
    } catch (err) {
      const code = errno(err);
      if (code !== 'EXDEV' && code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EMLINK' && code !== 'EOPNOTSUPP') throw err;
    }
    let ok = false;
    try {
      await copyFile(src, dst);
      await utimes(dst, new Date(), new Date(idate));
      const handle = await open(dst, 'r+');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
      ok = true;
    } finally {
      if (!ok) await unlinkQuietly(dst);
    }
  }

  /**
   * Letters for keywords (lower-cased name -> letter). With `create`, keywords missing from
   * dovecot-keywords are added to it (under its dotlock); more than 26 is refused.
   */
  private async keywordLetters(names: readonly string[], create: boolean): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    const missing: string[] = [];
    for (const name of names) {
      const index = findKeyword(this.keywords, name);
      if (index >= 0) out.set(name.toLowerCase(), letterForIndex(index));
      else if (!missing.some((m) => m.toLowerCase() === name.toLowerCase())) missing.push(name);
    }
    if (missing.length === 0 || !create) return out;
    let limitHit = false;
    const written = await updateWithDotlock(
      join(this.dir, KEYWORDS_FILE),
      (current) => {
        const table = current === null ? [] : parseKeywords(current);
        let changed = false;
        for (const name of missing) {
          if (findKeyword(table, name) >= 0) continue;
          let free = 0;
          while (free < MAX_KEYWORDS && table[free] !== undefined) free++;
          if (free >= MAX_KEYWORDS) {
            limitHit = true;
            return null;
          }
          table[free] = name;
          changed = true;
        }
        return changed ? serializeKeywords(table) : null;
      },
      { staleMs: 30_000, timeoutMs: this.ctx.lockTimeoutMs },
    );
    if (limitHit) throw new StoreError('LIMIT', `A mailbox can hold at most ${MAX_KEYWORDS} keywords`);
    this.keywords = written === null ? [] : parseKeywords(written);
    this.stamps.keywords = await statStamp(join(this.dir, KEYWORDS_FILE));
    for (const name of missing) {
      const index = findKeyword(this.keywords, name);
      if (index >= 0) out.set(name.toLowerCase(), letterForIndex(index));
    }
    return out;
  }

  private toUidlist(extra: readonly MessageRecord[] = []): Uidlist {
    const records = [...this.records.values(), ...extra].map((r) => ({ uid: r.uid, base: r.base, ext: r.ext }));
    return { uidValidity: this.uidValidity, nextUid: this.nextUid, guid: this.guid, headerExt: this.headerExt, records };
  }

  /** Rewrites dovecot-uidlist (dotlock held): temp file, fsync, rename, directory fsync. */
  private async writeUidlist(extra: readonly MessageRecord[] = []): Promise<void> {
    const path = join(this.dir, UIDLIST_FILE);
    await replaceFile(path, serializeUidlist(this.toUidlist(extra)), `${path}.tmp`);
    this.uidlistDirty = false;
    this.uidlistAppendable = true;
    this.stamps.uidlist = await statStamp(path);
  }

  /**
   * Adds records for new messages (dotlock held). Appends their lines and fdatasyncs, as
   * Dovecot does, when the file on disk is exactly our state; otherwise rewrites it.
   */
  private async addToUidlist(fresh: readonly MessageRecord[]): Promise<void> {
    if (!this.uidlistAppendable || this.uidlistDirty) {
      await this.writeUidlist(fresh);
      return;
    }
    const path = join(this.dir, UIDLIST_FILE);
    try {
      const handle = await open(path, 'a');
      try {
        await handle.writeFile(serializeRecords(fresh.map((r) => ({ uid: r.uid, base: r.base, ext: r.ext }))));
        await handle.datasync();
      } finally {
        await handle.close();
      }
    } catch (err) {
      // Maybe a partial line is on disk now: the next locked operation recreates the file.
      this.uidlistDirty = true;
      this.uidlistAppendable = false;
      throw err;
    }
    this.stamps.uidlist = await statStamp(path);
  }

  /** After our own change: remember the directories' state (racy if it is too recent). */
  private async noteOwnChange(): Promise<void> {
    try {
      this.updateStamps(await this.readStamps());
    } catch {
      this.racy = true;
      this.racyDeadline = 0;
    }
  }

  private updateStamps(now: Stamps): void {
    this.stamps = now;
    const nowMs = Date.now();
    const nowNs = BigInt(nowMs) * 1_000_000n;
    const window = Math.max(racyWindowMs(now.newDir, nowNs), racyWindowMs(now.curDir, nowNs));
    this.racy = window > 0;
    this.racyDeadline = nowMs + window;
  }

  /**
   * Persists what changed in the index since the last save: a few log lines (one fdatasync)
   * normally, a new snapshot when the log got long, is missing, or `snapshot` is set.
   */
  private async saveIndex(snapshot = false): Promise<void> {
    if (this.gone) return;
    const lines: string[] = [];
    const changed: Array<[number, IndexEntry]> = [];
    const removed: number[] = [];
    const full = this.indexFullScan;
    const consider = (r: MessageRecord): void => {
      const p = this.persisted.get(r.uid);
      if (p === undefined || p.modseq !== r.modseq || p.letters !== r.letters || p.size !== r.size || p.idate !== r.idate) {
        const entry: IndexEntry = { modseq: r.modseq, size: r.size, idate: r.idate, letters: r.letters };
        changed.push([r.uid, entry]);
        lines.push(logLineSet(r.uid, entry));
      }
    };
    const gone = (uid: number): void => {
      removed.push(uid);
      lines.push(logLineRemove(uid, this.highestModseq));
    };
    if (full) {
      for (const r of this.records.values()) consider(r);
      for (const uid of this.persisted.keys()) if (!this.records.has(uid)) gone(uid);
    } else {
      for (const uid of [...this.dirtyUids].sort((a, b) => a - b)) {
        const r = this.records.get(uid);
        if (r !== undefined) consider(r);
        else if (this.persisted.has(uid)) gone(uid);
      }
    }
    this.dirtyUids.clear();
    this.indexFullScan = false;
    if (lines.length === 0 && this.persistedHighest === this.highestModseq && !snapshot) return;
    if (lines.length === 0) lines.push(logLineHighest(this.highestModseq));
    try {
      if (snapshot || this.logLines < 0 || this.logLines + lines.length > Math.max(INDEX_LOG_MIN_LINES, this.records.size)) {
        const messages = new Map<number, IndexEntry>();
        for (const r of this.records.values()) messages.set(r.uid, { modseq: r.modseq, size: r.size, idate: r.idate, letters: r.letters });
        await writeFolderIndex(this.dir, { uidValidity: this.uidValidity, guid: this.guid, highestModseq: this.highestModseq, messages });
        this.persisted = messages;
        this.logLines = 0;
      } else {
        await appendIndexLog(this.dir, lines);
        for (const [uid, entry] of changed) this.persisted.set(uid, entry);
        for (const uid of removed) this.persisted.delete(uid);
        this.logLines += lines.length;
      }
      this.persistedHighest = this.highestModseq;
    } catch (err) {
      this.logLines = -1; // write a full snapshot next time
      this.indexFullScan = true;
      this.ctx.logger.warn({ err, mailbox: this.path }, 'could not write the folder index (a cache; will be rebuilt)');
    }
  }

  /**
   * Reads onionpost-cache into the records' cache slots, once (mutex held). Rewrites the
   * file when it is damaged, foreign, or mostly dead lines.
   */
  private async loadCache(): Promise<void> {
    if (this.cacheLoaded || this.gone) return;
    const content = await readCacheFile(this.dir, this.uidValidity, this.guid);
    let live = 0;
    for (const [uid, entry] of content?.entries ?? []) {
      const rec = this.records.get(uid);
      if (rec === undefined || rec.base !== entry.base) continue;
      // what memory holds is newer than the file
      rec.cache ??= entry.data;
      live++;
    }
    this.cacheLoaded = true;
    this.cacheLines = content?.lines ?? 0;
    const dead = this.cacheLines - live;
    if (content === null || content.damaged || dead > live / 2 + 256) {
      try {
        await this.rewriteCache();
      } catch (err) {
        this.cacheWritable = false;
        this.ctx.logger.warn({ err, mailbox: this.path }, 'could not rewrite the message cache file (a cache; will be rebuilt)');
      }
    } else {
      this.cacheWritable = true;
    }
  }

  /** Replaces onionpost-cache with the cache slots in memory (mutex held). */
  private async rewriteCache(): Promise<void> {
    const lines: string[] = [];
    for (const rec of this.records.values()) {
      const line = rec.cache === undefined ? null : cacheLine(rec.uid, rec.base, rec.cache);
      if (line !== null) lines.push(line);
    }
    if (lines.length === 0) await removeCacheFile(this.dir);
    else await rewriteCacheFile(this.dir, this.uidValidity, this.guid, lines);
    this.cacheLines = lines.length;
    this.cacheWritable = true;
  }

  /** Appends the cache slots of `recs` to onionpost-cache (mutex held). Best effort. */
  private async persistCache(recs: readonly MessageRecord[]): Promise<void> {
    const lines: string[] = [];
    for (const rec of recs) {
      const line = rec.cache === undefined ? null : cacheLine(rec.uid, rec.base, rec.cache);
      if (line !== null) lines.push(line);
    }
    if (lines.length === 0 || this.gone) return;
    try {
      if (!this.cacheWritable) await this.checkCacheFile();
      await appendCacheLines(this.dir, this.uidValidity, this.guid, lines);
      this.cacheLines += lines.length;
      // many dead lines (expunged messages): fold them away (loading compacts)
      if (this.cacheLines > 2 * this.records.size + 1024) {
        if (this.cacheLoaded) await this.rewriteCache();
        else await this.loadCache();
      }
    } catch (err) {
      this.cacheWritable = false;
      this.ctx.logger.warn({ err, mailbox: this.path }, 'could not write the message cache file (a cache; will be rebuilt)');
    }
  }

  /**
   * Makes sure appending to onionpost-cache is safe without reading all of it: the header
   * names this folder incarnation and the file ends with a whole line; otherwise it is
   * rewritten from memory.
   */
  private async checkCacheFile(): Promise<void> {
    let ok = false;
    let handle;
    try {
      handle = await open(join(this.dir, CACHE_FILE), 'r');
    } catch (err) {
      if (errno(err) !== 'ENOENT') throw err;
      ok = true; // appending creates it with its header
    }
    if (handle !== undefined) {
      try {
        const { size } = await handle.stat();
        const head = Buffer.alloc(128);
        const { bytesRead } = await handle.read(head, 0, head.length, 0);
        const last = Buffer.alloc(1);
        await handle.read(last, 0, 1, Math.max(0, size - 1));
        const expected = `onionpost-cache 1 ${this.uidValidity} ${this.guid}\n`;
        ok = head.subarray(0, bytesRead).toString('utf8').startsWith(expected) && last[0] === 0x0a;
      } finally {
        await handle.close();
      }
    }
    if (!ok) {
      if (this.cacheLoaded) await this.rewriteCache();
      else await this.loadCache();
    }
    this.cacheWritable = true;
  }

  private uidList(): number[] {
    if (this.uidCache === null) this.uidCache = [...this.records.keys()];
    return this.uidCache;
  }

  private flagsOf(rec: MessageRecord): string[] {
    return lettersToFlags(rec.letters, this.keywords);
  }

  private meta(rec: MessageRecord): MessageMeta {
    return { uid: rec.uid, flags: this.flagsOf(rec), modseq: rec.modseq, size: rec.size, internalDate: new Date(rec.idate) };
  }

  /**
   * When the last scan may have missed a change made within the same clock tick: how long
   * until a rescan can see it (ms); otherwise null.
   */
  recheckInMs(): number | null {
    if (!this.racy) return null;
    return Math.max(1, this.racyDeadline - Date.now() + 1);
  }

  /**
   * Sum of the message sizes as of the last scan, plus what `deliver` dropped since (no
   * I/O; the sum is kept until the records change).
   */
  sizeNow(): number {
    if (this.sizeMemo === null) {
      let size = 0;
      for (const r of this.records.values()) size += r.size;
      this.sizeMemo = size;
    }
    return this.sizeMemo + this.deliveredBytes;
  }

  private recordsChanged(): void {
    this.uidCache = null;
    this.sizeMemo = null;
  }

  /** Sizes of these messages as of the last scan (no I/O); unknown UIDs count 0. */
  sizeOf(uids: readonly number[]): number {
    let size = 0;
    for (const uid of new Set(uids)) size += this.records.get(uid)?.size ?? 0;
    return size;
  }

  private statusNow(): MailboxStatus {
    let unseen = 0;
    let size = 0;
    for (const r of this.records.values()) {
      if (!r.letters.includes('S')) unseen++;
      size += r.size;
    }
    return {
      messages: this.records.size,
      unseen,
      uidNext: this.nextUid,
      uidValidity: this.uidValidity,
      highestModseq: this.highestModseq,
      size,
    };
  }
}
