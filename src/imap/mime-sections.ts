/**
 * Byte-exact MIME section addressing over a stored message (RFC 3501 §6.4.5 section specs).
 *
 * parseMime() records, for every part, where its header and body start and end in the
 * original buffer, so BODY[...] answers are slices of the stored bytes (never a rebuild).
 * Line ends may be CRLF or bare LF; the store hands us CRLF, but nothing here depends on it.
 */

export interface HeaderField {
  /** Lower-cased field name. */
  name: string;
  /** Byte range of the whole field, continuation lines and final line break included. */
  start: number;
  end: number;
}

export interface ContentType {
  /** Lower-cased, e.g. "text". */
  type: string;
  /** Lower-cased, e.g. "plain". */
  subtype: string;
  /** Lower-cased parameter names; values unquoted. */
  params: Record<string, string>;
}

export interface MimePart {
  /** Start of the part's header section. */
  start: number;
  /** End of the header section, blank line included; also where the body starts. */
  headerEnd: number;
  /** End of the body. */
  end: number;
  fields: HeaderField[];
  contentType: ContentType;
  /** Lower-cased Content-Transfer-Encoding ("7bit" when absent). */
  transferEncoding: string;
  /** Children of a multipart part. */
  children: MimePart[];
  /** The encapsulated message of a message/rfc822 (or message/global) part. */
  message: MimePart | null;
}

const MAX_DEPTH = 40;
const LF = 0x0a;
const CR = 0x0d;

/** Parses the message into its part tree. Never throws on malformed input. */
export function parseMime(raw: Buffer): MimePart {
  return parsePart(raw, 0, raw.length, 'text/plain', 0);
}

function parsePart(raw: Buffer, start: number, end: number, defaultType: string, depth: number): MimePart {
  const fields: HeaderField[] = [];
  let pos = start;
  let headerEnd = end;
  while (pos < end) {
    const nl = raw.indexOf(LF, pos);
    const lineEnd = nl < 0 || nl >= end ? end : nl + 1;
    const contentEnd = lineEnd - (lineEnd > pos && raw[lineEnd - 1] === LF ? 1 : 0);
    const textEnd = contentEnd - (contentEnd > pos && raw[contentEnd - 1] === CR ? 1 : 0);
    if (textEnd === pos) {
      // the blank line ends the header section
      headerEnd = lineEnd;
      break;
    }
    const first = raw[pos];
    if ((first === 0x20 || first === 0x09) && fields.length) {
      fields[fields.length - 1].end = lineEnd;
    } else {
      const colon = raw.indexOf(0x3a, pos);
      const name = colon >= 0 && colon < textEnd ? raw.toString('latin1', pos, colon).trim().toLowerCase() : '';
      fields.push({ name, start: pos, end: lineEnd });
    }
    pos = lineEnd;
  }

  const contentType = parseContentType(fieldValue(raw, fields, 'content-type'), defaultType);
  const transferEncoding = (fieldValue(raw, fields, 'content-transfer-encoding') ?? '7bit').trim().toLowerCase() || '7bit';
  const part: MimePart = { start, headerEnd, end, fields, contentType, transferEncoding, children: [], message: null };

  if (depth >= MAX_DEPTH) return part;

  if (contentType.type === 'multipart' && contentType.params.boundary) {
    const childDefault = contentType.subtype === 'digest' ? 'message/rfc822' : 'text/plain';
    for (const range of splitMultipart(raw, headerEnd, end, contentType.params.boundary)) {
      part.children.push(parsePart(raw, range[0], range[1], childDefault, depth + 1));
    }
  } else if (
    contentType.type === 'message' &&
    (contentType.subtype === 'rfc822' || contentType.subtype === 'global') &&
    ['7bit', '8bit', 'binary'].includes(transferEncoding)
  ) {
    part.message = parsePart(raw, headerEnd, end, 'text/plain', depth + 1);
  }
  return part;
}

/** Byte ranges of the body parts between the delimiter lines of `boundary`. */
function splitMultipart(raw: Buffer, start: number, end: number, boundary: string): Array<[number, number]> {
  const delimiter = Buffer.from('--' + boundary, 'latin1');
  const ranges: Array<[number, number]> = [];
  let partStart = -1;
  let pos = start;
  while (pos < end) {
    const nl = raw.indexOf(LF, pos);
    const lineEnd = nl < 0 || nl >= end ? end : nl + 1;
    if (lineEnd - pos >= delimiter.length && raw.compare(delimiter, 0, delimiter.length, pos, pos + delimiter.length) === 0) {
      let p = pos + delimiter.length;
      const close = p + 1 < lineEnd && raw[p] === 0x2d && raw[p + 1] === 0x2d;
      if (close) p += 2;
      // transport padding: only whitespace may follow the delimiter
      while (p < lineEnd && (raw[p] === 0x20 || raw[p] === 0x09 || raw[p] === CR || raw[p] === LF)) p++;
      if (p === lineEnd) {
        if (partStart >= 0) ranges.push([partStart, bodyEndBefore(raw, partStart, pos)]);
        if (close) return ranges;
        partStart = lineEnd;
      }
    }
    pos = lineEnd;
  }
  // no close delimiter: the last part runs to the end
  if (partStart >= 0) ranges.push([partStart, end]);
  return ranges;
}

/** The line break before a delimiter line belongs to the delimiter (RFC 2046 §5.1.1). */
function bodyEndBefore(raw: Buffer, partStart: number, delimiterLine: number): number {
  let e = delimiterLine;
  if (e > partStart && raw[e - 1] === LF) {
    e--;
    if (e > partStart && raw[e - 1] === CR) e--;
  }
  return e;
}

