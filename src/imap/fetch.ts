/**
 * FETCH. Metadata comes from the store (flags, modseq, size, internal date) and, for
 * ENVELOPE and BODYSTRUCTURE, from the structure cache in memory, else from the message's
 * cache slot in the store (message-cache.ts; persisted, so warm after a restart too), else
 * from parsing the message once (then the slot is filled). Every body section is a slice of
 * the bytes store.readMessage returns, so BODY[], BODY[TEXT], RFC822* and partials are
 * byte-exact.
 *
 * Output: ENVELOPE/BODYSTRUCTURE/BODY are compiled once per message and session mode and
 * kept (StructureCache.compiledOf); a FETCH of metadata items, whole messages (BODY[],
 * RFC822) or both puts each line together from compiled pieces and the message bytes
 * (lineComposer), other FETCHes go through formatResponse and the compiler with the cached
 * texts spliced in as TEXT nodes and literal bytes spliced in after compiling (no string copy
 * of bodies). Responses are written in ~1 MiB chunks without copying the bodies
 * (ChunkStream), and the next few messages are read while the current ones are written, into
 * two reused arenas in turn (ReadArena). Byte-identity with imap-core's own output is tested
 * in test/imap-fetch-output.test.ts.
 */
import { EventEmitter } from 'node:events';
import type { Writable } from 'node:stream';
import { READ_BATCH_COUNT, readBatches } from './read-batches.js';
import type { MessageMeta } from '../store/types.js';
import { ReadArena } from '../store/read-arena.js';
import type { FetchOptions, FetchQueryItem, FetchValue, ImapHandlers, ImapResponse, ImapSession, SplicedLiteral } from './imap-core-types.js';
import { formatInternalDate, imapHandler } from './imap-core.js';
import { respond, type HandlerContext } from './handler-context.js';
import { bodyFromStructure, decodeMessageCache, describeMessage } from './message-cache.js';
import { extractSection, parseMime, type MimePart } from './mime-sections.js';
import type { CompiledTexts, MessageKey, MessageStructure } from './structure-cache.js';

