/**
 * SEARCH and UID SEARCH: onionpost's own command implementation, installed in place of
 * imap-core's (this file is onionpost code, written for onionpost; it is not a modified copy
 * of imap-core's lib/commands/search.js, which stays untouched in node_modules).
 *
 * Why: imap-core's handler flattens parenthesised groups before it parses the criteria, so
 * `OR (SUBJECT a FROM b) SUBJECT c` became `(SUBJECT a OR FROM b) AND SUBJECT c` and
 * `NOT (A B)` became `NOT A AND B`; and imap-core's tokenizer rejects a sequence set right
 * before a closing parenthesis (`NOT (SEEN 1:3)`, `(UID 5:*)`: BAD). Here:
 *
 *   1. tokenizeSearch() splits the arguments of a SEARCH command line into atoms, quoted
 *      strings, literals and nested lists, keeping every group. installSearchCommand()
 *      routes only SEARCH / UID SEARCH lines to it (every other command still goes through
 *      imap-core's parser).
 *   2. parseSearchCriteria() turns the tokens into the query tree our onSearch handler
 *      evaluates (search.ts): an array is an AND group, `or` and `not` take whole
 *      sub-expressions. Sequence sets (with `*`) are resolved to UIDs against the session's
 *      view of the mailbox, as RFC 3501 defines them.
 *   3. The command handler calls onSearch and writes `* SEARCH ...` (message numbers or
 *      UIDs, plus `(MODSEQ n)` for CONDSTORE searches).
 *
 * Keys: every RFC 3501 search key, MODSEQ (RFC 7162, entry name/type accepted and ignored),
 * OLDER/YOUNGER (RFC 5032 WITHIN), CHARSET as the first item. RECENT/NEW/OLD refer to
 * \Recent, which this server never sets (SELECT reports 0 RECENT): RECENT and NEW match
 * nothing, OLD matches everything.
 */
import type { CommandResponse, ImapConnection, SearchExpression, SearchOptions, SearchResult } from './imap-core-types.js';
import { imapCoreCommand, imapHandler } from './imap-core.js';
import { parseImapDay } from './imap-date.js';

/** A token of a SEARCH line, in the node shape imap-core's parser produces (its logs compile them). */
export type SearchToken = { type: 'ATOM' | 'STRING' | 'LITERAL'; value: string } | SearchToken[];

/** What the command handler receives: the parsed command line. */
export interface ParsedSearchCommand {
  tag: string;
  command: string;
  attributes: SearchToken[];
}

/** A syntax error in the criteria: the command gets `BAD <message>`. */
export class SearchSyntaxError extends Error {
  readonly response = 'BAD';
  constructor(message: string) {
    super(message);
    this.name = 'SearchSyntaxError';
  }
}

// ---------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------

