/**
 * The aliases table: an aliases(5) file, as /etc/mail/aliases of OpenSMTPD or sendmail.
 *
 *     # comment
 *     postmaster: root
 *     root:       alice
 *     info:       alice, bob,
 *                 carol@other.onion          <- a line starting with white space continues
 *                                               (a line break separates targets too)
 *     sales@mail.example: dora                  (only in that one of our domains)
 *     alice.backup: \alice, alice@backup.onion  <- "\name": the user, never an alias
 *
 * Keys: a local part (valid in every local domain) or `local@domain` with one of our domains
 * (wins over the bare key in that domain). Case-insensitive. A key may contain '+' (it is
 * then matched before the address with its +tag removed).
 * Targets, separated by commas (a quoted "..." target may contain commas): a name in the same
 * domain (a user or another alias), `\name` (that user only), or a full address (ours: resolved
 * again; anybody else's: forwarded through the queue). Program (`|cmd`), file (`/path`),
 * `:include:`, `error:` and `maildir:` targets are not supported: reported and ignored.
 *
 * Resolution (aliases to aliases, loops, postmaster/root) happens in recipients.ts; this file
 * only reads and writes the table.
 *
 * Readers keep the parsed file in memory and notice changes (the `onionpost alias` CLI, an
 * editor) with a stat at most every `checkIntervalMs` (default 1 s), like the users file;
 * `reload()` forces a re-read (SIGHUP). A missing file means "no aliases". A bad line is
 * reported as file:line and skipped; a read error keeps the last good table.
 * Writers take `<file>.lock`, re-read, change, and replace the file atomically; every line
 * they do not change (comments, blank lines, other entries with their continuation lines)
 * is written back byte for byte.
 */
import path from 'node:path';
import { FileUpdateError } from './file-update.js';
import { WatchedFile, type WatchedFileOptions } from './watched-file.js';

export interface Alias {
  /** The key as written, lower-cased: `info` or `info@mail.example`. */
  name: string;
  /** Usable targets, as written (`alice`, `\alice`, `bob@other.onion`). */
  targets: string[];
}

export type AliasDbErrorCode = 'invalid-name' | 'invalid-target' | 'unknown-alias' | 'locked' | 'io';

export class AliasDbError extends Error {
  constructor(
    readonly code: AliasDbErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'AliasDbError';
  }
}

export interface AliasDbOptions extends WatchedFileOptions {
  /** Our domains (lower case): keys `name@domain` must use one of them. */
  localDomains?: string[];
}

// ---------------------------------------------------------------------------------------
// Parsing

export interface AliasEntryLine {
  kind: 'entry';
  /** 1-based number of the first line. */
  lineNo: number;
  /** The lines of the entry exactly as read (first line, then continuation lines). */
  raw: string[];
  key: string;
  targets: string[];
}

export interface AliasTextLine {
  kind: 'text';
  lineNo: number;
  raw: string;
}

export type AliasLine = AliasEntryLine | AliasTextLine;

export interface AliasDocument {
  lines: AliasLine[];
  finalNewline: boolean;
}

export interface AliasProblem {
  line: number;
  message: string;
}

