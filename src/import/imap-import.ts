/**
 * `onionpost import imap URL --user U`: copies every selectable folder of an IMAP account
 * into a user's store, with flags, keywords and internal dates (npm `imapflow`).
 *
 * - URL: `imaps://user@host[:993]` (TLS) or `imap://user@host[:143]` (STARTTLS required:
 *   the password never crosses the wire in clear). `insecure` accepts any certificate.
 * - Folders: the source's special-use folders (\Sent, \Drafts, \Trash, \Junk, \Archive)
 *   go into ours of the same use; \All and \Flagged (virtual views, Gmail's "All Mail") are
 *   skipped; other paths keep their names with "/" as separator.
 * - Resumable: the resume log keeps `imap\t<folder>\t<UIDVALIDITY>\t<uid>` per message; a
 *   re-run fetches only UIDs above the highest imported one of the same UIDVALIDITY. When
 *   the source's UIDVALIDITY changed, the folder is imported again from the start.
 */
import { ImapFlow, type ListResponse } from 'imapflow';
import type { Config } from '../config/types.js';
import { StoreError, type SpecialUse } from '../store/types.js';
import { ImportError, importableFlags, openTarget, Progress, ResumeLog, type ImportSummary } from './common.js';
import { appendWithFlags } from './maildir-import.js';

export interface ImapImportOptions {
  config: Config;
  url: string;
  password: string;
  user: string;
  insecure?: boolean;
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
}

export interface ImapSource {
  secure: boolean;
  host: string;
  port: number;
  user: string;
}

/** Parses `imap[s]://user@host[:port]` (the user may be percent-encoded: `alice%40example.org`). */
export function parseImapUrl(text: string): ImapSource {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new ImportError(`"${text}" is not a URL; expected imaps://USER@HOST[:PORT] or imap://USER@HOST[:PORT]`, 64);
  }
  if (u.protocol !== 'imap:' && u.protocol !== 'imaps:') throw new ImportError(`"${u.protocol}" URLs are not supported; use imaps:// or imap:// (STARTTLS)`, 64);
  if (!u.username) throw new ImportError(`the URL names no user; write it as ${u.protocol}//USER@${u.host}`, 64);
  if (u.password) throw new ImportError('do not put the password in the URL (it would end up in the shell history); use --password-stdin or the prompt', 64);
  if (u.pathname && u.pathname !== '/') throw new ImportError('the URL must not have a path; every folder is imported', 64);
  const secure = u.protocol === 'imaps:';
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  return { secure, host, port: u.port ? Number(u.port) : secure ? 993 : 143, user: decodeURIComponent(u.username) };
}

const OUR_SPECIAL: Record<string, { path: string; use: SpecialUse }> = {
  '\\Sent': { path: 'Sent', use: '\\Sent' },
  '\\Drafts': { path: 'Drafts', use: '\\Drafts' },
  '\\Trash': { path: 'Trash', use: '\\Trash' },
  '\\Junk': { path: 'Junk', use: '\\Junk' },
  '\\Archive': { path: 'Archive', use: '\\Archive' },
};

/** Where a source folder goes in our store; null: skipped. */
export function targetPathFor(box: Pick<ListResponse, 'path' | 'name' | 'parent' | 'specialUse'>, ours: ReadonlyMap<string, string>): string | null {
  if (box.path.toUpperCase() === 'INBOX') return 'INBOX';
  if (box.specialUse === '\\All' || box.specialUse === '\\Flagged') return null;
  if (box.specialUse && OUR_SPECIAL[box.specialUse]) return ours.get(box.specialUse) ?? OUR_SPECIAL[box.specialUse]!.path;
  const parts = [...box.parent, box.name];
  if (parts[0]?.toUpperCase() === 'INBOX' && parts.length > 1) parts[0] = 'INBOX';
  return parts.join('/');
}

