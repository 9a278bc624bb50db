/**
 * `onionpost import maildir PATH --user U`: copies a Maildir++ tree (Dovecot's layout:
 * `cur/ new/` for INBOX, `.A.B/` for folder `A/B` in modified UTF-7) into a user's store.
 *
 * Two ways, chosen per folder:
 * - **UID-keeping copy** when the source folder has a `dovecot-uidlist`, the target folder
 *   holds no message (new, or a default folder never used) and nothing of this folder was
 *   imported before: the message files are copied under their own names (flag letters and
 *   mtimes, i.e. internal dates, included) together with `dovecot-uidlist` and
 *   `dovecot-keywords`, under the folder's dotlock. The store then reads the folder as
 *   Dovecot left it: same UIDVALIDITY, same UIDs, so IMAP clients keep their caches.
 *   Only while no daemon runs on the data dir (see runningDaemon).
 * - **Append** otherwise (the target already has mail, or no uidlist): every message not
 *   imported yet goes through `MailStore.append` in source UID order (files unknown to the
 *   uidlist last, by mtime), with its flags, keywords and mtime as internal date. UIDs are
 *   new ones of the target folder.
 * Either way each imported file's base name is written to the resume log, so a re-run
 * imports only what is new.
 */
import { constants as fsc, readFileSync } from 'node:fs';
import { copyFile, mkdir, open, readdir, readFile, rename, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Config } from '../config/types.js';
import { StoreError } from '../store/types.js';
import { parseFileName } from '../store/maildir/filename.js';
import { lettersToFlags } from '../store/maildir/flags.js';
import { parseKeywords, type KeywordTable } from '../store/maildir/keywords.js';
import { dirNameToMailboxPath, INBOX, mailboxPathToDirName } from '../store/maildir/mailbox-name.js';
import { parseUidlist, type Uidlist } from '../store/maildir/uidlist.js';
import { ImportError, openTarget, Progress, ResumeLog, type ImportSummary } from './common.js';

export interface MaildirImportOptions {
  config: Config;
  source: string;
  user: string;
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  /** Never use the UID-keeping copy (always append). */
  noKeepUids?: boolean;
}

export interface SourceFolder {
  path: string;
  dir: string;
}

interface SourceMessage {
  /** File name inside cur/ or new/. */
  name: string;
  sub: 'cur' | 'new';
  base: string;
  uid: number | null;
  mtime: Date;
}

/** The folders of a Maildir++ root: INBOX (if it has cur/) and every valid `.Name` dir. */
export async function listSourceFolders(root: string): Promise<SourceFolder[]> {
  const out: SourceFolder[] = [];
  if (await isDir(path.join(root, 'cur'))) out.push({ path: INBOX, dir: root });
  const entries = await readdir(root, { withFileTypes: true });
  for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    if (!e.isDirectory()) continue;
    const p = dirNameToMailboxPath(e.name);
    if (p === null) continue;
    const dir = path.join(root, e.name);
    if (await isDir(path.join(dir, 'cur'))) out.push({ path: p, dir });
  }
  return out;
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

async function readOptional(file: string): Promise<string | null> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

