/**
 * SMTP over an already open stream (normally from `openTorConnection`), with nodemailer's SMTP
 * client: EHLO with our onion name, STARTTLS when offered (by default without certificate
 * verification: an onion address authenticates its host), MAIL/RCPT/DATA (pipelined when the
 * server offers PIPELINING), QUIT.
 *
 * - `openSmtpSession` sets a session up once (greeting, EHLO, STARTTLS, EHLO) and then carries
 *   several transactions, one after the other (`send`): the scheduler delivers every queued
 *   message for one domain over one connection, i.e. one Tor circuit. After a transaction that
 *   ended with the reply to the message data, the next MAIL starts a new one (RFC 5321 4.1.4);
 *   after one that failed half-way (MAIL, RCPT or DATA refused) an RSET comes first.
 * - `runSmtpTransaction`: one session, one message, QUIT.
 * - DSN (RFC 3461): a transaction may carry the sender's DSN request; when the server
 *   advertises DSN, RET/ENVID go with MAIL FROM and NOTIFY/ORCPT with each RCPT TO
 *   (smtp-dsn.ts), and the result says so (`dsn`): that server reports from then on.
 *
 * Never throws for what the server or the network does: the result says, per recipient, whether
 * the message was delivered, failed temporarily (retry) or permanently (bounce).
 */
import type net from 'node:net';
import type { Readable } from 'node:stream';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import type { OutboundDsn } from './dsn-params.js';
import { installDsn, type DsnControl } from './smtp-dsn.js';

export type RecipientStatus = 'delivered' | 'temporary' | 'permanent';

export interface RecipientResult {
  recipient: string;
  status: RecipientStatus;
  /** SMTP reply code, when the server gave one. */
  code?: number;
  /** The server's reply, or what went wrong. */
  response: string;
}

export interface SmtpTransactionResult {
  recipients: RecipientResult[];
  /** Whether the message went over TLS (STARTTLS). */
  tls: boolean;
  /** Where a failure that hit every recipient happened (CONN, EHLO, STARTTLS, MAIL FROM, RCPT TO, DATA...). */
  failedAt?: string;
  /** The server advertised DSN: the transaction's DSN parameters were passed on. */
  dsn?: boolean;
}

export interface SmtpEnvelope {
  from: string;
  to: string[];
  /** The sender's DSN request, passed on if the server advertises DSN. */
  dsn?: OutboundDsn;
}

export type StartTlsMode = 'opportunistic' | 'required' | 'none';

export interface SmtpTransactionOptions extends SmtpSessionOptions {
  envelope: SmtpEnvelope;
  /** The raw message (RFC 5322), already with our headers. */
  message: Buffer | string | Readable;
}

export interface SmtpError extends Error {
  code?: string;
  responseCode?: number;
  response?: string;
  command?: string;
  recipient?: string;
  rejectedErrors?: SmtpError[];
}

function statusOf(code: number | undefined): RecipientStatus {
  return code !== undefined && code >= 500 && code < 600 ? 'permanent' : 'temporary';
}

function describe(err: SmtpError): string {
  return (err.response ?? err.message).trim();
}

export interface SmtpSessionOptions {
  /** A connected stream to the server (it may be paused; it is resumed here). Closed at the end. */
  socket: net.Socket;
  /** The peer's host name, for TLS SNI and messages. */
  host: string;
  /** EHLO name: our onion domain. Required: the default would be the machine's host name. */
  ehloName: string;
  /** STARTTLS policy, default 'opportunistic'. */
  startTls?: StartTlsMode;
  /** Verify the server's certificate (default false: onion transport is authenticated already). */
  verifyCertificate?: boolean;
  /** Time for the greeting and EHLO/STARTTLS (default 5 min, RFC 5321 4.5.3.2). */
  greetingTimeoutMs?: number;
  /** Inactivity limit once the session is set up (default 10 min, the DATA-termination limit). */
  socketTimeoutMs?: number;
}

export type SessionOpenResult =
  | { ok: true; session: SmtpSession }
  /** The session could not be set up: `error` says why, `failedAt` where (CONN, EHLO, STARTTLS). */
  | { ok: false; error: SmtpError; failedAt: string; tls: boolean };

