/**
 * The SMTP DSN extension (RFC 3461) on our listeners: the syntax of its parameters, and
 * reading them from smtp-server's parsed commands.
 *
 * smtp-server (hideDSN: false) advertises DSN and parses RET, ENVID, NOTIFY and ORCPT, but
 * checks little of them (an ENVID or ORCPT that is not xtext passes; it decodes the values
 * before our handlers see them, so they can no longer be checked there). So the raw command
 * line is checked first (OnionSmtpServer's `checkParams` hook), with one clear
 * "501 5.5.4" reply per kind of mistake.
 */
import type { SMTPServerAddress } from 'smtp-server';
import { decodeXtext, isOrcpt, isXtext, parseNotify, type MessageDsn, type RecipientDsn } from '../delivery/dsn-params.js';

/** RFC 3461 4.4: at most 100 characters. */
const MAX_ENVID = 100;
/** RFC 3461 4.2: at most 500 characters. */
const MAX_ORCPT = 500;

/** The "KEY=value" parameters after the address, keys upper-cased (split like smtp-server does). */
function paramsOf(line: string): Array<[string, string | null]> {
  const colon = line.indexOf(':');
  if (colon < 0) return [];
  const tokens = line.slice(colon + 1).trim().split(/\s+/).slice(1);
  return tokens
    .filter((t) => t !== '')
    .map((t) => {
      const eq = t.indexOf('=');
      return eq < 0 ? [t.toUpperCase(), null] : [t.slice(0, eq).toUpperCase(), t.slice(eq + 1)];
    });
}

function checkEnvid(value: string): boolean {
  return value.length <= MAX_ENVID && isXtext(value) && /^[\x20-\x7e]+$/.test(decodeXtext(value));
}

function checkOrcpt(value: string): boolean {
  const semi = value.indexOf(';');
  return value.length <= MAX_ORCPT && semi > 0 && isXtext(value.slice(semi + 1)) && isOrcpt(decodeXtext(value));
}

const RULES: Record<'MAIL' | 'RCPT', Record<string, { ok: (value: string) => boolean; expected: string }>> = {
  MAIL: {
    RET: { ok: (v) => /^(FULL|HDRS)$/i.test(v), expected: 'FULL or HDRS' },
    ENVID: { ok: checkEnvid, expected: `xtext, at most ${MAX_ENVID} characters of printable US-ASCII` },
  },
  RCPT: {
    NOTIFY: { ok: (v) => parseNotify(v) !== null, expected: 'NEVER, or a comma-separated list of SUCCESS, FAILURE, DELAY' },
    ORCPT: { ok: checkOrcpt, expected: `addr-type;xtext (e.g. rfc822;user@example.onion), at most ${MAX_ORCPT} characters` },
  },
};

/**
 * Checks the DSN parameters of a MAIL or RCPT command line. Returns the reply text for a 501
 * ("5.5.4 ...") or null when they are fine (or absent). Other parameters are left to smtp-server.
 */
export function checkDsnParams(verb: 'MAIL' | 'RCPT', line: string): string | null {
  const rules = RULES[verb];
  for (const [key, value] of paramsOf(line)) {
    const rule = rules[key];
    if (!rule) continue;
    if (value === null || value === '') return `5.5.4 Error: the ${key} parameter needs a value: ${rule.expected} (RFC 3461)`;
    if (!rule.ok(value)) return `5.5.4 Error: bad ${key} parameter: expected ${rule.expected} (RFC 3461)`;
  }
  return null;
}

function arg(address: SMTPServerAddress, key: string): string | undefined {
  const value = address.args ? address.args[key] : undefined;
  return typeof value === 'string' && value !== '' ? value : undefined;
}

/**
 * RET and ENVID of an accepted MAIL FROM (already checked, decoded by smtp-server). Read
 * from the command's own parameters: smtp-server's `envelope.dsn` is filled before
 * onMailFrom runs and is not cleared when that refuses the sender, so a refused
 * "MAIL FROM:<x> RET=HDRS" would leave its RET to the next MAIL FROM of the session.
 */
export function messageDsnOf(mailFrom: SMTPServerAddress | false): MessageDsn {
  if (!mailFrom) return {};
  const ret = arg(mailFrom, 'RET')?.toUpperCase();
  const envid = arg(mailFrom, 'ENVID');
  return { ...(ret === 'FULL' || ret === 'HDRS' ? { ret } : {}), ...(envid !== undefined ? { envid } : {}) };
}

/** NOTIFY and ORCPT of an accepted RCPT TO (already checked, decoded by smtp-server). */
export function recipientDsnOf(rcpt: SMTPServerAddress): RecipientDsn {
  const notify = arg(rcpt, 'NOTIFY');
  const parsed = notify !== undefined ? parseNotify(notify) : null;
  const orcpt = arg(rcpt, 'ORCPT');
  return { ...(parsed ? { notify: parsed } : {}), ...(orcpt !== undefined && isOrcpt(orcpt) ? { orcpt } : {}) };
}