/** A FETCH item whose compiled text is cached per message and session mode. */
type CompiledItem = 'envelope' | 'bodystructure' | 'body';

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
function needsOf(query: FetchQueryItem[]): { raw: boolean; structure: boolean; compiled: CompiledItem[] } {
  let raw = false;
  const compiled = new Set<CompiledItem>();
  for (const q of query) {
    const item = compiledItemOf(q);
    if (item) compiled.add(item);
    if (q.item === 'rfc822' || q.item === 'rfc822.header' || q.item === 'rfc822.text' || (q.item === 'body' && q.type !== undefined)) {
      raw = true;
    }
  }
  return { raw, structure: compiled.size > 0, compiled: [...compiled] };
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
    compiled: CompiledTexts;
  }
  interface Prepared {
    meta: MessageMeta;
    key: MessageKey;
    compiled: CompiledTexts;
    /** Some compiled text the query needs is not cached. */
    missing: boolean;
    structure: MessageStructure | null;
    /** The message must be parsed (no structure cached anywhere). */
    parse: boolean;
    /** The message's bytes are needed. */
    read: boolean;
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
  const mode = utf8 ? '1' : '0';
  /** The message's compiled texts, and whether some of what the query needs is missing. */
  const compiledOf = (meta: MessageMeta): { key: MessageKey; compiled: CompiledTexts; missing: boolean } => {
    const key: MessageKey = { mailboxId, uid: meta.uid, size: meta.size, internalDate: meta.internalDate };
    const compiled = needs.compiled.length ? cache.compiledOf(key) : {};
    let missing = false;
    for (const item of needs.compiled) if (compiled[item + mode] === undefined) missing = true;
    return { key, compiled, missing };
  };
  /** What a message needs: its compiled texts, its structure (if cached), whether to read/parse it. */
  const prepare = (meta: MessageMeta): Prepared => {
    // compiled ENVELOPE/BODYSTRUCTURE/BODY text: when all are cached, the structure is not needed
    const { key, compiled, missing } = compiledOf(meta);
    let structure = missing ? cache.getStructure(key) : null;
    if (missing && !structure && meta.cache !== undefined) {
      const slot = decodeMessageCache(meta.cache);
      if (slot) {
        structure = cache.putStructure(key, slot.structure);
        cache.putHeaders(key, slot.headers);
      }
    }
    const parse = missing && !structure;
    return { meta, key, compiled, missing, structure, parse, read: needs.raw || parse };
  };
  /** The message loaded, given its bytes when it needed them (null then: expunged meanwhile). */
  const complete = (p: Prepared, raw: Buffer | null): Loaded | null => {
    const { meta, key, compiled } = p;
    let structure = p.structure;
    if (p.read) {
      if (!raw) return null;
      if (p.parse) {
        const described = describeMessage(raw);
        structure = cache.putStructure(key, described.structure);
        cache.putHeaders(key, described.headers);
        if (meta.cache === undefined || !decodeMessageCache(meta.cache)) toPersist.push({ uid: meta.uid, cache: described.cache });
      }
    }
    if (p.missing) {
      for (const item of needs.compiled) {
        if (compiled[item + mode] === undefined) compiled[item + mode] = compileStructureItem(item, structure, session, utf8);
      }
    }
    return { meta, raw: p.read ? raw : null, compiled };
  };
  /**
   * Messages loaded, in order (null: expunged meanwhile). The bytes of messages that are only
   * written out go into `arena` when given; those that are parsed are not (their structure
   * outlives the FETCH). With store.readMessages, each group is read in one call.
   */
  const loadAll = async (list: MessageMeta[], arena?: ReadArena): Promise<Array<Loaded | null>> => {
    const prepared = list.map(prepare);
    const raws = new Array<Buffer | null>(list.length).fill(null);
    const groups = [
      { at: [] as number[], arena },
      { at: [] as number[], arena: undefined },
    ];
    prepared.forEach((p, i) => {
      if (p.read) groups[p.parse ? 1 : 0].at.push(i);
    });
    await Promise.all(
      groups.map(async ({ at, arena: into }) => {
        if (!at.length) return;
        const uids = at.map((i) => list[i].uid);
        const read = store.readMessages
          ? await store.readMessages(mailboxId, uids, into)
          : await Promise.all(uids.map((uid) => store.readMessage(mailboxId, uid, into)));
        at.forEach((i, k) => (raws[i] = read[k]));
      }),
    );
    return prepared.map((p, i) => complete(p, raws[i]));
  };

  const out = new ResponseBuffer(session);
  try {
    if (isMetadataQuery(options.query)) await writeMetadata();
    else await writeMessages();
    await out.flush();
  } finally {
    await persist();
  }

  async function writeMessages(): Promise<void> {
    // The next batch is read while the current one is written. Message bytes that are written
    // out go into two arenas in turn (see ReadArena), a batch filling one: batch b + 1 goes
    // into the arena of batch b - 1, whose bytes the output has taken by then (settle() below).
    const batches = needs.raw
      ? [...readBatches(metas, ARENA_BATCH_COUNT, ARENA_BATCH_BYTES)]
      : needs.structure
        ? [...readBatches(metas)]
        : [metas];
    const arenaSize = ARENA_BATCH_BYTES + ARENA_BATCH_COUNT;
    const arenas = needs.raw && batches.length > 1 ? [ReadArena.acquire(arenaSize), ReadArena.acquire(arenaSize)] : null;
    // BODY[]/RFC822 with metadata items only: lines put together directly
    const compose = isLineQuery(options.query) ? lineComposer(options.query, session, mode) : null;
    let settled = false;
    const loadBatch = (i: number): Promise<Array<Loaded | null>> | null => {
      if (i >= batches.length) return null;
      const arena = arenas?.[i % 2];
      arena?.reset();
      const p = loadAll(batches[i], arena);
      p.catch(() => undefined); // awaited below unless the socket went away first
      return p;
    };
    try {
      let next = loadBatch(0);
      for (let b = 0; next; b++) {
        if (!isSocketOpen(session)) return;
        const loaded = await next;
        next = loadBatch(b + 1);
        if (toPersist.length >= PERSIST_BATCH) await persist();
        for (const item of loaded) {
          if (!item) continue;
          if (!isSocketOpen(session)) return;
          if (compose) {
            const pieces = compose(item.meta, item.compiled, item.raw);
            const flushing = pieces && out.addPieces(pieces);
            if (flushing) await flushing;
            continue;
          }
          const values = buildValues(options.query, item.meta, item.raw);
          const response = session.formatResponse('FETCH', item.meta.uid, { query: respQuery, values });
          if (!response) continue;
          spliceCompiled(response, options.query, item.compiled, mode);
          await out.add(compileResponse(response));
        }
        if (arenas) await out.settle();
      }
      settled = true;
    } finally {
      // an arena whose bytes may still be being written is left to the garbage collector
      if (arenas && settled) for (const arena of arenas) arena.release();
    }
  }

  /**
   * Only UID/FLAGS/MODSEQ/INTERNALDATE/RFC822.SIZE/ENVELOPE/BODYSTRUCTURE/BODY: each line is
   * put together from compiled pieces (lineComposer).
   */
  async function writeMetadata(): Promise<void> {
    const compose = lineComposer(options.query, session, mode);
    /** The line goes to `out`; what to wait for when it filled a chunk. */
    const writeLine = (meta: MessageMeta, compiled: CompiledTexts): Promise<void> | null => {
      if (!isSocketOpen(session)) return null;
      const pieces = compose(meta, compiled, null);
      return pieces && out.addPieces(pieces);
    };
    // messages whose texts are not cached yet are loaded a few at a time (in order)
    let pending: MessageMeta[] = [];
    const loadPending = async (): Promise<void> => {
      if (!pending.length) return;
      const loaded = await loadAll(pending);
      pending = [];
      if (toPersist.length >= PERSIST_BATCH) await persist();
      for (const item of loaded) {
        const flushing = item && writeLine(item.meta, item.compiled);
        if (flushing) await flushing;
      }
    };
    for (const meta of metas) {
      if (!isSocketOpen(session)) return;
      const entry = compiledOf(meta);
      if (entry.missing || pending.length) {
        pending.push(meta);
        if (pending.length >= READ_BATCH_COUNT) await loadPending();
      } else {
        const flushing = writeLine(meta, entry.compiled);
        if (flushing) await flushing;
      }
    }
    await loadPending();
  }
}

