/**
 * SEARCH: evaluates the parsed criteria (search-command.ts) over the store. Flags, UIDs,
 * sizes, dates and MODSEQ come from message metadata; header terms match decoded (RFC 2047)
 * header values, from the message's cache slot when it has one (message-cache.ts: FROM, TO,
 * CC, BCC, SUBJECT, Message-ID, threading fields, the sent date; no file is read), else
 * from the message; BODY/TEXT match decoded content (base64/quoted-printable, charsets,
 * HTML text). Matching is case-insensitive substring matching with whitespace runs collapsed.
 */
import { readBatches } from './read-batches.js';
import type { MessageMeta } from '../store/types.js';
import type { ImapHandlers, ImapSession, SearchExpression, SearchTerm } from './imap-core-types.js';
import { iconv } from './imap-core.js';
import { respond, selectedFor, type HandlerContext } from './handler-context.js';
import { parseImapDay, utcDay } from './imap-date.js';
import { decodeMessageCache } from './message-cache.js';
import { parseMime, type MimePart } from './mime-sections.js';
import { bodyText } from './mime-text.js';
import { buildHeaderIndex, headerValues, type HeaderIndex, type MessageKey } from './structure-cache.js';

type SearchHandler = Required<Pick<ImapHandlers, 'onSearch'>>;

export function createSearchHandler(ctx: HandlerContext): SearchHandler {
  return {
    onSearch(mailboxId, options, session, cb) {
      respond(ctx, 'SEARCH', session, cb)(async () => {
        const charset = findCharset(options.query);
        if (charset && !charsetSupported(charset)) return [{ uidList: 'BADCHARSET' }];
        const query = prepare(options.query, charset);
        const result = await search(ctx, mailboxId, query, session);
        return [result];
      });
    },
  };
}

/** A term with its string operand decoded to Unicode and normalised once. */
type Prepared =
  | { kind: 'all' }
  | { kind: 'none' }
  | { kind: 'flag'; flag: string; exists: boolean }
  | { kind: 'header'; header: string; needle: string }
  | { kind: 'body' | 'text'; needle: string; match: (text: string) => boolean }
  | { kind: 'idate-day' | 'sent-day'; operator: string; day: number }
  | { kind: 'idate-time'; operator: string; time: number }
  | { kind: 'size'; operator: string; size: number }
  | { kind: 'uid'; uids: Set<number> }
  | { kind: 'modseq'; modseq: number }
  | { kind: 'and'; terms: Prepared[] }
  | { kind: 'or'; terms: Prepared[] }
  | { kind: 'not'; term: Prepared };

function findCharset(query: SearchExpression[]): string | null {
  for (const t of query) {
    if (!Array.isArray(t) && t.key === 'charset') return t.value;
  }
  return null;
}

function charsetSupported(charset: string): boolean {
  const cs = charset.trim().toLowerCase();
  if (cs === 'utf-8' || cs === 'utf8' || cs === 'us-ascii' || cs === 'ascii') return true;
  try {
    return iconv.encodingExists(cs);
  } catch {
    return false;
  }
}

/** Search strings arrive as 'binary' strings (the raw bytes); decode them in the charset. */
export function decodeSearchString(value: string, charset: string | null): string {
  const bytes = Buffer.from(value, 'latin1');
  const cs = (charset ?? 'utf-8').trim().toLowerCase();
  if (cs === 'utf-8' || cs === 'utf8' || cs === 'us-ascii' || cs === 'ascii') return bytes.toString('utf8');
  return iconv.decode(bytes, cs);
}

/** Case-folded, NFC, whitespace runs as one space. */
export function normalizeText(s: string): string {
  return s.normalize('NFC').toLowerCase().replace(/\s+/g, ' ');
}

const NON_ASCII = /[^\x00-\x7f]/;

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Whether normalizeText(text) contains `needle` (normalised), without building the
 * normalised copy of a (long) text: the needle's words hold no whitespace, so they are found
 * in the collapsed text exactly where, in the NFC lower-cased text, they are separated by
 * whitespace runs; and NFC changes nothing in ASCII text.
 */
export function textMatcher(needle: string): (text: string) => boolean {
  if (!needle) return () => true;
  const words = needle.split(' ');
  const re = words.length > 1 ? new RegExp(words.map(escapeRegExp).join('\\s+')) : null;
  return (text) => {
    const lower = (NON_ASCII.test(text) ? text.normalize('NFC') : text).toLowerCase();
    return re ? re.test(lower) : lower.includes(needle);
  };
}

