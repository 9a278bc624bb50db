/**
 * The mailbox store contract. Protocol code (smtp/, imap/) talks only to this interface;
 * adapters (maildir/, mongodb/) implement it. Nothing here knows about IMAP or SMTP wire
 * formats: flags are plain strings (system flags spelled as in IMAP, e.g. "\\Seen",
 * keywords as themselves), messages are raw RFC 5322 bytes.
 */
import type { EventEmitter } from 'node:events';

/** System flags a store must keep. Anything else in a flag list is a keyword. */
export const SYSTEM_FLAGS = ['\\Seen', '\\Answered', '\\Flagged', '\\Deleted', '\\Draft'] as const;
export type SystemFlag = (typeof SYSTEM_FLAGS)[number];

export type SpecialUse = '\\Sent' | '\\Drafts' | '\\Trash' | '\\Junk' | '\\Archive';

/** Folders every new user gets, with their SPECIAL-USE attribute. */
export const DEFAULT_FOLDERS: ReadonlyArray<{ path: string; specialUse?: SpecialUse }> = [
  { path: 'INBOX' },
  { path: 'Sent', specialUse: '\\Sent' },
  { path: 'Drafts', specialUse: '\\Drafts' },
  { path: 'Trash', specialUse: '\\Trash' },
  { path: 'Junk', specialUse: '\\Junk' },
  { path: 'Archive', specialUse: '\\Archive' },
];

/**
 * Mailbox paths use "/" as the hierarchy separator, are Unicode (already decoded from
 * modified UTF-7) and "INBOX" is always upper case.
 */
export interface MailboxInfo {
  path: string;
  specialUse?: SpecialUse;
  subscribed: boolean;
}

/** What SELECT/EXAMINE needs. */
export interface MailboxSnapshot {
  /** Opaque, stable for the life of the mailbox; every later call names the mailbox by it. */
  id: string;
  path: string;
  uidValidity: number;
  uidNext: number;
  /** Highest modseq of the mailbox; every change recorded in the journal has modseq <= this. */
  highestModseq: number;
  /** Every UID in the mailbox, ascending. */
  uids: number[];
  /** Keywords in use in this mailbox (for FLAGS / PERMANENTFLAGS). */
  keywords: string[];
}

export interface MailboxStatus {
  messages: number;
  unseen: number;
  uidNext: number;
  uidValidity: number;
  highestModseq: number;
  /** Sum of message sizes in bytes (CRLF size). */
  size: number;
}

export interface MessageMeta {
  uid: number;
  /** System flags and keywords, e.g. ["\\Seen", "$Forwarded"]. */
  flags: string[];
  modseq: number;
  /** Size in bytes with CRLF line endings (what RFC822.SIZE reports and readMessage returns). */
  size: number;
  internalDate: Date;
  /**
   * The message's cache slot (see MailStore.setMessageCache): present only when asked for
   * with `{ cache: true }` and when something was stored for the message.
   */
  cache?: string;
}

/**
 * Computes the cache slot of a new message from its raw bytes (a protocol layer's parsed
 * metadata, opaque to the store), or null to leave it empty. Must not throw.
 */
export type MessageCacheBuilder = (raw: Buffer) => string | null;

export interface GetMessagesOptions {
  /** Also return each message's cache slot (`MessageMeta.cache`). */
  cache?: boolean;
}

/** One entry of a mailbox's change journal (what IDLE/NOOP report to other sessions). */
export interface ChangeEntry {
  command: 'EXISTS' | 'EXPUNGE' | 'FETCH';
  uid: number;
  modseq: number;
  /** For FETCH: the flags after the change. */
  flags?: string[];
  /** The session that made the change and has already reported it to its client. */
  origin?: string;
}

/** Emitted as 'change' by the store after a mailbox's journal grew. */
export interface ChangeEvent {
  user: string;
  mailboxId: string;
  path: string;
}

export interface AppendOptions {
  flags?: string[];
  internalDate?: Date;
  /** Session id to put into the journal entry's origin. */
  origin?: string;
}

export interface AppendResult {
  mailboxId: string;
  uidValidity: number;
  uid: number;
}

export type FlagAction = 'add' | 'remove' | 'set';

export interface StoreFlagsOptions {
  action: FlagAction;
  flags: string[];
  /** CONDSTORE UNCHANGEDSINCE: messages with a higher modseq are not changed. */
  unchangedSince?: number;
  origin?: string;
}

export interface StoreFlagsResult {
  /** Messages whose flags changed, with their new flags and modseq. */
  changed: MessageMeta[];
  /** UIDs refused by the unchangedSince test. */
  modified: number[];
}

export interface CopyResult {
  uidValidity: number;
  /** Parallel arrays: sourceUids[i] became destinationUids[i]. */
  sourceUids: number[];
  destinationUids: number[];
}

/** Thrown by store methods; `code` maps to IMAP response codes / SMTP replies. */
export class StoreError extends Error {
  constructor(
    readonly code: 'NONEXISTENT' | 'ALREADYEXISTS' | 'TRYCREATE' | 'CANNOT' | 'OVERQUOTA' | 'INUSE' | 'LIMIT',
    message: string,
  ) {
    super(message);
    this.name = 'StoreError';
  }
}

