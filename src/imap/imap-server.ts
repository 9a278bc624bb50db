/**
 * The IMAP listener: wildduck's imap-core bound to a MailStore.
 *
 * One call makes one listener; the composition root makes two (plain with STARTTLS on 143,
 * implicit TLS on 993) sharing the store and, if it wants, one structure cache.
 */
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from 'pino';
import type { MailStore } from '../store/types.js';
import { createAuthHandler, type Authenticate } from './auth.js';
import { createFetchHandler } from './fetch.js';
import { unwatchSession, type HandlerContext, type QuotaFor } from './handler-context.js';
import type { ConnectionOptions, ImapConnection, ImapCoreLogger, ImapCoreServer, ImapCoreServerOptions } from './imap-core-types.js';
import { IMAPConnection, IMAPServer, routeImapCoreErrors } from './imap-core.js';
import { createMailboxHandlers } from './mailbox-handlers.js';
import { createMessageHandlers } from './message-handlers.js';
import { buildMessageCache } from './message-cache.js';
import { ImapNotifier } from './notifier.js';
import { createSearchHandler } from './search.js';
import { installSearchCommand } from './search-command.js';
import { installCommandWrappers } from './commands.js';
import { isLoopbackAddress } from './auth.js';
import { StructureCache } from './structure-cache.js';

export type { Authenticate } from './auth.js';
export type { QuotaFor } from './handler-context.js';

export const DEFAULT_MAX_MESSAGE = 25 * 1024 * 1024;
const SERVER_NAME = 'onionpost';

export interface ImapServerOptions {
  store: MailStore;
  authenticate: Authenticate;
  logger: Logger;
  /** Certificate and key (PEM). Plain listener: enables STARTTLS. Required when `secure`. */
  tls?: { key: string | Buffer; cert: string | Buffer };
  /** Implicit TLS (port 993 style). */
  secure: boolean;
  /** Quota limit in bytes per user (null: unlimited). Default: unlimited. */
  quota?: QuotaFor;
  /** Largest APPEND accepted, bytes (advertised as APPENDLIMIT). Default 25 MiB. */
  maxMessage?: number;
  /** Share one metadata cache between listeners. */
  cache?: StructureCache;
  /** How long close() lets sessions finish before saying BYE, ms. Default 1000. */
  closeTimeout?: number;
}

export interface ImapServer {
  listen(port: number, host: string): Promise<void>;
  /** Stops accepting, lets sessions finish up to closeTimeout, says BYE, closes. */
  close(): Promise<void>;
  address(): AddressInfo | null;
  /** Replaces certificate and key for new connections (SIGHUP). */
  updateTls(tls: { key: string | Buffer; cert: string | Buffer }): void;
  /** The notifier (a writer outside the store could wake sessions with it). */
  readonly notifier: ImapNotifier;
  /** Number of open connections. */
  connectionCount(): number;
}

export function createImapServer(options: ImapServerOptions): ImapServer {
  const { store, logger } = options;
  if (options.secure && !options.tls) throw new Error('imap: an implicit-TLS listener needs tls.key and tls.cert');

  const log = logger.child({ component: 'imap' });
  routeImapCoreErrors(log);
  // our SEARCH command (imap-core's flattens parenthesised groups) and small wrappers
  // around some of its commands (commands.ts); process-wide, once
  installSearchCommand();
  installCommandWrappers();

  const coreOptions: ImapCoreServerOptions = {
    secure: options.secure,
    // plain listener: offer STARTTLS when we have a certificate, but let imap-core neither
    // advertise LOGINDISABLED nor refuse LOGIN for the whole listener: onion clients log in
    // over loopback in clear text. Other clear-text connections are told LOGINDISABLED
    // (advertiseLoginDisabled) and onAuth refuses their logins (PRIVACYREQUIRED).
    ...(options.tls ? { key: options.tls.key, cert: options.tls.cert, ignoreSTARTTLS: true } : { disableSTARTTLS: true }),
    // One certificate for every name. imap-core installs no SNICallback for implicit-TLS
    // servers but calls it whenever a client sends SNI (TypeError, handshake aborted).
    SNICallback: (_request, callback) => callback(null, null),
    id: { name: SERVER_NAME },
    name: SERVER_NAME,
    logger: coreLogger(log),
    component: 'imap',
    maxMessage: options.maxMessage ?? DEFAULT_MAX_MESSAGE,
    enableCompression: true,
    skipFetchLog: true,
    closeTimeout: options.closeTimeout ?? 1000,
    logoutMessages: ['LOGOUT completed'],
  };

  const server = new IMAPServer(coreOptions);
  server.on('error', (err: Error & { code?: string }) => {
    log.warn({ err: { message: err.message, code: err.code } }, 'imap: connection error');
  });

  const notifier = new ImapNotifier(store, log);
  server.notifier = notifier;

  const ctx: HandlerContext = {
    store,
    notifier,
    logger: log,
    cache: options.cache ?? new StructureCache(),
    quotaFor: options.quota,
    watches: new Map(),
  };
  // ENVELOPE/BODYSTRUCTURE/search headers are computed once, when a message is stored
  store.setMessageCacheBuilder(buildMessageCache);
  replaceGreeting(server, { onClose: (connection) => unwatchSession(ctx, connection.id) });
  Object.assign(
    server,
    createAuthHandler({ authenticate: options.authenticate, logger: log, starttls: !options.secure && !!options.tls }),
    createMailboxHandlers(ctx),
    createMessageHandlers(ctx),
    createFetchHandler(ctx),
    createSearchHandler(ctx),
  );

  let listening = false;
  return {
    notifier,
    listen(port, host) {
      return new Promise((resolve, reject) => {
        const onError = (err: Error): void => reject(err);
        server.server.once('error', onError);
        server.listen(port, host, () => {
          server.server.off('error', onError);
          listening = true;
          resolve();
        });
      });
    },
    close() {
      return new Promise((resolve) => {
        notifier.close();
        if (!listening) {
          resolve();
          return;
        }
        listening = false;
        server.close(() => resolve());
      });
    },
    address() {
      const a = server.server.address();
      return a && typeof a === 'object' ? a : null;
    },
    updateTls(tls) {
      server.updateSecureContext({ key: tls.key, cert: tls.cert });
    },
    connectionCount() {
      return server.connections.size;
    },
  };
}