function prepare(expressions: SearchExpression[], charset: string | null): Prepared {
  const one = (e: SearchExpression): Prepared => {
    if (Array.isArray(e)) return { kind: 'and', terms: e.map(one) };
    return prepareTerm(e, charset, one);
  };
  return { kind: 'and', terms: expressions.map(one) };
}

function prepareTerm(t: SearchTerm, charset: string | null, one: (e: SearchExpression) => Prepared): Prepared {
  switch (t.key) {
    case 'all':
    case 'charset':
      return { kind: 'all' };
    case 'flag':
      return { kind: 'flag', flag: t.value.toLowerCase(), exists: t.exists };
    case 'header':
      return { kind: 'header', header: t.header.toLowerCase(), needle: normalizeText(decodeSearchString(t.value, charset)).trim() };
    case 'body':
    case 'text': {
      const needle = normalizeText(decodeSearchString(t.value, charset)).trim();
      return { kind: t.key, needle, match: textMatcher(needle) };
    }
    case 'internaldate':
    case 'date': {
      if (t.value instanceof Date) return { kind: 'idate-time', operator: t.operator, time: t.value.getTime() };
      const day = parseImapDay(t.value);
      if (day === null) return { kind: 'none' };
      return { kind: t.key === 'date' ? 'sent-day' : 'idate-day', operator: t.operator, day };
    }
    case 'size':
      return { kind: 'size', operator: t.operator, size: t.value };
    case 'uid':
      return { kind: 'uid', uids: new Set(t.value) };
    case 'modseq':
      return { kind: 'modseq', modseq: t.value };
    case 'or':
      return { kind: 'or', terms: t.value.map(one) };
    case 'not':
      return { kind: 'not', term: one(t.value) };
    default:
      return { kind: 'none' };
  }
}

/** How costly a term is to evaluate: cheap ones first in an AND. */
function cost(p: Prepared): number {
  switch (p.kind) {
    case 'header':
    case 'sent-day':
      return 1;
    case 'body':
    case 'text':
      return 2;
    case 'and':
    case 'or':
      return Math.max(0, ...p.terms.map(cost));
    case 'not':
      return cost(p.term);
    default:
      return 0;
  }
}

/** Lazily loaded content of one message. */
class Doc {
  private rawP: Promise<Buffer | null> | null = null;
  private tree: MimePart | null = null;
  private headerIndex: HeaderIndex | null = null;
  private body: string | null = null;
  private text: string | null = null;

  constructor(
    private readonly ctx: HandlerContext,
    readonly meta: MessageMeta,
    private readonly key: MessageKey,
  ) {}

  private raw(): Promise<Buffer | null> {
    this.rawP ??= this.ctx.store.readMessage(this.key.mailboxId, this.meta.uid);
    return this.rawP;
  }

  private async mime(): Promise<{ raw: Buffer; tree: MimePart } | null> {
    const raw = await this.raw();
    if (!raw) return null;
    this.tree ??= parseMime(raw);
    return { raw, tree: this.tree };
  }

  /** Decoded header fields: perhaps only some of them (see HeaderIndex.names). */
  async headers(): Promise<HeaderIndex | null> {
    if (this.headerIndex) return this.headerIndex;
    const cached = this.ctx.cache.getHeaders(this.key);
    if (cached) return (this.headerIndex = cached);
    const slot = this.meta.cache !== undefined ? decodeMessageCache(this.meta.cache) : null;
    if (slot) {
      this.ctx.cache.putStructure(this.key, slot.structure);
      return (this.headerIndex = this.ctx.cache.putHeaders(this.key, slot.headers));
    }
    return this.fullHeaders();
  }

  /** All decoded header fields (reads the message unless they are cached). */
  async fullHeaders(): Promise<HeaderIndex | null> {
    if (this.headerIndex && this.headerIndex.names === undefined) return this.headerIndex;
    const cached = this.ctx.cache.getHeaders(this.key);
    if (cached && cached.names === undefined) return (this.headerIndex = cached);
    const m = await this.mime();
    if (!m) return null;
    this.headerIndex = this.ctx.cache.headersOf(this.key, m.raw, m.tree);
    return this.headerIndex;
  }

  /** Decoded values of one header field ([] when absent). */
  async headerValues(name: string): Promise<string[]> {
    const h = await this.headers();
    if (!h) return [];
    const values = headerValues(h, name);
    if (values) return values;
    const full = await this.fullHeaders();
    return full ? (headerValues(full, name) ?? []) : [];
  }

  /** Decoded body text, not normalised (see textMatcher). */
  async bodyText(): Promise<string> {
    if (this.body !== null) return this.body;
    const m = await this.mime();
    this.body = m ? bodyText(m.raw, m.tree) : '';
    return this.body;
  }

