/**
 * What the IMAP layer keeps in the store's per-message cache slot (MailStore.setMessageCache):
 * ENVELOPE and BODYSTRUCTURE as the indexer builds them, and the decoded header fields SEARCH
 * asks for most, so that metadata FETCHes and header SEARCHes never read message files once
 * a message is described, also after a restart.
 *
 * The slot is one line of JSON: {"v":2,"e":envelope,"s":bodystructure,"n":[field names],
 * "h":[[name,value],...],"d":sentDay}. The indexer's structures hold Buffers; JSON would
 * turn them into objects (and structuredClone into Uint8Arrays, which imap-core does not
 * treat as Buffers), so every Buffer is written as {"b":"<bytes as latin1>"} and read back
 * as a Buffer. BODY (without a section) is not kept: it is BODYSTRUCTURE without the
 * extension data (bodyFromStructure).
 *
 * The structures are the indexer's, with four corrections so that clients see what Dovecot
 * serves for the same message (checked against Dovecot 2.3):
 * - a Subject of raw 8-bit UTF-8 was garbled (the indexer's parser already decodes header
 *   bytes as UTF-8 and its ENVELOPE builder decodes them again): it is handed over as bytes;
 * - a message without Subject has NIL, not "", as ENVELOPE subject (also in attached messages);
 * - a text part without a charset parameter gets ("CHARSET" "us-ascii") (RFC 2045 5.2);
 * - BODY of a multipart carries no extension data (the indexer put the parameters there).
 */
import { getIndexer } from './imap-core.js';
import type { IndexerTree, StructValue } from './imap-core-types.js';
import { parseMime } from './mime-sections.js';
import { buildHeaderIndex, type HeaderIndex, type MessageStructure } from './structure-cache.js';

/** 2: with the Dovecot-compatibility corrections below. Slots of another version are rebuilt. */
const VERSION = 2;

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

/** The parts of the indexer's tree nodes looked at here. */
interface TreeNode {
  parsedHeader?: Record<string, unknown>;
  multipart?: string | false;
  childNodes?: TreeNode[];
  message?: TreeNode;
}

interface ContentTypeHeader {
  type?: string;
  params?: Record<string, string>;
  hasParams?: boolean;
}

/** Corrects the tree before the indexer builds ENVELOPE/BODYSTRUCTURE from it (see above). */
function prepareTree(node: TreeNode, depth = 0): void {
  if (depth > 50) return;
  const header = node.parsedHeader;
  if (header) {
    // the indexer's ENVELOPE reads the subject as 'binary' and decodes it as UTF-8
    const subject = header.subject;
    const asBytes = (s: unknown): unknown => (typeof s === 'string' && /[^\x00-\x7f]/.test(s) ? Buffer.from(s, 'utf8').toString('latin1') : s);
    header.subject = Array.isArray(subject) ? subject.map(asBytes) : asBytes(subject);
    const ct = header['content-type'] as ContentTypeHeader | undefined;
    if (!node.multipart && !node.message && ct && (ct.type ?? 'text') === 'text') {
      ct.params ??= {};
      if (!Object.keys(ct.params).some((k) => k.toLowerCase() === 'charset')) {
        ct.params.charset = 'us-ascii';
        ct.hasParams = true;
      }
    }
  }
  for (const child of node.childNodes ?? []) prepareTree(child, depth + 1);
  if (node.message) prepareTree(node.message, depth + 1);
}

const hasSubject = (node: TreeNode): boolean => node.parsedHeader?.subject !== undefined;

/** NIL subjects in the ENVELOPEs of attached messages, walking tree and BODYSTRUCTURE together. */
function nilSubjects(node: TreeNode, bs: StructValue[], depth = 0): void {
  if (depth > 50) return;
  if (node.multipart) {
    (node.childNodes ?? []).forEach((child, i) => {
      const sub = bs[i];
      if (Array.isArray(sub)) nilSubjects(child, sub, depth + 1);
    });
  } else if (node.message) {
    const envelope = bs[7];
    const body = bs[8];
    if (Array.isArray(envelope) && !hasSubject(node.message)) envelope[1] = null;
    if (Array.isArray(body)) nilSubjects(node.message, body, depth + 1);
  }
}

function upper(v: StructValue | undefined): string {
  return Buffer.isBuffer(v) ? v.toString('latin1').toUpperCase() : typeof v === 'string' ? v.toUpperCase() : '';
}

/**
 * BODY (RFC 3501 body without extension data) from BODYSTRUCTURE: a multipart is its parts
 * and its subtype; a basic part its first seven fields, text parts also their line count,
 * message/rfc822 parts also envelope, nested BODY and line count.
 */
export function bodyFromStructure(bs: StructValue[], depth = 0): StructValue[] {
  if (depth > 50) return [];
  if (Array.isArray(bs[0])) {
    const out: StructValue[] = [];
    let i = 0;
    for (; i < bs.length && Array.isArray(bs[i]); i++) out.push(bodyFromStructure(bs[i] as StructValue[], depth + 1));
    if (i < bs.length) out.push(bs[i]);
    return out;
  }
  const basic = bs.slice(0, 7);
  const type = upper(bs[0]);
  if (type === 'TEXT') return [...basic, bs[7] ?? 0];
  if (type === 'MESSAGE' && Array.isArray(bs[7]) && Array.isArray(bs[8])) {
    return [...basic, bs[7], bodyFromStructure(bs[8], depth + 1), bs[9] ?? 0];
  }
  return basic;
}

/** ENVELOPE and BODYSTRUCTURE of a message (BODY is derived from BODYSTRUCTURE). */
export function structureOf(raw: Buffer): MessageStructure {
  const indexer = getIndexer();
  const tree = indexer.parseMimeTree(raw);
  const root = tree as unknown as TreeNode;
  prepareTree(root);
  const envelope = indexer.getEnvelope(tree as IndexerTree);
  const bodystructure = indexer.getBodyStructure(tree as IndexerTree);
  if (!hasSubject(root)) envelope[1] = null;
  nilSubjects(root, bodystructure);
  return { envelope, bodystructure };
}

/** Parses and describes a message (indexer for the structures, our parser for headers). */
export function describeMessage(raw: Buffer): DescribedMessage {
  const structure = structureOf(raw);
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
