/**
 * FETCH. Metadata comes from the store (flags, modseq, size, internal date) and, for
 * ENVELOPE and BODYSTRUCTURE, from the structure cache in memory, else from the message's
 * cache slot in the store (message-cache.ts; persisted, so warm after a restart too), else
 * from parsing the message once (then the slot is filled). Every body section is a slice of
 * the bytes store.readMessage returns, so BODY[], BODY[TEXT], RFC822* and partials are
 * byte-exact.
 */
import { PassThrough } from 'node:stream';
import type { MessageMeta } from '../store/types.js';
import type { FetchOptions, FetchQueryItem, FetchValue, ImapHandlers, ImapSession, StreamLiteral } from './imap-core-types.js';
import { imapHandler } from './imap-core.js';
import { respond, type HandlerContext } from './handler-context.js';
import { bodyFromStructure, decodeMessageCache, describeMessage } from './message-cache.js';
import { extractSection, parseMime, type MimePart } from './mime-sections.js';
import type { MessageKey, MessageStructure } from './structure-cache.js';

/** Literals up to this size go out as 'binary' strings in one write; bigger ones stream. */
const INLINE_LITERAL_MAX = 1024 * 1024;

const SEEN = '\\Seen';

type FetchHandler = Required<Pick<ImapHandlers, 'onFetch'>>;

export function createFetchHandler(ctx: HandlerContext): FetchHandler {
  return {
    onFetch(mailboxId, options, session, cb) {
      respond(ctx, 'FETCH', session, cb)(async () => {
        await fetchMessages(ctx, mailboxId, options, session);
        return [true];
      });
    },
  };
}

/** Which item needs what. */
function needsOf(query: FetchQueryItem[]): { raw: boolean; structure: boolean } {
  let raw = false;
  let structure = false;
  for (const q of query) {
    if (q.item === 'envelope' || q.item === 'bodystructure' || (q.item === 'body' && q.type === undefined)) structure = true;
    if (q.item === 'rfc822' || q.item === 'rfc822.header' || q.item === 'rfc822.text' || (q.item === 'body' && q.type !== undefined)) {
      raw = true;
    }
  }
  return { raw, structure };
}

/** Filled cache slots are handed to the store in groups of this many. */
const PERSIST_BATCH = 256;

/**
 * The response label of a partial must carry only the origin (`BODY[]<0>`); imap-core's
 * string compiler would print `<0.10>`. Copy the items with a one-number partial.
 */
function responseQuery(query: FetchQueryItem[]): FetchQueryItem[] {
  return query.map((q) =>
    q.original.partial && q.original.partial.length > 1
      ? { ...q, original: { ...q.original, partial: [q.original.partial[0]] } }
      : q,
  );
}

function isSocketOpen(session: ImapSession): boolean {
  const s = session.socket;
  return !s.destroyed && s.writable;
}

