/**
 * Types for the parts of wildduck's imap-core (and the libraries it brings) that onionpost
 * uses. imap-core ships no declarations; these describe the contracts verified in
 * notes/imap-core-api.md against @zone-eu/wildduck 1.51.1. Only imap-core.ts turns the
 * untyped module values into these types.
 */
import type { EventEmitter } from 'node:events';
import type { Server as NetServer, Socket } from 'node:net';
import type { Readable, Transform } from 'node:stream';
import type { SecureContext } from 'node:tls';

/** What onAuth hands to imap-core as `session.user`. `id` is the store's user key. */
export interface ImapUser {
  id: string;
  username: string;
}

/** `session.selected` while a mailbox is selected. */
export interface SelectedMailbox {
  /** The `_id` onOpen returned (our MailStore mailbox id). */
  mailbox: string;
  path: string;
  /** The UIDs this session knows, ascending; imap-core mutates it (EXISTS/EXPUNGE). */
  uidList: number[];
  modifyIndex: number;
  notifications: unknown[];
  condstoreEnabled: boolean;
  readOnly: boolean;
}

/** A node of imap-core's response object model (compiled by imapHandler.compiler). */
export interface ImapResponse {
  tag: string;
  command: string;
  attributes: unknown[];
}

/** Nested values of ENVELOPE / BODYSTRUCTURE / BODY as produced by the indexer. */
export type StructValue = string | number | Buffer | null | StructValue[];

/** A literal whose bytes come from a stream; imap-core pads/truncates to expectedLength. */
export interface StreamLiteral {
  type: 'stream';
  value: Readable;
  expectedLength: number;
}

/**
 * A literal value that compiles to `{length}` + CRLF and no text of its own (its toString
 * is empty): the bytes are spliced in after compiling (fetch.ts), without a string copy.
 */
export interface SplicedLiteral {
  readonly length: number;
  readonly bytes: Buffer;
  toString(): string;
}

/** One value of a FETCH response, index-aligned with the query items. */
export type FetchValue = number | string | Buffer | Date | string[] | StructValue[] | StreamLiteral | SplicedLiteral;

/** A parsed FETCH attribute as the client sent it (used verbatim in the response). */
export interface FetchAttribute {
  type: string;
  value: string;
  section?: unknown[];
  partial?: number[];
}

/** One FETCH data item as imap-core hands it to onFetch. */
export interface FetchQueryItem {
  item: string;
  query: string;
  original: FetchAttribute;
  /** Numeric part path ('' for the whole message), present for BODY[...] items. */
  path?: string;
  type?: string;
  headers?: string[];
  partial?: { startFrom: number; maxLength: number };
  isLiteral?: boolean;
}

export interface FetchOptions {
  messages: number[];
  query: FetchQueryItem[];
  changedSince: number;
  isUid: boolean;
  markAsSeen: boolean;
  metadataOnly: boolean;
  flagsExist: boolean;
  idateExist: boolean;
  envelopeExist: boolean;
  bodystructureExist: boolean;
  rfc822sizeExist: boolean;
}

/** The message object getQueryResponse reads (we pass cached structures, never raw). */
export interface QueryMessage {
  uid?: number;
  modseq?: number;
  flags?: string[];
  idate?: Date;
  size?: number;
  envelope?: StructValue[];
  bodystructure?: StructValue[];
}

export type FormatResponse = {
  (command: 'EXISTS' | 'EXPUNGE', uid: number): ImapResponse | false;
  (
    command: 'FETCH',
    uid: number,
    data:
      | { query: FetchQueryItem[]; values: FetchValue[] }
      | { uid: number | false; flags: string[]; modseq: number | false },
  ): ImapResponse | false;
};

