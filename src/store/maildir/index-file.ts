/**
 * Our own per-folder index: what the Maildir does not keep (modseqs) and what is costly to
 * recompute (CRLF sizes, internal dates). Two files:
 *
 *   onionpost-index.json   a snapshot, replaced atomically (temp file, fsync, rename)
 *   onionpost-index.log    changes since that snapshot, appended and fdatasync'd per
 *                          operation, folded into a new snapshot once it grows:
 *
 *     onionpost-index-log 1 <uidvalidity> <mailbox guid>
 *     m <uid> <modseq> <size> <idate> :<flag letters>     message state
 *     x <uid> <modseq>                                    message gone
 *     h <modseq>                                          highest modseq
 *
 * It is never the only copy of anything but modseq values; when missing, unreadable, or
 * of another UIDVALIDITY/GUID it is rebuilt from the Maildir. Log lines are applied only
 * if not older than what the snapshot says, so a crash between writing a snapshot and
 * resetting the log is harmless; a partial last line is ignored.
 */
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { replaceFile } from './durable-write.js';

export const INDEX_FILE = 'onionpost-index.json';
export const INDEX_LOG_FILE = 'onionpost-index.log';
const VERSION = 1;
const LOG_MAGIC = 'onionpost-index-log 1';

export interface IndexEntry {
  modseq: number;
  /** CRLF size. */
  size: number;
  /** Internal date (file mtime) in ms. */
  idate: number;
  /** Flag letters the message had when the index was written. */
  letters: string;
}

export interface FolderIndex {
  uidValidity: number;
  guid: string;
  highestModseq: number;
  messages: Map<number, IndexEntry>;
}

export interface LoadedIndex extends FolderIndex {
  /** Lines in the log on top of the snapshot; -1 when there is no usable log. */
  logLines: number;
}

type Row = [number, number, number, number, string];

function isRow(value: unknown): value is Row {
  return (
    Array.isArray(value) &&
    value.length === 5 &&
    Number.isInteger(value[0]) &&
    Number.isInteger(value[1]) &&
    Number.isInteger(value[2]) &&
    typeof value[3] === 'number' &&
    typeof value[4] === 'string'
  );
}

async function readText(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return null;
  }
}

function parseSnapshot(text: string): FolderIndex | null {
  try {
    const data: unknown = JSON.parse(text);
    if (typeof data !== 'object' || data === null) return null;
    const o = data as Record<string, unknown>;
    if (o.v !== VERSION || !Number.isInteger(o.uidValidity) || typeof o.guid !== 'string') return null;
    if (!Number.isInteger(o.highestModseq) || !Array.isArray(o.messages)) return null;
    const messages = new Map<number, IndexEntry>();
    for (const row of o.messages as unknown[]) {
      if (!isRow(row)) return null;
      messages.set(row[0], { modseq: row[1], size: row[2], idate: row[3], letters: row[4] });
    }
    return { uidValidity: o.uidValidity as number, guid: o.guid, highestModseq: o.highestModseq as number, messages };
  } catch {
    return null;
  }
}

/** Applies the log to `index` (in place); returns the number of lines applied, or -1. */
function applyLog(index: FolderIndex, text: string): number {
  const lines = text.split('\n');
  lines.pop(); // '' after the last newline, or a partial line: ignored either way
  if (lines[0] !== `${LOG_MAGIC} ${index.uidValidity} ${index.guid}`) return -1;
  let applied = 0;
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    let m: RegExpExecArray | null;
    if ((m = /^m (\d+) (\d+) (\d+) (-?[\d.]+) :(.*)$/.exec(line)) !== null) {
      const uid = Number(m[1]);
      const entry: IndexEntry = { modseq: Number(m[2]), size: Number(m[3]), idate: Number(m[4]), letters: m[5] };
      const old = index.messages.get(uid);
      if (old === undefined || entry.modseq >= old.modseq) index.messages.set(uid, entry);
      index.highestModseq = Math.max(index.highestModseq, entry.modseq);
    } else if ((m = /^x (\d+) (\d+)$/.exec(line)) !== null) {
      index.messages.delete(Number(m[1]));
      index.highestModseq = Math.max(index.highestModseq, Number(m[2]));
    } else if ((m = /^h (\d+)$/.exec(line)) !== null) {
      index.highestModseq = Math.max(index.highestModseq, Number(m[1]));
    } else {
      continue;
    }
    applied++;
  }
  return applied;
}

/** Returns null when there is no usable snapshot. */
export async function readFolderIndex(dir: string): Promise<LoadedIndex | null> {
  const snapshotText = await readText(join(dir, INDEX_FILE));
  const snapshot = snapshotText === null ? null : parseSnapshot(snapshotText);
  if (snapshot === null) return null;
  const logText = await readText(join(dir, INDEX_LOG_FILE));
  const logLines = logText === null ? -1 : applyLog(snapshot, logText);
  return { ...snapshot, logLines };
}

export function serializeFolderIndex(index: FolderIndex): string {
  const rows: string[] = [];
  for (const [uid, e] of index.messages) {
    const letters = /^[A-Za-z]*$/.test(e.letters) ? `"${e.letters}"` : JSON.stringify(e.letters);
    rows.push(`[${uid},${e.modseq},${e.size},${e.idate},${letters}]`);
  }
  return (
    `{"v":${VERSION},"uidValidity":${index.uidValidity},"guid":${JSON.stringify(index.guid)},` +
    `"highestModseq":${index.highestModseq},"messages":[\n${rows.join(',\n')}\n]}\n`
  );
}

/** Writes a new snapshot, then starts an empty log for it. */
export async function writeFolderIndex(dir: string, index: FolderIndex): Promise<void> {
  const path = join(dir, INDEX_FILE);
  await replaceFile(path, serializeFolderIndex(index), `${path}.tmp`);
  const log = join(dir, INDEX_LOG_FILE);
  await replaceFile(log, `${LOG_MAGIC} ${index.uidValidity} ${index.guid}\n`, `${log}.tmp`);
}

export function logLineSet(uid: number, e: IndexEntry): string {
  return `m ${uid} ${e.modseq} ${e.size} ${e.idate} :${e.letters.replace(/\n/g, '')}\n`;
}

export function logLineRemove(uid: number, modseq: number): string {
  return `x ${uid} ${modseq}\n`;
}

export function logLineHighest(modseq: number): string {
  return `h ${modseq}\n`;
}

/** Appends lines to the log (which writeFolderIndex created) and fdatasyncs it. */
export async function appendIndexLog(dir: string, lines: readonly string[]): Promise<void> {
  const handle = await open(join(dir, INDEX_LOG_FILE), 'a');
  try {
    await handle.writeFile(lines.join(''));
    await handle.datasync();
  } finally {
    await handle.close();
  }
}
