/**
 * Delivery status notifications (RFC 3464): bounces for messages that could not be delivered,
 * delay warnings for messages still being tried, and success reports for senders who asked
 * for them (RFC 3461 NOTIFY=SUCCESS).
 *
 *     From: Mail Delivery System <MAILER-DAEMON@<primary domain>>
 *     Auto-Submitted: auto-replied
 *     Content-Type: multipart/report; report-type=delivery-status; boundary=...
 *
 *     1. text/plain                what happened, for people
 *     2. message/delivery-status   (Original-Envelope-Id), Reporting-MTA, Arrival-Date, then
 *                                  per recipient (Original-Recipient), Final-Recipient,
 *                                  Action, Status, Remote-MTA, Diagnostic-Code,
 *                                  Last-Attempt-Date (Will-Retry-Until)
 *     3. text/rfc822-headers       the original message's header, or
 *        message/rfc822            the whole original message (a failure report whose
 *                                  sender did not ask for RET=HDRS; the caller decides)
 *
 * The envelope sender of a DSN is the null sender `<>` (the scheduler queues it so): a DSN
 * that cannot be delivered is dropped, never answered with another DSN, so bounces cannot loop.
 * Times are in UTC (no time zone leak), the Message-ID uses the primary domain.
 */
import { randomBytes } from 'node:crypto';
import { rfc5322Date } from '../smtp/received-header.js';

/** RFC 3464 2.3.3. */
export type DsnAction = 'failed' | 'delayed' | 'delivered' | 'relayed' | 'expanded';

export interface DsnRecipient {
  /** The envelope recipient (Final-Recipient: rfc822; ...). */
  address: string;
  /** The sender's ORCPT, decoded ("rfc822;address"): Original-Recipient. */
  originalRecipient?: string;
  action: DsnAction;
  /** RFC 3463 status, e.g. "5.1.1" or "4.4.7". */
  status: string;
  /** The server that gave the reply (Remote-MTA: dns; ...), when one did. */
  remoteMta?: string;
  /**
   * What went wrong: an SMTP reply (type "smtp"), or our own description of a failure that
   * came without one (type "X-Onionpost": a Tor connection error, an expiry, a local problem).
   */
  diagnostic?: { type: 'smtp' | 'X-Onionpost'; text: string };
  /** Epoch ms of the last attempt. */
  lastAttempt?: number;
  /** Delayed: until when the queue keeps trying (epoch ms). */
  willRetryUntil?: number;
}

export interface DsnInput {
  /** Our primary domain: Reporting-MTA, From (MAILER-DAEMON@), Message-ID. */
  reportingDomain: string;
  /** The original message's queue id. */
  queueId: string;
  /** When the original message entered the queue (epoch ms). */
  arrivalDate: number;
  /** The original envelope sender: the DSN's recipient (To:). Never empty. */
  sender: string;
  recipients: DsnRecipient[];
  /** The original message's header section (may be empty when the message is gone). */
  originalHeader: Buffer;
  /** The whole original message: returned as message/rfc822 instead of the header. */
  originalMessage?: Buffer;
  /** The sender's ENVID, decoded: Original-Envelope-Id. */
  envid?: string;
  now?: Date;
}

/** The RFC 3463 status in an SMTP reply ("550 5.1.1 <x>: ..." -> "5.1.1"), or null. */
export function enhancedCodeOf(reply: string | undefined): string | null {
  const m = /^\s*\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})(?=\s|$)/.exec(reply ?? '');
  return m ? m[1]! : null;
}

/**
 * The Status of a recipient: the reply's own enhanced code when it has one that fits the
 * outcome's class, else a generic one of the right class.
 */
export function dsnStatus(options: { reply?: string; code?: number; permanent: boolean; fallback?: string }): string {
  const cls = options.permanent ? '5' : '4';
  const own = enhancedCodeOf(options.reply);
  if (own && own.startsWith(cls)) return own;
  if (options.fallback && options.fallback.startsWith(cls)) return options.fallback;
  return `${cls}.0.0`;
}

