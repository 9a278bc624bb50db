/**
 * One SMTP transaction over an already open stream (normally from `openTorConnection`), with
 * nodemailer's SMTP client: EHLO with our onion name, STARTTLS when offered (by default without
 * certificate verification: an onion address authenticates its host), MAIL/RCPT/DATA, QUIT.
 *
 * Never throws for what the server or the network does: the result says, per recipient, whether
 * the message was delivered, failed temporarily (retry) or permanently (bounce).
 */
import type net from 'node:net';
import type { Readable } from 'node:stream';
import SMTPConnection from 'nodemailer/lib/smtp-connection';

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
}

export type StartTlsMode = 'opportunistic' | 'required' | 'none';

export interface SmtpTransactionOptions {
  /** A connected stream to the server (it may be paused; it is resumed here). Closed at the end. */
  socket: net.Socket;
  /** The peer's host name, for TLS SNI and messages. */
  host: string;
  /** EHLO name: our onion domain. Required: the default would be the machine's host name. */
  ehloName: string;
  envelope: { from: string; to: string[] };
  /** The raw message (RFC 5322), already with our headers. */
  message: Buffer | string | Readable;
  /** STARTTLS policy, default 'opportunistic'. */
  startTls?: StartTlsMode;
  /** Verify the server's certificate (default false: onion transport is authenticated already). */
  verifyCertificate?: boolean;
  /** Time for the greeting and EHLO/STARTTLS (default 5 min, RFC 5321 4.5.3.2). */
  greetingTimeoutMs?: number;
  /** Inactivity limit once the session is set up (default 10 min, the DATA-termination limit). */
  socketTimeoutMs?: number;
}

interface SmtpError extends Error {
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

export async function runSmtpTransaction(options: SmtpTransactionOptions): Promise<SmtpTransactionResult> {
  const ehloName = options.ehloName.trim();
  if (!ehloName || /\s/.test(ehloName)) throw new Error('runSmtpTransaction: ehloName must be our mail domain');
  if (options.envelope.to.length === 0) throw new Error('runSmtpTransaction: no recipients');
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
  // Errors also arrive through the callbacks; without a listener an 'error' event would throw.
  let lastError: SmtpError | undefined;
  conn.on('error', (err: SmtpError) => {
    lastError = err;
  });

  const all = (err: SmtpError, fallback: string): SmtpTransactionResult => {
    const code = err.responseCode;
    // A TLS requirement of ours that the peer cannot meet is a deferral, like Postfix's "encrypt".
    const tlsFailure = err.command === 'STARTTLS' || err.code === 'ETLS';
    return {
      recipients: options.envelope.to.map((recipient) => ({
        recipient,
        status: tlsFailure ? 'temporary' : statusOf(code),
        ...(code !== undefined ? { code } : {}),
        response: describe(err) || fallback,
      })),
      tls: conn.secure,
      failedAt: err.command ?? fallback,
    };
  };

  let quit = false;
  try {
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
          done(lastError ?? Object.assign(new Error('the server closed the connection before the session was set up'), { code: 'ECONNECTION' }));
        conn.once('error', done);
        conn.once('end', onEnd);
        conn.connect(done);
      });
    } catch (err) {
      return all(err as SmtpError, 'CONN');
    }
    const envelope = { from: options.envelope.from, to: options.envelope.to };
    let info: { accepted: string[]; rejected: string[]; rejectedErrors?: SmtpError[]; response: string };
    try {
      info = await new Promise((resolve, reject) =>
        conn.send(envelope, options.message, (err: SmtpError | null, result?: unknown) =>
          err ? reject(err) : resolve(result as typeof info),
        ),
      );
    } catch (err) {
      const e = err as SmtpError;
      if (e.rejectedErrors?.length && e.command === 'RCPT TO') {
        // Every recipient was refused, each with its own reply.
        const byRecipient = new Map(e.rejectedErrors.map((r) => [r.recipient, r]));
        return {
          recipients: options.envelope.to.map((recipient) => {
            const r = byRecipient.get(recipient);
            return r
              ? { recipient, status: statusOf(r.responseCode), ...(r.responseCode ? { code: r.responseCode } : {}), response: describe(r) }
              : { recipient, status: statusOf(e.responseCode), ...(e.responseCode ? { code: e.responseCode } : {}), response: describe(e) };
          }),
          tls: conn.secure,
          failedAt: 'RCPT TO',
        };
      }
      return all(e, e.command ?? 'DATA');
    }
    const rejected = new Map((info.rejectedErrors ?? []).map((r) => [r.recipient, r]));
    const accepted = new Set(info.accepted);
    const finalCode = Number(/^\d{3}/.exec(info.response)?.[0]) || undefined;
    const result: SmtpTransactionResult = {
      recipients: options.envelope.to.map((recipient): RecipientResult => {
        const r = rejected.get(recipient);
        if (r) return { recipient, status: statusOf(r.responseCode), ...(r.responseCode ? { code: r.responseCode } : {}), response: describe(r) };
        if (accepted.has(recipient)) return { recipient, status: 'delivered', ...(finalCode ? { code: finalCode } : {}), response: info.response };
        return { recipient, status: 'temporary', response: lastError ? describe(lastError) : 'no reply for this recipient' };
      }),
      tls: conn.secure,
    };
    quit = true;
    return result;
  } finally {
    if (quit) {
      // QUIT politely; nodemailer closes on the 221. A server that never answers is cut off.
      conn.quit();
      setTimeout(() => conn.close(), 5000).unref();
    } else {
      conn.close();
    }
  }
}
