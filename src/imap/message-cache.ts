/**
 * What the IMAP layer keeps in the store's per-message cache slot (MailStore.setMessageCache):
 * ENVELOPE and BODYSTRUCTURE as the indexer builds them, and the decoded header fields SEARCH
 * asks for most, so that metadata FETCHes and header SEARCHes never read message files once
 * a message is described, also after a restart.
 *
 * The slot is one line of JSON: {"v":1,"e":envelope,"s":bodystructure,"n":[field names],
 * "h":[[name,value],...],"d":sentDay}. The indexer's structures hold Buffers; JSON would
 * turn them into objects (and structuredClone into Uint8Arrays, which imap-core does not
 * treat as Buffers), so every Buffer is written as {"b":"<bytes as latin1>"} and read back
 * as a Buffer. BODY (without a section) is not kept: rarely asked for, it is computed from
 * the message when needed.
 */
import { getIndexer } from './imap-core.js';
import type { StructValue } from './imap-core-types.js';
import { parseMime } from './mime-sections.js';
import { buildHeaderIndex, type HeaderIndex, type MessageStructure } from './structure-cache.js';

const VERSION = 1;

/** Header fields whose decoded values the slot carries (the SEARCH keys, plus threading). */
export const CACHED_HEADER_FIELDS: ReadonlySet<string> = new Set([
  'from',
  'to',
  'cc',
  'bcc',
  'subject',
  'message-id',
  'in-reply-to',
  'references',
]);

/** A cached value longer than this is cut (search terms are short; References can be huge). */
const MAX_CACHED_VALUE = 4096;

export interface DescribedMessage {
  /** ENVELOPE, BODYSTRUCTURE and BODY. */
  structure: MessageStructure;
  /** All header fields, decoded. */
  headers: HeaderIndex;
  /** The slot text for the store. */
  cache: string;
}

function encodeValue(v: StructValue): unknown {
  if (Buffer.isBuffer(v)) return { b: v.toString('latin1') };
  if (Array.isArray(v)) return v.map(encodeValue);
  return v;
}

class BadSlot extends Error {}

function decodeValue(v: unknown): StructValue {
  if (v === null || typeof v === 'string' || typeof v === 'number') return v;
  if (Array.isArray(v)) return v.map(decodeValue);
  if (typeof v === 'object' && typeof (v as { b?: unknown }).b === 'string') return Buffer.from((v as { b: string }).b, 'latin1');
  throw new BadSlot();
}

/** Parses and describes a message (indexer for the structures, our parser for headers). */
export function describeMessage(raw: Buffer): DescribedMessage {
  const indexer = getIndexer();
  const tree = indexer.parseMimeTree(raw);
  const structure: MessageStructure = {
    envelope: indexer.getEnvelope(tree),
    bodystructure: indexer.getBodyStructure(tree),
    body: indexer.getBody(tree),
  };
  const headers = buildHeaderIndex(raw, parseMime(raw));
  return { structure, headers, cache: encodeSlot(structure, headers) };
}

function encodeSlot(structure: MessageStructure, headers: HeaderIndex): string {
  const names = [...new Set(headers.fields.map(([name]) => name))];
  const kept = headers.fields
    .filter(([name]) => CACHED_HEADER_FIELDS.has(name))
    .map(([name, value]) => [name, value.length > MAX_CACHED_VALUE ? value.slice(0, MAX_CACHED_VALUE) : value]);
  return JSON.stringify({
    v: VERSION,
    e: encodeValue(structure.envelope),
    s: encodeValue(structure.bodystructure),
    n: names,
    h: kept,
    d: headers.sentDay,
  });
}

/** The store's cache builder: the slot of a new message, or null if it cannot be described. */
export function buildMessageCache(raw: Buffer): string | null {
  try {
    return describeMessage(raw).cache;
  } catch {
    return null;
  }
}

export interface DecodedSlot {
  /** Without BODY. */
  structure: MessageStructure;
  /** Only CACHED_HEADER_FIELDS, with `names` listing every field the message has. */
  headers: HeaderIndex;
}

/** Reads a slot; null when it is not ours or damaged (the caller then parses the message). */
export function decodeMessageCache(text: string): DecodedSlot | null {
  try {
    const o = JSON.parse(text) as Record<string, unknown>;
    if (o === null || typeof o !== 'object' || o.v !== VERSION) return null;
    const envelope = decodeValue(o.e);
    const bodystructure = decodeValue(o.s);
    if (!Array.isArray(envelope) || !Array.isArray(bodystructure)) return null;
    if (!Array.isArray(o.n) || !o.n.every((n) => typeof n === 'string')) return null;
    if (!Array.isArray(o.h)) return null;
    const fields: Array<[string, string]> = [];
    for (const f of o.h as unknown[]) {
      if (!Array.isArray(f) || f.length !== 2 || typeof f[0] !== 'string' || typeof f[1] !== 'string') return null;
      fields.push([f[0], f[1]]);
    }
    const sentDay = typeof o.d === 'number' ? o.d : null;
    return {
      structure: { envelope, bodystructure },
      headers: { fields, sentDay, names: new Set(o.n as string[]) },
    };
  } catch {
    return null;
  }
}