/** The per-connection session object imap-core passes to every handler. */
export interface ImapSession {
  id: string;
  user?: ImapUser;
  selected: SelectedMailbox | false;
  remoteAddress: string;
  clientHostname: string;
  /** Object-mode stream: response objects, `{ compiled }`, or readable streams. */
  writeStream: Transform;
  socket: Socket;
  commandCounters: Record<string, number>;
  formatResponse: FormatResponse;
  getQueryResponse(query: ReadonlyArray<{ item: string }>, message: QueryMessage, options: { acceptUTF8Enabled: boolean }): FetchValue[];
  isUTF8Enabled(): boolean;
}

/** The IMAPConnection instance (only the members we touch). */
export interface ImapConnection extends EventEmitter {
  id: string;
  session: ImapSession;
  secure: boolean;
  remoteAddress: string;
  clientHostname: string | false;
  loggelf: (message: Record<string, unknown>) => void;
  /** True while the session is in IDLE. */
  idling: boolean;
  /** Continuation for the next client line (IDLE's "DONE", SASL responses), or false. */
  _nextHandler: false | ((token: string, next: () => void) => void);
  send(payload: string, callback?: () => void): void;
  close(force?: boolean): void;
  _setListeners(): void;
  /** The server this connection belongs to (its handler slots and options). */
  _server: ImapCoreServer;
  /** imap-core's connection state: 'Not Authenticated' | 'Authenticated' | 'Selected' | 'Logout' | 'Closed'. */
  state: string;
  /** Same object as session.selected. */
  selected: SelectedMailbox | false;
  condstoreEnabled: boolean;
  acceptUTF8Enabled: boolean;
}

/** A tagged completion as command handlers report it to imap-core's dispatcher. */
export interface CommandResponse {
  response: 'OK' | 'NO' | 'BAD';
  code?: string | false;
  message?: string;
}

/**
 * A command module of imap-core (lib/commands/*.js). Its dispatcher looks the module up per
 * command and calls `handler` with the connection as `this`, so replacing `handler` on the
 * module object replaces the command.
 */
export interface ImapCommandModule {
  state?: string | string[];
  schema?: unknown;
  disableNotifications?: boolean;
  handler(this: ImapConnection, command: { tag: string; command: string; attributes?: unknown[] }, callback: (err: Error | null, response?: CommandResponse) => void): void;
}

export interface LoginRequest {
  method: 'LOGIN' | 'PLAIN';
  username: string;
  password: string;
  clientToken?: string | false;
  connection: ImapConnection;
}

/** Error shape imap-core turns into a tagged reply for LOGIN (and, via message, for PLAIN). */
export interface ImapReplyError extends Error {
  response: 'NO' | 'BAD';
  code?: string;
}

export type NodeCallback<A extends unknown[]> = (err: Error | null, ...args: A) => void;

/** `true` -> OK, a string -> NO [STRING]. */
export type Success = true | string;

export interface ListedFolder {
  path: string;
  specialUse?: string;
}

export interface OpenResult {
  _id: string;
  uidList: number[];
  uidValidity: number;
  uidNext: number;
  modifyIndex: number;
  flags: string[];
}

export interface StatusResult {
  messages: number;
  uidNext: number;
  uidValidity: number;
  unseen: number;
  highestModseq: number;
}

export interface StoreUpdate {
  action: 'add' | 'remove' | 'set';
  value: string[];
  type: 'flags';
  silent: boolean;
  messages: number[];
  unchangedSince: number;
  isUid?: boolean;
}

export interface ExpungeUpdate {
  isUid: boolean;
  messages?: number[];
  silent?: boolean;
}

export interface CopyUpdate {
  destination: string;
  messages: number[];
}

export interface CopyInfo {
  uidValidity: number;
  sourceUid: number[];
  destinationUid: number[];
}

export interface QuotaResult {
  root: string;
  quota: number;
  storageUsed: number;
}

