/**
 * Dovecot's passwd-file format:
 *
 *     user:password:uid:gid:(gecos):home:(shell):extra_fields
 *
 * `#` comment lines and blank lines are ignored by Dovecot; extra_fields is a
 * space-separated list of key=value pairs that may itself contain ':' (for example
 * `userdb_mail=maildir:~/Maildir`), so everything after the seventh ':' is one field.
 *
 * The parser keeps every line: comments, blank lines and lines it could not use are written
 * back verbatim, and an entry that is not modified is written back byte for byte (its fields
 * are kept as split, so unknown uid/gid/home/extra values survive a rewrite untouched).
 */

/** Longest local part we accept (RFC 5321's limit). */
export const USER_NAME_MAX = 64;

const LOCAL_PART_RE = /^(?![.-])[a-z0-9._-]{1,64}$/;
const DOMAIN_RE = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$/;

/**
 * Checks a user name. Returns null when valid, else a message saying what is wrong.
 * Rules: lower-case letters, digits, '.', '-', '_' (not starting with '.' or '-'), 1..64
 * characters; '+' is never allowed (it separates plus-address tags). With allowDomain the
 * name may be `name@domain`, as Dovecot passwd-files often have.
 */
export function validateUserName(name: string, opts: { allowDomain?: boolean } = {}): string | null {
  const at = name.indexOf('@');
  if (at !== -1) {
    if (!opts.allowDomain) return `user name "${printable(name)}" must not contain "@": give the bare name`;
    const local = name.slice(0, at);
    const domain = name.slice(at + 1);
    const err = validateLocalPart(local, name);
    if (err) return err;
    if (!DOMAIN_RE.test(domain)) return `user name "${printable(name)}" has an invalid domain part`;
    return null;
  }
  return validateLocalPart(name, name);
}

function validateLocalPart(local: string, whole: string): string | null {
  const shown = printable(whole);
  if (local.length === 0) return `user name "${shown}" is empty`;
  if (local.length > USER_NAME_MAX) return `user name "${shown}" is longer than ${USER_NAME_MAX} characters`;
  if (local.includes('+')) return `user name "${shown}" must not contain "+" (it separates plus-address tags)`;
  if (/[A-Z]/.test(local)) return `user name "${shown}" must be lower case`;
  if (local.startsWith('.') || local.startsWith('-')) return `user name "${shown}" must not start with "." or "-"`;
  if (!LOCAL_PART_RE.test(local)) {
    return `user name "${shown}" may only contain lower-case letters, digits, ".", "-" and "_"`;
  }
  return null;
}

