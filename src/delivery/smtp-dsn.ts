/**
 * Passing DSN requests (RFC 3461) on to the next hop with nodemailer's SMTP client.
 *
 * nodemailer sends RET/ENVID with MAIL FROM (envelope.dsn) when the server advertises DSN,
 * but only one NOTIFY/ORCPT for every recipient of a transaction; ours differ per recipient
 * (ORCPT always does). So the RCPT parameters come from here: the connection's own method
 * that formats them is replaced, for this one connection object, by one that looks up the
 * recipient being sent. This uses three internals of nodemailer's SMTPConnection
 * (`_sendRcpt`, `_getDsnRcptToArgs`, `_supportedExtensions`, checked at install time; the
 * package version is pinned); test/delivery-smtp-client proves the parameters on the wire.
 */
import type SMTPConnection from 'nodemailer/lib/smtp-connection';
import { encodeOrcpt, type OutboundDsn } from './dsn-params.js';

interface ConnectionInternals {
  _supportedExtensions: string[];
  _sendRcpt(recipient: string, callback: unknown): void;
  _getDsnRcptToArgs(): string;
}

export interface DsnControl {
  /** Whether the server advertised DSN (known after EHLO). */
  readonly supported: boolean;
  /** The parameters of the next transaction (null: none); returns MAIL FROM's part for nodemailer. */
  use(dsn: OutboundDsn | null): { ret?: string; envid?: string } | undefined;
}

function internals(conn: SMTPConnection): ConnectionInternals {
  const c = conn as unknown as Partial<ConnectionInternals>;
  if (typeof c._sendRcpt !== 'function' || typeof c._getDsnRcptToArgs !== 'function' || !Array.isArray(c._supportedExtensions)) {
    throw new Error('nodemailer SMTPConnection internals changed: cannot send per-recipient DSN parameters (see src/delivery/smtp-dsn.ts)');
  }
  return c as ConnectionInternals;
}

/** Installs per-recipient NOTIFY/ORCPT on a connection (before connect()). */
export function installDsn(conn: SMTPConnection): DsnControl {
  const c = internals(conn);
  let current: OutboundDsn | null = null;
  let recipient: string | null = null;
  const sendRcpt = c._sendRcpt.bind(c);
  c._sendRcpt = (address, callback) => {
    recipient = address;
    try {
      sendRcpt(address, callback);
    } finally {
      recipient = null;
    }
  };
  c._getDsnRcptToArgs = () => {
    if (!current || recipient === null || !c._supportedExtensions.includes('DSN')) return '';
    const params = current.recipients.get(recipient);
    const args: string[] = [];
    if (params?.notify) args.push(`NOTIFY=${params.notify.join(',')}`);
    if (params?.orcpt) args.push(`ORCPT=${encodeOrcpt(params.orcpt)}`);
    return args.length > 0 ? ` ${args.join(' ')}` : '';
  };
  return {
    get supported() {
      return c._supportedExtensions.includes('DSN');
    },
    use(dsn) {
      current = dsn;
      if (!dsn || (dsn.ret === undefined && dsn.envid === undefined)) return undefined;
      return { ...(dsn.ret ? { ret: dsn.ret } : {}), ...(dsn.envid !== undefined ? { envid: dsn.envid } : {}) };
    },
  };
}
