/**
 * LOGIN and AUTHENTICATE PLAIN. Clear-text credentials are accepted only over TLS or from
 * loopback (every onion-service client arrives from 127.0.0.1); elsewhere the reply is NO
 * with [PRIVACYREQUIRED] (RFC 5530) and the authenticator is not even asked.
 */
import { isIPv4, isIPv6 } from 'node:net';
import type { Logger } from 'pino';
import type { ImapHandlers, ImapReplyError, ImapUser, LoginRequest } from './imap-core-types.js';

/**
 * Checks a login name and password. Login names `alice` and `alice@domain` both work (that
 * is the authenticator's job). `id` must be the user key the MailStore is addressed with
 * (the `user` of its calls and change events), and the user's storage must exist once it
 * resolves (store.ensureUser).
 */
export type Authenticate = (username: string, password: string) => Promise<{ id: string; username: string } | null>;

/** True for 127.0.0.0/8, ::1 and IPv4-mapped loopback. */
export function isLoopbackAddress(address: string): boolean {
  let a = address.trim().toLowerCase();
  if (a.startsWith('::ffff:') && isIPv4(a.slice(7))) a = a.slice(7);
  if (isIPv4(a)) return a.startsWith('127.');
  if (isIPv6(a)) return a === '::1' || /^0{0,4}(:0{0,4}){6}:0{0,3}1$/.test(a);
  return false;
}

/** The per-connection decision: may this connection send a password in the clear? */
export function clearTextLoginAllowed(conn: { secure: boolean; remoteAddress: string }): boolean {
  return conn.secure || isLoopbackAddress(conn.remoteAddress);
}

const PRIVACY_TEXT = 'Clear-text login is allowed only over TLS or from the onion service';

function replyError(method: LoginRequest['method'], code: string, text: string): ImapReplyError {
  // LOGIN replies `NO [code] message`; AUTHENTICATE PLAIN only prints `NO message`
  const err = new Error(method === 'LOGIN' ? text : `[${code}] ${text}`) as ImapReplyError;
  err.response = 'NO';
  err.code = code;
  return err;
}

export function createAuthHandler(opts: {
  authenticate: Authenticate;
  logger: Logger;
  /** Whether this listener offers STARTTLS (the refusal then says to use it). */
  starttls: boolean;
}): Required<Pick<ImapHandlers, 'onAuth'>> {
  const privacyText = PRIVACY_TEXT + (opts.starttls ? '; run STARTTLS first' : '; use the TLS port');
  return {
    onAuth(login, session, cb) {
      const remoteAddress = session.remoteAddress || login.connection.remoteAddress;
      if (!clearTextLoginAllowed({ secure: !!login.connection.secure, remoteAddress })) {
        opts.logger.info({ cid: session.id, method: login.method }, 'imap: clear-text login refused on a non-loopback connection');
        cb(replyError(login.method, 'PRIVACYREQUIRED', privacyText));
        return;
      }
      (async (): Promise<ImapUser | null> => {
        const account = await opts.authenticate(login.username, login.password);
        return account ? { id: account.id, username: account.username } : null;
      })().then(
        (user) => cb(null, user ? { user } : null),
        (err: unknown) => {
          opts.logger.error({ err, cid: session.id }, 'imap: authentication backend failed');
          cb(replyError(login.method, 'UNAVAILABLE', 'Authentication is temporarily unavailable'));
        },
      );
    },
  };
}
