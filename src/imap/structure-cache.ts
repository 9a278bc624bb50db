/**
 * In-memory cache of the parsed metadata of messages (ENVELOPE, BODYSTRUCTURE, BODY and
 * the decoded header fields SEARCH needs), keyed by mailbox id + UID, so that repeated
 * metadata FETCHes and header SEARCHes do not even decode the store's cache slots
 * (message-cache.ts, which is what survives a restart).
 *
 * Stored messages are immutable, but a UID can only be trusted together with its mailbox
 * incarnation; the key therefore also carries size and internal date, which makes a stale
 * hit after a mailbox was recreated practically impossible.
 */
import { libmime } from './imap-core.js';
import type { StructValue } from './imap-core-types.js';
import { Lru } from './lru.js';
import { fieldValue, parseMime, rawFieldValue, unfold, type MimePart } from './mime-sections.js';

export interface MessageStructure {
  envelope: StructValue[];
  bodystructure: StructValue[];
  /** BODY (non-extensible BODYSTRUCTURE): derived from bodystructure where needed. */
  body?: StructValue[];
}

export interface HeaderIndex {
  /** Decoded (RFC 2047, UTF-8) unfolded values, by lower-cased field name, in order. */
  fields: Array<[string, string]>;
  /** The Date: header's calendar day as days since the epoch, or null. */
  sentDay: number | null;
  /**
   * Set when `fields` holds only some fields (a cache slot): the names of all fields the
   * message has. A field in `names` but not in `fields` needs the message itself.
   */
  names?: ReadonlySet<string>;
}

/**
 * The decoded values of a header field: [] when the message has no such field, null when
 * the index does not hold them (a partial index; parse the message).
 */
export function headerValues(index: HeaderIndex, name: string): string[] | null {
  const values = index.fields.filter(([n]) => n === name).map(([, v]) => v);
  if (values.length > 0 || index.names === undefined || !index.names.has(name)) return values;
  return null;
}

export interface MessageKey {
  mailboxId: string;
  uid: number;
  size: number;
  internalDate: Date;
}

function keyOf(k: MessageKey): string {
  return `${k.mailboxId}\u0000${k.uid}\u0000${k.size}\u0000${k.internalDate.getTime()}`;
}

/**
 * Compiled response texts of one message ('binary' strings as imap-core's compiler writes
 * them, e.g. `("Mon, 1 Jan ..." ...)`), by name: ENVELOPE, BODYSTRUCTURE and BODY per session
 * mode (non-UTF8 sessions get encoded words), INTERNALDATE. Filled by fetch.ts.
 */
export type CompiledTexts = Record<string, string>;

export class StructureCache {
  private readonly structures: Lru<string, MessageStructure>;
  private readonly headers: Lru<string, HeaderIndex>;
  private readonly compiled: Lru<string, CompiledTexts>;

  constructor(maxEntries = 20000) {
    this.structures = new Lru(maxEntries);
    this.headers = new Lru(maxEntries);
    this.compiled = new Lru(maxEntries);
  }

  /** The message's compiled texts (an empty record, now cached, at first): add to it freely. */
  compiledOf(key: MessageKey): CompiledTexts {
    const k = keyOf(key);
    let texts = this.compiled.get(k);
    if (!texts) {
      texts = {};
      this.compiled.set(k, texts);
    }
    return texts;
  }

  /** A private copy (getQueryResponse mutates what it is given). */
  getStructure(key: MessageKey): MessageStructure | null {
    const hit = this.structures.get(keyOf(key));
    return hit ? cloneStructure(hit) : null;
  }

  /** Caches a structure (kept as given: pass one nobody else mutates); returns a copy. */
  putStructure(key: MessageKey, structure: MessageStructure): MessageStructure {
    this.structures.set(keyOf(key), structure);
    return cloneStructure(structure);
  }

  getHeaders(key: MessageKey): HeaderIndex | null {
    return this.headers.get(keyOf(key)) ?? null;
  }

  putHeaders(key: MessageKey, index: HeaderIndex): HeaderIndex {
    // a partial index never replaces a complete one
    const old = this.headers.get(keyOf(key));
    if (old !== undefined && old.names === undefined && index.names !== undefined) return old;
    this.headers.set(keyOf(key), index);
    return index;
  }

  headersOf(key: MessageKey, raw: Buffer, root: MimePart): HeaderIndex {
    const index = buildHeaderIndex(raw, root);
    this.headers.set(keyOf(key), index);
    return index;
  }

  clear(): void {
    this.structures.clear();
    this.headers.clear();
    this.compiled.clear();
  }
}

function cloneStructure(s: MessageStructure): MessageStructure {
  const copy: MessageStructure = { envelope: cloneValues(s.envelope), bodystructure: cloneValues(s.bodystructure) };
  if (s.body !== undefined) copy.body = cloneValues(s.body);
  return copy;
}

/** Deep copy that keeps Buffers as Buffers (structuredClone/JSON would not). */
export function cloneValues(values: StructValue[]): StructValue[] {
  return values.map(cloneValue);
}

function cloneValue(v: StructValue): StructValue {
  if (Array.isArray(v)) return v.map(cloneValue);
  if (Buffer.isBuffer(v)) return Buffer.from(v);
  return v;
}

/** Decodes a raw (latin1-read) header value: bytes as UTF-8, then RFC 2047 words. */
export function decodeHeaderValue(binary: string): string {
  const text = Buffer.from(binary, 'latin1').toString('utf8');
  try {
    return libmime.decodeWords(text);
  } catch {
    return text;
  }
}

export function buildHeaderIndex(raw: Buffer, root: MimePart): HeaderIndex {
  const fields: Array<[string, string]> = root.fields
    .filter((f) => f.name)
    .map((f) => [f.name, decodeHeaderValue(unfold(rawFieldValue(raw, f)))]);
  return { fields, sentDay: parseSentDay(fieldValue(raw, root.fields, 'date')) };
}

const MONTHS = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];

/**
 * The calendar day of an RFC 5322 date as written (its own zone, time disregarded, as
 * SENTBEFORE/SENTON/SENTSINCE require), in days since the epoch.
 */
export function parseSentDay(value: string | null): number | null {
  if (!value) return null;
  const m = /(\d{1,2})\s+([A-Za-z]{3})[a-z]*\s+(\d{2,4})/.exec(value);
  if (m) {
    const month = MONTHS.indexOf(m[2].toLowerCase());
    if (month >= 0) {
      let year = Number(m[3]);
      if (m[3].length === 2) year += year < 50 ? 2000 : 1900;
      else if (m[3].length === 3) year += 1900;
      return Math.floor(Date.UTC(year, month, Number(m[1])) / 86400000);
    }
  }
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : Math.floor(t / 86400000);
}
