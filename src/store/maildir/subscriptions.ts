/**
 * The `subscriptions` file in the maildir root, as Dovecot 2.3 writes it:
 *
 *   V<TAB>2
 *   <empty line>
 *   INBOX
 *   Entw&APw-rfe
 *   a<TAB>b            (hierarchy levels separated by TAB, names in modified UTF-7)
 *
 * Version 1 (what older Dovecot and Courier wrote: a plain list, one name per line with the
 * storage separator, e.g. "a.b" or "INBOX.a.b") is read too. We always write version 2.
 */
import { decodeMutf7, encodeMutf7, HIERARCHY_SEPARATOR, INBOX, normalizeMailboxPath } from './mailbox-name.js';

const V2_HEADER = 'V\t2\n\n';

function tabUnescape(text: string): string {
  // Dovecot's tab-escaping: \001 followed by '1', 't', 'r', 'n', '0'.
  return text.replace(/\u0001(.)/g, (_m, c: string) => {
    switch (c) {
      case '1':
        return '\u0001';
      case 't':
        return '\t';
      case 'r':
        return '\r';
      case 'n':
        return '\n';
      case '0':
        return '\u0000';
      default:
        return c;
    }
  });
}

function decodeLevel(level: string): string {
  try {
    return decodeMutf7(level);
  } catch {
    return level;
  }
}

/** Parses the file into normalized IMAP paths (invalid entries are dropped). */
export function parseSubscriptions(text: string): string[] {
  let body = text;
  let v2 = false;
  if (body.startsWith(V2_HEADER)) {
    v2 = true;
    body = body.slice(V2_HEADER.length);
  }
  const out = new Set<string>();
  for (const rawLine of body.split('\n')) {
    const line = rawLine.replace(/\r$/, '');
    if (line.length === 0) continue;
    let levels: string[];
    if (v2) {
      levels = line.split('\t').map(tabUnescape);
    } else {
      let name = line;
      if (/^INBOX\./i.test(name)) name = name.slice(6); // Courier: "INBOX.a.b"
      levels = name.split(/[./]/);
    }
    while (levels.length > 1 && levels[levels.length - 1] === '') levels.pop();
    try {
      out.add(normalizeMailboxPath(levels.map(decodeLevel).join(HIERARCHY_SEPARATOR)));
    } catch {
      // not representable: ignore
    }
  }
  return [...out];
}

export function serializeSubscriptions(paths: Iterable<string>): string {
  let out = V2_HEADER;
  const seen = new Set<string>();
  for (const path of paths) {
    if (seen.has(path)) continue;
    seen.add(path);
    out += (path === INBOX ? INBOX : path.split(HIERARCHY_SEPARATOR).map(encodeMutf7).join('\t')) + '\n';
  }
  return out;
}