const LOCAL_RE = /^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/;
const DOMAIN_RE = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;
/** Local part of a remote target: case kept, anything printable but separators. */
const REMOTE_LOCAL_RE = /^[^\s@<>(),;:"\\[\]\x00-\x1f\x7f]{1,64}$/;

/**
 * Checks an alias name (a key). Null when valid, else what is wrong.
 * `localDomains` empty means "any domain is fine" (parsing without a config).
 */
export function validateAliasName(name: string, localDomains: readonly string[] = []): string | null {
  if (name.length === 0) return 'the alias name is empty';
  if (name.length > 320) return 'the alias name is too long';
  if (name !== name.toLowerCase()) return `alias name "${printable(name)}" must be lower case`;
  const at = name.lastIndexOf('@');
  const local = at === -1 ? name : name.slice(0, at);
  if (local.length > 64 || !LOCAL_RE.test(local)) {
    return `alias name "${printable(name)}" may only contain lower-case letters, digits and . - _ + (a plain local part)`;
  }
  if (local.startsWith('+')) return `alias name "${printable(name)}" must not start with "+"`;
  if (at !== -1) {
    const domain = name.slice(at + 1);
    if (!DOMAIN_RE.test(domain)) return `alias name "${printable(name)}" has an invalid domain part`;
    if (localDomains.length > 0 && !localDomains.includes(domain)) {
      return `alias name "${printable(name)}" is not in one of our domains (${localDomains.join(', ')})`;
    }
  }
  return null;
}

/**
 * Checks one target. Null when usable, else what is wrong. Targets come normalized from
 * splitTargets (trimmed, brackets and quotes removed).
 */
export function validateTarget(target: string): string | null {
  if (target === '') return 'empty target';
  const shown = printable(target);
  if (target.startsWith('|')) return `program target "${shown}" is not supported`;
  if (target.startsWith('/')) return `file target "${shown}" is not supported`;
  if (/^:include:/i.test(target)) return `":include:" target "${shown}" is not supported`;
  if (/^(error|maildir|mbox|lmtp|mda|expand):/i.test(target)) return `target "${shown}" is not supported (only names and addresses)`;
  let t = target;
  if (t.startsWith('\\')) {
    t = t.slice(1);
    if (t.includes('@')) return `"\\" target "${shown}" must be a bare user name`;
  }
  const at = t.lastIndexOf('@');
  if (at === -1) {
    if (!LOCAL_RE.test(t.toLowerCase()) || t.length > 64) return `target "${shown}" is not a valid name or address`;
    return null;
  }
  const local = t.slice(0, at);
  const domain = t.slice(at + 1).toLowerCase().replace(/\.$/, '');
  if (!REMOTE_LOCAL_RE.test(local) || local.startsWith('.') || local.endsWith('.') || local.includes('..')) {
    return `target "${shown}" has an invalid local part`;
  }
  if (!DOMAIN_RE.test(domain)) return `target "${shown}" has an invalid domain`;
  return null;
}

/**
 * Splits the value part of an entry on commas outside double quotes; trims; removes
 * surrounding <> and quotes. Empty items are dropped.
 */
export function splitTargets(value: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const ch = value[i]!;
    if (ch === '\\' && quoted && i + 1 < value.length) {
      cur += ch + value[++i]!;
    } else if (ch === '"') {
      quoted = !quoted;
      cur += ch;
    } else if (ch === ',' && !quoted) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out
    .map((t) => normalizeTarget(t))
    .filter((t) => t !== '');
}

function normalizeTarget(t: string): string {
  let s = t.trim();
  if (s.startsWith('<') && s.endsWith('>')) s = s.slice(1, -1).trim();
  const q = /^"((?:[^"\\]|\\.)*)"$/.exec(s);
  if (q) s = q[1]!.replace(/\\(.)/g, '$1').trim();
  // Domains are case-insensitive; local names are looked up case-insensitively as well.
  const at = s.lastIndexOf('@');
  if (at !== -1) s = s.slice(0, at) + '@' + s.slice(at + 1).toLowerCase().replace(/\.$/, '');
  else s = s.toLowerCase();
  return s;
}