/** For messages: control characters escaped, long names cut. */
function printable(s: string): string {
  const cut = s.length > 80 ? `${s.slice(0, 80)}...` : s;
  return cut.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** The named view of an entry's fields ('' for fields the line does not have). */
export interface PasswdEntry {
  user: string;
  password: string;
  uid: string;
  gid: string;
  gecos: string;
  home: string;
  shell: string;
  /** Everything after the seventh ':' (space-separated key=value pairs). */
  extraFields: string;
}

export interface PasswdEntryLine {
  kind: 'entry';
  /** 1-based line number in the text it was parsed from (0 for entries added later). */
  lineNo: number;
  /** The line split on ':'; index 7 and up are the extra fields (rejoined with ':'). */
  fields: string[];
  /** The line ended with "\r\n". */
  cr: boolean;
  /** The user name, lower-cased: the lookup key. */
  key: string;
}

export interface PasswdTextLine {
  kind: 'comment' | 'blank' | 'invalid';
  lineNo: number;
  /** The line exactly as read (without its "\n"). */
  raw: string;
}

export type PasswdLine = PasswdEntryLine | PasswdTextLine;

export interface PasswdDocument {
  lines: PasswdLine[];
  /** The text ended with a newline (kept so that an untouched file round-trips exactly). */
  finalNewline: boolean;
}

export interface PasswdProblem {
  /** 1-based line number. */
  line: number;
  message: string;
}

/** Parses passwd-file text. Unusable lines become 'invalid' lines plus a problem. */
export function parsePasswd(text: string): { doc: PasswdDocument; problems: PasswdProblem[] } {
  const problems: PasswdProblem[] = [];
  const lines: PasswdLine[] = [];
  const parts = text.split('\n');
  let finalNewline = false;
  if (parts.length > 0 && parts[parts.length - 1] === '') {
    parts.pop();
    finalNewline = parts.length > 0;
  }
  const seen = new Map<string, number>();
  parts.forEach((raw, i) => {
    const lineNo = i + 1;
    const cr = raw.endsWith('\r');
    const body = cr ? raw.slice(0, -1) : raw;
    if (body.trim() === '') {
      lines.push({ kind: 'blank', lineNo, raw });
      return;
    }
    if (body.trimStart().startsWith('#')) {
      lines.push({ kind: 'comment', lineNo, raw });
      return;
    }
    const invalid = (message: string) => {
      problems.push({ line: lineNo, message });
      lines.push({ kind: 'invalid', lineNo, raw });
    };
    const fields = body.split(':');
    if (fields.length < 2) {
      invalid('expected "user:password[:uid:gid:gecos:home:shell:extra_fields]"; line ignored');
      return;
    }
    const user = fields[0]!;
    const key = user.toLowerCase();
    const err = validateUserName(key, { allowDomain: true });
    if (err) {
      invalid(`${err}; line ignored`);
      return;
    }
    const first = seen.get(key);
    if (first !== undefined) {
      invalid(`duplicate user "${key}" (first defined on line ${first}); line ignored`);
      return;
    }
    seen.set(key, lineNo);
    lines.push({ kind: 'entry', lineNo, fields, cr, key });
  });
  return { doc: { lines, finalNewline }, problems };
}

/** Writes the document back; untouched lines come out exactly as they were read. */
export function serializePasswd(doc: PasswdDocument): string {
  const out = doc.lines.map((l) => (l.kind === 'entry' ? l.fields.join(':') + (l.cr ? '\r' : '') : l.raw));
  if (out.length === 0) return '';
  return out.join('\n') + (doc.finalNewline ? '\n' : '');
}

/** The named fields of an entry line. */
export function entryOf(line: PasswdEntryLine): PasswdEntry {
  const f = line.fields;
  return {
    user: f[0] ?? '',
    password: f[1] ?? '',
    uid: f[2] ?? '',
    gid: f[3] ?? '',
    gecos: f[4] ?? '',
    home: f[5] ?? '',
    shell: f[6] ?? '',
    extraFields: f.slice(7).join(':'),
  };
}

/** Parses extra_fields ("a=b c=d flag") into pairs; a bare word maps to ''. */
export function parseExtraFields(extra: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const word of extra.split(/\s+/)) {
    if (word === '') continue;
    const eq = word.indexOf('=');
    if (eq === -1) out[word] = '';
    else out[word.slice(0, eq)] = word.slice(eq + 1);
  }
  return out;
}

/**
 * A new entry line `user:password::::::` (all eight fields, as in Dovecot's examples of
 * passdb-only users: uid, gid, home and the rest empty, so global settings apply). The
 * password must not contain ':' or a line break (hashes never do).
 */
export function newEntryLine(user: string, password: string): PasswdEntryLine {
  assertFieldSafe(password);
  return { kind: 'entry', lineNo: 0, fields: [user, password, '', '', '', '', '', ''], cr: false, key: user.toLowerCase() };
}

/** Replaces the password field only; every other field stays as it was. */
export function setEntryPassword(line: PasswdEntryLine, password: string): void {
  assertFieldSafe(password);
  line.fields[1] = password;
}

function assertFieldSafe(value: string): void {
  if (/[:\r\n]/.test(value)) throw new Error('a passwd-file field cannot contain ":" or a line break');
}

/** Appends a line, making sure the text before it ends with a newline. */
export function appendLine(doc: PasswdDocument, line: PasswdLine): void {
  doc.lines.push(line);
  doc.finalNewline = true;
}