/** SEARCH terms as imap-core parses them (see notes §4.2). */
export type SearchTerm =
  | { key: 'all'; value: true }
  | { key: 'flag'; value: string; exists: boolean }
  | { key: 'header'; header: string; value: string }
  | { key: 'body' | 'text'; value: string }
  | { key: 'internaldate' | 'date'; operator: '<' | '=' | '>=' | '<='; value: string | Date }
  | { key: 'size'; operator: '<' | '>'; value: number }
  | { key: 'uid'; value: number[] }
  | { key: 'modseq'; value: number }
  | { key: 'charset'; value: string }
  | { key: 'or'; value: SearchExpression[] }
  | { key: 'not'; value: SearchExpression };

/** A term, or an implicit AND of terms (imap-core returns arrays for e.g. NEW inside OR/NOT). */
export type SearchExpression = SearchTerm | SearchExpression[];

export interface SearchOptions {
  query: SearchExpression[];
  terms: string[];
  isUid: boolean;
}

export interface SearchResult {
  uidList: number[] | string;
  highestModseq?: number;
}

/** What imap-core calls on `server.notifier`. */
export interface ImapCoreNotifier {
  addListener(session: ImapSession, handler: NotifierHandler): void;
  removeListener(session: ImapSession, handler: NotifierHandler): void;
  getUpdates(mailboxId: string, modifyIndex: number, callback: NodeCallback<[JournalEntry[]]>): void;
  releaseConnection?(data: { service: string; session: ImapSession; user: ImapUser }, callback: () => void): void;
}

export type NotifierPayload = { command: 'LOGOUT'; reason?: string } | { command: 'DROP'; mailbox: string };
export type NotifierHandler = (payload?: NotifierPayload) => void;

/** A journal entry as imap-core consumes it. */
export interface JournalEntry {
  _id: string;
  command: 'EXISTS' | 'EXPUNGE' | 'FETCH';
  uid: number;
  modseq: number;
  flags?: string[];
  ignore?: string;
}

/** The handler slots of an IMAPServer instance. */
export interface ImapHandlers {
  onAuth?(login: LoginRequest, session: ImapSession, cb: (err: Error | null, result?: { user: ImapUser } | null) => void): void;
  onList?(query: string, session: ImapSession, cb: NodeCallback<[ListedFolder[]?]>): void;
  onLsub?(query: string, session: ImapSession, cb: NodeCallback<[ListedFolder[]?]>): void;
  onSubscribe?(path: string, session: ImapSession, cb: NodeCallback<[Success?]>): void;
  onUnsubscribe?(path: string, session: ImapSession, cb: NodeCallback<[Success?]>): void;
  onCreate?(path: string, session: ImapSession, cb: NodeCallback<[Success?, string?]>): void;
  onRename?(path: string, newPath: string, session: ImapSession, cb: NodeCallback<[Success?, string?]>): void;
  onDelete?(path: string, session: ImapSession, cb: NodeCallback<[Success?, string?]>): void;
  onOpen?(path: string, session: ImapSession, cb: NodeCallback<[(OpenResult | string)?]>): void;
  onStatus?(path: string, session: ImapSession, cb: NodeCallback<[(StatusResult | string)?]>): void;
  onAppend?(
    path: string,
    flags: string[],
    internaldate: string | false,
    raw: Buffer,
    session: ImapSession,
    cb: NodeCallback<[Success?, { uidValidity: number; uid: number }?]>,
  ): void;
  onStore?(mailboxId: string, update: StoreUpdate, session: ImapSession, cb: NodeCallback<[Success?, number[]?]>): void;
  onExpunge?(mailboxId: string, update: ExpungeUpdate, session: ImapSession, cb: NodeCallback<[Success?]>): void;
  onCopy?(
    connection: ImapConnection,
    mailboxId: string,
    update: CopyUpdate,
    session: ImapSession,
    cb: NodeCallback<[Success?, CopyInfo?]>,
  ): void;
  onMove?(mailboxId: string, update: CopyUpdate, session: ImapSession, cb: NodeCallback<[Success?, CopyInfo?]>): void;
  onFetch?(mailboxId: string, options: FetchOptions, session: ImapSession, cb: NodeCallback<[Success?]>): void;
  onSearch?(mailboxId: string, options: SearchOptions, session: ImapSession, cb: NodeCallback<[SearchResult?]>): void;
  onGetQuotaRoot?(path: string, session: ImapSession, cb: NodeCallback<[(QuotaResult | string)?]>): void;
  onGetQuota?(root: string, session: ImapSession, cb: NodeCallback<[(QuotaResult | string)?]>): void;
}

