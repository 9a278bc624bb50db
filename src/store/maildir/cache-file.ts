/**
 * `onionpost-cache`: the per-folder file behind MailStore's per-message cache slot (parsed
 * metadata a protocol layer attaches to a message, e.g. IMAP ENVELOPE/BODYSTRUCTURE).
 *
 *   onionpost-cache 1 <uidvalidity> <mailbox guid>
 *   <uid> <base name> <data>          one line per message; a later line for a UID wins
 *
 * Messages never change, so lines are only appended (no fsync: it is a cache, and losing
 * its tail costs a recomputation). A line counts only if its base name still matches the
 * message with that UID, so a stale or foreign line is never served for another message.
 * The file is rewritten (temp file + rename) when it holds many dead lines (expunged
 * messages), ends in a partial line (crash while appending), or has another header.
 */
import { open, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';

export const CACHE_FILE = 'onionpost-cache';
const MAGIC = 'onionpost-cache 1';

export interface CacheFileContent {
  /** data by UID (the last line for a UID), with the base name it was written for. */
  entries: Map<number, { base: string; data: string }>;
  /** Lines in the file (live or not). */
  lines: number;
  /** The file ends in a partial line or has an unusable header: rewrite before appending. */
  damaged: boolean;
}

function header(uidValidity: number, guid: string): string {
  return `${MAGIC} ${uidValidity} ${guid}\n`;
}

/** Reads the cache file; null when it is missing or belongs to another incarnation of the folder. */
export async function readCacheFile(dir: string, uidValidity: number, guid: string): Promise<CacheFileContent | null> {
  let text: string;
  try {
    text = await readFile(join(dir, CACHE_FILE), 'utf8');
  } catch {
    return null;
  }
  const lines = text.split('\n');
  const partial = lines.pop() !== '';
  if (lines[0] + '\n' !== header(uidValidity, guid)) return null;
  const entries = new Map<number, { base: string; data: string }>();
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const sp1 = line.indexOf(' ');
    const sp2 = sp1 < 0 ? -1 : line.indexOf(' ', sp1 + 1);
    if (sp2 < 0) continue;
    const uid = Number(line.slice(0, sp1));
    if (!Number.isInteger(uid) || uid <= 0) continue;
    entries.set(uid, { base: line.slice(sp1 + 1, sp2), data: line.slice(sp2 + 1) });
  }
  return { entries, lines: lines.length - 1, damaged: partial };
}

/** A line for the file; null when the data cannot be stored (line breaks). */
export function cacheLine(uid: number, base: string, data: string): string | null {
  if (data.includes('\n') || data.includes('\r') || base.includes(' ') || base.includes('\n')) return null;
  return `${uid} ${base} ${data}\n`;
}

/** Appends lines (creating the file with its header if needed). */
export async function appendCacheLines(dir: string, uidValidity: number, guid: string, lines: readonly string[]): Promise<void> {
  const handle = await open(join(dir, CACHE_FILE), 'a');
  try {
    const { size } = await handle.stat();
    await handle.writeFile((size === 0 ? header(uidValidity, guid) : '') + lines.join(''));
  } finally {
    await handle.close();
  }
}

/** Replaces the file with exactly these lines. */
export async function rewriteCacheFile(dir: string, uidValidity: number, guid: string, lines: readonly string[]): Promise<void> {
  const path = join(dir, CACHE_FILE);
  const tmp = `${path}.tmp`;
  const handle = await open(tmp, 'w', 0o600);
  try {
    await handle.writeFile(header(uidValidity, guid) + lines.join(''));
  } finally {
    await handle.close();
  }
  await rename(tmp, path);
}

export async function removeCacheFile(dir: string): Promise<void> {
  await unlink(join(dir, CACHE_FILE)).catch(() => undefined);
}
