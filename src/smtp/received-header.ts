/**
 * The trace header we prepend to every message we accept (RFC 5321 section 4.4).
 *
 *   Received: from <helo>
 *           by <our domain> (onionpost) with <ESMTP|ESMTPS|ESMTPA|ESMTPSA|SMTP> id <queue id>
 *           for <recipient>; <RFC 5322 date>
 *
 * Privacy rules (DESIGN.md): no client IP (every onion client is 127.0.0.1 anyway and the
 * TCP-info part of the grammar is optional), no host name of this machine, and the time in
 * UTC (+0000) so the header does not reveal the server's time zone.
 */
import os from 'node:os';
import net from 'node:net';

export type ReceivedProtocol = 'SMTP' | 'ESMTP' | 'ESMTPS' | 'ESMTPA' | 'ESMTPSA';

export interface ReceivedHeaderInput {
  /** The HELO/EHLO argument exactly as the client gave it (may be absent or junk). */
  helo: string | false | null | undefined;
  /** Our primary domain (the onion name). */
  domain: string;
  protocol: ReceivedProtocol;
  /** Queue id; must be an RFC 5322 atom. */
  id: string;
  /** The envelope recipient, only when the transaction had exactly one. */
  recipient?: string;
  date?: Date;
  /**
   * Names that must never appear in the header (the machine's host name by default). A HELO
   * equal to one of them, or to its first label, or starting with "<first label>." is
   * replaced by "unknown": a client on this machine would otherwise copy our host name in.
   */
  hiddenNames?: string[];
}

/** RFC 3848 protocol keyword for a session. */
export function receivedProtocol(opts: { opening: string | false | null | undefined; secure: boolean; authenticated: boolean }): ReceivedProtocol {
  if ((opts.opening || '').toUpperCase() !== 'EHLO') {
    // Plain HELO: RFC 3848 registers no "SMTPS"/"SMTPA", and STARTTLS/AUTH need EHLO anyway.
    return 'SMTP';
  }
  return `ESMTP${opts.secure ? 'S' : ''}${opts.authenticated ? 'A' : ''}` as ReceivedProtocol;
}

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Returns the HELO name if it is a plain domain name we may print, otherwise "unknown".
 * Refused: IP addresses and address literals ([127.0.0.1], [IPv6:...]), anything that is not
 * a syntactically valid domain (so it cannot inject comments, ";" or line breaks), and the
 * host names in `hiddenNames`.
 */
export function sanitizeHelo(helo: string | false | null | undefined, hiddenNames: string[] = defaultHiddenNames()): string {
  const name = (helo || '').trim().toLowerCase().replace(/\.$/, '');
  if (!name || name.length > 253 || net.isIP(name) || name.startsWith('[')) {
    return 'unknown';
  }
  const labels = name.split('.');
  if (!labels.every((label) => LABEL.test(label))) {
    return 'unknown';
  }
  // All-numeric last label: an IPv4-like or otherwise bogus name, never a real domain.
  if (/^[0-9]+$/.test(labels[labels.length - 1]!)) {
    return 'unknown';
  }
  for (const hidden of hiddenNames) {
    const full = hidden.trim().toLowerCase().replace(/\.$/, '');
    if (!full) continue;
    const short = full.split('.')[0]!;
    if (name === full || name === short || name.startsWith(short + '.')) {
      return 'unknown';
    }
  }
  return name;
}

let hostNames: string[] | undefined;

/** The machine's host name, looked up once per process. */
function defaultHiddenNames(): string[] {
  if (!hostNames) {
    try {
      hostNames = [os.hostname()];
    } catch {
      hostNames = [];
    }
  }
  return hostNames;
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** RFC 5322 date-time in UTC, e.g. "Thu, 26 Nov 2026 19:45:07 +0000". */
export function rfc5322Date(date: Date): string {
  const pad = (n: number) => String(n).padStart(2, '0');
  return (
    `${DAYS[date.getUTCDay()]}, ${date.getUTCDate()} ${MONTHS[date.getUTCMonth()]} ${date.getUTCFullYear()} ` +
    `${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())} +0000`
  );
}

/** Only addresses that cannot break the header grammar go into the "for" clause. */
function printableRecipient(address: string | undefined): string | undefined {
  if (!address || address.length > 320) return undefined;
  // No whitespace, controls, angle brackets, ";" (ends the clauses), parentheses (comments),
  // quotes or backslashes. Non-ASCII is allowed (SMTPUTF8, RFC 6532 headers).
  if (/[\s\x00-\x1f\x7f<>;()"\\]/.test(address)) return undefined;
  return address;
}

/** The complete header field, folded, ending with CRLF. */
export function buildReceivedHeader(input: ReceivedHeaderInput): string {
  const from = sanitizeHelo(input.helo, input.hiddenNames);
  const date = rfc5322Date(input.date ?? new Date());
  const recipient = printableRecipient(input.recipient);
  let header = `Received: from ${from}\r\n\tby ${input.domain} (onionpost) with ${input.protocol} id ${input.id}`;
  header += recipient ? `\r\n\tfor <${recipient}>; ${date}\r\n` : `;\r\n\t${date}\r\n`;
  return header;
}
