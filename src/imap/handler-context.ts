/** Shared plumbing for the imap-core handlers: context, user lookup, error mapping. */
import type { Logger } from 'pino';
import { StoreError, type MailStore } from '../store/types.js';
import { setNoReason } from './commands.js';
import type { ImapSession, SelectedMailbox } from './imap-core-types.js';
import type { ImapNotifier } from './notifier.js';
import type { StructureCache } from './structure-cache.js';

/** Quota limit in bytes for a user; null means unlimited. */
export type QuotaFor = (user: string) => number | null | Promise<number | null>;

export interface HandlerContext {
  store: MailStore;
  notifier: ImapNotifier;
  logger: Logger;
  cache: StructureCache;
  quotaFor?: QuotaFor;
  /** Per connection id: ends the store watch of its selected mailbox (store.watchMailbox). */
  watches: Map<string, () => void>;
}

/** Watches the session's newly selected mailbox for outside changes (ends the previous watch). */
export function watchSelected(ctx: HandlerContext, session: ImapSession, mailboxId: string): void {
  ctx.watches.get(session.id)?.();
  ctx.watches.delete(session.id);
  const stop = ctx.store.watchMailbox?.(mailboxId);
  if (stop) ctx.watches.set(session.id, stop);
}

/** Ends the connection's watch (it closed). */
export function unwatchSession(ctx: HandlerContext, sessionId: string): void {
  ctx.watches.get(sessionId)?.();
  ctx.watches.delete(sessionId);
}

/** The store's user key of an authenticated session. */
export function userOf(session: ImapSession): string {
  const id = session.user?.id;
  if (!id) throw new Error('imap: handler called without an authenticated user');
  return id;
}

/**
 * A mailbox name as imap-core hands it over. After ENABLE UTF8=ACCEPT, imap-core (1.51.1)
 * decodes the UTF-8 bytes of names for most commands but not for APPEND and UNSUBSCRIBE,
 * which get a 'binary' string ("EntwÃ¼rfe"): decode those here (only when the result is
 * valid UTF-8, so an already decoded name passes unchanged).
 */
export function mailboxName(session: ImapSession, path: string): string {
  if (!session.isUTF8Enabled() || !/[\x80-\xff]/.test(path) || /[^\x00-\xff]/.test(path)) return path;
  const decoded = Buffer.from(path, 'latin1').toString('utf8');
  return decoded.includes('\uFFFD') ? path : decoded;
}

/** The selected mailbox, if it is the one a handler was called for. */
export function selectedFor(session: ImapSession, mailboxId: string): SelectedMailbox | null {
  const selected = session.selected;
  return selected && selected.mailbox === mailboxId ? selected : null;
}

/** The IMAP response code for a store error, or null for anything else. */
export function storeErrorCode(err: unknown): string | null {
  if (err instanceof StoreError) return err.code;
  if (err instanceof Error && err.name === 'StoreError') {
    const code: unknown = (err as Error & { code?: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return null;
}

export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/**
 * Binds a node callback; the returned function runs an async handler body and reports its
 * result on success; for a StoreError the result `onCode(code)` builds (`NO [CODE]` in most
 * handlers), if given; otherwise the error (imap-core answers `NO [TEMPFAIL]` without its
 * text) after logging it. (Two steps so that the callback alone fixes the result type.)
 */
export function respond<A extends unknown[]>(
  ctx: HandlerContext,
  what: string,
  session: ImapSession,
  cb: (err: Error | null, ...result: A) => void,
): (body: () => Promise<A>, onCode?: (code: string) => A) => void {
  return (body, onCode) => {
    body().then(
      (result) => cb(null, ...result),
      (err: unknown) => {
        const code = storeErrorCode(err);
        if (code && onCode) {
          // the store's message says why (shown in the tagged NO, see commands.ts)
          if (err instanceof Error) setNoReason(session, err.message);
          cb(null, ...onCode(code));
          return;
        }
        ctx.logger.error({ err, cid: session.id, user: session.user?.id }, `imap: ${what} failed`);
        // imap-core passes the error on; the arguments after it are not read
        (cb as unknown as (err: Error) => void)(asError(err));
      },
    );
  };
}
