/**
 * UIDVALIDITY allocation shared with Dovecot: the maildir root holds `dovecot-uidvalidity`
 * (the last value handed out, 8 hex digits) and an empty marker file
 * `dovecot-uidvalidity.<hex>`. A value is claimed by renaming the marker from <n> to <n+1>
 * (atomic: only one process wins). Without any of these files the current time is used,
 * like Dovecot. Every new folder thus gets a value never used before in this maildir, even
 * when a folder is deleted and re-created within the same second.
 */
import { open, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';

const FILE = 'dovecot-uidvalidity';
const RETRIES = 10;
let lastFallback = 0;

function fallback(): number {
  const now = Math.floor(Date.now() / 1000);
  lastFallback = lastFallback < now ? now : lastFallback + 1;
  return lastFallback;
}

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

async function writeMain(root: string, value: number): Promise<void> {
  const handle = await open(join(root, FILE), 'w', 0o600);
  try {
    await handle.writeFile(hex8(value));
  } finally {
    await handle.close();
  }
}

/** Claims value+1 by renaming the marker; retries upwards on races. Returns null on failure. */
async function claimFrom(root: string, start: number): Promise<number | null> {
  let value = start;
  for (let i = 0; i < RETRIES; i++) {
    const next = (value + 1) >>> 0 || 1;
    try {
      await rename(join(root, `${FILE}.${hex8(value)}`), join(root, `${FILE}.${hex8(next)}`));
      return next;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return null;
      value = next;
    }
  }
  return null;
}

async function rescan(root: string): Promise<number> {
  let values: number[] = [];
  try {
    values = (await readdir(root))
      .filter((n) => n.startsWith(`${FILE}.`) && /^[0-9a-f]{1,8}$/i.test(n.slice(FILE.length + 1)))
      .map((n) => parseInt(n.slice(FILE.length + 1), 16));
  } catch {
    return fallback();
  }
  if (values.length === 0) {
    const value = fallback();
    try {
      const handle = await open(join(root, `${FILE}.${hex8(value)}`), 'wx', 0o444);
      await handle.close();
      await writeMain(root, value);
    } catch {
      // the value is still fine to use
    }
    return value;
  }
  const max = Math.max(...values);
  const min = Math.min(...values);
  if (min !== max) await unlink(join(root, `${FILE}.${hex8(min)}`)).catch(() => undefined);
  const claimed = await claimFrom(root, max);
  if (claimed === null) return fallback();
  await writeMain(root, claimed).catch(() => undefined);
  return claimed;
}

/** Returns a UIDVALIDITY value for a new folder of the maildir at `root`. */
export async function nextUidValidity(root: string): Promise<number> {
  let current: number;
  try {
    const text = (await readFile(join(root, FILE), 'utf8')).trim();
    if (!/^[0-9a-f]{1,8}$/i.test(text)) return await rescan(root);
    current = parseInt(text, 16);
  } catch {
    return rescan(root);
  }
  const claimed = await claimFrom(root, current);
  if (claimed === null) return rescan(root);
  await writeMain(root, claimed).catch(() => undefined);
  return claimed;
}
