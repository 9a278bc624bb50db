/**
 * Unit tests of the IMAP layer's pure parts: MIME section addressing, dates, text decoding,
 * the clear-text login decision, journal entries.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { clearTextLoginAllowed, isLoopbackAddress } from '../src/imap/auth.js';
import { parseImapDateTime, parseImapDay } from '../src/imap/imap-date.js';
import { extractSection, parseMime } from '../src/imap/mime-sections.js';
import { bodyText, decodeQuotedPrintable } from '../src/imap/mime-text.js';
import { toJournalEntry } from '../src/imap/notifier.js';
import { decodeSearchString, normalizeText } from '../src/imap/search.js';
import { decodeHeaderValue, parseSentDay } from '../src/imap/structure-cache.js';

const crlf = (lines: string[]): Buffer => Buffer.from(lines.join('\r\n'), 'utf8');

const NESTED = crlf([
  'From: =?UTF-8?Q?J=C3=BCri?= <juri@example.onion>',
  'Subject: nested',
  'Content-Type: multipart/mixed; boundary="outer"',
  '',
  'preamble',
  '--outer',
  'Content-Type: multipart/alternative; boundary=inner',
  '',
  '--inner',
  'Content-Type: text/plain; charset=utf-8',
  'Content-Transfer-Encoding: quoted-printable',
  '',
  'Gr=C3=BC=C3=9Fe, soft=',
  'break',
  '--inner',
  'Content-Type: text/html; charset=iso-8859-1',
  'Content-Transfer-Encoding: base64',
  '',
  Buffer.from('<p>caf\xe9 &amp; cr\xe8me</p>', 'latin1').toString('base64'),
  '--inner--',
  '--outer',
  'Content-Type: message/rfc822',
  '',
  'Subject: inner message',
  'X-Folded: one',
  '  two',
  '',
  'inner body',
  '--outer--',
  'epilogue',
  '',
]);

describe('imap: MIME sections are slices of the stored bytes', () => {
  const tree = parseMime(NESTED);
  const text = (path: string, type: string, headers?: string[]): string =>
    extractSection(NESTED, tree, { path, type, headers }).toString('utf8');

  it('BODY[] is the message and BODY[HEADER]+BODY[TEXT] reassemble it', () => {
    assert.ok(extractSection(NESTED, tree, { path: '', type: 'content' }).equals(NESTED));
    const header = extractSection(NESTED, tree, { path: '', type: 'header' });
    const body = extractSection(NESTED, tree, { path: '', type: 'text' });
    assert.ok(Buffer.concat([header, body]).equals(NESTED));
    assert.ok(header.toString().endsWith('\r\n\r\n'));
  });

  it('part numbers, MIME headers and the CRLF before a boundary', () => {
    assert.equal(text('1.1', 'content'), 'Gr=C3=BC=C3=9Fe, soft=\r\nbreak');
    assert.equal(text('1.1', 'mime'), 'Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n');
    assert.ok(text('1', 'content').startsWith('--inner\r\n'));
    assert.ok(text('1', 'content').endsWith('--inner--'));
    assert.equal(text('3', 'content'), '');
  });

  it('message/rfc822 parts: .HEADER, .TEXT, .1 and HEADER.FIELDS keep folding', () => {
    assert.equal(text('2', 'header'), 'Subject: inner message\r\nX-Folded: one\r\n  two\r\n\r\n');
    assert.equal(text('2', 'text'), 'inner body');
    assert.equal(text('2.1', 'content'), 'inner body');
    assert.equal(text('2', 'header.fields', ['x-folded']), 'X-Folded: one\r\n  two\r\n\r\n');
    assert.equal(text('', 'header.fields', ['subject', 'nope']), 'Subject: nested\r\n\r\n');
    assert.equal(text('', 'header.fields.not', ['subject', 'content-type']), 'From: =?UTF-8?Q?J=C3=BCri?= <juri@example.onion>\r\n\r\n');
    assert.equal(text('1.1', 'header'), '', 'HEADER of a non-message part is empty');
  });

  it('a single-part message: part 1 is its body', () => {
    const raw = crlf(['Subject: x', '', 'hello', '']);
    const t = parseMime(raw);
    assert.equal(extractSection(raw, t, { path: '1', type: 'content' }).toString(), 'hello\r\n');
    assert.equal(extractSection(raw, t, { path: '2', type: 'content' }).length, 0);
  });

  it('bare LF line ends are handled too', () => {
    const raw = Buffer.from('Subject: lf\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b--\n');
    const t = parseMime(raw);
    assert.equal(extractSection(raw, t, { path: '1', type: 'content' }).toString(), 'one');
    assert.equal(extractSection(raw, t, { path: '', type: 'header' }).toString(), 'Subject: lf\nContent-Type: multipart/mixed; boundary=b\n\n');
  });

  it('decoded body text covers QP soft breaks, base64 latin-1 HTML and attached messages', () => {
    const body = bodyText(NESTED, tree);
    assert.match(body, /Grüße, softbreak/);
    assert.match(body, /café & crème/);
    assert.match(body, /inner body/);
  });
});

describe('imap: small decoders', () => {
  it('APPEND date-times honour the zone; bad ones are refused', () => {
    assert.equal(parseImapDateTime('02-Mar-2026 10:00:05 +0200')?.toISOString(), '2026-03-02T08:00:05.000Z');
    assert.equal(parseImapDateTime(' 2-Mar-2026 10:00:05 -0130')?.toISOString(), '2026-03-02T11:30:05.000Z');
    assert.equal(parseImapDateTime('31-Feb-2026 10:00:05 +0000'), null);
    assert.equal(parseImapDateTime('2026-03-02'), null);
    assert.equal(parseImapDay('2-Mar-2026'), Date.UTC(2026, 2, 2) / 86400000);
  });

  it('sent dates use the calendar day as written', () => {
    assert.equal(parseSentDay('Mon, 2 Mar 2026 23:30:00 -0500'), Date.UTC(2026, 2, 2) / 86400000);
    assert.equal(parseSentDay('garbage'), null);
  });

  it('RFC 2047 header values and search strings decode to Unicode', () => {
    assert.equal(decodeHeaderValue('=?UTF-8?B?UMOkZXYgw7xtYmVy?='), 'Päev ümber');
    assert.equal(decodeHeaderValue('=?ISO-8859-1?Q?caf=E9?= au lait'), 'café au lait');
    assert.equal(decodeSearchString(Buffer.from('Päev').toString('latin1'), null), 'Päev');
    assert.equal(decodeSearchString(Buffer.from('café', 'latin1').toString('latin1'), 'ISO-8859-1'), 'café');
    assert.equal(normalizeText('A\r\n  B'), 'a b');
  });

  it('quoted-printable', () => {
    assert.equal(decodeQuotedPrintable(Buffer.from('a=3Db=\r\nc=\nd =XY')).toString(), 'a=bcd =XY');
  });

  it('clear-text login only over TLS or from loopback', () => {
    for (const a of ['127.0.0.1', '127.3.4.5', '::1', '::ffff:127.0.0.1', '0:0:0:0:0:0:0:1']) assert.ok(isLoopbackAddress(a), a);
    for (const a of ['10.0.0.1', '192.168.1.2', '::2', 'fe80::1', '', 'localhost']) assert.ok(!isLoopbackAddress(a), a);
    assert.equal(clearTextLoginAllowed({ secure: false, remoteAddress: '203.0.113.9' }), false);
    assert.equal(clearTextLoginAllowed({ secure: true, remoteAddress: '203.0.113.9' }), true);
    assert.equal(clearTextLoginAllowed({ secure: false, remoteAddress: '127.0.0.1' }), true);
  });

  it('journal entries get a unique _id and carry origin as ignore', () => {
    const a = toJournalEntry('mb', { command: 'FETCH', uid: 3, modseq: 7, flags: ['\\Seen'], origin: 's1' });
    const b = toJournalEntry('mb', { command: 'EXPUNGE', uid: 3, modseq: 8 });
    assert.notEqual(a._id, b._id);
    assert.equal(a.ignore, 's1');
    assert.deepEqual(a.flags, ['\\Seen']);
    assert.equal(b.ignore, undefined);
  });
});
