/**
 * The smtp-server options that both of our listeners (port 25 and submission) set alike: the
 * primary domain as banner and EHLO name (never the host name, and the EHLO reply does not
 * echo the client's address), SIZE with oversized messages refused, the limits and timeouts
 * with their defaults, no reverse DNS (a query outside Tor, and every onion client is
 * 127.0.0.1 anyway), STARTTLS / ENHANCEDSTATUSCODES / DSN advertised, and no library logging.
 */
import type { SMTPServerAddress, SMTPServerOptions, SMTPServerSession } from 'smtp-server';

export interface ListenerLimits {
  /** Largest message accepted, in bytes (SIZE). */
  maxMessageSize: number;
  maxRecipients: number;
  /** Concurrent connections (default 100). */
  maxClients?: number;
  /** Idle timeout of a connection, ms (default 5 minutes, RFC 5321 4.5.3.2). */
  socketTimeoutMs?: number;
  /** How long close() lets transactions in flight finish, ms (default 10 s). */
  closeTimeoutMs?: number;
  /** Longest command line, bytes (default: the listener's). */
  maxCommandLength?: number;
}

export function commonListenerOptions(primaryDomain: string, limits: ListenerLimits, defaultMaxCommandLength: number): SMTPServerOptions {
  return {
    name: primaryDomain,
    heloResponse: '%s',
    size: limits.maxMessageSize,
    rejectOversized: true,
    maxRecipients: limits.maxRecipients,
    maxClients: limits.maxClients ?? 100,
    socketTimeout: limits.socketTimeoutMs ?? 5 * 60 * 1000,
    closeTimeout: limits.closeTimeoutMs ?? 10 * 1000,
    maxCommandLength: limits.maxCommandLength ?? defaultMaxCommandLength,
    disableReverseLookup: true,
    hideSTARTTLS: false,
    hideENHANCEDSTATUSCODES: false,
    hideDSN: false,
    logger: false,
  };
}

type AddressCallback = (address: SMTPServerAddress, session: SMTPServerSession, callback: (err?: Error | null) => void) => void;

/** An async MAIL FROM / RCPT TO check as smtp-server's callback handler: resolved accepts, rejected refuses with that error. */
export function addressHandler(check: (address: SMTPServerAddress, session: SMTPServerSession) => Promise<void>): AddressCallback {
  return (address, session, callback) => {
    check(address, session).then(
      () => callback(),
      (err: Error) => callback(err),
    );
  };
}
