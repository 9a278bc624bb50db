/**
 * Decoded text of a message for SEARCH BODY/TEXT: transfer encodings (base64,
 * quoted-printable) undone, charsets converted to Unicode, HTML reduced to its text.
 */
import { iconv } from './imap-core.js';
import type { MimePart } from './mime-sections.js';

/** Text parts bigger than this (decoded) are searched only up to this size. */
const MAX_PART_TEXT = 4 * 1024 * 1024;

export function decodeTransferEncoding(bytes: Buffer, encoding: string): Buffer {
  switch (encoding) {
    case 'base64':
      return Buffer.from(bytes.toString('latin1').replace(/[^A-Za-z0-9+/=]/g, ''), 'base64');
    case 'quoted-printable':
      return decodeQuotedPrintable(bytes);
    default:
      return bytes;
  }
}

/** RFC 2045 §6.7: soft line breaks removed, =XX decoded, malformed escapes kept as they are. */
export function decodeQuotedPrintable(bytes: Buffer): Buffer {
  const out = Buffer.alloc(bytes.length);
  let o = 0;
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    if (c !== 0x3d) {
      out[o++] = c;
      continue;
    }
    // soft line break: "=" then optional whitespace then CRLF or LF
    let j = i + 1;
    while (j < bytes.length && (bytes[j] === 0x20 || bytes[j] === 0x09)) j++;
    if (j < bytes.length && (bytes[j] === 0x0a || (bytes[j] === 0x0d && bytes[j + 1] === 0x0a))) {
      i = bytes[j] === 0x0d ? j + 1 : j;
      continue;
    }
    if (j >= bytes.length) {
      i = j;
      continue;
    }
    const hi = hexValue(bytes[i + 1]);
    const lo = hexValue(bytes[i + 2]);
    if (hi >= 0 && lo >= 0) {
      out[o++] = hi * 16 + lo;
      i += 2;
    } else {
      out[o++] = c;
    }
  }
  return out.subarray(0, o);
}

function hexValue(c: number | undefined): number {
  if (c === undefined) return -1;
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

/** Bytes in `charset` to a string; unknown charsets are read as UTF-8. */
export function decodeCharset(bytes: Buffer, charset: string | undefined): string {
  const cs = (charset ?? '').trim().toLowerCase();
  if (!cs || cs === 'utf-8' || cs === 'utf8' || cs === 'us-ascii' || cs === 'ascii') return bytes.toString('utf8');
  try {
    if (iconv.encodingExists(cs)) return iconv.decode(bytes, cs);
  } catch {
    // fall through
  }
  return bytes.toString('utf8');
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: ' ' };

/** Visible text of an HTML body (good enough for substring search). */
export function htmlToText(html: string): string {
  // linear-time patterns only: this runs on untrusted input of up to MAX_PART_TEXT bytes
  return html
    .replace(/<[^<>]*>/g, ' ')
    .replace(/&(#x[0-9a-f]+|#\d+|[a-z]+);/gi, (m, name: string) => {
      if (name[0] === '#') {
        const code = name[1] === 'x' || name[1] === 'X' ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
        return Number.isFinite(code) && code > 0 && code < 0x110000 ? String.fromCodePoint(code) : m;
      }
      return ENTITIES[name.toLowerCase()] ?? m;
    });
}

/** Decoded text of one leaf part, or null if it is not text. */
function partText(raw: Buffer, part: MimePart): string | null {
  if (part.contentType.type !== 'text') return null;
  let bytes = decodeTransferEncoding(raw.subarray(part.headerEnd, part.end), part.transferEncoding);
  if (bytes.length > MAX_PART_TEXT) bytes = bytes.subarray(0, MAX_PART_TEXT);
  const text = decodeCharset(bytes, part.contentType.params.charset);
  return part.contentType.subtype === 'html' ? htmlToText(text) : text;
}

/**
 * The searchable body text of a message (or part): all text parts, recursively, including
 * those of attached messages, plus (if `headerOf` is given) the headers of attached messages.
 */
export function bodyText(raw: Buffer, root: MimePart, headerOf?: (message: MimePart) => string): string {
  const out: string[] = [];
  const walk = (part: MimePart, isRoot: boolean): void => {
    if (part.children.length) {
      for (const child of part.children) walk(child, false);
      return;
    }
    if (part.message) {
      if (headerOf) out.push(headerOf(part.message));
      walk(part.message, false);
      return;
    }
    const text = partText(raw, part);
    if (text !== null) out.push(text);
    else if (isRoot && part.contentType.type === 'message') out.push(raw.toString('utf8', part.headerEnd, part.end));
  };
  walk(root, true);
  return out.join('\n');
}