async function scanFolder(dir: string, uidlist: Uidlist | null): Promise<SourceMessage[]> {
  const uidOf = new Map<string, number>();
  for (const r of uidlist?.records ?? []) uidOf.set(r.base, r.uid);
  const out: SourceMessage[] = [];
  for (const sub of ['cur', 'new'] as const) {
    let names: string[];
    try {
      names = await readdir(path.join(dir, sub));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    for (const name of names) {
      if (name.startsWith('.')) continue;
      let st;
      try {
        st = await stat(path.join(dir, sub, name));
      } catch {
        continue; // gone meanwhile
      }
      if (!st.isFile()) continue;
      const base = parseFileName(name).base;
      out.push({ name, sub, base, uid: uidOf.get(base) ?? null, mtime: st.mtime });
    }
  }
  out.sort((a, b) => {
    if (a.uid !== null && b.uid !== null) return a.uid - b.uid;
    if (a.uid !== null) return -1;
    if (b.uid !== null) return 1;
    return a.mtime.getTime() - b.mtime.getTime() || (a.base < b.base ? -1 : 1);
  });
  return out;
}

export async function importMaildir(opts: MaildirImportOptions): Promise<ImportSummary & { keptUids: string[] }> {
  const started = Date.now();
  const source = path.resolve(opts.source);
  if (!(await isDir(source))) throw new ImportError(`${opts.source} is not a directory`, 66);
  const folders = await listSourceFolders(source);
  if (folders.length === 0) throw new ImportError(`${opts.source} holds no Maildir folder (no cur/ directory in it or in any .Folder below it)`, 65);

  const daemon = runningDaemon(opts.config.dataDir);
  const target = await openTarget(opts.config, opts.user);
  const log = new ResumeLog(opts.config.dataDir, target.user, `maildir:${source}`);
  const progress = new Progress(opts.stderr);
  const summary = { folders: folders.length, imported: 0, skipped: 0, failed: 0, seconds: 0, keptUids: [] as string[] };
  const warn = (msg: string) => {
    progress.clear();
    opts.stderr.write(`onionpost: warning: ${msg}\n`);
  };
  if (daemon !== null && !opts.noKeepUids) {
    opts.stderr.write(`onionpost: note: the daemon runs (pid ${daemon}), so folders are appended with new UIDs; stop it first to keep UIDs and UIDVALIDITY\n`);
  }
  try {
    const existing = new Set((await target.store.listMailboxes(target.user)).map((m) => m.path));
    for (const folder of folders) {
      const uidText = await readOptional(path.join(folder.dir, 'dovecot-uidlist'));
      let uidlist: Uidlist | null = null;
      if (uidText !== null) {
        try {
          uidlist = parseUidlist(uidText);
        } catch (err) {
          warn(`${folder.path}: dovecot-uidlist unreadable (${(err as Error).message}); appending with new UIDs`);
        }
      }
      const kwText = await readOptional(path.join(folder.dir, 'dovecot-keywords'));
      const keywords: KeywordTable = kwText === null ? [] : parseKeywords(kwText);
      const messages = await scanFolder(folder.dir, uidlist);
      const prefix = `${folder.path}\t`;

      if (!existing.has(folder.path)) {
        try {
          await target.store.createMailbox(target.user, folder.path);
        } catch (err) {
          if (!(err instanceof StoreError && err.code === 'ALREADYEXISTS')) throw err;
        }
        existing.add(folder.path);
      }
      const status = await target.store.mailboxStatus(target.user, folder.path);
      const canCopy =
        !opts.noKeepUids &&
        daemon === null &&
        uidlist !== null &&
        !uidlist.needsRewrite &&
        status !== null &&
        status.messages === 0 &&
        log.keysWithPrefix(prefix).length === 0 &&
        messages.length > 0;
      if (canCopy) {
        await copyFolder(folder, path.join(target.maildir, mailboxPathToDirName(folder.path)), messages, uidText!, kwText);
        await target.store.refresh(target.user, folder.path, { force: true });
        log.addMany(messages.map((m) => prefix + m.base));
        summary.imported += messages.length;
        summary.keptUids.push(folder.path);
        progress.update(folder.path, messages.length, messages.length, true);
        continue;
      }
      let done = 0;
      for (const m of messages) {
        done++;
        if (log.has(prefix + m.base)) {
          summary.skipped++;
          continue;
        }
        progress.update(folder.path, done, messages.length);
        let raw: Buffer;
        try {
          raw = await readFile(path.join(folder.dir, m.sub, m.name));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
            // Renamed (flag change) by a running MDA/IMAP server since the scan: find it again.
            const again = (await scanFolder(folder.dir, null)).find((x) => x.base === m.base);
            if (!again) continue;
            raw = await readFile(path.join(folder.dir, again.sub, again.name));
            m.name = again.name;
          } else throw err;
        }
        const flags = m.sub === 'new' ? [] : lettersToFlags(parseFileName(m.name).letters, keywords);
        try {
          await appendWithFlags(target.store, target.user, folder.path, raw, flags, m.mtime, warn);
          log.add(prefix + m.base);
          summary.imported++;
        } catch (err) {
          if (err instanceof StoreError && err.code === 'OVERQUOTA') throw new ImportError(`${folder.path}: the user's quota is full; ${summary.imported} message(s) imported so far (run again after raising it)`, 73);
          summary.failed++;
          warn(`${folder.path}/${m.sub}/${m.name}: ${(err as Error).message}`);
        }
      }
      progress.update(folder.path, messages.length, messages.length, true);
    }
  } finally {
    progress.clear();
    log.close();
    await target.store.close();
  }
  summary.seconds = (Date.now() - started) / 1000;
  return summary;
}