  /** Headers and body, headers of attached messages included. */
  async fullText(): Promise<string> {
    if (this.text !== null) return this.text;
    const m = await this.mime();
    if (!m) return (this.text = '');
    const headerText = (h: HeaderIndex): string => h.fields.map(([name, value]) => `${name}: ${value}`).join('\n');
    const own = await this.fullHeaders();
    const body = bodyText(m.raw, m.tree, (message) => headerText(buildHeaderIndex(m.raw, message)));
    this.text = (own ? headerText(own) : '') + '\n' + body;
    return this.text;
  }
}

function compareDay(value: number, operator: string, day: number): boolean {
  switch (operator) {
    case '<':
      return value < day;
    case '=':
      return value === day;
    case '>=':
      return value >= day;
    case '<=':
      return value <= day;
    default:
      return false;
  }
}

async function matches(p: Prepared, doc: Doc): Promise<boolean> {
  const meta = doc.meta;
  switch (p.kind) {
    case 'all':
      return true;
    case 'none':
      return false;
    case 'flag':
      return meta.flags.some((f) => f.toLowerCase() === p.flag) === p.exists;
    case 'uid':
      return p.uids.has(meta.uid);
    case 'size':
      return p.operator === '>' ? meta.size > p.size : meta.size < p.size;
    case 'modseq':
      return meta.modseq >= p.modseq;
    case 'idate-day':
      return compareDay(utcDay(meta.internalDate), p.operator, p.day);
    case 'idate-time':
      return compareDay(meta.internalDate.getTime(), p.operator, p.time);
    case 'sent-day': {
      const h = await doc.headers();
      // no (parsable) Date: header: use the internal date, as Dovecot does
      const day = h?.sentDay ?? utcDay(meta.internalDate);
      return compareDay(day, p.operator, p.day);
    }
    case 'header': {
      for (const value of await doc.headerValues(p.header)) {
        if (!p.needle || normalizeText(value).includes(p.needle)) return true;
      }
      return false;
    }
    case 'body':
      return !p.needle || p.match(await doc.bodyText());
    case 'text':
      return !p.needle || p.match(await doc.fullText());
    case 'and': {
      for (const t of [...p.terms].sort((a, b) => cost(a) - cost(b))) {
        if (!(await matches(t, doc))) return false;
      }
      return true;
    }
    case 'or': {
      for (const t of [...p.terms].sort((a, b) => cost(a) - cost(b))) {
        if (await matches(t, doc)) return true;
      }
      return false;
    }
    case 'not':
      return !(await matches(p.term, doc));
  }
}

async function search(
  ctx: HandlerContext,
  mailboxId: string,
  query: Prepared,
  session: ImapSession,
): Promise<{ uidList: number[]; highestModseq: number }> {
  const selected = selectedFor(session, mailboxId);
  // the session's view: messages it has not been told about yet are not searched
  const universe = selected ? [...selected.uidList] : [];
  if (!universe.length) return { uidList: [], highestModseq: 0 };
  const metas = await ctx.store.getMessages(mailboxId, universe, { cache: usesHeaders(query) });
  const found: number[] = [];
  let highestModseq = 0;
  // a few messages are evaluated concurrently so that their file reads overlap, and the next
  // few are already under way while the current ones finish
  const list = [...readBatches(metas)];
  const evaluate = (b: number): Promise<boolean[]> | null => {
    if (b >= list.length) return null;
    const p = Promise.all(
      list[b].map((meta) => matches(query, new Doc(ctx, meta, { mailboxId, uid: meta.uid, size: meta.size, internalDate: meta.internalDate }))),
    );
    p.catch(() => undefined); // awaited below
    return p;
  };
  let current = evaluate(0);
  let next = evaluate(1);
  for (let b = 0; current; b++) {
    const results = await current;
    current = next;
    next = evaluate(b + 2);
    const batch = list[b];
    results.forEach((hit, i) => {
      if (!hit) return;
      found.push(batch[i].uid);
      if (batch[i].modseq > highestModseq) highestModseq = batch[i].modseq;
    });
  }
  return { uidList: found, highestModseq };
}

/** Whether evaluating the query may look at header fields (then cache slots help). */
function usesHeaders(p: Prepared): boolean {
  switch (p.kind) {
    case 'header':
    case 'sent-day':
      return true;
    case 'and':
    case 'or':
      return p.terms.some(usesHeaders);
    case 'not':
      return usesHeaders(p.term);
    default:
      return false;
  }
}

