/**
 * SEARCH BODY/TEXT match without normalising the whole text (textMatcher): the answer must
 * be the same as normalising it (NFC, lower case, whitespace runs as one space) and looking
 * for the normalised needle.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { normalizeText, textMatcher } from '../src/imap/search.js';

const reference = (text: string, needle: string): boolean => !needle || normalizeText(text).includes(needle);

/** A small deterministic generator (xorshift), so a failure is reproducible. */
function rng(seed: number): () => number {
  let x = seed || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x100000000;
  };
}

const ALPHABET = ['a', 'B', 'c', ' ', '  ', '\t', '\r\n', '\u00a0', 'é', 'e\u0301', 'É', 'İ', 'i', 'ß', '.', '*', '(', '\\', '🎉', 'K', '\u212a'];

describe('textMatcher', () => {
  it('agrees with normalising the whole text (random texts and needles)', () => {
    const next = rng(12345);
    const pick = (n: number): string => Array.from({ length: n }, () => ALPHABET[Math.floor(next() * ALPHABET.length)]).join('');
    for (let i = 0; i < 20000; i++) {
      const text = pick(Math.floor(next() * 30));
      // needles: pieces of the normalised text (hits) and random strings (mostly misses)
      const norm = normalizeText(text);
      const start = Math.floor(next() * (norm.length + 1));
      const candidates = [norm.slice(start, start + 1 + Math.floor(next() * 6)), pick(1 + Math.floor(next() * 4))];
      for (const raw of candidates) {
        const needle = normalizeText(raw).trim();
        assert.equal(textMatcher(needle)(text), reference(text, needle), `${JSON.stringify(text)} / ${JSON.stringify(needle)}`);
      }
    }
  });

  it('examples', () => {
    assert.equal(textMatcher('hello world')('Say HELLO\r\n\t World!'), true);
    assert.equal(textMatcher('hello world')('helloworld'), false);
    assert.equal(textMatcher('café')('CAFE\u0301 au lait'), true);
    assert.equal(textMatcher('a.c')('abc'), false);
    assert.equal(textMatcher('')('anything'), true);
  });
});