/**
 * The pid of a daemon running on this data dir, or null. Swapping the uidlist of a folder
 * that a running daemon has loaded makes it see a replaced mailbox (sessions that selected it
 * lose it; INBOX showed as NONEXISTENT until a restart), so the UID-keeping copy is only done
 * while no daemon runs.
 */
function runningDaemon(dataDir: string): number | null {
  let pid: number;
  try {
    pid = Number.parseInt(readFileSync(path.join(dataDir, 'onionpost.pid'), 'utf8').trim(), 10);
  } catch {
    return null;
  }
  if (!Number.isInteger(pid) || pid <= 0) return null;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? pid : null;
  }
}

/** Appends; when the folder's keyword table is full (LIMIT), keeps the system flags only. */
export async function appendWithFlags(
  store: { append: ImportTargetAppend },
  user: string,
  folder: string,
  raw: Buffer,
  flags: string[],
  internalDate: Date,
  warn: (msg: string) => void,
): Promise<void> {
  try {
    await store.append(user, folder, raw, { flags, internalDate, origin: 'import' });
  } catch (err) {
    if (!(err instanceof StoreError && err.code === 'LIMIT')) throw err;
    const system = flags.filter((f) => f.startsWith('\\'));
    warn(`${folder}: too many keywords in the folder; dropped ${flags.filter((f) => !f.startsWith('\\')).join(' ')}`);
    await store.append(user, folder, raw, { flags: system, internalDate, origin: 'import' });
  }
}

type ImportTargetAppend = (user: string, path: string, raw: Buffer, options?: { flags?: string[]; internalDate?: Date; origin?: string }) => Promise<unknown>;

/**
 * The UID-keeping copy into an empty target folder, under its dotlock: message files go
 * through tmp/ (copied, mtime set, renamed into cur/ or new/), then the keywords file and the
 * uidlist replace the target's (tmp + rename), then the directories are fsync'd.
 */
async function copyFolder(folder: SourceFolder, targetDir: string, messages: SourceMessage[], uidText: string, kwText: string | null): Promise<void> {
  for (const sub of ['cur', 'new', 'tmp']) await mkdir(path.join(targetDir, sub), { recursive: true });
  const lock = path.join(targetDir, 'dovecot-uidlist.lock');
  const fh = await takeDotlock(lock);
  try {
    for (const m of messages) {
      const tmp = path.join(targetDir, 'tmp', m.name);
      await copyFile(path.join(folder.dir, m.sub, m.name), tmp);
      await utimes(tmp, m.mtime, m.mtime);
      await rename(tmp, path.join(targetDir, m.sub, m.name));
    }
    if (kwText !== null) await replaceFile(path.join(targetDir, 'dovecot-keywords'), kwText);
    await replaceFile(path.join(targetDir, 'dovecot-uidlist'), uidText);
    for (const d of [path.join(targetDir, 'cur'), path.join(targetDir, 'new'), targetDir]) await fsyncDir(d);
  } finally {
    await fh.close();
    await unlink(lock).catch(() => undefined);
  }
}

async function takeDotlock(lock: string): Promise<{ close(): Promise<void> }> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const fh = await open(lock, fsc.O_CREAT | fsc.O_EXCL | fsc.O_WRONLY, 0o600);
      await fh.write(`${process.pid}\n`);
      return fh;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      if (Date.now() > deadline) throw new ImportError(`${lock} is held by another process; try again later`, 75);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function replaceFile(file: string, text: string): Promise<void> {
  const tmp = `${file}.import-${process.pid}`;
  await writeFile(tmp, text, { mode: 0o600 });
  const fh = await open(tmp, 'r');
  await fh.sync();
  await fh.close();
  await rename(tmp, file);
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
