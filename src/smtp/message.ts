/**
 * Message helpers shared by the SMTP listeners: collecting DATA with the size and NUL
 * checks, and reading/adding/removing header fields without touching the rest of the bytes.
 */
import { randomBytes } from 'node:crypto';
import type { SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import type { Logger } from '../log/logger.js';
import { smtpError } from './onion-smtp-server.js';

export interface CollectedMessage {
  chunks: Buffer[];
  size: number;
}

/**
 * Reads a DATA stream to its end. Up to maxMessageSize bytes are kept (beyond that they are
 * counted and dropped: 552 5.3.4); NUL bytes anywhere give 554 5.6.0. A connection that goes
 * away before the final dot rejects with the stream's error (nothing is stored).
 */
export function collectMessage(stream: SMTPServerDataStream, maxMessageSize: number): Promise<CollectedMessage> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let oversized = false;
    let hasNul = false;
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (oversized) return;
      if (size > maxMessageSize) {
        oversized = true;
        chunks.length = 0;
        return;
      }
      if (!hasNul && chunk.includes(0)) hasNul = true;
      chunks.push(chunk);
    });
    stream.once('error', (err) => reject(err));
    stream.once('end', () => {
      if (oversized || stream.sizeExceeded) {
        reject(Object.assign(smtpError(552, '5.3.4', `Error: message exceeds fixed maximum message size ${maxMessageSize}`), { reason: 'size', size }));
        return;
      }
      if (hasNul) {
        reject(Object.assign(smtpError(554, '5.6.0', 'Error: message contains NUL characters'), { reason: 'nul', size }));
        return;
      }
      resolve({ chunks, size });
    });
  });
}

/**
 * smtp-server's onData for a listener: collects the message (collectMessage), hands it to
 * `deliver`, and answers with deliver's reply text, or with the rejection (logged).
 */
export function dataHandler(
  maxMessageSize: number,
  deliver: (session: SMTPServerSession, chunks: Buffer[], size: number) => Promise<string>,
  log: Logger,
): (stream: SMTPServerDataStream, session: SMTPServerSession, callback: (err?: Error | null, message?: string) => void) => void {
  return (stream, session, callback) => {
    collectMessage(stream, maxMessageSize)
      .then(({ chunks, size }) => deliver(session, chunks, size))
      .then(
        (reply) => callback(null, reply),
        (err: Error & { reason?: string; size?: number }) => {
          if (err.reason) log.info({ cid: session.id, size: err.size }, `message rejected: ${err.reason === 'size' ? 'too big' : 'NUL bytes'}`);
          callback(err);
        },
      );
  };
}

export interface HeaderField {
  /** Field name as written. */
  name: string;
  /** Unfolded value (line breaks of folding removed), without the leading white space. */
  value: string;
}

/**
 * The length of the header section: up to and including the empty line that ends it
 * (CRLF CRLF, or bare LF LF), or the whole message when there is no body.
 */
export function headerLength(raw: Buffer): number {
  // Only the first part of a message can be header; 1 MiB is far more than any real header.
  const limit = Math.min(raw.length, 1024 * 1024);
  for (let i = 0; i < limit; i++) {
    if (raw[i] !== 0x0a) continue;
    // A line break at i. The header ends if the next line is empty.
    if (raw[i + 1] === 0x0a) return i + 2;
    if (raw[i + 1] === 0x0d && raw[i + 2] === 0x0a) return i + 3;
  }
  // The very first line empty: no header at all.
  if (raw[0] === 0x0a) return 1;
  if (raw[0] === 0x0d && raw[1] === 0x0a) return 2;
  return limit;
}

/** Header fields of a message, in order (decoded as UTF-8: RFC 6532 allows it). */
export function parseHeader(raw: Buffer): HeaderField[] {
  const text = raw.subarray(0, headerLength(raw)).toString('utf8');
  const fields: HeaderField[] = [];
  for (const line of text.split(/\r?\n/)) {
    if (line === '') continue;
    if (/^[ \t]/.test(line)) {
      const last = fields[fields.length - 1];
      if (last) last.value += line;
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) continue; // not a header field (a broken message); ignored here
    fields.push({ name: line.slice(0, colon).trim(), value: line.slice(colon + 1).replace(/^[ \t]+/, '') });
  }
  return fields;
}

/** The fields with this name (case-insensitive). */
export function fieldsNamed(fields: HeaderField[], name: string): HeaderField[] {
  const n = name.toLowerCase();
  return fields.filter((f) => f.name.toLowerCase() === n);
}

/** Fields that name blind recipients (RFC 5322 3.6.3, 3.6.6): never sent on. */
export const BLIND_COPY_FIELDS: readonly string[] = ['Bcc', 'Resent-Bcc'];

/**
 * The message without the header fields of these names (case-insensitive), each with its
 * continuation lines. Every other byte stays as it was (line ends included; the body is not
 * looked at); without such a field the same buffer is returned.
 */
export function withoutFields(raw: Buffer, names: readonly string[]): Buffer {
  const doomed = new Set(names.map((n) => n.toLowerCase()));
  const end = headerLength(raw);
  const kept: Buffer[] = [];
  let removed = false;
  let dropping = false;
  let keptFrom = 0;
  for (let start = 0; start < end; ) {
    const lf = raw.indexOf(0x0a, start);
    const next = lf < 0 || lf >= end ? end : lf + 1;
    const first = raw[start];
    const blank = first === 0x0a || (first === 0x0d && raw[start + 1] === 0x0a);
    const continuation = !blank && (first === 0x20 || first === 0x09);
    if (!continuation) {
      const colon = blank ? -1 : raw.indexOf(0x3a, start);
      const name = colon > start && colon < next ? raw.subarray(start, colon).toString('latin1').trimEnd().toLowerCase() : null;
      const drop = name !== null && doomed.has(name);
      if (drop && !dropping) kept.push(raw.subarray(keptFrom, start));
      if (!drop && dropping) keptFrom = start;
      dropping = drop;
      removed ||= drop;
    }
    start = next;
  }
  if (!removed) return raw;
  kept.push(raw.subarray(dropping ? end : keptFrom));
  return Buffer.concat(kept);
}

/** A new Message-ID: `<random@domain>` (random only: no time stamp, no host name). */
export function newMessageId(domain: string): string {
  return `<${randomBytes(18).toString('base64url')}@${domain}>`;
}