/** Parses aliases(5) text; every line is kept for writing back. */
export function parseAliases(text: string, localDomains: readonly string[] = []): { doc: AliasDocument; problems: AliasProblem[] } {
  const problems: AliasProblem[] = [];
  const lines: AliasLine[] = [];
  const parts = text.split('\n');
  let finalNewline = false;
  if (parts.length > 0 && parts[parts.length - 1] === '') {
    parts.pop();
    finalNewline = parts.length > 0;
  }
  // Group continuation lines (leading white space, not blank) with the line before them.
  interface Group {
    lineNo: number;
    raw: string[];
  }
  const groups: Group[] = [];
  parts.forEach((raw, i) => {
    const body = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    const continues = /^[ \t]/.test(body) && body.trim() !== '';
    const last = groups[groups.length - 1];
    if (continues && last && isEntryStart(last.raw[0]!)) last.raw.push(raw);
    else groups.push({ lineNo: i + 1, raw: [raw] });
  });

  const seen = new Map<string, number>();
  for (const g of groups) {
    const first = stripCr(g.raw[0]!);
    if (!isEntryStart(g.raw[0]!)) {
      if (first.trim() !== '' && !first.trimStart().startsWith('#')) {
        problems.push({ line: g.lineNo, message: /^[ \t]/.test(first) ? 'continuation line without an entry before it; ignored' : 'expected "name: target, target"; line ignored' });
      }
      lines.push({ kind: 'text', lineNo: g.lineNo, raw: g.raw[0]! });
      continue;
    }
    const colon = first.indexOf(':');
    const key = first.slice(0, colon).trim().toLowerCase();
    // A line break separates targets like a comma; "#" after white space starts a comment.
    const value = [first.slice(colon + 1), ...g.raw.slice(1).map(stripCr).filter((l) => !l.trimStart().startsWith('#'))]
      .map(stripInlineComment)
      .join(',');
    const keep = (message: string) => {
      problems.push({ line: g.lineNo, message });
      for (let i = 0; i < g.raw.length; i++) lines.push({ kind: 'text', lineNo: g.lineNo + i, raw: g.raw[i]! });
    };
    const nameErr = validateAliasName(key, localDomains);
    if (nameErr) {
      keep(`${nameErr}; entry ignored`);
      continue;
    }
    const dup = seen.get(key);
    if (dup !== undefined) {
      keep(`duplicate alias "${key}" (first defined on line ${dup}); entry ignored`);
      continue;
    }
    const targets: string[] = [];
    for (const t of splitTargets(value)) {
      const err = validateTarget(t);
      if (err) problems.push({ line: g.lineNo, message: `alias "${key}": ${err}; target ignored` });
      else if (!targets.includes(t)) targets.push(t);
    }
    if (targets.length === 0) problems.push({ line: g.lineNo, message: `alias "${key}" has no usable target` });
    seen.set(key, g.lineNo);
    lines.push({ kind: 'entry', lineNo: g.lineNo, raw: g.raw, key, targets });
  }
  return { doc: { lines, finalNewline }, problems };
}

/** A line that starts an entry: not blank, not a comment, not indented, has a ':'. */
function isEntryStart(raw: string): boolean {
  const body = stripCr(raw);
  return body.trim() !== '' && !/^[ \t]/.test(body) && !body.startsWith('#') && body.includes(':');
}

/** Cuts " # comment" (a '#' after white space, outside double quotes) off a line. */
function stripInlineComment(line: string): string {
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!;
    if (ch === '\\' && quoted) i++;
    else if (ch === '"') quoted = !quoted;
    else if (ch === '#' && !quoted && (i === 0 || /\s/.test(line[i - 1]!))) return line.slice(0, i);
  }
  return line;
}

function stripCr(s: string): string {
  return s.endsWith('\r') ? s.slice(0, -1) : s;
}

export function serializeAliases(doc: AliasDocument): string {
  const out = doc.lines.flatMap((l) => (l.kind === 'entry' ? l.raw : [l.raw]));
  if (out.length === 0) return '';
  return out.join('\n') + (doc.finalNewline ? '\n' : '');
}