/** Sets up an SMTP session (greeting, EHLO, STARTTLS per policy). Throws only for bad arguments. */
export async function openSmtpSession(options: SmtpSessionOptions): Promise<SessionOpenResult> {
  const ehloName = options.ehloName.trim();
  if (!ehloName || /\s/.test(ehloName)) throw new Error('runSmtpTransaction: ehloName must be our mail domain');
  const mode = options.startTls ?? 'opportunistic';
  const greetingTimeout = options.greetingTimeoutMs ?? 300_000;

  const conn = new SMTPConnection({
    connection: options.socket,
    host: options.host,
    port: 25,
    name: ehloName,
    ignoreTLS: mode === 'none',
    requireTLS: mode === 'required',
    opportunisticTLS: mode === 'opportunistic',
    tls: { rejectUnauthorized: options.verifyCertificate ?? false, minVersion: 'TLSv1.2' },
    greetingTimeout,
    connectionTimeout: greetingTimeout + 60_000,
    socketTimeout: options.socketTimeoutMs ?? 600_000,
    logger: false,
    debug: false,
  });
  const session = new SmtpSession(conn, installDsn(conn));
  try {
    // Setup failures (greeting timeout, 5xx greeting, hang-up) come as 'error'/'end' events.
    await new Promise<void>((resolve, reject) => {
      const done = (err?: SmtpError): void => {
        conn.off('error', done);
        conn.off('end', onEnd);
        if (err) reject(err);
        else resolve();
      };
      const onEnd = (): void =>
        done(session.lastError ?? Object.assign(new Error('the server closed the connection before the session was set up'), { code: 'ECONNECTION' }));
      conn.once('error', done);
      conn.once('end', onEnd);
      conn.connect(done);
    });
  } catch (err) {
    const e = err as SmtpError;
    conn.close();
    return { ok: false, error: e, failedAt: e.command ?? 'CONN', tls: conn.secure };
  }
  return { ok: true, session };
}

/** Per-recipient results for a failure that hit the whole transaction. */
function failAll(to: readonly string[], err: SmtpError, fallback: string, tls: boolean): SmtpTransactionResult {
  const code = err.responseCode;
  // A TLS requirement of ours that the peer cannot meet is a deferral, like Postfix's "encrypt".
  const tlsFailure = err.command === 'STARTTLS' || err.code === 'ETLS';
  return {
    recipients: to.map((recipient) => ({
      recipient,
      status: tlsFailure ? 'temporary' : statusOf(code),
      ...(code !== undefined ? { code } : {}),
      response: describe(err) || fallback,
    })),
    tls,
    failedAt: err.command ?? fallback,
  };
}

/** Results for a session that could not be set up (see `openSmtpSession`). */
export function setupFailure(to: readonly string[], failure: Extract<SessionOpenResult, { ok: false }>): SmtpTransactionResult {
  return failAll(to, failure.error, failure.failedAt, failure.tls);
}

/** An SMTP session that is set up; transactions run one at a time. */
export class SmtpSession {
  /** The last error the connection reported (for messages). */
  lastError: SmtpError | undefined;
  private alive = true;
  /** The previous transaction stopped half-way: RSET before the next MAIL. */
  private dirty = false;
  private busy = false;
  /** Transactions started on this session. */
  transactions = 0;

  constructor(
    private readonly conn: SMTPConnection,
    private readonly dsn: DsnControl,
  ) {
    // Errors also arrive through the callbacks; without a listener an 'error' event would throw.
    conn.on('error', (err: SmtpError) => {
      this.lastError = err;
      this.alive = false;
    });
    conn.on('end', () => {
      this.alive = false;
    });
  }

  /** Whether another transaction can run on this connection. */
  get usable(): boolean {
    return this.alive;
  }

  /** Whether the session is encrypted (STARTTLS). */
  get tls(): boolean {
    return this.conn.secure;
  }

  /** One transaction: MAIL FROM, RCPT TO per recipient, DATA. Never throws for server or network failures. */
  async send(envelope: SmtpEnvelope, message: Buffer | string | Readable): Promise<SmtpTransactionResult> {
    if (envelope.to.length === 0) throw new Error('runSmtpTransaction: no recipients');
    if (this.busy) throw new Error('SmtpSession.send: a transaction is already running');
    this.busy = true;
    try {
      return await this.transaction(envelope, message);
    } finally {
      this.busy = false;
    }
  }

