/**
 * Deterministic benchmark mail: the same seed gives the same bytes on every machine.
 *
 * Mix (by count): 70 % plain text 1-8 KiB (some quoted-printable, some UTF-8), 20 %
 * multipart/alternative text + HTML 8-40 KiB, 8 % with a base64 attachment 40-250 KiB,
 * 2 % large attachments 250-600 KiB; about 27 KiB per message on average.
 *
 * Search terms are planted at known rates so the benchmark can check every server's
 * answer: SUBJECT_TERM in ~1 % of subjects, BODY_TERM in ~2 % of text bodies (also inside
 * quoted-printable parts, where soft line breaks may split it), TEXT_TERM in ~1 % of
 * messages, half of them in a header, half in the body.
 */

export const SUBJECT_TERM = 'quarterly';
export const BODY_TERM = 'onionmarker';
export const TEXT_TERM = 'zebracorn';

export interface BenchMessage {
  raw: Buffer;
  flags: string[];
  subjectHit: boolean;
  bodyHit: boolean;
  textHit: boolean;
}

/** mulberry32: small, fast, good enough for test data. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS = (
  'the of and to in is that for it as was with be by on not he this are or his from at which but have an they ' +
  'you were her she there been one all we their has would when if so no more out up into do any your what about ' +
  'onion relay circuit mail server message folder report meeting budget review draft release network hidden ' +
  'service tunnel garden river mountain coffee window letter reply forward archive invoice schedule project ' +
  'team update summary notes agenda weekly monthly plan design test build deploy monitor alert status'
).split(' ');
const UTF8_WORDS = ['Grüße', 'Straße', 'café', 'naïve', 'Ελλάδα', 'Москва', '日本語', 'ação', 'smörgåsbord', 'Zürich'];
const NAMES = ['Alice Smith', 'Bob Jones', 'Carol White', 'Dave Brown', 'Eve Black', 'Frank Green', 'Grace Hall', 'Heidi Klein', 'Ivan Petrov', 'Judy Lee'];

function pick<T>(r: () => number, list: readonly T[]): T {
  return list[Math.floor(r() * list.length)];
}

function sentence(r: () => number, utf8: boolean): string {
  const n = 6 + Math.floor(r() * 12);
  const words: string[] = [];
  for (let i = 0; i < n; i++) words.push(utf8 && r() < 0.1 ? pick(r, UTF8_WORDS) : pick(r, WORDS));
  const s = words.join(' ');
  return s[0].toUpperCase() + s.slice(1) + '.';
}

/** Text of about `bytes` bytes in paragraphs of lines <= 76 chars, `term` planted once if given. */
function text(r: () => number, bytes: number, utf8: boolean, term: string | null): string {
  const lines: string[] = [];
  let size = 0;
  let line = '';
  const plantAt = term ? Math.floor(r() * bytes) : -1;
  let planted = false;
  while (size < bytes) {
    let s = sentence(r, utf8);
    if (!planted && plantAt >= 0 && size >= plantAt) {
      s = s.replace(/ /, ` ${term} `);
      planted = true;
    }
    for (const w of s.split(' ')) {
      if (line.length + w.length + 1 > 72) {
        lines.push(line);
        size += line.length + 2;
        line = '';
      }
      line = line ? `${line} ${w}` : w;
    }
    if (r() < 0.15) {
      lines.push(line, '');
      size += line.length + 4;
      line = '';
    }
  }
  if (line) lines.push(line);
  if (term && !planted) lines.push(`See ${term} below.`);
  return lines.join('\r\n');
}

/** Quoted-printable (RFC 2045) with soft line breaks at 76 columns. */
function qp(s: string): string {
  const out: string[] = [];
  for (const line of s.split('\r\n')) {
    let enc = '';
    for (const byte of Buffer.from(line, 'utf8')) {
      enc += (byte >= 33 && byte <= 126 && byte !== 61) || byte === 32 ? String.fromCharCode(byte) : `=${byte.toString(16).toUpperCase().padStart(2, '0')}`;
    }
    if (enc.endsWith(' ')) enc = enc.slice(0, -1) + '=20';
    while (enc.length > 76) {
      let cut = 75;
      // never cut an =XX escape
      const eq = enc.lastIndexOf('=', cut);
      if (eq > cut - 3) cut = eq;
      out.push(enc.slice(0, cut) + '=');
      enc = enc.slice(cut);
    }
    out.push(enc);
  }
  return out.join('\r\n');
}

function base64Lines(buf: Buffer): string {
  return buf.toString('base64').replace(/.{76}/g, '$&\r\n');
}

function randomBytes(r: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i += 4) {
    const v = Math.floor(r() * 4294967296);
    b[i] = v & 0xff;
    if (i + 1 < n) b[i + 1] = (v >>> 8) & 0xff;
    if (i + 2 < n) b[i + 2] = (v >>> 16) & 0xff;
    if (i + 3 < n) b[i + 3] = (v >>> 24) & 0xff;
  }
  return b;
}

