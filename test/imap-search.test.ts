/**
 * SEARCH: our own command (src/imap/search-command.ts) in place of imap-core's, which
 * flattened parenthesised groups. Unit tests of the tokenizer, the criteria parser and
 * sequence-set resolution, then every RFC 3501 key over the wire against a real
 * MaildirStore, with the mailbox's UIDs and message numbers deliberately different.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ImapServer } from '../src/imap/imap-server.js';
import { parseSearchCriteria, resolveSequenceSet, SearchSyntaxError, tokenizeSearch } from '../src/imap/search-command.js';
import { MaildirStore } from '../src/store/maildir/maildir-store.js';
import { ImapWire } from './helpers/imap-wire.js';
import { startOneUserImap } from './helpers/imap-test-server.js';

const USER = 'alice';
const PASSWORD = 'secret words';

describe('SEARCH parsing (units)', () => {
  it('tokenizes groups, quoted strings, literals and sequence sets before ")"', () => {
    const t = tokenizeSearch('OR (SUBJECT "a \\"q\\" b" FROM {3}\r\n) NOT (SEEN 1:*)', [Buffer.from('bö', 'utf8')]);
    assert.deepEqual(t, [
      { type: 'ATOM', value: 'OR' },
      [
        { type: 'ATOM', value: 'SUBJECT' },
        { type: 'STRING', value: 'a "q" b' },
        { type: 'ATOM', value: 'FROM' },
        { type: 'LITERAL', value: Buffer.from('bö', 'utf8').toString('binary') },
      ],
      { type: 'ATOM', value: 'NOT' },
      [
        { type: 'ATOM', value: 'SEEN' },
        { type: 'ATOM', value: '1:*' },
      ],
    ]);
    for (const bad of ['(SEEN', 'SEEN)', '"open', 'SUBJECT {3}\r\n']) {
      assert.throws(() => tokenizeSearch(bad, []), SearchSyntaxError, bad);
    }
  });

  it('keeps the structure: OR of groups, NOT of a group, nested groups', () => {
    const q = (s: string) => parseSearchCriteria(tokenizeSearch(s, []), [1, 2, 3]).query;
    assert.deepEqual(q('OR (SUBJECT a FROM b) SUBJECT c'), [
      {
        key: 'or',
        value: [
          [
            { key: 'header', header: 'subject', value: 'a' },
            { key: 'header', header: 'from', value: 'b' },
          ],
          { key: 'header', header: 'subject', value: 'c' },
        ],
      },
    ]);
    assert.deepEqual(q('NOT (SEEN DELETED)'), [
      {
        key: 'not',
        value: [
          { key: 'flag', value: '\\Seen', exists: true },
          { key: 'flag', value: '\\Deleted', exists: true },
        ],
      },
    ]);
    assert.deepEqual(q('((SEEN))'), [{ key: 'flag', value: '\\Seen', exists: true }]);
    assert.deepEqual(q('CHARSET UTF-8 ALL'), [{ key: 'charset', value: 'UTF-8' }, { key: 'all', value: true }]);
    for (const bad of ['', 'FOO', 'SUBJECT', 'OR SEEN', 'NOT', '()', 'BEFORE 32-Jan-2026', 'SINCE yesterday', 'LARGER x', 'UID 0', 'UID a', '0:3', 'SEEN CHARSET UTF-8', 'MODSEQ "/flags/\\\\Seen" bad 3', 'OLDER 0']) {
      assert.throws(() => q(bad), SearchSyntaxError, bad);
    }
  });

  it('resolves sequence sets: message numbers and UIDs, "*", reversed and out-of-range ranges', () => {
    const uids = [3, 7, 8, 20];
    assert.deepEqual(resolveSequenceSet('1:2', uids, false), [3, 7]);
    assert.deepEqual(resolveSequenceSet('*', uids, false), [20]);
    assert.deepEqual(resolveSequenceSet('*:3', uids, false), [8, 20]);
    assert.deepEqual(resolveSequenceSet('2,4,9', uids, false), [7, 20]);
    assert.deepEqual(resolveSequenceSet('1:*', [], false), []);
    assert.deepEqual(resolveSequenceSet('5:8', uids, true), [7, 8]);
    assert.deepEqual(resolveSequenceSet('*', uids, true), [20]);
    // "*" is the highest UID in use: 100:* names the last message (RFC 3501 6.4.8)
    assert.deepEqual(resolveSequenceSet('100:*', uids, true), [20]);
    assert.deepEqual(resolveSequenceSet('1:4294967295', uids, true), uids);
    assert.deepEqual(resolveSequenceSet('4', uids, true), []);
  });
});

const crlf = (lines: string[]): Buffer => Buffer.from(lines.join('\r\n') + '\r\n', 'utf8');

/** Five messages; the first UID of the mailbox is expunged, so UID = message number + 1. */
const MESSAGES: Array<{ raw: Buffer; flags: string[]; idate: string }> = [
  {
    raw: crlf([
      'From: Alice A <alice@a.onion>',
      'To: bob@b.onion',
      'Cc: carol@c.onion',
      'Subject: alpha report',
      'Date: Thu, 01 Jan 2026 10:00:00 +0000',
      '',
      'the quick brown fox',
    ]),
    flags: ['\\Seen', '\\Answered'],
    idate: '2026-01-10T12:00:00Z',
  },
  {
    raw: crlf([
      'From: bob@b.onion',
      'To: alice@a.onion',
      'Bcc: dave@d.onion',
      'Subject: beta',
      // 6 Feb in UTC; SENTON compares the day as written
      'Date: Thu, 05 Feb 2026 23:30:00 -0500',
      '',
      'lazy dog',
    ]),
    flags: ['\\Flagged', '$Work'],
    idate: '2026-02-05T12:00:00Z',
  },
  {
    raw: crlf([
      'From: carol@c.onion',
      'To: alice@a.onion',
      'Subject: alpha beta',
      'X-Tag: special',
      'Date: Tue, 10 Mar 2026 08:00:00 +0100',
      '',
      'fox and dog',
    ]),
    flags: ['\\Deleted', '\\Draft'],
    idate: '2026-03-10T12:00:00Z',
  },
  {
    raw: crlf(['From: dave@d.onion', 'To: alice@a.onion', 'Subject: gamma', 'Date: Sun, 15 Mar 2026 12:00:00 +0000', '', 'x'.repeat(3000)]),
    flags: [],
    idate: '2026-03-15T12:00:00Z',
  },
  {
    raw: crlf([
      'From: eve@e.onion',
      'To: alice@a.onion',
      'Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_Tartu?=',
      'Date: Fri, 20 Mar 2026 09:00:00 +0200',
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: quoted-printable',
      '',
      'S=C3=BCda on soe',
    ]),
    flags: ['\\Seen', '$Work'],
    idate: '2026-03-20T12:00:00Z',
  },
];