async function fetchMessages(ctx: HandlerContext, mailboxId: string, options: FetchOptions, session: ImapSession): Promise<void> {
  const { store, cache } = ctx;
  if (!options.messages.length) return;

  const needs = needsOf(options.query);
  let metas = await store.getMessages(mailboxId, options.messages, { cache: needs.structure });
  if (options.changedSince) metas = metas.filter((m) => m.modseq > options.changedSince);

  // \Seen must be set (and journaled) before the response is built, so that its FLAGS show it
  if (options.markAsSeen) {
    const unseen = metas.filter((m) => !m.flags.includes(SEEN)).map((m) => m.uid);
    if (unseen.length) {
      const result = await store.storeFlags(mailboxId, unseen, { action: 'add', flags: [SEEN], origin: session.id });
      const updated = new Map(result.changed.map((m) => [m.uid, m]));
      metas = metas.map((m) => {
        const u = updated.get(m.uid);
        return u ? { ...u, ...(m.cache !== undefined ? { cache: m.cache } : {}) } : m;
      });
    }
  }

  const respQuery = responseQuery(options.query);
  const utf8 = session.isUTF8Enabled();

  interface Loaded {
    meta: MessageMeta;
    raw: Buffer | null;
    structure: MessageStructure | null;
  }
  const toPersist: Array<{ uid: number; cache: string }> = [];
  const persist = async (): Promise<void> => {
    if (!toPersist.length) return;
    try {
      await store.setMessageCache(mailboxId, toPersist.splice(0));
    } catch (err) {
      ctx.logger.warn({ err, mailboxId }, 'imap: could not store message cache slots');
    }
  };
  const load = async (meta: MessageMeta): Promise<Loaded | null> => {
    const key: MessageKey = { mailboxId, uid: meta.uid, size: meta.size, internalDate: meta.internalDate };
    let structure = needs.structure ? cache.getStructure(key) : null;
    if (needs.structure && !structure && meta.cache !== undefined) {
      const slot = decodeMessageCache(meta.cache);
      if (slot) {
        structure = cache.putStructure(key, slot.structure);
        cache.putHeaders(key, slot.headers);
      }
    }
    const parse = needs.structure && !structure;
    let raw: Buffer | null = null;
    if (needs.raw || parse) {
      raw = await store.readMessage(mailboxId, meta.uid);
      if (!raw) return null; // expunged meanwhile
      if (parse) {
        const described = describeMessage(raw);
        structure = cache.putStructure(key, described.structure);
        cache.putHeaders(key, described.headers);
        if (meta.cache === undefined || !decodeMessageCache(meta.cache)) toPersist.push({ uid: meta.uid, cache: described.cache });
      }
    }
    return { meta, raw, structure };
  };

  try {
    await writeMessages();
  } finally {
    await persist();
  }

  async function writeMessages(): Promise<void> {
    for (const batch of readAheadBatches(metas, needs.raw || needs.structure)) {
      if (!isSocketOpen(session)) return;
      const loaded = await Promise.all(batch.map(load));
      if (toPersist.length >= PERSIST_BATCH) await persist();
      for (const item of loaded) {
        if (!item) continue;
        if (!isSocketOpen(session)) return;
        const values = buildValues(options.query, item.meta, item.raw, item.structure, session, utf8);
        const response = session.formatResponse('FETCH', item.meta.uid, { query: respQuery, values });
        if (!response) continue;

        if (!values.some((v) => isStreamLiteral(v))) {
          if (!session.writeStream.write({ compiled: imapHandler.compiler(response) })) await drained(session);
        } else {
          // stream literals are piped straight into the socket: let earlier output reach it first
          await drained(session);
          await writeStreamed(session, imapHandler.compileStream(response));
        }
      }
    }
  }
}

/** Messages are read this many at a time, up to READ_AHEAD_BYTES together. */
const READ_AHEAD_COUNT = 16;
const READ_AHEAD_BYTES = 4 * 1024 * 1024;

function* readAheadBatches(metas: MessageMeta[], reading: boolean): Generator<MessageMeta[]> {
  if (!reading) {
    yield metas;
    return;
  }
  let batch: MessageMeta[] = [];
  let bytes = 0;
  for (const meta of metas) {
    if (batch.length && (batch.length >= READ_AHEAD_COUNT || bytes + meta.size > READ_AHEAD_BYTES)) {
      yield batch;
      batch = [];
      bytes = 0;
    }
    batch.push(meta);
    bytes += meta.size;
  }
  if (batch.length) yield batch;
}

function isStreamLiteral(v: FetchValue): v is StreamLiteral {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !Buffer.isBuffer(v) && !(v instanceof Date) && v.type === 'stream';
}

/**
 * Writes a streamed response and waits until imap-core has sent all of it, or until the
 * socket is gone (then the stream never ends and the write callback never comes).
 */
function writeStreamed(session: ImapSession, stream: NodeJS.ReadableStream): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = session.socket;
    const onClose = (): void => resolve();
    socket.once('close', onClose);
    session.writeStream.write(stream, (err?: Error | null) => {
      socket.off('close', onClose);
      if (err) reject(err);
      else resolve();
    });
  });
}

/** Resolves on `event`, on socket close, or after `ms`, whichever comes first; leaves no listeners. */
function waitFor(emitter: NodeJS.EventEmitter, event: string, session: ImapSession, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const socket = session.socket;
    const done = (): void => {
      clearTimeout(timer);
      emitter.off(event, done);
      socket.off('close', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    emitter.on(event, done);
    socket.on('close', done);
  });
}