function between(r: () => number, lo: number, hi: number): number {
  return lo + Math.floor(r() * (hi - lo));
}

export function generateMessages(count: number, seed = 20261126): BenchMessage[] {
  const r = rng(seed);
  const out: BenchMessage[] = [];
  const base = Date.UTC(2026, 0, 1);
  for (let i = 0; i < count; i++) {
    const subjectHit = r() < 0.01;
    const bodyHit = r() < 0.02;
    const textHit = r() < 0.01;
    const textInHeader = textHit && r() < 0.5;
    const utf8 = r() < 0.2;
    const from = pick(r, NAMES);
    const subject = `${subjectHit ? `${SUBJECT_TERM[0].toUpperCase()}${SUBJECT_TERM.slice(1)} ` : ''}${sentence(r, false).slice(0, 40 + Math.floor(r() * 20)).replace(/\.$/, '')}`;
    const date = new Date(base + i * 3_600_000 + Math.floor(r() * 3_000_000));
    const headers = [
      `Return-Path: <${from.split(' ')[0].toLowerCase()}@example.onion>`,
      `From: ${from} <${from.split(' ')[0].toLowerCase()}@example.onion>`,
      `To: Bench User <bench@localhost>${textInHeader ? `, ${TEXT_TERM} list <list@example.onion>` : ''}`,
      `Subject: ${subject}`,
      `Date: ${date.toUTCString().replace('GMT', '+0000')}`,
      `Message-ID: <bench.${seed}.${i}@example.onion>`,
      'MIME-Version: 1.0',
    ];
    if (r() < 0.3) headers.push(`In-Reply-To: <bench.${seed}.${Math.max(0, i - 1 - Math.floor(r() * 20))}@example.onion>`);
    const kind = r();
    const bodyTerm = (): string | null => (bodyHit ? BODY_TERM : textHit && !textInHeader ? TEXT_TERM : null);
    let body: string[];
    if (kind < 0.7) {
      const size = between(r, 1024, 8192) - 400;
      const useQp = r() < 0.3;
      const t = text(r, size, utf8 || useQp, bodyTerm());
      headers.push(`Content-Type: text/plain; charset=${utf8 || useQp ? 'utf-8' : 'us-ascii'}`);
      headers.push(`Content-Transfer-Encoding: ${useQp ? 'quoted-printable' : utf8 ? '8bit' : '7bit'}`);
      body = [useQp ? qp(t) : t];
    } else if (kind < 0.9) {
      const size = between(r, 8192, 40960);
      const t = text(r, Math.floor(size / 3), utf8, bodyTerm());
      const html = `<html><body>${t
        .split('\r\n\r\n')
        .map((p) => `<p>${p.replace(/\r\n/g, ' ')}</p>`)
        .join('\r\n')}</body></html>`;
      const b = `alt-${seed}-${i}`;
      headers.push(`Content-Type: multipart/alternative; boundary="${b}"`);
      body = [
        'This is a multi-part message in MIME format.',
        `--${b}`,
        'Content-Type: text/plain; charset=utf-8',
        'Content-Transfer-Encoding: quoted-printable',
        '',
        qp(t),
        `--${b}`,
        'Content-Type: text/html; charset=utf-8',
        'Content-Transfer-Encoding: quoted-printable',
        '',
        qp(html + '\r\n' + html),
        `--${b}--`,
        '',
      ];
    } else {
      const large = kind >= 0.98;
      const attSize = large ? between(r, 250_000, 600_000) : between(r, 40_000, 250_000);
      const t = text(r, between(r, 500, 3000), utf8, bodyTerm());
      const b = `mix-${seed}-${i}`;
      const name = large ? `scan-${i}.pdf` : `photo-${i}.jpg`;
      headers.push(`Content-Type: multipart/mixed; boundary="${b}"`);
      body = [
        `--${b}`,
        `Content-Type: text/plain; charset=${utf8 ? 'utf-8' : 'us-ascii'}`,
        `Content-Transfer-Encoding: ${utf8 ? '8bit' : '7bit'}`,
        '',
        t,
        `--${b}`,
        `Content-Type: ${large ? 'application/pdf' : 'image/jpeg'}; name="${name}"`,
        `Content-Disposition: attachment; filename="${name}"`,
        'Content-Transfer-Encoding: base64',
        '',
        base64Lines(randomBytes(r, Math.floor((attSize * 3) / 4))),
        `--${b}--`,
        '',
      ];
    }
    const raw = Buffer.from([...headers, '', ...body].join('\r\n') + '\r\n', 'utf8');
    const flags: string[] = [];
    if (r() < 0.7) flags.push('\\Seen');
    if (r() < 0.05) flags.push('\\Flagged');
    if (r() < 0.1) flags.push('\\Answered');
    if (r() < 0.03) flags.push('$Important');
    out.push({ raw, flags, subjectHit, bodyHit, textHit });
  }
  return out;
}