/** Unfolded value of the first field with this name, as a latin1 ('binary') string. */
export function fieldValue(raw: Buffer, fields: HeaderField[], name: string): string | null {
  const field = fields.find((f) => f.name === name);
  if (!field) return null;
  return unfold(rawFieldValue(raw, field));
}

/** The bytes after the colon, line breaks kept, as a latin1 string. */
export function rawFieldValue(raw: Buffer, field: HeaderField): string {
  const text = raw.toString('latin1', field.start, field.end);
  const colon = text.indexOf(':');
  return colon >= 0 ? text.slice(colon + 1) : '';
}

export function unfold(value: string): string {
  return value.replace(/\r?\n(?=[ \t])/g, '').replace(/\r?\n$/, '').trim();
}

export function parseContentType(value: string | null, defaultType: string): ContentType {
  const [fallbackType, fallbackSubtype] = defaultType.split('/');
  if (!value) return { type: fallbackType, subtype: fallbackSubtype, params: {} };
  const parts = splitParams(value);
  const media = (parts.shift() ?? '').trim().toLowerCase();
  const slash = media.indexOf('/');
  const params: Record<string, string> = {};
  const continued: Record<string, string[]> = {};
  for (const p of parts) {
    const eq = p.indexOf('=');
    if (eq < 0) continue;
    const key = p.slice(0, eq).trim().toLowerCase();
    let val = p.slice(eq + 1).trim();
    if (val.startsWith('"')) val = val.slice(1, val.endsWith('"') && val.length > 1 ? -1 : undefined).replace(/\\(.)/g, '$1');
    const m = /^([^*]+)\*(\d+)\*?$/.exec(key);
    if (m) {
      (continued[m[1]] ??= [])[Number(m[2])] = val;
    } else if (key.endsWith('*')) {
      params[key.slice(0, -1)] = decode2231(val);
    } else {
      params[key] = val;
    }
  }
  for (const [key, pieces] of Object.entries(continued)) {
    if (!(key in params)) params[key] = pieces.join('');
  }
  if (slash <= 0 || slash === media.length - 1) {
    return { type: fallbackType, subtype: fallbackSubtype, params };
  }
  return { type: media.slice(0, slash).trim(), subtype: media.slice(slash + 1).trim(), params };
}

/** Splits on ';' outside quoted strings. */
function splitParams(value: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === '\\' && quoted && i + 1 < value.length) {
      cur += c + value[++i];
      continue;
    }
    if (c === '"') quoted = !quoted;
    if (c === ';' && !quoted) {
      out.push(cur);
      cur = '';
      continue;
    }
    cur += c;
  }
  out.push(cur);
  return out;
}

/** RFC 2231 `charset'lang'%XX` values; only the raw percent-decoding (bytes as latin1). */
function decode2231(value: string): string {
  const m = /^[^']*'[^']*'(.*)$/.exec(value);
  const encoded = m ? m[1] : value;
  return encoded.replace(/%([0-9a-fA-F]{2})/g, (_s, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

/**
 * Resolves an IMAP part number ("1.2.3") to a part. For a non-multipart message, part 1 is
 * its body (the message itself). A message/rfc822 part's sub-parts are the parts of the
 * encapsulated message.
 */
export function resolvePart(root: MimePart, path: string): MimePart | null {
  if (!path) return root;
  let node = root;
  let isMessage = true;
  for (const piece of path.split('.')) {
    const n = Number(piece);
    if (!Number.isInteger(n) || n < 1) return null;
    if (!isMessage && node.message) {
      node = node.message;
      isMessage = true;
    }
    if (node.children.length) {
      const child = node.children[n - 1];
      if (!child) return null;
      node = child;
      isMessage = false;
    } else if (isMessage && n === 1) {
      // the single body part of a non-multipart message
      isMessage = false;
    } else {
      return null;
    }
  }
  return node;
}

export interface SectionSpec {
  /** Numeric part path, '' for the whole message. */
  path: string;
  /** 'content' | 'header' | 'header.fields' | 'header.fields.not' | 'text' | 'mime' */
  type: string;
  /** Lower-cased field names for header.fields(.not). */
  headers?: string[];
}

const EMPTY = Buffer.alloc(0);
const CRLF = Buffer.from('\r\n');

/**
 * The bytes of a BODY[section] (before any <partial>), sliced from `raw`. Unknown or
 * inapplicable sections give an empty buffer.
 */
export function extractSection(raw: Buffer, root: MimePart, spec: SectionSpec): Buffer {
  const part = resolvePart(root, spec.path);
  if (!part) return EMPTY;
  switch (spec.type) {
    case '':
    case 'content':
      return spec.path ? raw.subarray(part.headerEnd, part.end) : raw.subarray(root.start, root.end);
    case 'mime':
      return spec.path ? raw.subarray(part.start, part.headerEnd) : EMPTY;
  }
  // HEADER, HEADER.FIELDS(.NOT), TEXT address the top-level message or an encapsulated one
  const message = spec.path ? part.message : root;
  if (!message) return EMPTY;
  switch (spec.type) {
    case 'header':
      return raw.subarray(message.start, message.headerEnd);
    case 'text':
      return raw.subarray(message.headerEnd, message.end);
    case 'header.fields':
    case 'header.fields.not': {
      const wanted = new Set((spec.headers ?? []).map((h) => h.toLowerCase()));
      const include = spec.type === 'header.fields';
      const chunks: Buffer[] = [];
      for (const f of message.fields) {
        if (wanted.has(f.name) === include) {
          chunks.push(raw.subarray(f.start, f.end));
          // a last field without a line break (headers-only message) still needs one
          if (raw[f.end - 1] !== LF) chunks.push(CRLF);
        }
      }
      chunks.push(CRLF);
      return Buffer.concat(chunks);
    }
    default:
      return EMPTY;
  }
}