type LinePiece = string | Buffer;
type LineComposer = (meta: MessageMeta, compiled: CompiledTexts, raw: Buffer | null) => LinePiece[] | null;

/**
 * FETCH lines put together directly, exactly as formatResponse + the compiler would write
 * them (for queries of lineQuery items only): labels compiled once per command, flag lists
 * once per distinct set, ENVELOPE/BODYSTRUCTURE/BODY texts cached per message, and whole
 * messages (BODY[], RFC822) as literals of the bytes read. Pieces: 'binary' strings and the
 * literals' Buffers. null: the message is no longer in the session's view.
 */
function lineComposer(query: FetchQueryItem[], session: ImapSession, mode: string): LineComposer {
  const uidList = session.selected ? session.selected.uidList : [];
  const seqOf = new Map<number, number>();
  uidList.forEach((uid, i) => seqOf.set(uid, i + 1));
  const labels = query.map((q) => compileNode(q.original) + ' ');
  const literal = query.map(isWholeLiteral);
  const flagTexts = new Map<string, string>();
  const flagsText = (flags: string[]): string => {
    const k = flags.join('\u0000');
    let text = flagTexts.get(k);
    if (text === undefined) {
      text = compileNode(flags.map((value) => ({ type: 'ATOM', value })));
      flagTexts.set(k, text);
    }
    return text;
  };
  return (meta, compiled, raw) => {
    let seq = seqOf.get(meta.uid);
    if (seq === undefined || uidList[seq - 1] !== meta.uid) {
      // the view changed meanwhile
      const at = uidList.indexOf(meta.uid);
      if (at < 0) return null;
      seq = at + 1;
    }
    const pieces: LinePiece[] = [];
    let line = `* ${seq} FETCH (`;
    query.forEach((q, i) => {
      if (i) line += ' ';
      line += labels[i];
      if (literal[i]) {
        const bytes = raw ?? EMPTY;
        pieces.push(line + `{${bytes.length}}\r\n`, bytes);
        line = '';
        return;
      }
      switch (q.item) {
        case 'uid':
          line += meta.uid;
          break;
        case 'rfc822.size':
          line += meta.size;
          break;
        case 'modseq':
          line += meta.modseq ? `(${meta.modseq})` : '()';
          break;
        case 'flags':
          line += flagsText(meta.flags);
          break;
        case 'internaldate':
          line += compiled.internaldate ??= compileNode({ type: 'ATOM', value: formatInternalDate(meta.internalDate) });
          break;
        default:
          line += compiled[(compiledItemOf(q) ?? '') + mode];
      }
    });
    pieces.push(line + ')');
    return pieces;
  };
}