/** A new entry line `name: t1, t2`. Quotes targets that contain a comma or a quote. */
export function formatEntry(key: string, targets: readonly string[]): string {
  const quote = (t: string) => (/[,"\s]/.test(t) ? `"${t.replace(/(["\\])/g, '\\$1')}"` : t);
  return `${key}: ${targets.map(quote).join(', ')}`;
}

function printable(s: string): string {
  const cut = s.length > 80 ? `${s.slice(0, 80)}...` : s;
  return cut.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

// ---------------------------------------------------------------------------------------
// The table

interface Snapshot {
  byKey: Map<string, Alias>;
  order: Alias[];
}

const EMPTY: Snapshot = { byKey: new Map(), order: [] };

export class AliasDb {
  readonly file: string;
  private readonly localDomains: string[];
  private readonly watched: WatchedFile<Snapshot>;

  constructor(file: string, options: AliasDbOptions = {}) {
    this.file = path.resolve(file);
    this.localDomains = (options.localDomains ?? []).map((d) => d.toLowerCase().replace(/\.$/, ''));
    this.watched = new WatchedFile<Snapshot>({ file: this.file, noun: 'aliases', empty: EMPTY, parse: (text) => this.build(text) }, options);
  }

  /** Problems found the last time the file was read ("file:line: message"). */
  get problems(): readonly string[] {
    return this.watched.problems;
  }

  /**
   * The targets of `localPart` in `domain` (both lower case): the key `local@domain` if there
   * is one, else the bare key `local`. Undefined when there is no such alias.
   */
  lookup(localPart: string, domain: string): readonly string[] | undefined {
    const snap = this.watched.snapshot;
    const qualified = snap.byKey.get(`${localPart}@${domain}`);
    if (qualified) return qualified.targets;
    return snap.byKey.get(localPart)?.targets;
  }

  /** The alias with exactly this key (lower-cased). */
  get(name: string): Alias | undefined {
    return this.watched.snapshot.byKey.get(name.toLowerCase());
  }

  /** All aliases in file order. */
  list(): Alias[] {
    return this.watched.snapshot.order.map((a) => ({ name: a.name, targets: [...a.targets] }));
  }

  /** Re-reads the file now (SIGHUP). */
  reload(): void {
    this.watched.reload();
  }

  /**
   * Adds targets to an alias, creating it when it does not exist. An existing entry is
   * rewritten as one line (its other targets kept); every other line stays as it was.
   * Returns the alias as written.
   */
  async add(name: string, targets: readonly string[]): Promise<Alias> {
    const key = name.toLowerCase();
    const nameErr = validateAliasName(key, this.localDomains);
    if (nameErr) throw new AliasDbError('invalid-name', nameErr);
    const clean = targets.flatMap((t) => splitTargets(t));
    if (clean.length === 0) throw new AliasDbError('invalid-target', 'no target given');
    for (const t of clean) {
      const err = validateTarget(t);
      if (err) throw new AliasDbError('invalid-target', err);
    }
    let result: Alias | undefined;
    await this.modify((doc) => {
      const entry = doc.lines.find((l): l is AliasEntryLine => l.kind === 'entry' && l.key === key);
      if (entry) {
        const merged = [...entry.targets];
        for (const t of clean) if (!merged.includes(t)) merged.push(t);
        entry.targets = merged;
        entry.raw = [formatEntry(key, merged) + (entry.raw[0]!.endsWith('\r') ? '\r' : '')];
        result = { name: key, targets: merged };
      } else {
        const unique = clean.filter((t, i) => clean.indexOf(t) === i);
        doc.lines.push({ kind: 'entry', lineNo: 0, raw: [formatEntry(key, unique)], key, targets: unique });
        doc.finalNewline = true;
        result = { name: key, targets: unique };
      }
    });
    return result!;
  }

  /**
   * Removes an alias (no targets given), or only the given targets of it (the alias goes
   * when none is left). Returns what was removed.
   */
  async remove(name: string, targets: readonly string[] = []): Promise<Alias> {
    const key = name.toLowerCase();
    const drop = targets.flatMap((t) => splitTargets(t));
    let removed: Alias | undefined;
    await this.modify((doc) => {
      const entry = doc.lines.find((l): l is AliasEntryLine => l.kind === 'entry' && l.key === key);
      if (!entry) throw new AliasDbError('unknown-alias', `no alias "${name}" in ${this.file}`);
      if (drop.length > 0) {
        const missing = drop.filter((t) => !entry.targets.includes(t));
        if (missing.length > 0) throw new AliasDbError('invalid-target', `alias "${key}" has no target ${missing.map((m) => `"${m}"`).join(', ')} (it has: ${entry.targets.join(', ')})`);
        const rest = entry.targets.filter((t) => !drop.includes(t));
        removed = { name: key, targets: drop };
        if (rest.length > 0) {
          entry.targets = rest;
          entry.raw = [formatEntry(key, rest) + (entry.raw[0]!.endsWith('\r') ? '\r' : '')];
          return;
        }
      } else removed = { name: key, targets: [...entry.targets] };
      doc.lines.splice(doc.lines.indexOf(entry), 1);
    });
    return removed!;
  }

  // -------------------------------------------------------------------------------------

  private build(text: string): { doc: AliasDocument; snap: Snapshot; problems: AliasProblem[] } {
    const { doc, problems } = parseAliases(text, this.localDomains);
    const snap: Snapshot = { byKey: new Map(), order: [] };
    for (const line of doc.lines) {
      if (line.kind !== 'entry' || line.targets.length === 0) continue;
      const alias = { name: line.key, targets: line.targets };
      snap.byKey.set(line.key, alias);
      snap.order.push(alias);
    }
    return { doc, snap, problems };
  }

  /** Locked read-modify-write of the file. */
  private async modify(change: (doc: AliasDocument) => void): Promise<void> {
    try {
      await this.watched.update((text) => {
        const { doc } = this.build(text);
        change(doc);
        return serializeAliases(doc);
      });
    } catch (err) {
      throw err instanceof FileUpdateError ? new AliasDbError(err.code, err.message) : err;
    }
  }
}
