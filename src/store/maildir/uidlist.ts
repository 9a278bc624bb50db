/**
 * dovecot-uidlist, version 3:
 *
 *   3 V<uidvalidity> N<nextuid> G<mailbox guid, 32 hex> [other header fields]
 *   <uid> [<ext key><value> ...] :<base file name>
 *
 * Extension keys are single upper-case letters (Dovecot: S physical size, W virtual size,
 * P POP3 UIDL, O POP3 order, G message GUID). Unknown ones are kept as they are. Version 1
 * files (`1 <uidvalidity> <nextuid>` / `<uid> <file name>`) are read too; we always write 3.
 */
import { randomBytes } from 'node:crypto';

export interface UidlistRecord {
  uid: number;
  /** Base file name (without the ":2,flags" info part). */
  base: string;
  /** Extension fields as written: "W1234", "GABCD...". */
  ext: string[];
}

export interface Uidlist {
  uidValidity: number;
  /** Next UID to assign: max(header N, highest UID + 1). */
  nextUid: number;
  /** Mailbox GUID, 32 lower-case hex digits. */
  guid: string;
  /** Header fields other than V, N and G, kept verbatim. */
  headerExt: string[];
  /** Ascending by UID. */
  records: UidlistRecord[];
  /**
   * Set by the parser when the file should be recreated rather than appended to: version
   * 1, a partial last line, skipped or unordered lines, no GUID.
   */
  needsRewrite?: boolean;
}

export class UidlistFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UidlistFormatError';
  }
}

export function newMailboxGuid(): string {
  return randomBytes(16).toString('hex');
}

const EXT_KEY = /^[A-Z]/;
const MAX_UID = 0xffffffff;

/**
 * Parses the file. A last line without its newline (a writer appending right now) is ignored.
 * Throws UidlistFormatError when the header is unusable.
 */
export function parseUidlist(text: string): Uidlist {
  const lines = text.split('\n');
  // The element after the last '\n' is '' for a complete file, or a partial line.
  const complete = lines.slice(0, -1);
  let needsRewrite = lines[lines.length - 1] !== '';
  if (complete.length === 0) {
    if (lines[0] !== undefined && lines[0].length > 0) complete.push(lines[0]);
    else throw new UidlistFormatError('empty file');
  }
  const header = complete[0];
  const version = header.charAt(0);
  if (header.charAt(1) !== ' ') throw new UidlistFormatError('invalid version number');
  let uidValidity = 0;
  let nextUid = 0;
  let guid = '';
  const headerExt: string[] = [];
  if (version === '1') {
    const m = /^1 (\d+) (\d+)/.exec(header);
    if (!m) throw new UidlistFormatError('corrupted version 1 header');
    uidValidity = Number(m[1]);
    nextUid = Number(m[2]);
  } else if (version === '3') {
    for (const field of header.slice(2).split(' ')) {
      if (field.length === 0) continue;
      const key = field[0];
      const value = field.slice(1);
      if (key === 'V') uidValidity = Number(value);
      else if (key === 'N') nextUid = Number(value);
      else if (key === 'G') guid = value.toLowerCase();
      else headerExt.push(field);
    }
  } else {
    throw new UidlistFormatError(`unsupported version ${version}`);
  }
  if (!Number.isInteger(uidValidity) || uidValidity <= 0 || uidValidity > MAX_UID) {
    throw new UidlistFormatError('missing or invalid UIDVALIDITY');
  }
  if (!Number.isInteger(nextUid) || nextUid <= 0) nextUid = 1;
  if (!/^[0-9a-f]{32}$/.test(guid)) guid = '';
  if (version !== '3' || guid === '') needsRewrite = true;

  const byUid = new Map<number, UidlistRecord>();
  const seenBase = new Set<string>();
  let previous = 0;
  for (let i = 1; i < complete.length; i++) {
    const rec = parseRecord(complete[i], version === '3');
    if (rec === null || byUid.has(rec.uid) || seenBase.has(rec.base)) {
      needsRewrite = true;
      continue;
    }
    if (rec.uid < previous) needsRewrite = true;
    previous = rec.uid;
    byUid.set(rec.uid, rec);
    seenBase.add(rec.base);
  }
  const records = [...byUid.values()].sort((a, b) => a.uid - b.uid);
  const last = records.length > 0 ? records[records.length - 1].uid : 0;
  if (nextUid <= last) nextUid = last + 1;
  return { uidValidity, nextUid, guid, headerExt, records, needsRewrite };
}

function parseRecord(line: string, v3: boolean): UidlistRecord | null {
  const m = /^(\d+) +/.exec(line);
  if (!m) return null;
  const uid = Number(m[1]);
  if (uid <= 0 || uid >= MAX_UID) return null;
  let rest = line.slice(m[0].length);
  const ext: string[] = [];
  if (v3) {
    while (rest.length > 0 && rest[0] !== ':') {
      const space = rest.indexOf(' ');
      const field = space < 0 ? rest : rest.slice(0, space);
      if (EXT_KEY.test(field)) ext.push(field);
      rest = space < 0 ? '' : rest.slice(space + 1).replace(/^ +/, '');
    }
    if (rest[0] !== ':') return null;
    rest = rest.slice(1);
  }
  const colon = rest.indexOf(':');
  const base = colon < 0 ? rest : rest.slice(0, colon);
  if (base.length === 0 || base.includes('/')) return null;
  return { uid, base, ext };
}

export function serializeUidlist(list: Uidlist): string {
  let header = `3 V${list.uidValidity} N${list.nextUid} G${list.guid}`;
  if (list.headerExt.length > 0) header += ' ' + list.headerExt.join(' ');
  return header + '\n' + serializeRecords(list.records);
}

/**
 * Record lines alone: what gets appended to an existing file for new messages (as Dovecot
 * does; readers take max(N, highest UID + 1) as the next UID, so N may lag behind).
 */
export function serializeRecords(records: readonly UidlistRecord[]): string {
  const parts: string[] = [];
  for (const rec of records) {
    parts.push(rec.ext.length > 0 ? `${rec.uid} ${rec.ext.join(' ')} :${rec.base}\n` : `${rec.uid} :${rec.base}\n`);
  }
  return parts.join('');
}

/** Value of the extension field `key` ("W" -> "1234"), if present. */
export function getExt(ext: readonly string[], key: string): string | undefined {
  const field = ext.find((f) => f[0] === key);
  return field === undefined ? undefined : field.slice(1);
}

/** Returns a copy of `ext` with field `key` set to `value` (or removed when undefined). */
export function withExt(ext: readonly string[], key: string, value: string | undefined): string[] {
  const out = ext.filter((f) => f[0] !== key);
  if (value !== undefined) out.push(key + value);
  return out;
}

/** Reads only the header line's mailbox GUID (cheap lookup of a folder by id). */
export function guidFromHeaderLine(text: string): string | null {
  const nl = text.indexOf('\n');
  const header = nl < 0 ? text : text.slice(0, nl);
  const m = / G([0-9a-fA-F]{32})(?: |$)/.exec(header);
  return m ? m[1].toLowerCase() : null;
}