const EMPTY = Buffer.alloc(0);

/** BODY[] (no partial) or RFC822: the whole message as a literal. */
function isWholeLiteral(q: FetchQueryItem): boolean {
  const partial = q.original.partial;
  if (partial && partial.length) return false;
  return q.item === 'rfc822' || (q.item === 'body' && q.type !== undefined && !q.path && (q.type === 'content' || q.type === ''));
}

/** The items lineComposer puts together itself (isMetadataQuery: without reading messages). */
function isLineQuery(query: FetchQueryItem[]): boolean {
  return query.every((q) => isWholeLiteral(q) || isMetadataQuery([q]));
}

/** The items writeMetadata puts together itself (no message needs to be read). */
function isMetadataQuery(query: FetchQueryItem[]): boolean {
  return query.every(
    (q) =>
      q.item === 'uid' ||
      q.item === 'flags' ||
      q.item === 'modseq' ||
      q.item === 'internaldate' ||
      q.item === 'rfc822.size' ||
      compiledItemOf(q) !== null,
  );
}

/** One node as imap-core's compiler writes it inside a response (no leading separator). */
function compileNode(node: unknown): string {
  return imapHandler.compiler({ tag: '', command: '', attributes: [node] });
}

/** The value of an ENVELOPE/BODYSTRUCTURE/BODY item as imap-core's response model holds it. */
function structureValue(item: CompiledItem, structure: MessageStructure | null, session: ImapSession, utf8: boolean): FetchValue {
  const opts = { acceptUTF8Enabled: utf8 };
  switch (item) {
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
    case 'body': {
      // BODY without a section is the non-extensible BODYSTRUCTURE
      const body = structure ? (structure.body ?? bodyFromStructure(structure.bodystructure)) : [];
      return session.getQueryResponse([{ item: 'bodystructure' }], { bodystructure: body }, opts)[0];
    }
  }
}

/**
 * The text imap-core's compiler writes for the item's value inside a FETCH response (a list:
 * it starts with `(`, so no separator of its own), cached per message and session mode.
 */
export function compileStructureItem(item: CompiledItem, structure: MessageStructure | null, session: ImapSession, utf8: boolean): string {
  const value = structureValue(item, structure, session, utf8);
  return compileNode(value);
}

/** Which query item, if any, has its compiled text cached. */
function compiledItemOf(q: FetchQueryItem): CompiledItem | null {
  if (q.item === 'envelope' || q.item === 'bodystructure') return q.item;
  if (q.item === 'body' && q.type === undefined) return 'body';
  return null;
}

/**
 * Puts the cached compiled text of ENVELOPE/BODYSTRUCTURE/BODY in place of their values
 * (formatResponse lays out `[label, value, label, value, ...]`): a TEXT node is written
 * verbatim by the compiler, with the same separators as the list it replaces.
 */
function spliceCompiled(response: ImapResponse, query: FetchQueryItem[], compiled: CompiledTexts, mode: string): void {
  const list = response.attributes[1];
  if (!Array.isArray(list)) return;
  query.forEach((q, i) => {
    const item = compiledItemOf(q);
    const text = item ? compiled[item + mode] : undefined;
    if (text !== undefined && 2 * i + 1 < list.length) list[2 * i + 1] = { type: 'TEXT', value: text };
  });
}

