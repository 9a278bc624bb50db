/** IMAP flag lists <-> Maildir flag letters. */
import { StoreError, SYSTEM_FLAGS, type FlagAction, type SystemFlag } from '../types.js';
import { LETTER_TO_SYSTEM_FLAG, SYSTEM_FLAG_TO_LETTER, sortLetters } from './filename.js';
import { indexForLetter, isValidKeyword, type KeywordTable } from './keywords.js';

export interface ClassifiedFlags {
  /** Letters of the system flags (D F R S T). */
  systemLetters: Set<string>;
  /** Keywords, de-duplicated case-insensitively, in the caller's spelling. */
  keywords: string[];
}

const SYSTEM_BY_LOWER = new Map<string, SystemFlag>(SYSTEM_FLAGS.map((f) => [f.toLowerCase(), f]));

/**
 * Splits a flag list into system flags and keywords. `\Recent` is dropped (it cannot be
 * stored); other unknown `\` flags and malformed keywords are refused with CANNOT.
 */
export function classifyFlags(flags: readonly string[]): ClassifiedFlags {
  const systemLetters = new Set<string>();
  const keywords: string[] = [];
  const seen = new Set<string>();
  for (const flag of flags) {
    if (flag.startsWith('\\')) {
      const lower = flag.toLowerCase();
      if (lower === '\\recent') continue;
      const system = SYSTEM_BY_LOWER.get(lower);
      if (system === undefined) throw new StoreError('CANNOT', `Unknown system flag ${flag}`);
      systemLetters.add(SYSTEM_FLAG_TO_LETTER[system]);
      continue;
    }
    if (!isValidKeyword(flag)) throw new StoreError('CANNOT', `Invalid keyword ${JSON.stringify(flag)}`);
    const lower = flag.toLowerCase();
    if (seen.has(lower)) continue;
    seen.add(lower);
    keywords.push(flag);
  }
  return { systemLetters, keywords };
}

/** Flags of a message from its letters: system flags in SYSTEM_FLAGS order, then keywords. */
export function lettersToFlags(letters: string, keywords: KeywordTable): string[] {
  const out: string[] = [];
  for (const flag of SYSTEM_FLAGS) if (letters.includes(SYSTEM_FLAG_TO_LETTER[flag])) out.push(flag);
  for (const letter of letters) {
    const index = indexForLetter(letter);
    const name = index >= 0 ? keywords[index] : undefined;
    if (name !== undefined) out.push(name);
  }
  return out;
}

/**
 * Letters of `current` that carry no IMAP meaning here and must survive any flag change:
 * P (Passed), other upper-case letters, and lower-case letters with no keyword behind them.
 */
export function preservedLetters(current: string, keywords: KeywordTable): string {
  let out = '';
  for (const letter of current) {
    if (LETTER_TO_SYSTEM_FLAG[letter] !== undefined) continue;
    const index = indexForLetter(letter);
    if (index >= 0 && keywords[index] !== undefined) continue;
    out += letter;
  }
  return out;
}

/**
 * New letters after applying `action` with `flags` (already classified; `keywordLetter` maps
 * lower-cased keyword names to their letter, missing ones are ignored).
 */
export function applyFlagAction(
  current: string,
  keywords: KeywordTable,
  action: FlagAction,
  flags: ClassifiedFlags,
  keywordLetter: ReadonlyMap<string, string>,
): string {
  const kwLetters = new Set<string>();
  for (const k of flags.keywords) {
    const letter = keywordLetter.get(k.toLowerCase());
    if (letter !== undefined) kwLetters.add(letter);
  }
  const system = new Set<string>();
  const kws = new Set<string>();
  for (const letter of current) {
    if (LETTER_TO_SYSTEM_FLAG[letter] !== undefined) system.add(letter);
    else {
      const index = indexForLetter(letter);
      if (index >= 0 && keywords[index] !== undefined) kws.add(letter);
    }
  }
  if (action === 'set') {
    system.clear();
    kws.clear();
  }
  if (action === 'remove') {
    for (const l of flags.systemLetters) system.delete(l);
    for (const l of kwLetters) kws.delete(l);
  } else {
    for (const l of flags.systemLetters) system.add(l);
    for (const l of kwLetters) kws.add(l);
  }
  return sortLetters(preservedLetters(current, keywords) + [...system].join('') + [...kws].join(''));
}
