/**
 * The change notifier imap-core calls as `server.notifier`, backed by the store's journal.
 *
 * Every writer (IMAP sessions, SMTP delivery, external Maildir changes picked up by the
 * store) ends in a store journal entry and a store 'change' event. A change in any mailbox
 * of user U wakes all of U's sessions; each session then asks getUpdates() for the entries
 * of its selected mailbox past its modifyIndex and shows them (at once while IDLE).
 */
import type { Logger } from 'pino';
import type { ChangeEntry, ChangeEvent, MailStore } from '../store/types.js';
import type {
  ImapCoreNotifier,
  ImapSession,
  ImapUser,
  JournalEntry,
  NodeCallback,
  NotifierHandler,
  NotifierPayload,
} from './imap-core-types.js';

export class ImapNotifier implements ImapCoreNotifier {
  private readonly listeners = new Map<string, Set<NotifierHandler>>();
  /** Users with a wake-up scheduled for the next turn of the event loop. */
  private readonly pending = new Set<string>();
  private readonly onChange = (event: ChangeEvent): void => this.fire(event.user);

  constructor(
    private readonly store: MailStore,
    private readonly logger?: Logger,
  ) {
    store.on('change', this.onChange);
  }

  addListener(session: ImapSession, handler: NotifierHandler): void {
    const user = session.user?.id;
    if (!user) return;
    let set = this.listeners.get(user);
    if (!set) {
      set = new Set();
      this.listeners.set(user, set);
    }
    set.add(handler);
  }

  removeListener(session: ImapSession, handler: NotifierHandler): void {
    const user = session.user?.id;
    if (!user) return;
    const set = this.listeners.get(user);
    if (!set) return;
    set.delete(handler);
    if (!set.size) this.listeners.delete(user);
  }

  getUpdates(mailboxId: string, modifyIndex: number, callback: NodeCallback<[JournalEntry[]]>): void {
    this.store.changesSince(mailboxId, modifyIndex).then(
      (entries) => callback(null, entries.map((e) => toJournalEntry(mailboxId, e))),
      (err: unknown) => {
        this.logger?.warn({ err, mailboxId }, 'imap: reading the change journal failed');
        callback(err instanceof Error ? err : new Error(String(err)), []);
      },
    );
  }

  releaseConnection(_data: { service: string; session: ImapSession; user: ImapUser }, callback: () => void): void {
    callback();
  }

  /**
   * Wakes the sessions of `user`. Without a payload ("the journal changed") wake-ups are
   * coalesced per user to one per event-loop turn, so a burst of deliveries costs each
   * session one journal read. LOGOUT/DROP payloads go out at once.
   */
  fire(user: string, payload?: NotifierPayload): void {
    if (payload) {
      for (const handler of [...(this.listeners.get(user) ?? [])]) handler(payload);
      return;
    }
    if (this.pending.has(user) || !this.listeners.has(user)) return;
    this.pending.add(user);
    setImmediate(() => {
      this.pending.delete(user);
      for (const handler of [...(this.listeners.get(user) ?? [])]) handler();
    });
  }

  /** Number of sessions listening (for tests and status). */
  listenerCount(user?: string): number {
    if (user) return this.listeners.get(user)?.size ?? 0;
    let n = 0;
    for (const set of this.listeners.values()) n += set.size;
    return n;
  }

  close(): void {
    this.store.off('change', this.onChange);
    this.listeners.clear();
  }
}

/** Journal entries for imap-core need a unique `_id` (1.51 drops entries without one). */
export function toJournalEntry(mailboxId: string, e: ChangeEntry): JournalEntry {
  const entry: JournalEntry = {
    _id: `${mailboxId}\u0000${e.modseq}\u0000${e.command}\u0000${e.uid}`,
    command: e.command,
    uid: e.uid,
    modseq: e.modseq,
  };
  if (e.command === 'FETCH') entry.flags = [...(e.flags ?? [])];
  if (e.origin) entry.ignore = e.origin;
  return entry;
}