/** A compiled response, its literals' bytes spliced in. */
function compileResponse(response: ImapResponse): Buffer[] {
  const literals: Buffer[] = [];
  collectLiterals(response.attributes, literals);
  if (!literals.length) return [Buffer.from(imapHandler.compiler(response), 'latin1')];
  const parts = imapHandler.compiler(response, true);
  const out: Buffer[] = [];
  parts.forEach((part, i) => {
    out.push(Buffer.from(part, 'latin1'));
    if (i < literals.length) out.push(literals[i]);
  });
  return out;
}

function collectLiterals(nodes: unknown[], out: Buffer[]): void {
  for (const node of nodes) {
    if (Array.isArray(node)) collectLiterals(node, out);
    else if (node && typeof node === 'object' && (node as { type?: unknown }).type === 'LITERAL') {
      const value = (node as { value?: unknown }).value;
      if (value instanceof Spliced) out.push(value.bytes);
      else throw new Error('fetch: unexpected literal value');
    }
  }
}

/** Output is handed to imap-core's response stream in chunks of about this many bytes. */
const WRITE_CHUNK = 1024 * 1024;

/**
 * Batches of messages whose bytes are written out (BODY[], RFC822, sections): as many as fit
 * an arena of about this size. Fewer, bigger batches and output chunks cost less per byte
 * (each batch ends with a flush and a wait for the output; measured: 1 MiB batches and
 * chunks beat 16 messages per batch with 256 KiB chunks, and beat 2 MiB batches too).
 */
const ARENA_BATCH_BYTES = 1024 * 1024;
const ARENA_BATCH_COUNT = 256;

/**
 * Collects compiled FETCH responses and writes them to the session's response stream (an
 * object-mode transform that appends CRLF to each object) per ~1 MiB of whole responses:
 * as a ChunkStream when nothing else waits in that stream, else copied into one Buffer.
 * At most one chunk is in flight; settle() waits until the output has taken everything.
 */
class ResponseBuffer {
  private parts: Buffer[] = [];
  private bytes = 0;
  /** Text ('binary') not yet in `parts`. */
  private text = '';
  /** The last ChunkStream written, until it ended. */
  private pending: Promise<void> | null = null;

  constructor(private readonly session: ImapSession) {}

  /**
   * Adds a response given as pieces: 'binary' strings and Buffers. Returns the write of a
   * full chunk to wait for, if one was started (no promise per response otherwise).
   */
  addPieces(pieces: LinePiece[]): Promise<void> | null {
    if (this.bytes || this.text) this.text += '\r\n';
    for (const piece of pieces) {
      if (typeof piece === 'string') {
        this.text += piece;
      } else if (piece.length) {
        this.takeText();
        this.parts.push(piece);
        this.bytes += piece.length;
      }
    }
    return this.bytes + this.text.length >= WRITE_CHUNK ? this.flush() : null;
  }

  /** Adds a response given as Buffers. */
  async add(response: Buffer[]): Promise<void> {
    if (this.bytes || this.text) this.text += '\r\n';
    this.takeText();
    for (const p of response) {
      this.parts.push(p);
      this.bytes += p.length;
    }
    if (this.bytes >= WRITE_CHUNK) await this.flush();
  }

  private takeText(): void {
    if (!this.text) return;
    const b = Buffer.from(this.text, 'latin1');
    this.text = '';
    this.parts.push(b);
    this.bytes += b.length;
  }

  async flush(): Promise<void> {
    this.takeText();
    if (!this.parts.length) return;
    const parts = this.parts;
    const bytes = this.bytes;
    this.parts = [];
    this.bytes = 0;
    if (!isSocketOpen(this.session)) return;
    // at most one chunk waits in the response stream
    if (this.pending) await this.pending;
    if (!isSocketOpen(this.session)) return;
    const ws = this.session.writeStream;
    let more: boolean;
    if (ws.writableLength === 0 && ws.readableLength === 0) {
      // nothing waits in the response stream: the chunk is written out at once, in order
      const chunk = new ChunkStream(parts);
      this.pending = chunk.ended;
      more = ws.write(chunk);
    } else {
      // a copy (parts may be arena memory), written after what waits
      this.pending = null;
      more = ws.write({ compiled: Buffer.concat(parts, bytes) });
    }
    if (!more) await drained(this.session);
  }

