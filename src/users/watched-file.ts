/**
 * A small text file that the daemon reads and the CLI edits (the users file, the aliases
 * file), parsed into a snapshot S. Readers get the current snapshot; the file is stat'ed at
 * most every `checkIntervalMs` and re-read when its signature (inode, size, times) changed, so
 * a running daemon sees CLI edits without a restart. Writers do a locked read-modify-write
 * through file-update.ts (lock file, temp file, fsync, rename, directory fsync).
 */
import { closeSync, fstatSync, openSync, readFileSync, statSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../log/logger.js';
import { fileSignature, ioError, isErrno, lockFile, writeFileAtomic } from './file-update.js';

/** A line of the file that was skipped (or partly ignored), and why. */
export interface LineProblem {
  /** 1-based line number. */
  line: number;
  message: string;
}

/** A table read from the file: its entries in file order, plus whatever else it indexes. */
export interface TableSnapshot {
  order: readonly unknown[];
}

export interface ParsedFile<S> {
  snap: S;
  problems: LineProblem[];
}

/** What the file holds and how it is parsed. */
export interface WatchedTable<S> {
  file: string;
  /** What the file holds, for log lines: "users", "aliases". */
  noun: string;
  empty: S;
  parse: (text: string) => ParsedFile<S>;
}

/** The options every table file takes (UserDbOptions, AliasDbOptions). */
export interface WatchedFileOptions {
  logger?: Logger;
  /** Least time between two freshness checks (stat) of the file, ms. Default 1000. */
  checkIntervalMs?: number;
  /** How long a writer waits for the lock file before giving up, ms. Default 10000. */
  lockTimeoutMs?: number;
}

export class WatchedFile<S extends TableSnapshot> {
  readonly file: string;
  private readonly table: WatchedTable<S>;
  private readonly logger: Logger | undefined;
  private readonly checkIntervalMs: number;
  private readonly lockTimeoutMs: number;
  private snap: S;
  /** Signature of the file we loaded; 'missing' when it did not exist; null before loading. */
  private sig: string | null = null;
  private lastCheck = 0;
  private lastProblems: string[] = [];
  /** Serializes this instance's own writes (the lock file serializes processes). */
  private writeChain: Promise<unknown> = Promise.resolve();

  constructor(table: WatchedTable<S>, options: WatchedFileOptions = {}) {
    this.table = table;
    this.file = path.resolve(table.file);
    this.snap = table.empty;
    this.logger = options.logger;
    this.checkIntervalMs = options.checkIntervalMs ?? 1000;
    this.lockTimeoutMs = options.lockTimeoutMs ?? 10_000;
  }

  /** The current snapshot (re-read first if the file changed). */
  get snapshot(): S {
    this.refresh();
    return this.snap;
  }

  /** Problems found the last time the file was read ("file:line: message"). */
  get problems(): readonly string[] {
    this.refresh();
    return this.lastProblems;
  }

  /** Re-reads the file now (SIGHUP). */
  reload(): void {
    this.lastCheck = Date.now();
    this.load();
  }

  /**
   * Locked read-modify-write. `change` gets the file's current text ('' when missing) and
   * returns the new text; whatever it throws aborts the update unchanged. Lock and I/O
   * failures throw FileUpdateError. Resolves with the new snapshot.
   */
  update(change: (text: string) => string): Promise<S> {
    const run = async (): Promise<S> => {
      const release = await lockFile(this.file, this.lockTimeoutMs);
      try {
        let text = '';
        let owner: { uid: number; gid: number } | null = null;
        try {
          text = await fsp.readFile(this.file, 'utf8');
          const st = await fsp.stat(this.file);
          owner = { uid: st.uid, gid: st.gid };
        } catch (err) {
          if (!isErrno(err, 'ENOENT')) throw ioError(`cannot read ${this.file}`, err);
        }
        const out = change(text);
        // A symlinked file stays a symlink: we replace what it points to.
        const target = await fsp.realpath(this.file).catch(() => this.file);
        await writeFileAtomic(target, out, owner);
        const rebuilt = this.table.parse(out);
        this.install(rebuilt.snap, rebuilt.problems, fileSignature(await fsp.stat(this.file)));
        this.lastCheck = Date.now();
        return rebuilt.snap;
      } finally {
        await release();
      }
    };
    const p = this.writeChain.then(run, run);
    this.writeChain = p.catch(() => undefined);
    return p;
  }

  /** Stat at most every checkIntervalMs; reload when the file changed. */
  private refresh(): void {
    const now = Date.now();
    if (this.sig !== null && now - this.lastCheck < this.checkIntervalMs) return;
    this.lastCheck = now;
    let sig: string;
    try {
      sig = fileSignature(statSync(this.file));
    } catch (err) {
      if (isErrno(err, 'ENOENT')) sig = 'missing';
      else {
        this.logger?.error({ file: this.file, err: (err as Error).message }, `cannot stat the ${this.table.noun} file`);
        if (this.sig === null) this.sig = 'error';
        return;
      }
    }
    if (sig !== this.sig) this.load();
  }

  /** Reads and parses the file (synchronously: it is small, and only read when it changed). */
  private load(): void {
    const { logger } = this;
    const { noun } = this.table;
    let fd: number;
    try {
      fd = openSync(this.file, 'r');
    } catch (err) {
      if (isErrno(err, 'ENOENT')) {
        if (this.sig !== 'missing' && this.sig !== null) logger?.warn({ file: this.file }, `${noun} file is gone: no ${noun}`);
        this.install(this.table.empty, [], 'missing');
        return;
      }
      logger?.error({ file: this.file, err: (err as Error).message }, `cannot read the ${noun} file; keeping the previous ${noun}`);
      if (this.sig === null) this.sig = 'error';
      return;
    }
    try {
      const st = fstatSync(fd);
      const text = readFileSync(fd, 'utf8');
      const { snap, problems } = this.table.parse(text);
      this.install(snap, problems, fileSignature(st));
      logger?.debug({ file: this.file, [noun]: snap.order.length }, `${noun} loaded`);
    } catch (err) {
      logger?.error({ file: this.file, err: (err as Error).message }, `cannot read the ${noun} file; keeping the previous ${noun}`);
      if (this.sig === null) this.sig = 'error';
    } finally {
      closeSync(fd);
    }
  }

  /** Makes a parsed file current; its problems are logged when they differ from the last ones. */
  private install(snap: S, lineProblems: LineProblem[], sig: string): void {
    const problems = lineProblems.map((p) => `${this.file}:${p.line}: ${p.message}`);
    if (problems.join('\n') !== this.lastProblems.join('\n')) {
      for (const p of problems) this.logger?.warn({ file: this.file }, p);
    }
    this.snap = snap;
    this.lastProblems = problems;
    this.sig = sig;
  }
}