const SEARCH_LINE = /^([^\s(){%*"\\\]]+) +((?:UID +)?SEARCH)(?: +|$)/i;

/**
 * Splits the arguments of a SEARCH command into tokens. `text` is the command payload as
 * imap-core collects it ('binary' string; each literal appears as `{n}` + CRLF and its bytes
 * are the next element of `literals`).
 */
export function tokenizeSearch(text: string, literals: readonly Buffer[]): SearchToken[] {
  const root: SearchToken[] = [];
  const stack: SearchToken[][] = [root];
  let literalIndex = 0;
  let i = 0;
  const top = (): SearchToken[] => stack[stack.length - 1];
  while (i < text.length) {
    const c = text[i];
    if (c === ' ') {
      i++;
      continue;
    }
    if (c === '(') {
      const list: SearchToken[] = [];
      top().push(list);
      stack.push(list);
      i++;
      continue;
    }
    if (c === ')') {
      if (stack.length === 1) throw new SearchSyntaxError('Unbalanced ")" in search criteria');
      stack.pop();
      i++;
      continue;
    }
    if (c === '"') {
      let value = '';
      let j = i + 1;
      for (;;) {
        if (j >= text.length || text[j] === '\r' || text[j] === '\n') throw new SearchSyntaxError('Unterminated quoted string in search criteria');
        const d = text[j];
        if (d === '"') break;
        if (d === '\\' && j + 1 < text.length && (text[j + 1] === '"' || text[j + 1] === '\\')) {
          value += text[j + 1];
          j += 2;
          continue;
        }
        value += d;
        j++;
      }
      top().push({ type: 'STRING', value });
      i = j + 1;
      continue;
    }
    if (c === '{') {
      const m = /^\{(\d+)\}\r?\n/.exec(text.slice(i, i + 24));
      if (!m) throw new SearchSyntaxError('Malformed literal in search criteria');
      const bytes = literals[literalIndex++];
      if (!bytes) throw new SearchSyntaxError('Missing literal data in search criteria');
      top().push({ type: 'LITERAL', value: bytes.toString('binary') });
      i += m[0].length;
      continue;
    }
    if (c === '\r' || c === '\n') {
      // only the CRLF of a literal marker may appear; anything else is not IMAP
      throw new SearchSyntaxError('Unexpected line break in search criteria');
    }
    let j = i;
    while (j < text.length && !' ()"\r\n'.includes(text[j])) j++;
    top().push({ type: 'ATOM', value: text.slice(i, j) });
    i = j;
  }
  if (stack.length !== 1) throw new SearchSyntaxError('Unbalanced "(" in search criteria');
  return root;
}

/** Parses a whole SEARCH command line; null when it is not one (imap-core's parser then takes it). */
export function parseSearchLine(payload: string, literals: readonly Buffer[]): ParsedSearchCommand | null {
  const m = SEARCH_LINE.exec(payload);
  if (!m) return null;
  const command = m[2].toUpperCase().replace(/\s+/, ' ');
  return { tag: m[1], command, attributes: tokenizeSearch(payload.slice(m[0].length), literals) };
}

// ---------------------------------------------------------------------------------------
// Sequence sets
// ---------------------------------------------------------------------------------------

const SEQUENCE_SET = /^(?:\d+|\*)(?::(?:\d+|\*))?(?:,(?:\d+|\*)(?::(?:\d+|\*))?)*$/;

export function isSequenceSet(value: string): boolean {
  return SEQUENCE_SET.test(value) && !/(^|[,:])0+(?=$|[,:])/.test(value);
}

/** First index in the ascending `list` whose value is >= `value`. */
function lowerBound(list: readonly number[], value: number): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid] < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * The UIDs a sequence set names in a session whose mailbox view is `uidList` (ascending).
 * Message numbers: `*` is the last message; numbers past the end name nothing. UIDs: `*` is
 * the highest UID in use, so `n:*` always includes the last message, even when n is
 * larger (RFC 3501 §6.4.8); UIDs not in the mailbox are ignored. Ranges may be reversed.
 */
export function resolveSequenceSet(set: string, uidList: readonly number[], isUid: boolean): number[] {
  if (!isSequenceSet(set)) throw new SearchSyntaxError(`Invalid sequence set ${set}`);
  if (uidList.length === 0) return [];
  const max = isUid ? uidList[uidList.length - 1] : uidList.length;
  const value = (s: string): number => (s === '*' ? max : Number(s));
  const picked = new Set<number>();
  for (const part of set.split(',')) {
    const [a, b = a] = part.split(':');
    let lo = value(a);
    let hi = value(b);
    if (lo > hi) [lo, hi] = [hi, lo];
    if (isUid) {
      for (let k = lowerBound(uidList, lo); k < uidList.length && uidList[k] <= hi; k++) picked.add(uidList[k]);
    } else {
      for (let n = Math.max(1, lo); n <= Math.min(hi, uidList.length); n++) picked.add(uidList[n - 1]);
    }
  }
  return [...picked].sort((x, y) => x - y);
}

// ---------------------------------------------------------------------------------------
// Criteria
// ---------------------------------------------------------------------------------------

export interface ParsedCriteria {
  /** Implicit AND of the top-level keys. */
  query: SearchExpression[];
  /** Lower-cased key names used (imap-core's convention; "modseq" enables CONDSTORE). */
  terms: string[];
}

const FLAG_KEYS: Record<string, [string, boolean]> = {
  ANSWERED: ['\\Answered', true],
  DELETED: ['\\Deleted', true],
  DRAFT: ['\\Draft', true],
  FLAGGED: ['\\Flagged', true],
  SEEN: ['\\Seen', true],
  RECENT: ['\\Recent', true],
  OLD: ['\\Recent', false],
  UNANSWERED: ['\\Answered', false],
  UNDELETED: ['\\Deleted', false],
  UNDRAFT: ['\\Draft', false],
  UNFLAGGED: ['\\Flagged', false],
  UNSEEN: ['\\Seen', false],
};

const HEADER_KEYS = new Set(['BCC', 'CC', 'FROM', 'SUBJECT', 'TO']);
const INTERNALDATE_KEYS: Record<string, '<' | '=' | '>='> = { BEFORE: '<', ON: '=', SINCE: '>=' };
const SENTDATE_KEYS: Record<string, '<' | '=' | '>='> = { SENTBEFORE: '<', SENTON: '=', SENTSINCE: '>=' };
const MAX_NUMBER = 2 ** 63 - 1;
const MAX_DEPTH = 64;

class CriteriaParser {
  private pos = 0;
  readonly terms = new Set<string>();

  constructor(
    private readonly tokens: readonly SearchToken[],
    private readonly uidList: readonly number[],
    private readonly depth = 0,
  ) {
    if (depth > MAX_DEPTH) throw new SearchSyntaxError('Search criteria nested too deeply');
  }

  get done(): boolean {
    return this.pos >= this.tokens.length;
  }

  private next(what: string): SearchToken {
    const t = this.tokens[this.pos++];
    if (t === undefined) throw new SearchSyntaxError(`Missing argument: ${what}`);
    return t;
  }

  /** astring: atom, quoted string or literal. */
  private string(key: string): string {
    const t = this.next(`${key} needs a string`);
    if (Array.isArray(t)) throw new SearchSyntaxError(`${key} needs a string, not a list`);
    return t.value;
  }

  private atom(key: string): string {
    const t = this.next(`${key} needs an argument`);
    if (Array.isArray(t) || t.type !== 'ATOM') throw new SearchSyntaxError(`Invalid argument for ${key}`);
    return t.value;
  }

  private number(key: string, positive = false): number {
    const v = this.atom(key);
    if (!/^\d+$/.test(v) || Number(v) > MAX_NUMBER || (positive && Number(v) === 0)) throw new SearchSyntaxError(`Invalid number for ${key}`);
    return Number(v);
  }

  private date(key: string): string {
    const v = this.string(key);
    if (parseImapDay(v) === null || !/^\d{1,2}-[A-Za-z]{3}-\d{4}$/.test(v)) throw new SearchSyntaxError(`Invalid date for ${key} (expected e.g. 1-Feb-2026)`);
    return v;
  }

  /** One search key (with its arguments), or a parenthesised group. */
  key(): SearchExpression {
    const t = this.next('a search key');
    if (Array.isArray(t)) {
      if (t.length === 0) throw new SearchSyntaxError('Empty parenthesised group in search criteria');
      const inner = new CriteriaParser(t, this.uidList, this.depth + 1);
      const group: SearchExpression[] = [];
      while (!inner.done) group.push(inner.key());
      for (const term of inner.terms) this.terms.add(term);
      return group.length === 1 ? group[0] : group;
    }
    if (t.type !== 'ATOM') throw new SearchSyntaxError(`Unknown search key "${t.value}"`);
    const name = t.value.toUpperCase();
    const note = (term: string): void => {
      this.terms.add(term);
    };

    const flag = FLAG_KEYS[name];
    if (flag) {
      note('flag');
      return { key: 'flag', value: flag[0], exists: flag[1] };
    }
    if (HEADER_KEYS.has(name)) {
      note('header');
      return { key: 'header', header: name.toLowerCase(), value: this.string(name) };
    }
    if (name in INTERNALDATE_KEYS) {
      note('internaldate');
      return { key: 'internaldate', operator: INTERNALDATE_KEYS[name], value: this.date(name) };
    }
    if (name in SENTDATE_KEYS) {
      note('date');
      return { key: 'date', operator: SENTDATE_KEYS[name], value: this.date(name) };
    }
    switch (name) {
      case 'ALL':
        note('all');
        return { key: 'all', value: true };
      case 'NEW':
        note('flag');
        return [
          { key: 'flag', value: '\\Recent', exists: true },
          { key: 'flag', value: '\\Seen', exists: false },
        ];
      case 'KEYWORD':
      case 'UNKEYWORD':
        note('flag');
        return { key: 'flag', value: this.string(name), exists: name === 'KEYWORD' };
      case 'HEADER': {
        note('header');
        const field = this.string(name);
        if (!/^[\x21-\x39\x3b-\x7e]+$/.test(field)) throw new SearchSyntaxError('Invalid header field name for HEADER');
        return { key: 'header', header: field.toLowerCase(), value: this.string(name) };
      }
      case 'BODY':
      case 'TEXT':
        note(name.toLowerCase());
        return { key: name === 'BODY' ? 'body' : 'text', value: this.string(name) };
      case 'LARGER':
      case 'SMALLER':
        note('size');
        return { key: 'size', operator: name === 'LARGER' ? '>' : '<', value: this.number(name) };
      case 'UID': {
        note('uid');
        const set = this.atom(name);
        if (!isSequenceSet(set)) throw new SearchSyntaxError('Invalid sequence set for UID');
        return { key: 'uid', value: resolveSequenceSet(set, this.uidList, true) };
      }
      case 'NOT':
        note('not');
        return { key: 'not', value: this.key() };
      case 'OR': {
        note('or');
        const a = this.key();
        const b = this.key();
        return { key: 'or', value: [a, b] };
      }
      case 'MODSEQ': {
        note('modseq');
        // MODSEQ [<entry-name> <entry-type-req>] <mod-sequence-valzer>
        const first = this.tokens[this.pos];
        if (first !== undefined && !Array.isArray(first) && !/^\d+$/.test(first.value)) {
          this.string(name);
          const type = this.atom(name).toLowerCase();
          if (!['priv', 'shared', 'all'].includes(type)) throw new SearchSyntaxError('Invalid entry type for MODSEQ');
        }
        return { key: 'modseq', value: this.number(name) };
      }
      case 'OLDER':
      case 'YOUNGER': {
        note('internaldate');
        const seconds = this.number(name, true);
        if (seconds > 0xffffffff) throw new SearchSyntaxError(`Invalid interval for ${name}`);
        return { key: 'internaldate', operator: name === 'OLDER' ? '<=' : '>=', value: new Date(Date.now() - seconds * 1000) };
      }
      default:
        if (isSequenceSet(t.value)) {
          note('uid');
          return { key: 'uid', value: resolveSequenceSet(t.value, this.uidList, false) };
        }
        throw new SearchSyntaxError(`Unknown search key ${name.slice(0, 40)}`);
    }
  }
}

/**
 * Parses SEARCH criteria (the tokens after the command name) against the session's view
 * of the mailbox. Throws SearchSyntaxError for anything malformed.
 */
export function parseSearchCriteria(tokens: readonly SearchToken[], uidList: readonly number[]): ParsedCriteria {
  const query: SearchExpression[] = [];
  let rest = tokens;
  const first = tokens[0];
  if (first !== undefined && !Array.isArray(first) && first.type === 'ATOM' && first.value.toUpperCase() === 'CHARSET') {
    const cs = tokens[1];
    if (cs === undefined || Array.isArray(cs)) throw new SearchSyntaxError('CHARSET needs a charset name');
    query.push({ key: 'charset', value: cs.value });
    rest = tokens.slice(2);
  }
  if (rest.length === 0) throw new SearchSyntaxError('Missing search criteria');
  const parser = new CriteriaParser(rest, uidList);
  while (!parser.done) query.push(parser.key());
  const terms = [...parser.terms];
  if (query[0] && !Array.isArray(query[0]) && query[0].key === 'charset') terms.push('charset');
  return { query, terms: terms.sort() };
}

// ---------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------

type CommandCallback = (err: Error | null, response?: CommandResponse) => void;

function searchHandler(this: ImapConnection, command: ParsedSearchCommand, callback: CommandCallback): void {
  const server = this._server;
  const selected = this.selected;
  if (typeof server.onSearch !== 'function' || !selected) {
    callback(null, { response: 'NO', message: `${command.command} not available` });
    return;
  }
  const isUid = command.command === 'UID SEARCH';
  let parsed: ParsedCriteria;
  try {
    parsed = parseSearchCriteria(command.attributes ?? [], selected.uidList);
  } catch (err) {
    callback(err instanceof Error ? err : new SearchSyntaxError(String(err)));
    return;
  }
  const modseqSearch = parsed.terms.includes('modseq');
  if (modseqSearch && !selected.condstoreEnabled) this.condstoreEnabled = selected.condstoreEnabled = true;

  const options: SearchOptions = { query: parsed.query, terms: parsed.terms, isUid };
  server.onSearch(selected.mailbox, options, this.session, (err: Error | null, result?: SearchResult) => {
    if (err || !result) {
      callback(null, { response: 'NO', code: 'TEMPFAIL' });
      return;
    }
    if (typeof result.uidList === 'string') {
      callback(null, { response: 'NO', code: result.uidList.toUpperCase() });
      return;
    }
    const uids = [...result.uidList].sort((a, b) => a - b);
    let numbers: number[];
    if (isUid) {
      numbers = uids;
    } else {
      // message numbers in the session's current view (it may have changed meanwhile)
      const current = this.selected ? this.selected.uidList : [];
      const seqOf = new Map<number, number>();
      current.forEach((uid, i) => seqOf.set(uid, i + 1));
      numbers = uids.flatMap((uid) => seqOf.get(uid) ?? []);
    }
    let line = '* SEARCH';
    if (numbers.length) line += ' ' + numbers.join(' ');
    if (modseqSearch && numbers.length && result.highestModseq) line += ` (MODSEQ ${result.highestModseq})`;
    this.send(line);
    callback(null, { response: 'OK' });
  });
}

let installed = false;

/**
 * Puts our SEARCH into imap-core: our handler on its SEARCH / UID SEARCH command entry, and
 * our tokenizer in front of its parser for SEARCH lines only. Process-wide and idempotent.
 */
export function installSearchCommand(): void {
  if (installed) return;
  installed = true;
  const command = imapCoreCommand('search');
  command.handler = searchHandler as typeof command.handler;
  command.schema = false;
  const coreParser = imapHandler.parser;
  imapHandler.parser = (payload: string, options?: { literals?: Buffer[] }): unknown => {
    const ours = typeof payload === 'string' ? parseSearchLine(payload, options?.literals ?? []) : null;
    return ours ?? coreParser(payload, options);
  };
}