/** One physical line, no control characters, at most `max` characters (header and DSN field values). */
function oneLine(text: string, max = 900): string {
  const flat = text.replace(/\r?\n/g, ' ').replace(/[\x00-\x1f\x7f]/g, ' ').replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 3)}...` : flat;
}

/** Folds a long field at spaces (RFC 5322 2.2.3), CRLF line ends, continuation lines indented. */
function fold(field: string): string {
  const limit = 76;
  if (field.length <= limit) return field;
  const words = field.split(' ');
  const lines: string[] = [];
  let line = '';
  for (const w of words) {
    if (line && line.length + 1 + w.length > limit) {
      lines.push(line);
      line = ` ${w}`;
    } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(line);
  return lines.join('\r\n');
}

function toCrlf(text: string): string {
  return text.replace(/\r?\n/g, '\r\n');
}

function isAscii(text: string | Buffer): boolean {
  // eslint-disable-next-line no-control-regex
  return typeof text === 'string' ? /^[\x00-\x7f]*$/.test(text) : !text.some((b) => b > 0x7f);
}

/** The Message-ID field value of a header section, if there is one. */
function originalMessageId(header: string): string | null {
  const m = /^message-id:[ \t]*(<[^>\r\n]+>)/im.exec(header);
  return m ? m[1]! : null;
}

const SUCCESS_ACTIONS: ReadonlySet<DsnAction> = new Set(['delivered', 'relayed', 'expanded']);

function humanPart(input: DsnInput, failed: DsnRecipient[], delayed: DsnRecipient[], succeeded: DsnRecipient[]): string {
  const lines: string[] = [];
  lines.push(`This is the mail system at ${input.reportingDomain}.`, '');
  if (failed.length > 0) {
    lines.push(
      `I'm sorry to have to inform you that your message could not be delivered to ${failed.length === 1 ? 'one recipient' : `${failed.length} recipients`}.`,
      `The reason is given below. ${input.originalMessage ? 'Your message is attached.' : 'The header of your message is attached.'}`,
      '',
    );
    for (const r of failed) lines.push(`<${r.address}>: ${describeRecipient(r)}`, '');
  }
  if (delayed.length > 0) {
    if (failed.length > 0) lines.push('Delivery to these recipients is delayed; the mail system keeps trying:', '');
    else
      lines.push(
        'This is a warning only: you do not need to send your message again.',
        `Delivery to ${delayed.length === 1 ? 'this recipient' : 'these recipients'} has been delayed; the mail system keeps trying.`,
        '',
      );
    for (const r of delayed) {
      const until = r.willRetryUntil ? ` It gives up at ${rfc5322Date(new Date(r.willRetryUntil))}.` : '';
      lines.push(`<${r.address}>: ${describeRecipient(r)}${until}`, '');
    }
  }
  if (succeeded.length > 0) {
    lines.push('As you asked, this is a report of successful delivery:', '');
    for (const r of succeeded) lines.push(`<${r.address}>: ${describeSuccess(r)}`, '');
  }
  lines.push(`Queue id: ${input.queueId}`);
  return lines.map((l) => oneLine(l, 2000)).join('\r\n') + '\r\n';
}

function describeRecipient(r: DsnRecipient): string {
  const text = r.diagnostic ? oneLine(r.diagnostic.text) : `status ${r.status}`;
  if (r.remoteMta && r.diagnostic?.type === 'smtp') return `host ${r.remoteMta} said: ${text}`;
  return text;
}

function describeSuccess(r: DsnRecipient): string {
  switch (r.action) {
    case 'delivered':
      return 'delivered to the mailbox.';
    case 'expanded':
      return 'delivered to the members of this address (an alias); there are no further reports for them.';
    default:
      return `handed over to ${r.remoteMta ?? 'the next mail server'}, which does not send delivery reports; this is the last report for this recipient.`;
  }
}

/**
 * A value the sender gave (ENVID, ORCPT), exactly as given: RFC 3464 asks for the original
 * spelling, so spaces are kept; anything but printable US-ASCII (the SMTP layer lets
 * nothing else through) becomes "?", so the field stays one line.
 */
function asGiven(value: string, max: number): string {
  return value.replace(/[^\x20-\x7e]/g, '?').slice(0, max);
}

/** "rfc822;addr" -> "rfc822; addr" (the address as given). */
function typedAddress(value: string): string {
  const semi = value.indexOf(';');
  return semi < 0 ? `rfc822; ${asGiven(value, 500)}` : `${asGiven(value.slice(0, semi), 40)}; ${asGiven(value.slice(semi + 1), 500)}`;
}

