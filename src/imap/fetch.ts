/**
 * FETCH. Metadata comes from the store (flags, modseq, size, internal date) and, for
 * ENVELOPE and BODYSTRUCTURE, from the structure cache in memory, else from the message's
 * cache slot in the store (message-cache.ts; persisted, so warm after a restart too), else
 * from parsing the message once (then the slot is filled). Every body section is a slice of
 * the bytes store.readMessage returns, so BODY[], BODY[TEXT], RFC822* and partials are
 * byte-exact.
 *
 * Output: ENVELOPE/BODYSTRUCTURE/BODY are compiled once per message and session mode and
 * kept (StructureCache.compiledOf); a FETCH of metadata items only puts each line together
 * from compiled pieces (writeMetadata), other FETCHes go through formatResponse and the
 * compiler with the cached texts spliced in as TEXT nodes and literal bytes spliced in after
 * compiling (no string copy of bodies). Responses are written in ~64 KB chunks, and the
 * next few messages are read while the current ones are written. Byte-identity with
 * imap-core's own output is tested in test/imap-fetch-output.test.ts.
 */
import { READ_BATCH_COUNT, readBatches } from './read-batches.js';
import type { MessageMeta } from '../store/types.js';
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
  const load = async (meta: MessageMeta): Promise<Loaded | null> => {
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
    if (missing) {
      for (const item of needs.compiled) {
        if (compiled[item + mode] === undefined) compiled[item + mode] = compileStructureItem(item, structure, session, utf8);
      }
    }
    return { meta, raw, compiled };
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
    // the next batch is read while the current one is written
    const batches = needs.raw || needs.structure ? [...readBatches(metas)] : [metas];
    const loadBatch = (i: number): Promise<Array<Loaded | null>> | null => {
      if (i >= batches.length) return null;
      const p = Promise.all(batches[i].map(load));
      p.catch(() => undefined); // awaited below unless the socket went away first
      return p;
    };
    let next = loadBatch(0);
    for (let b = 0; next; b++) {
      if (!isSocketOpen(session)) return;
      const loaded = await next;
      next = loadBatch(b + 1);
      if (toPersist.length >= PERSIST_BATCH) await persist();
      for (const item of loaded) {
        if (!item) continue;
        if (!isSocketOpen(session)) return;
        const values = buildValues(options.query, item.meta, item.raw);
        const response = session.formatResponse('FETCH', item.meta.uid, { query: respQuery, values });
        if (!response) continue;
        spliceCompiled(response, options.query, item.compiled, mode);
        await out.add(compileResponse(response));
      }
    }
  }

  /**
   * Only UID/FLAGS/MODSEQ/INTERNALDATE/RFC822.SIZE/ENVELOPE/BODYSTRUCTURE/BODY: each line is
   * put together from compiled pieces (labels once per command, flag lists once per distinct
   * set, the rest cached per message), exactly as formatResponse + the compiler would write it.
   */
  async function writeMetadata(): Promise<void> {
    const selected = session.selected;
    const uidList = selected ? selected.uidList : [];
    const seqOf = new Map<number, number>();
    uidList.forEach((uid, i) => seqOf.set(uid, i + 1));
    const labels = options.query.map((q) => compileNode(q.original) + ' ');
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
    // messages whose texts are not cached yet are loaded a few at a time (in order)
    let pending: MessageMeta[] = [];
    const loadPending = async (): Promise<void> => {
      if (!pending.length) return;
      const loaded = await Promise.all(pending.map(load));
      pending = [];
      if (toPersist.length >= PERSIST_BATCH) await persist();
      for (const item of loaded) if (item) await writeLine(item.meta, item.compiled);
    };
    for (const meta of metas) {
      if (!isSocketOpen(session)) return;
      const entry = compiledOf(meta);
      if (entry.missing || pending.length) {
        pending.push(meta);
        if (pending.length >= READ_BATCH_COUNT) await loadPending();
      } else {
        await writeLine(meta, entry.compiled);
      }
    }
    await loadPending();

    async function writeLine(meta: MessageMeta, compiled: CompiledTexts): Promise<void> {
      if (!isSocketOpen(session)) return;
      let seq = seqOf.get(meta.uid);
      if (seq === undefined || uidList[seq - 1] !== meta.uid) {
        // the view changed meanwhile
        const at = uidList.indexOf(meta.uid);
        if (at < 0) return;
        seq = at + 1;
      }
      let line = `* ${seq} FETCH (`;
      options.query.forEach((q, i) => {
        if (i) line += ' ';
        line += labels[i];
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
      await out.addText(line + ')');
    }
  }
}

/** The items writeMetadata puts together itself. */
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
const WRITE_CHUNK = 64 * 1024;

/**
 * Collects compiled FETCH responses and writes them to the session's response stream (an
 * object-mode transform that appends CRLF to each object) as one Buffer per ~64 KB of whole
 * responses, waiting for the socket when it is full.
 */
class ResponseBuffer {
  private parts: Buffer[] = [];
  private bytes = 0;
  /** Text ('binary') not yet in `parts`. */
  private text = '';

  constructor(private readonly session: ImapSession) {}

  /** Adds a response given as a 'binary' string. */
  async addText(response: string): Promise<void> {
    if (this.bytes || this.text) this.text += '\r\n';
    this.text += response;
    if (this.bytes + this.text.length >= WRITE_CHUNK) await this.flush();
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
    const chunk = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts, this.bytes);
    this.parts = [];
    this.bytes = 0;
    if (!isSocketOpen(this.session)) return;
    if (!this.session.writeStream.write({ compiled: chunk })) await drained(this.session);
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
