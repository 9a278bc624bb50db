/**
 * Mailbox names: IMAP paths ("a/b", Unicode) <-> Maildir++ directory names (".a.b", each
 * component in IMAP modified UTF-7, RFC 3501 5.1.3), plus validation.
 */
import { StoreError } from '../types.js';

export const HIERARCHY_SEPARATOR = '/';
/** Maildir++ puts the whole path into one directory name: NAME_MAX of common file systems. */
export const MAX_DIR_NAME_BYTES = 255;
export const INBOX = 'INBOX';

// ---------------------------------------------------------------------------------------
// Modified UTF-7
// ---------------------------------------------------------------------------------------

function isDirectChar(code: number): boolean {
  return code >= 0x20 && code <= 0x7e;
}

function base64Modified(units: number[]): string {
  const bytes = Buffer.alloc(units.length * 2);
  units.forEach((u, i) => bytes.writeUInt16BE(u, i * 2));
  return bytes.toString('base64').replace(/=+$/, '').replace(/\//g, ',');
}

/** Encodes a Unicode string in IMAP modified UTF-7. */
export function encodeMutf7(text: string): string {
  let out = '';
  let pending: number[] = [];
  const flush = (): void => {
    if (pending.length > 0) {
      out += `&${base64Modified(pending)}-`;
      pending = [];
    }
  };
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (isDirectChar(code)) {
      flush();
      out += code === 0x26 ? '&-' : text[i];
    } else {
      pending.push(code);
    }
  }
  flush();
  return out;
}

const MB64 = /^[A-Za-z0-9+,]+$/;

/** Decodes IMAP modified UTF-7; throws RangeError on anything that is not canonical mUTF-7. */
export function decodeMutf7(text: string): string {
  let out = '';
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    const code = text.charCodeAt(i);
    if (!isDirectChar(code)) throw new RangeError(`not modified UTF-7: raw character U+${code.toString(16)}`);
    if (ch !== '&') {
      out += ch;
      i++;
      continue;
    }
    const end = text.indexOf('-', i + 1);
    if (end < 0) throw new RangeError('not modified UTF-7: unterminated shift');
    if (end === i + 1) {
      out += '&';
      i = end + 1;
      continue;
    }
    const b64 = text.slice(i + 1, end);
    if (!MB64.test(b64) || b64.length % 4 === 1) throw new RangeError('not modified UTF-7: bad base64');
    const bytes = Buffer.from(b64.replace(/,/g, '/'), 'base64');
    if (bytes.length === 0 || bytes.length % 2 !== 0) throw new RangeError('not modified UTF-7: odd UTF-16');
    // Canonical form: no leftover bits.
    if (base64Modified(unitsOf(bytes)) !== b64) throw new RangeError('not modified UTF-7: non-canonical base64');
    let chunk = '';
    for (let k = 0; k < bytes.length; k += 2) {
      const unit = bytes.readUInt16BE(k);
      if (isDirectChar(unit)) throw new RangeError('not modified UTF-7: printable ASCII in base64');
      chunk += String.fromCharCode(unit);
    }
    if (hasLoneSurrogate(chunk)) throw new RangeError('not modified UTF-7: lone surrogate');
    out += chunk;
    i = end + 1;
    // Two adjacent base64 sections are not canonical ("&AAA-&AAA-").
    if (text[i] === '&' && text[i + 1] !== '-') throw new RangeError('not modified UTF-7: adjacent shifts');
  }
  return out;
}

function unitsOf(bytes: Buffer): number[] {
  const units: number[] = [];
  for (let k = 0; k + 1 < bytes.length; k += 2) units.push(bytes.readUInt16BE(k));
  return units;
}

function hasLoneSurrogate(text: string): boolean {
  return /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(text);
}

// ---------------------------------------------------------------------------------------
// Validation and mapping
// ---------------------------------------------------------------------------------------

// C0 controls, DEL and C1 controls.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/**
 * Validates an IMAP mailbox path and returns its canonical spelling ("inbox/x" ->
 * "INBOX/x"). Throws StoreError('CANNOT') with a reason the client can read.
 */
export function normalizeMailboxPath(path: string): string {
  if (typeof path !== 'string' || path.length === 0) throw new StoreError('CANNOT', 'Mailbox name is empty');
  if (CONTROL.test(path)) throw new StoreError('CANNOT', 'Mailbox name contains control characters');
  if (hasLoneSurrogate(path)) throw new StoreError('CANNOT', 'Mailbox name is not valid Unicode');
  const parts = path.split(HIERARCHY_SEPARATOR);
  for (const part of parts) {
    if (part.length === 0) {
      throw new StoreError('CANNOT', `Mailbox name has an empty hierarchy level (misplaced "${HIERARCHY_SEPARATOR}")`);
    }
    if (part === '.' || part === '..') throw new StoreError('CANNOT', 'Mailbox name contains "." or ".." levels');
    if (part.includes('.')) {
      throw new StoreError('CANNOT', 'Character "." is not allowed in mailbox names (it is the Maildir++ separator)');
    }
    if (part.includes('*') || part.includes('%')) {
      throw new StoreError('CANNOT', 'Characters "*" and "%" are not allowed in mailbox names');
    }
  }
  if (parts[0].toUpperCase() === INBOX) parts[0] = INBOX;
  const normalized = parts.join(HIERARCHY_SEPARATOR);
  if (normalized !== INBOX && Buffer.byteLength(mailboxPathToDirName(normalized)) > MAX_DIR_NAME_BYTES) {
    throw new StoreError('CANNOT', 'Mailbox name is too long');
  }
  return normalized;
}

/** "" for INBOX (the maildir root itself), ".a.b" for "a/b". The path must be normalized. */
export function mailboxPathToDirName(path: string): string {
  if (path === INBOX) return '';
  return '.' + path.split(HIERARCHY_SEPARATOR).map(encodeMutf7).join('.');
}

/**
 * Maps a directory entry of the maildir root to a mailbox path, or null when the entry is
 * not a (valid) Maildir++ folder.
 */
export function dirNameToMailboxPath(name: string): string | null {
  if (name.length < 2 || name[0] !== '.' || name[1] === '.') return null;
  const parts = name.slice(1).split('.');
  const decoded: string[] = [];
  for (const part of parts) {
    if (part.length === 0) return null;
    try {
      decoded.push(decodeMutf7(part));
    } catch {
      return null;
    }
  }
  try {
    const path = normalizeMailboxPath(decoded.join(HIERARCHY_SEPARATOR));
    // "INBOX" as a folder name would collide with the root; Dovecot's ".INBOX" dir is not INBOX.
    if (path === INBOX) return null;
    return path;
  } catch {
    return null;
  }
}

/** True if `child` is strictly below `parent` in the hierarchy. */
export function isDescendant(parent: string, child: string): boolean {
  return child.startsWith(parent + HIERARCHY_SEPARATOR);
}

/** "a/b/c" -> ["a", "a/b"]. */
export function ancestorsOf(path: string): string[] {
  const parts = path.split(HIERARCHY_SEPARATOR);
  const out: string[] = [];
  for (let i = 1; i < parts.length; i++) out.push(parts.slice(0, i).join(HIERARCHY_SEPARATOR));
  return out;
}