export interface MailStore extends EventEmitter {
  /** Creates the user's mail storage and default folders if missing. Idempotent. */
  ensureUser(user: string): Promise<void>;

  listMailboxes(user: string): Promise<MailboxInfo[]>;
  /** Throws StoreError ALREADYEXISTS / CANNOT (bad name). Creates missing parents. */
  createMailbox(user: string, path: string): Promise<void>;
  /** Renames the mailbox and all its children. INBOX cannot be renamed here. */
  renameMailbox(user: string, from: string, to: string): Promise<void>;
  /** Deletes the mailbox (not its children). Throws NONEXISTENT / CANNOT. */
  deleteMailbox(user: string, path: string): Promise<void>;
  setSubscribed(user: string, path: string, subscribed: boolean): Promise<void>;

  /** Returns null when the mailbox does not exist. */
  openMailbox(user: string, path: string): Promise<MailboxSnapshot | null>;
  mailboxStatus(user: string, path: string): Promise<MailboxStatus | null>;

  /**
   * Durably stores a message (written, fsync'd, renamed into place, directory fsync'd)
   * before resolving. Throws StoreError TRYCREATE when the mailbox is missing.
   */
  append(user: string, path: string, raw: Buffer, options?: AppendOptions): Promise<AppendResult>;

  /**
   * Mail delivery (SMTP, the local queue): durably stores a message in the user's INBOX the
   * way any delivery agent drops into a mailbox (for Maildir: written to tmp/, fsync'd,
   * renamed into new/, directory fsync'd) and resolves once it is on disk. No UID is
   * assigned here: the message gets one at the store's next look at the mailbox, which the
   * store starts at once when somebody watches the mailbox (IDLE). Throws StoreError
   * TRYCREATE when the user's mail storage does not exist, OVERQUOTA when it is full.
   */
  deliver(user: string, raw: Buffer): Promise<void>;

  /** Metadata for the given UIDs that exist, ascending by UID. */
  getMessages(mailboxId: string, uids: number[], options?: GetMessagesOptions): Promise<MessageMeta[]>;

  /**
   * Per-message cache slot: an opaque string (no line breaks; a protocol layer's parsed
   * metadata such as IMAP ENVELOPE/BODYSTRUCTURE) kept with the message, persisted, copied
   * along with COPY/MOVE, dropped with the message. A cache only: a store may lose it (it
   * then comes back empty) but never returns it for another message. Unknown UIDs are
   * ignored.
   */
  setMessageCache(mailboxId: string, entries: ReadonlyArray<{ uid: number; cache: string }>): Promise<void>;
  /**
   * Fills the cache slot of every message appended from now on with `builder(raw)`, computed
   * once per message before it is stored. null: stop. (`deliver` does not build: a
   * delivered message's slot stays empty until the protocol layer sets it.)
   */
  setMessageCacheBuilder(builder: MessageCacheBuilder | null): void;
  /**
   * The stored message with CRLF line endings, or null if the UID is gone. With an `arena`,
   * the store may read the message into the arena's memory: the Buffer is then valid only
   * until the caller resets or releases the arena (see read-arena.ts). Adapters may ignore it.
   */
  readMessage(mailboxId: string, uid: number, arena?: import('./read-arena.js').ReadArena): Promise<Buffer | null>;
  /** readMessage for several messages at once (optional: cheaper per message where offered). */
  readMessages?(mailboxId: string, uids: number[], arena?: import('./read-arena.js').ReadArena): Promise<Array<Buffer | null>>;

  storeFlags(mailboxId: string, uids: number[], options: StoreFlagsOptions): Promise<StoreFlagsResult>;
  /** Removes messages flagged \Deleted (only among `uids` when given). Returns the removed UIDs. */
  expunge(mailboxId: string, uids?: number[], origin?: string): Promise<number[]>;
  /** Copies messages keeping flags and internal dates. Throws TRYCREATE if the target is missing. */
  copyMessages(mailboxId: string, uids: number[], targetPath: string, origin?: string): Promise<CopyResult>;
  /** Like copy, then removes the sources (journaling EXPUNGE with origin). */
  moveMessages(mailboxId: string, uids: number[], targetPath: string, origin?: string): Promise<CopyResult>;

  /** Journal entries of the mailbox with modseq > sinceModseq, ascending by modseq. */
  changesSince(mailboxId: string, sinceModseq: number): Promise<ChangeEntry[]>;

  /** Total bytes stored for the user (for QUOTA). */
  usage(user: string): Promise<number>;

  /**
   * The user's storage quota: bytes in use and the limit (null: unlimited). Appends and
   * copies that would go over the limit fail with StoreError OVERQUOTA.
   */
  quota(user: string): Promise<{ used: number; limit: number | null }>;

  /**
   * Optional: watch a mailbox for changes made by other software and journal/announce them
   * promptly (otherwise they are found at the next call that touches the mailbox). Returns
   * the function that ends this watch (watches are counted per mailbox).
   */
  watchMailbox?(mailboxId: string): () => void;

  close(): Promise<void>;

  on(event: 'change', listener: (event: ChangeEvent) => void): this;
  emit(event: 'change', payload: ChangeEvent): boolean;
}