  /** Writes what is buffered and waits until the output has taken all of it (or is gone). */
  async settle(): Promise<void> {
    await this.flush();
    if (this.pending) await this.pending;
    this.pending = null;
  }
}

/**
 * Several responses handed to the response stream as one stream object: imap-core's composer
 * pipes such an object into the connection's output (the socket, the TLS socket after
 * STARTTLS, or the deflate stream after COMPRESS), waits for its 'end', then writes CRLF.
 * The parts and that CRLF are written corked, i.e. in one writev: the responses are never
 * copied into one buffer, and no tiny write of their own goes out for the CRLF. 'end' comes
 * at once, as the composer starts listening for it (right after pipe()), so that nothing
 * written straight to the socket (imap-core's send(), e.g. an error reply) can come between
 * the parts and their CRLF.
 * `ended` resolves once the output is done with the parts (their write completed or failed),
 * so that their memory may be reused.
 */
class ChunkStream extends EventEmitter {
  readonly ended: Promise<void>;
  private resolveEnded!: () => void;
  /** The output, corked, from pipe() until 'end' is delivered. */
  private corked: Writable | null = null;

  constructor(private readonly parts: Buffer[]) {
    super();
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
  }

  pipe<T extends NodeJS.WritableStream>(dest: T): T {
    const out = dest as unknown as Writable;
    // (a closed output calls back too, with an error; 'close' is a second safety net)
    const written = (): void => {
      out.off('close', written);
      this.resolveEnded();
    };
    out.once('close', written);
    out.cork();
    const parts = this.parts.filter((part) => part.length > 0);
    parts.forEach((part, i) => (i < parts.length - 1 ? out.write(part) : out.write(part, written)));
    if (!parts.length) written();
    this.corked = out;
    return dest;
  }

  override once(event: string | symbol, listener: (...args: unknown[]) => void): this {
    const out = this.corked;
    if (event !== 'end' || !out) return super.once(event, listener);
    // the composer writes the CRLF (into the corked output), then all of it goes out
    this.corked = null;
    listener();
    out.uncork();
    return this;
  }
}

const CRLF = Buffer.from('\r\n');

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
 * Waits until the response stream has room again (or the socket is gone): it only takes
 * more when the socket does, so this applies the socket's backpressure to big FETCHes.
 */
async function drained(session: ImapSession): Promise<void> {
  const ws = session.writeStream;
  while (isSocketOpen(session) && ws.writableNeedDrain) await waitFor(ws, 'drain', session, 1000);
}

function buildValues(
  query: FetchQueryItem[],
  meta: MessageMeta,
  raw: Buffer | null,
): FetchValue[] {
  let tree: MimePart | null = null;
  const mime = (): MimePart => (tree ??= parseMime(raw ?? Buffer.alloc(0)));

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
      case 'envelope':
      case 'bodystructure':
        // replaced by the cached compiled text (spliceCompiled)
        return [];
      case 'rfc822':
        return literal(raw ?? Buffer.alloc(0));
      case 'rfc822.header':
        return literal(extractSection(raw ?? Buffer.alloc(0), mime(), { path: '', type: 'header' }));
      case 'rfc822.text':
        return literal(extractSection(raw ?? Buffer.alloc(0), mime(), { path: '', type: 'text' }));
      case 'body': {
        // BODY without a section is replaced by the cached compiled text (spliceCompiled)
        if (q.type === undefined) return [];
        // BODY[] is the whole message: no need to parse it
        const whole = !q.path && (q.type === 'content' || q.type === '');
        const bytes = !raw ? Buffer.alloc(0) : whole ? raw : extractSection(raw, mime(), { path: q.path ?? '', type: q.type, headers: q.headers });
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

/** A literal whose bytes are spliced into the compiled response (compileResponse). */
class Spliced implements SplicedLiteral {
  constructor(readonly bytes: Buffer) {}
  get length(): number {
    return this.bytes.length;
  }
  toString(): string {
    return '';
  }
}

function literal(bytes: Buffer): FetchValue {
  return new Spliced(bytes);
}
