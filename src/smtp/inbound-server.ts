/**
 * Port 25: mail from other MTAs (through the onion service) for our local domains.
 *
 * Session policy
 * - Banner and EHLO name are the primary domain, never the host name (smtp-server `name`);
 *   the EHLO reply does not echo the client's address either.
 * - No reverse DNS (a query outside Tor, and every onion client is 127.0.0.1 anyway).
 * - No AUTH on this listener; STARTTLS only when a certificate is given (otherwise smtp-server
 *   would offer it with its built-in, publicly known test key).
 * - RCPT: local user -> 250; unknown local -> 550 5.1.1; any other domain -> 550 5.7.1
 *   (relaying is a later feature); resolver failure -> 451 4.3.0. More than maxRecipients
 *   -> 452 4.5.3 (smtp-server). SIZE is advertised, MAIL FROM SIZE= over the limit and DATA
 *   over the limit both get 552 5.3.4, and an oversized message is never stored.
 * - DATA: the message ends only at CRLF "." CRLF (smtp-server's parser; test/smtp-inbound
 *   proves bare-LF variants do not end it). It is collected up to maxMessageSize (beyond that
 *   bytes are counted and dropped), NUL bytes -> 554 5.6.0, then our Received header is
 *   prepended and one copy is appended to the INBOX of every distinct local user. 250 only
 *   after every append resolved (the store fsyncs before resolving).
 */
import { randomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { SMTPServerAddress, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import type { Logger } from '../log/logger.js';
import type { MailStore } from '../store/types.js';
import { OnionSmtpServer, smtpError } from './onion-smtp-server.js';
import { buildReceivedHeader, receivedProtocol } from './received-header.js';
import type { ResolveRecipient, TlsMaterial } from './types.js';

export type { RecipientResolution, ResolveRecipient, TlsMaterial } from './types.js';

export interface InboundSmtpOptions {
  /** Primary domain: banner, EHLO name, "by" clause of the Received header. */
  domain: string;
  store: MailStore;
  resolveRecipient: ResolveRecipient;
  /**
   * Called before each append for a local user, e.g. to create the user's mailboxes once per
   * process. A rejection defers the message (451). Without it, a missing INBOX (TRYCREATE) is
   * answered by store.ensureUser() and one retry.
   */
  prepareRecipient?: (user: string) => Promise<void>;
  /** Largest message accepted, in bytes (as sent, before our Received header). */
  maxMessageSize: number;
  maxRecipients: number;
  logger: Logger;
  /** When given, STARTTLS is offered with this key and certificate. */
  tls?: TlsMaterial;
  /** Concurrent connections (default 100); every one may buffer up to maxMessageSize. */
  maxClients?: number;
  /** Idle timeout of a connection, ms (default 5 minutes, RFC 5321 4.5.3.2). */
  socketTimeoutMs?: number;
  /** How long close() lets transactions in flight finish before cutting them, ms (default 10 s). */
  closeTimeoutMs?: number;
}

export interface InboundSmtpServer {
  listen(port: number, host: string): Promise<void>;
  /** Stops accepting, says 421 to idle clients, lets transactions in flight finish. */
  close(): Promise<void>;
  address(): AddressInfo | null;
  /**
   * Replaces the certificate for new STARTTLS handshakes (SIGHUP reload); sessions already
   * encrypted keep theirs. Enables STARTTLS if the server was created without a certificate.
   */
  updateTls(tls: TlsMaterial): void;
}

/** Queue ids: 16 upper-case hex digits, an RFC 5322 atom. */
function newQueueId(): string {
  return randomBytes(8).toString('hex').toUpperCase();
}

function isStoreCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

export function createInboundSmtpServer(options: InboundSmtpOptions): InboundSmtpServer {
  const { domain, store, resolveRecipient, maxMessageSize, maxRecipients } = options;
  const log = options.logger.child({ component: 'smtp-inbound' });
  const primary = domain.toLowerCase();

  // The user each accepted RCPT resolved to, keyed by smtp-server's address object (the same
  // object ends up in session.envelope.rcptTo), so DATA does not resolve a second time.
  const recipientUsers = new WeakMap<SMTPServerAddress, string>();

  async function appendToInbox(user: string, raw: Buffer): Promise<void> {
    if (options.prepareRecipient) {
      await options.prepareRecipient(user);
    }
    try {
      await store.append(user, 'INBOX', raw);
    } catch (err) {
      if (!isStoreCode(err, 'TRYCREATE')) throw err;
      // First mail for a user whose mail storage does not exist yet.
      await store.ensureUser(user);
      await store.append(user, 'INBOX', raw);
    }
  }

  async function onRcptTo(address: SMTPServerAddress, session: SMTPServerSession): Promise<void> {
    // RFC 5321 4.1.1.3: the domainless "postmaster" must be accepted; it means ours.
    const lookup = address.address.toLowerCase() === 'postmaster' ? `postmaster@${primary}` : address.address;
    let resolution;
    try {
      resolution = await resolveRecipient(lookup);
    } catch (err) {
      log.error({ cid: session.id, err }, 'recipient lookup failed');
      throw smtpError(451, '4.3.0', 'Error: temporary recipient lookup failure, try again later');
    }
    switch (resolution.kind) {
      case 'local':
        recipientUsers.set(address, resolution.user);
        return;
      case 'unknown-local':
        log.debug({ cid: session.id }, 'RCPT rejected: unknown user');
        throw smtpError(550, '5.1.1', `<${address.address}>: Recipient address rejected: User unknown`);
      case 'remote':
        log.debug({ cid: session.id }, 'RCPT rejected: relaying denied');
        throw smtpError(550, '5.7.1', 'Relaying denied');
      default:
        throw smtpError(451, '4.3.0', 'Error: temporary recipient lookup failure, try again later');
    }
  }

  async function deliver(session: SMTPServerSession, chunks: Buffer[], size: number): Promise<string> {
    const rcptTo = session.envelope.rcptTo;
    const users: string[] = [];
    for (const rcpt of rcptTo) {
      const user = recipientUsers.get(rcpt);
      if (user === undefined) {
        // Cannot happen unless smtp-server changes how it keeps RCPT objects; fail safe.
        log.error({ cid: session.id }, 'accepted recipient without a resolved user');
        throw smtpError(451, '4.3.0', 'Error: local error in processing, try again later');
      }
      if (!users.includes(user)) users.push(user);
    }

    const id = newQueueId();
    const header = buildReceivedHeader({
      helo: session.hostNameAppearsAs,
      domain: primary,
      protocol: receivedProtocol({ opening: session.openingCommand, secure: session.secure, authenticated: !!session.user }),
      id,
      // Only with a single envelope recipient: one shared copy must not list the others.
      recipient: rcptTo.length === 1 ? rcptTo[0]!.address : undefined,
    });
    const headerBytes = Buffer.from(header, 'utf8');
    const raw = Buffer.concat([headerBytes, ...chunks], headerBytes.length + size);
    chunks.length = 0;

    // One copy per distinct user, in parallel; answer only after every append has settled.
    // Each append is atomic (tmp/ + fsync + rename + dir fsync), so no reader ever sees a
    // partial message. If some users got their copy and another append failed, SMTP has no
    // way to report per recipient after DATA (that is LMTP), so we answer 451 and the sender
    // retries the whole message: the users who already have it get a duplicate. A duplicate
    // is preferable to a lost message or a bounce for a temporary fault.
    const results = await Promise.allSettled(users.map((user) => appendToInbox(user, raw)));
    const failed = results.flatMap((result, i) => (result.status === 'rejected' ? [{ user: users[i]!, err: result.reason as unknown }] : []));
    if (failed.length > 0) {
      for (const { err } of failed) {
        log.error({ cid: session.id, id, err }, 'local delivery failed');
      }
      log.warn({ cid: session.id, id, users: users.length, failed: failed.length }, 'message deferred (451), possible duplicate on retry');
      if (failed.every(({ err }) => isStoreCode(err, 'OVERQUOTA')) && users.length === 1) {
        throw smtpError(452, '4.2.2', 'Error: mailbox full, try again later');
      }
      throw smtpError(451, '4.3.0', 'Error: local delivery failed, try again later');
    }
    log.info({ cid: session.id, id, size, recipients: rcptTo.length, users: users.length, protocol: session.transmissionType }, 'message delivered');
    return `2.0.0 Ok: queued as ${id}`;
  }

  function onData(stream: SMTPServerDataStream, session: SMTPServerSession, callback: (err?: Error | null, message?: string) => void): void {
    const chunks: Buffer[] = [];
    let size = 0;
    let oversized = false;
    let hasNul = false;
    let done = false;
    const finish = (err: Error | null, message?: string) => {
      if (done) return;
      done = true;
      callback(err, message);
    };
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (oversized) return;
      if (size > maxMessageSize) {
        // Keep reading (the client is still sending) but drop everything.
        oversized = true;
        chunks.length = 0;
        return;
      }
      if (!hasNul && chunk.includes(0)) hasNul = true;
      chunks.push(chunk);
    });
    // The connection went away before the final dot: nothing is stored.
    stream.once('error', (err) => finish(err));
    stream.once('end', () => {
      if (oversized || stream.sizeExceeded) {
        log.info({ cid: session.id, size }, 'message rejected: too big');
        finish(smtpError(552, '5.3.4', `Error: message exceeds fixed maximum message size ${maxMessageSize}`));
        return;
      }
      if (hasNul) {
        log.info({ cid: session.id, size }, 'message rejected: NUL bytes');
        finish(smtpError(554, '5.6.0', 'Error: message contains NUL characters'));
        return;
      }
      deliver(session, chunks, size).then(
        (reply) => finish(null, reply),
        (err: Error) => finish(err),
      );
    });
  }

  const server = new OnionSmtpServer({
    name: primary,
    heloResponse: '%s',
    size: maxMessageSize,
    rejectOversized: true,
    maxRecipients,
    maxClients: options.maxClients ?? 100,
    socketTimeout: options.socketTimeoutMs ?? 5 * 60 * 1000,
    closeTimeout: options.closeTimeoutMs ?? 10 * 1000,
    disableReverseLookup: true,
    authOptional: true,
    disabledCommands: options.tls ? ['AUTH'] : ['AUTH', 'STARTTLS'],
    hideSTARTTLS: false,
    hideENHANCEDSTATUSCODES: false,
    logger: false,
    ...(options.tls ? { key: options.tls.key, cert: options.tls.cert, minVersion: 'TLSv1.2' as const } : {}),
    onRcptTo(address, session, callback) {
      onRcptTo(address, session).then(
        () => callback(),
        (err: Error) => callback(err),
      );
    },
    onData,
  });

  server.on('error', (err: Error & { code?: string }) => {
    // Connection-level errors (client vanished mid-transaction, TLS handshake failures)
    // arrive here; they must not crash the process.
    log.warn({ err: { message: err.message, code: err.code } }, 'smtp connection error');
  });

  return {
    listen(port: number, host: string): Promise<void> {
      return new Promise((resolve, reject) => {
        const onError = (err: Error) => reject(err);
        server.server.once('error', onError);
        server.listen(port, host, () => {
          server.server.off('error', onError);
          resolve();
        });
      });
    },

    close(): Promise<void> {
      return new Promise((resolve) => {
        if (!server.server.listening) {
          resolve();
          return;
        }
        server.close(() => resolve());
        // Idle clients would otherwise hold the listener open until closeTimeout; clients in
        // DATA or waiting for a handler finish their transaction and get 421 on their next
        // command (smtp-server answers every command with 421 once close() was called).
        for (const connection of server.connections) {
          if (!connection._dataStream && !connection._handlerPending) {
            connection.send(421, '4.3.2 Service shutting down');
          }
        }
      });
    },

    address(): AddressInfo | null {
      const addr = server.server.address();
      return addr && typeof addr === 'object' ? addr : null;
    },

    updateTls(tls: TlsMaterial): void {
      server.updateSecureContext({ key: tls.key, cert: tls.cert, minVersion: 'TLSv1.2' });
      // A server created without a certificate starts offering STARTTLS from now on.
      const disabled = server.options.disabledCommands;
      if (disabled.includes('STARTTLS')) disabled.splice(disabled.indexOf('STARTTLS'), 1);
    },
  };
}
