/**
 * dovecot-keywords: one line per keyword, `<index> <keyword>`. Index 0 is letter 'a' in the
 * file names' flag letters, ..., 25 is 'z': a folder holds at most 26 keywords on disk.
 */

export const MAX_KEYWORDS = 26;

/** Keyword names by index; holes are undefined. */
export type KeywordTable = Array<string | undefined>;

export function letterForIndex(index: number): string {
  return String.fromCharCode(0x61 + index);
}

/** 'a' -> 0 ... 'z' -> 25; -1 for anything else. */
export function indexForLetter(letter: string): number {
  const code = letter.charCodeAt(0);
  return letter.length === 1 && code >= 0x61 && code <= 0x7a ? code - 0x61 : -1;
}

export function parseKeywords(text: string): KeywordTable {
  const table: KeywordTable = [];
  for (const line of text.split('\n')) {
    const m = /^(\d+) (.+)$/.exec(line.replace(/\r$/, ''));
    if (!m) continue;
    const index = Number(m[1]);
    if (index >= MAX_KEYWORDS) continue;
    const name = m[2];
    if (!isValidKeyword(name)) continue;
    // The first definition of a name wins (a duplicate would make letters ambiguous).
    if (table.some((k) => k !== undefined && k.toLowerCase() === name.toLowerCase())) continue;
    table[index] = name;
  }
  return table;
}

export function serializeKeywords(table: KeywordTable): string {
  let out = '';
  table.forEach((name, index) => {
    if (name !== undefined) out += `${index} ${name}\n`;
  });
  return out;
}

/**
 * A keyword must be an IMAP atom: no spaces, controls, or atom-specials, and must not start
 * with "\" (system flags).
 */
export function isValidKeyword(name: string): boolean {
  // eslint-disable-next-line no-control-regex
  return name.length > 0 && name.length <= 200 && !/[\u0000-\u0020\u007f-\uffff(){%*"\\\]]/.test(name);
}

/** Index of `name` in the table, compared case-insensitively; -1 if absent. */
export function findKeyword(table: KeywordTable, name: string): number {
  const lower = name.toLowerCase();
  return table.findIndex((k) => k !== undefined && k.toLowerCase() === lower);
}