/**
 * Waits until the response stream has room and has handed everything it buffered to the
 * socket (or the socket is gone). Applies backpressure to big FETCHes, and keeps stream
 * literals (which imap-core pipes straight into the socket) behind earlier output.
 */
async function drained(session: ImapSession): Promise<void> {
  const ws = session.writeStream;
  const socket = session.socket;
  while (isSocketOpen(session) && (ws.writableNeedDrain || ws.readableLength > 0 || socket.writableNeedDrain)) {
    if (socket.writableNeedDrain) await waitFor(socket, 'drain', session, 1000);
    else if (ws.writableNeedDrain) await waitFor(ws, 'drain', session, 1000);
    else await new Promise((r) => setTimeout(r, 2));
  }
}

function buildValues(
  query: FetchQueryItem[],
  meta: MessageMeta,
  raw: Buffer | null,
  structure: MessageStructure | null,
  session: ImapSession,
  utf8: boolean,
): FetchValue[] {
  let tree: MimePart | null = null;
  const mime = (): MimePart => (tree ??= parseMime(raw ?? Buffer.alloc(0)));
  const opts = { acceptUTF8Enabled: utf8 };

  return query.map((q): FetchValue => {
    switch (q.item) {
      case 'uid':
        return meta.uid;
      case 'modseq':
        return meta.modseq;
      case 'flags':
        return [...meta.flags];
      case 'internaldate':
        return meta.internalDate;
      case 'rfc822.size':
        return meta.size;
      case 'envelope': {
        // getQueryResponse encodes non-ASCII for non-UTF8 sessions (and mutates: a copy); it
        // also turns a NIL subject (no Subject field) into "", which Dovecot does not
        const nilSubject = structure?.envelope[1] === null;
        const envelope = session.getQueryResponse([{ item: 'envelope' }], { envelope: structure?.envelope ?? [] }, opts)[0];
        if (nilSubject && Array.isArray(envelope)) envelope[1] = null;
        return envelope;
      }
      case 'bodystructure':
        return session.getQueryResponse([{ item: 'bodystructure' }], { bodystructure: structure?.bodystructure ?? [] }, opts)[0];
      case 'rfc822':
        return literal(raw ?? Buffer.alloc(0));
      case 'rfc822.header':
        return literal(extractSection(raw ?? Buffer.alloc(0), mime(), { path: '', type: 'header' }));
      case 'rfc822.text':
        return literal(extractSection(raw ?? Buffer.alloc(0), mime(), { path: '', type: 'text' }));
      case 'body': {
        if (q.type === undefined) {
          // BODY without a section is the non-extensible BODYSTRUCTURE
          const body = structure ? (structure.body ?? bodyFromStructure(structure.bodystructure)) : [];
          return session.getQueryResponse([{ item: 'bodystructure' }], { bodystructure: body }, opts)[0];
        }
        const bytes = raw ? extractSection(raw, mime(), { path: q.path ?? '', type: q.type, headers: q.headers }) : Buffer.alloc(0);
        return literal(applyPartial(bytes, q));
      }
      default:
        return '';
    }
  });
}

function applyPartial(bytes: Buffer, q: FetchQueryItem): Buffer {
  const partial = q.original.partial;
  if (!partial || !partial.length) return bytes;
  const start = Math.max(0, Number(partial[0]) || 0);
  if (start >= bytes.length) return Buffer.alloc(0);
  if (partial.length < 2) return bytes.subarray(start);
  const length = Math.max(0, Number(partial[1]) || 0);
  return bytes.subarray(start, start + length);
}

/**
 * A literal value imap-core writes with the right `{n}`: a 'binary' string (its length is
 * the byte count; a Buffer's would be miscounted for non-ASCII), or a stream for big bodies.
 */
function literal(bytes: Buffer): FetchValue {
  if (bytes.length <= INLINE_LITERAL_MAX) return bytes.toString('latin1');
  const stream = new PassThrough();
  stream.end(bytes);
  return { type: 'stream', value: stream, expectedLength: bytes.length };
}