export async function importImap(opts: ImapImportOptions): Promise<ImportSummary & { skippedFolders: string[] }> {
  const started = Date.now();
  const src = parseImapUrl(opts.url);
  const client = new ImapFlow({
    host: src.host,
    port: src.port,
    secure: src.secure,
    doSTARTTLS: src.secure ? undefined : true,
    auth: { user: src.user, pass: opts.password },
    tls: { rejectUnauthorized: !opts.insecure },
    logger: false,
    disableAutoIdle: true,
  });
  client.on('error', () => undefined); // reported through the failing call
  try {
    await client.connect();
  } catch (err) {
    const e = err as Error & { authenticationFailed?: boolean; code?: string };
    if (e.authenticationFailed) throw new ImportError(`${src.host}: login as ${src.user} failed (wrong user name or password)`, 77);
    const hint = /certificate|self.signed|CERT_/i.test(e.message + (e.code ?? '')) ? ' (a self-signed certificate? add --insecure if you trust this server)' : '';
    throw new ImportError(`cannot connect to ${src.host}:${src.port}: ${e.message}${hint}`, 69);
  }

  const summary = { folders: 0, imported: 0, skipped: 0, failed: 0, seconds: 0, skippedFolders: [] as string[] };
  const target = await openTarget(opts.config, opts.user).catch(async (err: unknown) => {
    await client.logout().catch(() => undefined);
    throw err;
  });
  const log = new ResumeLog(opts.config.dataDir, target.user, `imap:${src.secure ? 'imaps' : 'imap'}://${src.user}@${src.host}:${src.port}`);
  const progress = new Progress(opts.stderr);
  const warn = (msg: string) => {
    progress.clear();
    opts.stderr.write(`onionpost: warning: ${msg}\n`);
  };
  try {
    const ourBoxes = await target.store.listMailboxes(target.user);
    const ours = new Map<string, string>();
    for (const b of ourBoxes) if (b.specialUse) ours.set(b.specialUse, b.path);
    const existing = new Set(ourBoxes.map((b) => b.path));
    const boxes = await client.list();
    for (const box of boxes) {
      if ([...box.flags].some((f) => /^\\(noselect|nonexistent)$/i.test(f))) continue;
      const to = targetPathFor(box, ours);
      if (to === null) {
        summary.skippedFolders.push(box.path);
        continue;
      }
      summary.folders++;
      if (!existing.has(to)) {
        try {
          await target.store.createMailbox(target.user, to);
        } catch (err) {
          if (!(err instanceof StoreError && err.code === 'ALREADYEXISTS')) throw new ImportError(`cannot create folder "${to}" (from "${box.path}"): ${(err as Error).message}`, 73);
        }
        existing.add(to);
        if (box.subscribed) await target.store.setSubscribed(target.user, to, true).catch(() => undefined);
      }
      const mailbox = await client.mailboxOpen(box.path, { readOnly: true });
      const validity = mailbox.uidValidity.toString();
      const prefix = `imap\t${box.path}\t${validity}\t`;
      let last = 0;
      for (const k of log.keysWithPrefix(prefix)) last = Math.max(last, Number(k.slice(prefix.length)));
      if (mailbox.exists === 0 || mailbox.uidNext <= last + 1) {
        summary.skipped += mailbox.exists;
        continue;
      }
      // Estimate for the bar: messages above `last` (exact on the first run).
      const total = last === 0 ? mailbox.exists : null;
      let done = 0;
      summary.skipped += last === 0 ? 0 : Math.max(0, mailbox.exists - (mailbox.uidNext - last - 1));
      for await (const msg of client.fetch(`${last + 1}:*`, { uid: true, flags: true, internalDate: true, source: true }, { uid: true })) {
        if (msg.uid <= last) continue; // "N:*" always returns the highest message
        done++;
        progress.update(to, done, total);
        if (!msg.source) {
          summary.failed++;
          warn(`${box.path}: UID ${msg.uid} came without its body; skipped`);
          continue;
        }
        const date = msg.internalDate instanceof Date ? msg.internalDate : msg.internalDate ? new Date(msg.internalDate) : new Date();
        try {
          await appendWithFlags(target.store, target.user, to, msg.source, importableFlags(msg.flags ?? []), date, warn);
          log.add(prefix + msg.uid);
          summary.imported++;
        } catch (err) {
          if (err instanceof StoreError && err.code === 'OVERQUOTA') throw new ImportError(`${to}: the user's quota is full; ${summary.imported} message(s) imported so far (run again after raising it)`, 73);
          summary.failed++;
          warn(`${box.path}: UID ${msg.uid}: ${(err as Error).message}`);
        }
      }
      progress.update(to, done, total, true);
    }
  } finally {
    progress.clear();
    log.close();
    await client.logout().catch(() => undefined);
    await target.store.close();
  }
  summary.seconds = (Date.now() - started) / 1000;
  return summary;
}