describe('SEARCH over the wire', () => {
  let dir: string;
  let store: MaildirStore;
  let server: ImapServer;
  let wire: ImapWire;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-search-'));
    store = new MaildirStore({ maildirFor: (user) => path.join(dir, 'mail', user) });
    await store.ensureUser(USER);
    const first = await store.append(USER, 'INBOX', crlf(['Subject: gone', '', 'x']), { flags: ['\\Deleted'] });
    await store.expunge(first.mailboxId, [first.uid]);
    for (const m of MESSAGES) await store.append(USER, 'INBOX', m.raw, { flags: m.flags, internalDate: new Date(m.idate) });
    server = await startOneUserImap(store, { user: USER, password: PASSWORD });
    wire = await ImapWire.connect(server.address()!.port);
    await wire.readLine();
    assert.match((await wire.command(`LOGIN ${USER} "${PASSWORD}"`)).tagged, /OK/);
    const sel = await wire.command('SELECT INBOX');
    assert.match(sel.text, /\* 5 EXISTS/);
  });

  after(async () => {
    wire?.close();
    await server?.close();
    await store?.close();
    await rm(dir, { recursive: true, force: true });
  });

  const parseResult = (text: string): number[] => {
    const m = /^\* SEARCH([\d ]*?)(?: \(MODSEQ \d+\))?\r\n/m.exec(text);
    assert.ok(m, `no SEARCH response in ${JSON.stringify(text)}`);
    return m[1].trim() === '' ? [] : m[1].trim().split(' ').map(Number);
  };
  const uidSearch = async (criteria: string): Promise<number[]> => {
    const r = await wire.command(`UID SEARCH ${criteria}`);
    assert.match(r.tagged, /^W\d+ OK/, `UID SEARCH ${criteria}: ${r.tagged}`);
    return parseResult(r.text);
  };

  it('every RFC 3501 key', async () => {
    const cases: Array<[string, number[]]> = [
      ['ALL', [2, 3, 4, 5, 6]],
      ['ANSWERED', [2]],
      ['UNANSWERED', [3, 4, 5, 6]],
      ['DELETED', [4]],
      ['UNDELETED', [2, 3, 5, 6]],
      ['DRAFT', [4]],
      ['UNDRAFT', [2, 3, 5, 6]],
      ['FLAGGED', [3]],
      ['UNFLAGGED', [2, 4, 5, 6]],
      ['SEEN', [2, 6]],
      ['UNSEEN', [3, 4, 5]],
      ['KEYWORD $Work', [3, 6]],
      ['UNKEYWORD $Work', [2, 4, 5]],
      ['RECENT', []],
      ['NEW', []],
      ['OLD', [2, 3, 4, 5, 6]],
      ['BCC dave', [3]],
      ['CC carol', [2]],
      ['FROM carol', [4]],
      ['FROM "Alice A"', [2]],
      ['TO bob', [2]],
      ['SUBJECT alpha', [2, 4]],
      ['SUBJECT "ALPHA BETA"', [4]],
      ['HEADER X-Tag special', [4]],
      ['HEADER x-tag ""', [4]],
      ['HEADER X-Missing ""', []],
      ['BODY fox', [2, 4]],
      ['BODY special', []],
      ['TEXT special', [4]],
      ['BEFORE 5-Feb-2026', [2]],
      ['ON 5-Feb-2026', [3]],
      ['SINCE 10-Mar-2026', [4, 5, 6]],
      ['SINCE "10-Mar-2026"', [4, 5, 6]],
      ['SENTBEFORE 5-Feb-2026', [2]],
      ['SENTON 5-Feb-2026', [3]],
      ['SENTSINCE 15-Mar-2026', [5, 6]],
      ['LARGER 2000', [5]],
      ['SMALLER 2000', [2, 3, 4, 6]],
      ['UID 3:4', [3, 4]],
      ['UID 5:*', [5, 6]],
      ['UID 100:*', [6]],
      ['UID *', [6]],
      ['UID 1', []],
      ['UID 2,4:5', [2, 4, 5]],
      ['2:3', [3, 4]],
      ['*', [6]],
      ['4:*', [5, 6]],
      ['*:4', [5, 6]],
      ['1,5', [2, 6]],
      ['9', []],
      ['NOT SEEN', [3, 4, 5]],
      ['OR SEEN FLAGGED', [2, 3, 6]],
      ['SEEN UNANSWERED', [6]],
      ['(SEEN)', [2, 6]],
      ['OLDER 60', [2, 3, 4, 5, 6]],
      ['YOUNGER 60', []],
      ['CHARSET UTF-8 SUBJECT tartu', [6]],
    ];
    for (const [criteria, expected] of cases) {
      assert.deepEqual(await uidSearch(criteria), expected, criteria);
    }
  });

  it('parenthesised groups are evaluated as groups (imap-core flattened them)', async () => {
    const cases: Array<[string, number[]]> = [
      // flattened: (alpha OR from bob) AND gamma = nothing
      ['OR (SUBJECT alpha FROM bob) SUBJECT gamma', [5]],
      // flattened: NOT alpha AND from carol = nothing
      ['NOT (SUBJECT alpha FROM carol)', [2, 3, 5, 6]],
      ['OR (NOT (SEEN ANSWERED)) (SUBJECT beta KEYWORD $Work)', [3, 4, 5, 6]],
      ['(OR (FROM alice) (FROM bob)) UNSEEN', [3]],
      ['OR (OR SEEN DELETED) (UID 5)', [2, 4, 5, 6]],
      // a sequence set right before ")" (imap-core's tokenizer answered BAD)
      ['NOT (SEEN 1:3)', [3, 4, 5, 6]],
      ['(UID 5:*)', [5, 6]],
      ['NOT (1:2)', [4, 5, 6]],
      ['((SEEN))', [2, 6]],
      ['NOT NOT SEEN', [2, 6]],
      ['OR NOT SEEN NOT UNSEEN', [2, 3, 4, 5, 6]],
    ];
    for (const [criteria, expected] of cases) {
      assert.deepEqual(await uidSearch(criteria), expected, criteria);
    }
  });

  it('SEARCH answers message numbers; UID SEARCH answers UIDs', async () => {
    const r = await wire.command('SEARCH SUBJECT alpha');
    assert.equal(r.text, '* SEARCH 1 3\r\n');
    const none = await wire.command('SEARCH SUBJECT nothing-matches');
    assert.equal(none.text, '* SEARCH\r\n');
    assert.match(none.tagged, /OK SEARCH completed/);
  });

  it('non-ASCII terms: literal with CHARSET UTF-8, and decoded subject/body', async () => {
    const term = Buffer.from('GRÜSSE', 'utf8');
    wire.write(Buffer.concat([Buffer.from(`L1 UID SEARCH CHARSET UTF-8 OR SUBJECT {${term.length}}\r\n`), term]));
    // the server asks for the literal first
    assert.match(await wire.readLine(), /^\+ /);
    const body = Buffer.from('süda', 'utf8');
    wire.write(Buffer.concat([Buffer.from(` BODY {${body.length}}\r\n`)]));
    assert.match(await wire.readLine(), /^\+ /);
    wire.write(Buffer.concat([body, Buffer.from('\r\n')]));
    const r = await wire.readTagged('L1');
    assert.match(r.tagged, /^L1 OK/);
    assert.deepEqual(parseResult(r.text), [6]);
    const grusse = Buffer.from('grüße', 'utf8');
    wire.write(Buffer.concat([Buffer.from(`L2 UID SEARCH CHARSET UTF-8 SUBJECT {${grusse.length}}\r\n`)]));
    assert.match(await wire.readLine(), /^\+ /);
    wire.write(Buffer.concat([grusse, Buffer.from('\r\n')]));
    const r2 = await wire.readTagged('L2');
    assert.deepEqual(parseResult(r2.text), [6]);
  });

  it('MODSEQ searches report the highest MODSEQ of the matches', async () => {
    const r = await wire.command('UID SEARCH MODSEQ "/flags/\\\\Seen" all 1 SEEN');
    assert.match(r.text, /^\* SEARCH 2 6 \(MODSEQ \d+\)\r\n$/);
    const [meta2, meta6] = await store.getMessages(`${(await store.openMailbox(USER, 'INBOX'))!.id}`, [2, 6]);
    assert.equal(Number(/MODSEQ (\d+)/.exec(r.text)![1]), Math.max(meta2.modseq, meta6.modseq));
    const high = await wire.command(`UID SEARCH MODSEQ ${meta6.modseq}`);
    assert.deepEqual(parseResult(high.text), [6]);
  });

  it('malformed criteria get BAD and the session goes on', async () => {
    for (const bad of ['FOO', 'SUBJECT', '(SEEN', 'SEEN)', 'BEFORE 31-Feb-2026', 'LARGER -1', 'UID 0:3', 'OR SEEN', '']) {
      const r = await wire.command(`UID SEARCH ${bad}`.trimEnd());
      assert.match(r.tagged, /^W\d+ BAD /, `${bad}: ${r.tagged}`);
    }
    const bad = await wire.command('SEARCH CHARSET X-UNKNOWN ALL');
    assert.match(bad.tagged, /NO \[BADCHARSET\]/);
    assert.deepEqual(await uidSearch('SEEN'), [2, 6]);
  });
});
