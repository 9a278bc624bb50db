/**
 * What a sender asked for with the SMTP DSN extension (RFC 3461), as the queue keeps it and
 * the delivery code honours it:
 *
 * - per message: RET (FULL: a failure report returns the whole message; HDRS: its header
 *   only) and ENVID (the sender's envelope id, echoed as Original-Envelope-Id);
 * - per recipient: NOTIFY (NEVER, or any of SUCCESS, FAILURE, DELAY) and ORCPT (the
 *   original recipient, "addr-type;address", echoed as Original-Recipient).
 *
 * Values are kept decoded (no xtext). Absent values mean the RFC 3461 defaults: NOTIFY
 * FAILURE,DELAY (DELAY is at the implementation's discretion; we send delay warnings) and
 * RET FULL (a failure report carries the message, within a size limit).
 */

export type NotifyKeyword = 'SUCCESS' | 'FAILURE' | 'DELAY';
/** ['NEVER'], or a non-empty set of the keywords. */
export type NotifyValue = NotifyKeyword | 'NEVER';
export type DsnRet = 'FULL' | 'HDRS';

export interface RecipientDsn {
  notify?: NotifyValue[];
  /** Decoded ORCPT: "<addr-type>;<address>", e.g. "rfc822;alice@example.onion". */
  orcpt?: string;
}

export interface MessageDsn {
  ret?: DsnRet;
  envid?: string;
}

/** The parameters of a transaction for the outbound SMTP client. */
export interface OutboundDsn extends MessageDsn {
  /** Per recipient address (as given to the transaction). */
  recipients: ReadonlyMap<string, RecipientDsn>;
}

/** What a success report says about a recipient (RFC 3464 Action). */
export type SuccessAction = 'delivered' | 'relayed' | 'expanded';

const KEYWORDS: readonly NotifyValue[] = ['NEVER', 'SUCCESS', 'FAILURE', 'DELAY'];
const DEFAULT_NOTIFY: readonly NotifyKeyword[] = ['FAILURE', 'DELAY'];

/** Whether a notification of this kind is wanted (absent NOTIFY: FAILURE and DELAY). */
export function wants(notify: readonly NotifyValue[] | undefined, kind: NotifyKeyword): boolean {
  return (notify ?? DEFAULT_NOTIFY).includes(kind);
}

/**
 * A NOTIFY value from text ("success,failure"): upper-cased, checked (NEVER alone, no
 * repeats, nothing else); null when it is not valid.
 */
export function parseNotify(text: string): NotifyValue[] | null {
  const values = text.split(',').map((v) => v.trim().toUpperCase());
  if (values.length === 0 || values.some((v) => !KEYWORDS.includes(v as NotifyValue))) return null;
  if (new Set(values).size !== values.length) return null;
  if (values.includes('NEVER') && values.length > 1) return null;
  return values as NotifyValue[];
}

export function isNotifyList(value: unknown): value is NotifyValue[] {
  return Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === 'string' && KEYWORDS.includes(v as NotifyValue)) && parseNotify(value.join(',')) !== null;
}

/** RFC 3461 4: xtext = *( xchar / hexchar ); xchar is "!".."~" without "+" and "="; hexchar "+" 2 upper-case hex digits. */
export function isXtext(text: string): boolean {
  return /^(?:[!-*,-<>-~]|\+[0-9A-F]{2})*$/.test(text);
}

export function decodeXtext(text: string): string {
  return text.replace(/\+([0-9A-F]{2})/g, (_m, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

/** xtext of a string of ASCII (or byte-valued) characters. */
export function encodeXtext(text: string): string {
  let out = '';
  for (const ch of text) {
    const c = ch.charCodeAt(0);
    out += c < 0x21 || c > 0x7e || ch === '+' || ch === '=' ? `+${c.toString(16).toUpperCase().padStart(2, '0')}` : ch;
  }
  return out;
}

/** ORCPT on the wire: the addr-type as it is, the address in xtext. */
export function encodeOrcpt(orcpt: string): string {
  const semi = orcpt.indexOf(';');
  return `${orcpt.slice(0, semi)};${encodeXtext(orcpt.slice(semi + 1))}`;
}

/** A decoded ORCPT value is "atom;address" with printable US-ASCII only. */
export function isOrcpt(value: string): boolean {
  return /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+;[\x20-\x7e]+$/.test(value);
}

/**
 * How a recipient's DSN request carries over when one of our addresses expands to `targets`
 * destinations (RFC 3461 6.2.7): to exactly one, everything goes along; to several, the
 * expansion itself is the success ("expanded") and the new recipients are asked for
 * failures and delays only. ORCPT keeps the address the sender used.
 */
export function forwardedDsn(original: string, dsn: RecipientDsn, targets: number): RecipientDsn {
  const out: RecipientDsn = {};
  if (dsn.notify) {
    const kept = targets > 1 ? dsn.notify.filter((v) => v !== 'SUCCESS') : dsn.notify;
    out.notify = kept.length > 0 ? kept : ['NEVER'];
  }
  const orcpt = dsn.orcpt ?? (/^[\x21-\x7e]+$/.test(original) ? `rfc822;${original}` : undefined);
  if (orcpt) out.orcpt = orcpt;
  return out;
}

/**
 * The success to report at once for a recipient that expanded into local `users` and
 * `remote` addresses, or null: a single remote target reports on its own (from the queue).
 */
export function localSuccess(users: number, remote: number): 'delivered' | 'expanded' | null {
  if (users + remote > 1) return 'expanded';
  return users === 1 ? 'delivered' : null;
}