function statusPart(input: DsnInput, now: Date): string {
  // RFC 3464 2.2 and 2.3 give the order of the fields; ours (X-) come last.
  const fields: string[] = [];
  if (input.envid !== undefined) fields.push(`Original-Envelope-Id: ${asGiven(input.envid, 100)}`);
  fields.push(`Reporting-MTA: dns; ${input.reportingDomain}`);
  fields.push(`Arrival-Date: ${rfc5322Date(new Date(input.arrivalDate))}`);
  fields.push(`X-Onionpost-Queue-ID: ${input.queueId}`);
  const blocks = [fields.join('\r\n')];
  for (const r of input.recipients) {
    const f: string[] = [];
    if (r.originalRecipient) f.push(`Original-Recipient: ${typedAddress(r.originalRecipient)}`);
    f.push(`Final-Recipient: rfc822; ${oneLine(r.address, 500)}`);
    f.push(`Action: ${r.action}`);
    f.push(`Status: ${r.status}`);
    if (r.remoteMta) f.push(`Remote-MTA: dns; ${oneLine(r.remoteMta, 255)}`);
    if (r.diagnostic) f.push(fold(`Diagnostic-Code: ${r.diagnostic.type}; ${oneLine(r.diagnostic.text)}`));
    f.push(`Last-Attempt-Date: ${rfc5322Date(new Date(r.lastAttempt ?? now.getTime()))}`);
    if (r.action === 'delayed' && r.willRetryUntil) f.push(`Will-Retry-Until: ${rfc5322Date(new Date(r.willRetryUntil))}`);
    blocks.push(f.join('\r\n'));
  }
  return blocks.join('\r\n\r\n') + '\r\n';
}

/** The Subject of a report: the worst news it carries. */
function subjectOf(failed: number, delayed: number): string {
  if (failed > 0) return 'Undelivered Mail Returned to Sender';
  if (delayed > 0) return 'Delayed Mail (still being retried)';
  return 'Successful Mail Delivery Report';
}

/** The complete DSN message (CRLF line ends), ready for the queue or a local INBOX. */
export function buildDsn(input: DsnInput): Buffer {
  if (!input.sender) throw new Error('buildDsn: no DSN for the null sender');
  if (input.recipients.length === 0) throw new Error('buildDsn: no recipients to report');
  const now = input.now ?? new Date();
  const failed = input.recipients.filter((r) => r.action === 'failed');
  const delayed = input.recipients.filter((r) => r.action === 'delayed');
  const succeeded = input.recipients.filter((r) => SUCCESS_ACTIONS.has(r.action));
  const boundary = `=_onionpost_${randomBytes(12).toString('hex')}`;
  // latin1: the original is copied byte for byte (UTF-8 or not), only line ends become CRLF.
  const returned = input.originalMessage
    ? toCrlf(input.originalMessage.toString('latin1')).replace(/(\r\n)?$/, '\r\n')
    : toCrlf(input.originalHeader.toString('latin1')).replace(/(\r\n)*$/, '\r\n');
  const human = humanPart(input, failed, delayed, succeeded);
  const status = statusPart(input, now);
  const origId = originalMessageId(input.originalMessage ? returned.slice(0, returned.search(/\r\n\r\n|$/)) : returned);

  const top: string[] = [
    `Date: ${rfc5322Date(now)}`,
    `From: Mail Delivery System <MAILER-DAEMON@${input.reportingDomain}>`,
    `To: <${oneLine(input.sender, 500)}>`,
    `Subject: ${subjectOf(failed.length, delayed.length)}`,
    `Message-ID: <${randomBytes(18).toString('base64url')}@${input.reportingDomain}>`,
  ];
  if (origId) top.push(`In-Reply-To: ${origId}`, `References: ${origId}`);
  top.push(
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="${boundary}"`,
  );
  const cte = (text: string): string => (isAscii(text) ? '7bit' : '8bit');
  const what = failed.length > 0 ? 'Undelivered Message' : delayed.length > 0 ? 'Delayed Message' : 'Delivered Message';
  const returnedHead = input.originalMessage
    ? `Content-Description: ${what}\r\nContent-Type: message/rfc822`
    : `Content-Description: ${what} Headers\r\nContent-Type: text/rfc822-headers`;
  const marker = `\u0000original-${boundary}\u0000`;
  const parts = [
    `Content-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: ${cte(human)}\r\n\r\n${human}`,
    `Content-Description: Delivery report\r\nContent-Type: message/delivery-status${isAscii(status) ? '' : '; charset=utf-8'}\r\nContent-Transfer-Encoding: ${cte(status)}\r\n\r\n${status}`,
    `${returnedHead}\r\nContent-Transfer-Encoding: ${cte(returned)}\r\n\r\n${marker}`,
  ];
  const body = `This is a MIME-encapsulated message (a delivery status notification, RFC 3464).\r\n\r\n${parts.map((p) => `--${boundary}\r\n${p}`).join('\r\n')}\r\n--${boundary}--\r\n`;
  const [before, after] = `${top.join('\r\n')}\r\n\r\n${body}`.split(marker) as [string, string];
  return Buffer.concat([Buffer.from(before, 'utf8'), Buffer.from(returned, 'latin1'), Buffer.from(after, 'utf8')]);
}