  private async transaction(envelope: SmtpEnvelope, message: Buffer | string | Readable): Promise<SmtpTransactionResult> {
    const conn = this.conn;
    if (!this.alive) {
      const err = this.lastError ?? Object.assign(new Error('the connection is closed'), { code: 'ECONNECTION' });
      return failAll(envelope.to, err, 'CONN', conn.secure);
    }
    if (this.dirty) {
      try {
        await new Promise<void>((resolve, reject) => conn.reset((err: SmtpError | null) => (err ? reject(err) : resolve())));
        this.dirty = false;
      } catch (err) {
        // A server that refuses RSET is in no state for another transaction.
        this.alive = false;
        conn.close();
        return failAll(envelope.to, err as SmtpError, 'RSET', conn.secure);
      }
    }
    this.transactions++;
    this.dirty = true;
    const mailDsn = this.dsn.use(envelope.dsn ?? null);
    let info: { accepted: string[]; rejected: string[]; rejectedErrors?: SmtpError[]; response: string };
    try {
      info = await new Promise((resolve, reject) =>
        conn.send({ from: envelope.from, to: envelope.to, ...(mailDsn ? { dsn: mailDsn } : {}) }, message, (err: SmtpError | null, result?: unknown) =>
          err ? reject(err) : resolve(result as typeof info),
        ),
      );
    } catch (err) {
      const e = err as SmtpError;
      if (e.rejectedErrors?.length && e.command === 'RCPT TO') {
        // Every recipient was refused, each with its own reply.
        const byRecipient = new Map(e.rejectedErrors.map((r) => [r.recipient, r]));
        return {
          recipients: envelope.to.map((recipient) => {
            const r = byRecipient.get(recipient);
            return r
              ? { recipient, status: statusOf(r.responseCode), ...(r.responseCode ? { code: r.responseCode } : {}), response: describe(r) }
              : { recipient, status: statusOf(e.responseCode), ...(e.responseCode ? { code: e.responseCode } : {}), response: describe(e) };
          }),
          tls: conn.secure,
          failedAt: 'RCPT TO',
        };
      }
      return failAll(envelope.to, e, e.command ?? 'DATA', conn.secure);
    }
    // The reply to the message data ends the transaction: the next MAIL needs no RSET.
    this.dirty = false;
    const rejected = new Map((info.rejectedErrors ?? []).map((r) => [r.recipient, r]));
    const accepted = new Set(info.accepted);
    const finalCode = Number(/^\d{3}/.exec(info.response)?.[0]) || undefined;
    return {
      recipients: envelope.to.map((recipient): RecipientResult => {
        const r = rejected.get(recipient);
        if (r) return { recipient, status: statusOf(r.responseCode), ...(r.responseCode ? { code: r.responseCode } : {}), response: describe(r) };
        if (accepted.has(recipient)) return { recipient, status: 'delivered', ...(finalCode ? { code: finalCode } : {}), response: info.response };
        return { recipient, status: 'temporary', response: this.lastError ? describe(this.lastError) : 'no reply for this recipient' };
      }),
      tls: conn.secure,
      dsn: this.dsn.supported,
    };
  }

  /** QUIT politely (nodemailer closes on the 221); a server that never answers is cut off after 5 s. */
  quit(): void {
    if (!this.alive) {
      this.conn.close();
      return;
    }
    this.alive = false;
    this.conn.quit();
    setTimeout(() => this.conn.close(), 5000).unref();
  }

  /** Closes at once, without QUIT. */
  close(): void {
    this.alive = false;
    this.conn.close();
  }
}

export async function runSmtpTransaction(options: SmtpTransactionOptions): Promise<SmtpTransactionResult> {
  if (options.envelope.to.length === 0) throw new Error('runSmtpTransaction: no recipients');
  const opened = await openSmtpSession(options);
  if (!opened.ok) return setupFailure(options.envelope.to, opened);
  const { session } = opened;
  const result = await session.send(options.envelope, options.message);
  // QUIT after a complete transaction; after a failure the connection is simply closed.
  if (result.failedAt === undefined) session.quit();
  else session.close();
  return result;
}