/** A bunyan/pino-like logger as imap-core calls it: `logger.info({tnx, cid}, fmt, ...args)`. */
export interface ImapCoreLogger {
  trace(obj: object, msg?: string, ...args: unknown[]): void;
  debug(obj: object, msg?: string, ...args: unknown[]): void;
  info(obj: object, msg?: string, ...args: unknown[]): void;
  warn(obj: object, msg?: string, ...args: unknown[]): void;
  error(obj: object, msg?: string, ...args: unknown[]): void;
  fatal(obj: object, msg?: string, ...args: unknown[]): void;
}

export interface ImapCoreServerOptions {
  secure?: boolean;
  /** 1.51 signature; a null context makes imap-core use the default one. */
  SNICallback?: (
    request: { servername: string; meta: { remoteAddress?: string } },
    callback: (err: Error | null, context?: SecureContext | null) => void,
  ) => void;
  key?: string | Buffer;
  cert?: string | Buffer;
  disableSTARTTLS?: boolean;
  ignoreSTARTTLS?: boolean;
  id?: Record<string, string>;
  name?: string;
  logger?: ImapCoreLogger | false;
  component?: string;
  maxMessage?: number;
  enableCompression?: boolean;
  skipFetchLog?: boolean;
  socketTimeout?: number;
  idleTimeout?: number;
  closeTimeout?: number;
  logoutMessages?: string[];
  maxLineLength?: number;
}

/** The IMAPServer instance. */
export interface ImapCoreServer extends EventEmitter, ImapHandlers {
  options: ImapCoreServerOptions;
  server: NetServer;
  connections: Set<ImapConnection>;
  notifier: ImapCoreNotifier;
  loggelf: (message: Record<string, unknown>) => void;
  logger: ImapCoreLogger;
  listen(port: number, host: string, callback?: () => void): void;
  close(callback: () => void): void;
  connect(socket: Socket, socketOptions: ConnectionOptions): void;
  updateSecureContext(options: { key: string | Buffer; cert: string | Buffer }): void;
  _onError(err: Error): void;
}

export interface ConnectionOptions {
  id: string;
  ignore?: boolean;
  remoteAddress?: string;
  remotePort?: number;
}

export interface ImapHandlerModule {
  /** The command-line parser imap-core's dispatcher calls (replaceable: see search-command.ts). */
  parser(payload: string, options?: { literals?: Buffer[] }): unknown;
  compiler(response: ImapResponse, asArray?: false, isLogging?: boolean): string;
  /** The response split after each literal's `{n}` + CRLF (the literals' own text begins the next part). */
  compiler(response: ImapResponse, asArray: true, isLogging?: boolean): string[];
  compileStream(response: ImapResponse): Readable;
}

/** A node of the indexer's MIME tree (only what we hand back to the indexer). */
export interface IndexerTree {
  header: string[];
  readonly __brand: 'IndexerTree';
}

export interface IndexerInstance {
  parseMimeTree(raw: Buffer): IndexerTree;
  getEnvelope(tree: IndexerTree): StructValue[];
  getBodyStructure(tree: IndexerTree): StructValue[];
  getBody(tree: IndexerTree): StructValue[];
}

export interface Libmime {
  decodeWords(str: string): string;
}

export interface IconvLite {
  decode(buf: Buffer, encoding: string): string;
  encodingExists(encoding: string): boolean;
}

export interface GelfHandler {
  emit(channel: string, message: Record<string, unknown>): void;
}