/**
 * imap-core's IMAPConnection.init() reverse-resolves the client address (dns.reverse)
 * before it sends the greeting: a DNS query outside Tor, which our privacy rules forbid,
 * and useless anyway since every onion client is 127.0.0.1. There is no option to turn it
 * off, so this instance gets its own connect(): the same steps as IMAPServer.connect()
 * (minus wildduck's metrics), and a greeting sent at once, without any lookup. The
 * greeting also leaves out the client address and the machine's host name.
 */
function replaceGreeting(server: ImapCoreServer, hooks: { onClose(connection: ImapConnection): void }): void {
  server.connect = (socket: Socket, socketOptions: ConnectionOptions): void => {
    // Small untagged responses (IDLE's "* n EXISTS") must not wait for Nagle's algorithm,
    // which otherwise holds them until the client's delayed ACK (~40 ms on Linux).
    socket.setNoDelay(true);
    const connection: ImapConnection = new IMAPConnection(server, socket, socketOptions);
    connection.loggelf = (message) => server.loggelf(message);
    advertiseLoginDisabled(connection);
    server.connections.add(connection);
    connection.on('error', (err: Error) => server._onError(err));
    connection.once('close', () => {
      endIdle(connection);
      hooks.onClose(connection);
    });
    greet(connection);
  };
}

/**
 * LOGINDISABLED (RFC 3501 §6.2.3, §7.2.1) per connection. Clear-text LOGIN and AUTHENTICATE
 * PLAIN are accepted over TLS and from loopback (where every onion-service client comes
 * from), and refused elsewhere with NO [PRIVACYREQUIRED] (auth.ts). imap-core can only say
 * LOGINDISABLED for a whole listener, so for a plain-text connection from a non-loopback
 * address its CAPABILITY lines are rewritten here: LOGINDISABLED added, the AUTH=
 * mechanisms and SASL-IR left out. Once STARTTLS has run the connection is secure and the
 * lines pass unchanged.
 */
function advertiseLoginDisabled(connection: ImapConnection): void {
  if (connection.secure || isLoopbackAddress(connection.remoteAddress || '')) return;
  const send = connection.send.bind(connection);
  connection.send = (payload: string, callback?: () => void): void => {
    if (!connection.secure && typeof payload === 'string' && payload.startsWith('* CAPABILITY ')) {
      const caps = payload
        .slice('* CAPABILITY '.length)
        .split(' ')
        .filter((c) => !/^AUTH=/i.test(c) && c.toUpperCase() !== 'SASL-IR' && c.toUpperCase() !== 'LOGINDISABLED');
      const [first, ...rest] = caps;
      payload = `* CAPABILITY ${[first, ...[...rest, 'LOGINDISABLED'].sort((a, b) => a.localeCompare(b))].join(' ')}`;
    }
    send(payload, callback);
  };
}

/**
 * imap-core's IDLE arms a timer (idleTimeout, 30 min) that only a "DONE" clears. When an
 * idling client just goes away, that timer would keep the connection in memory, and the
 * process alive at shutdown, for up to 30 minutes. Finish the IDLE as if DONE had come.
 */
function endIdle(connection: ImapConnection): void {
  const next = connection._nextHandler;
  if (connection.idling && typeof next === 'function') next('DONE', () => undefined);
}

function greet(connection: ImapConnection): void {
  connection._setListeners();
  connection.clientHostname = `[${connection.remoteAddress}]`;
  connection.session.clientHostname = connection.clientHostname;
  connection.send(`* OK ${SERVER_NAME} ready`);
}

/** imap-core logs `logger.level({tnx, cid, ...}, fmt, ...args)`: pino takes the same form. */
export function coreLogger(log: Logger): ImapCoreLogger {
  const wrap =
    (level: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal') =>
    (obj: object, msg?: string, ...args: unknown[]): void => {
      // imap-core puts its `component` into every line; `log` carries ours already (a JSON
      // line must not have the key twice)
      if (obj !== null && typeof obj === 'object' && 'component' in obj) {
        const { component: _component, ...rest } = obj as Record<string, unknown>;
        obj = rest;
      }
      log[level](obj, msg, ...args);
    };
  return {
    trace: wrap('trace'),
    debug: wrap('debug'),
    info: wrap('info'),
    warn: wrap('warn'),
    error: wrap('error'),
    fatal: wrap('fatal'),
  };
}
