/**
 * smtp-server with per-connection adjustments shared by our SMTP listeners (inbound and
 * submission). They rely on members that smtp-server 3.21 declares in its own typings
 * (SMTPServer.connect, SMTPConnection.send/_onCommand/connectionReady/_socket); the tests in
 * test/smtp-*.test.ts exercise them, so an upgrade that breaks them fails there.
 *
 * 1. Explicit enhanced status codes. With ENHANCEDSTATUSCODES on, smtp-server derives the
 *    enhanced code of a handler error from the reply code alone (550 -> 5.1.1, 451 -> 4.3.0),
 *    so "550 5.7.1 Relaying denied" is impossible through the public API. Any reply text we
 *    (or the library) produce that already starts with a matching "x.y.z " is sent as is.
 * 2. NUL bytes in command lines get a clear "500 5.5.2" instead of being silently accepted
 *    as junk arguments of NOOP/RSET/DATA or reported as an unknown command.
 * 3. Optional `authAllowed(session)` hook (submission): while it says no (plain text, not
 *    loopback), the EHLO reply does not list AUTH and an AUTH command gets
 *    "530 5.7.0 Must issue a STARTTLS command first" (counted as an unauthenticated command).
 *    smtp-server alone would advertise AUTH before STARTTLS and answer it with 538.
 * 4. The greeting goes out at once. smtp-server holds every new connection for a fixed
 *    100 ms first (an "early talker" check with no option to turn it off), which capped a
 *    client that opens a connection per message at 10 messages/s per connection (bench:smtp,
 *    new-connection cells). Behind the onion service every client is 127.0.0.1, so the
 *    check could not feed any per-client reputation. The greeting is written before anything
 *    is read from the socket, so a client that talks first has its commands answered after
 *    it, in order, every time.
 * 5. Replies produced in the same turn of the event loop leave in one write (batchReplies):
 *    fewer system calls and segments per pipelined transaction.
 */
import type net from 'node:net';
import type { AddressInfo } from 'node:net';
import type tls from 'node:tls';
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import type { Logger } from '../log/logger.js';
import type { TlsMaterial } from './types.js';

type Connection = SMTPServer['connections'] extends Set<infer C> ? C : never;

const EXPLICIT_ENHANCED = /^([245])\.\d{1,3}\.\d{1,3} /;

/**
 * An error for smtp-server handler callbacks whose reply carries its own enhanced status
 * code, e.g. smtpError(550, '5.7.1', 'Relaying denied') -> "550 5.7.1 Relaying denied".
 */
export function smtpError(code: number, enhanced: string, text: string): Error & { responseCode: number } {
  const err = new Error(`${enhanced} ${text}`) as Error & { responseCode: number };
  err.responseCode = code;
  return err;
}

export interface OnionSmtpHooks {
  /** Whether AUTH may be used on this connection now; absent: smtp-server's own rules. */
  authAllowed?: (session: SMTPServerSession) => boolean;
  /**
   * Checks the raw MAIL / RCPT command line before smtp-server parses it (and decodes its
   * parameters); a string is the reply text ("5.5.4 ...") of a 501 refusal.
   */
  checkParams?: (verb: 'MAIL' | 'RCPT', line: string) => string | null;
}

export class OnionSmtpServer extends SMTPServer {
  private readonly hooks: OnionSmtpHooks;

  constructor(options: SMTPServerOptions, hooks: OnionSmtpHooks = {}) {
    super(options);
    this.hooks = hooks;
  }

  // Neither listener has a connect or TLS-session policy; smtp-server's default handlers
  // answer through setImmediate(), long enough for a client's first bytes to be read before
  // the greeting (and answered "421 You talk too soon"). Answered at once, the greeting is
  // written before anything is read from the socket (see greetNow). Options still win:
  // smtp-server installs options.onConnect/onSecure over these.
  override onConnect(_session: SMTPServerSession, callback: (err?: Error | null) => void): void {
    callback();
  }

  override onSecure(_socket: net.Socket | tls.TLSSocket, _session: SMTPServerSession, callback: (err?: Error | null) => void): void {
    callback();
  }

  override connect(socket: net.Socket | tls.TLSSocket, socketOptions?: Parameters<SMTPServer['connect']>[1]): void {
    const before = new Set(this.connections);
    super.connect(socket, socketOptions);
    // connect() adds exactly one connection (none if it was refused: over maxClients) and
    // only arms smtp-server's greeting timer; the wrappers are in place before greetNow()
    // writes the greeting, and nothing has been read from the socket yet.
    for (const connection of this.connections) {
      if (!before.has(connection)) {
        adjustConnection(connection, this.hooks);
        batchReplies(connection);
        greetNow(connection);
      }
    }
  }
}

function adjustConnection(connection: Connection, hooks: OnionSmtpHooks): void {
  const { authAllowed, checkParams } = hooks;
  if (checkParams) {
    // The handlers run after smtp-server's own state checks (EHLO, AUTH, ...), with the line as sent.
    const mail = connection.handler_MAIL.bind(connection);
    const rcpt = connection.handler_RCPT.bind(connection);
    const checked =
      (verb: 'MAIL' | 'RCPT', handler: (command: Buffer, callback: () => void) => void) =>
      (command: Buffer, callback: () => void): void => {
        const refusal = checkParams(verb, command.toString('utf8'));
        if (refusal === null) {
          handler(command, callback);
          return;
        }
        connection.send(501, refusal);
        callback();
      };
    connection.handler_MAIL = checked('MAIL', mail);
    connection.handler_RCPT = checked('RCPT', rcpt);
  }
  const send = connection.send.bind(connection);
  connection.send = (code, data, context) => {
    if (authAllowed && code === 250 && Array.isArray(data) && !authAllowed(connection.session)) {
      // The EHLO reply (the only multi-line 250): no AUTH while it cannot be used.
      data = data.filter((line) => !/^AUTH\b/i.test(String(line)));
    }
    if (typeof data === 'string') {
      const match = EXPLICIT_ENHANCED.exec(data);
      if (match && match[1] === String(code)[0]) {
        send(code, data, false);
        return;
      }
    }
    send(code, data, context);
  };

  const onCommand = connection._onCommand.bind(connection);
  connection._onCommand = (command, callback) => {
    // The library's own checks come first while it must stay silent (TLS handshake in
    // progress, greeting not sent yet, server shutting down).
    // An AUTH continuation line (base64) goes to the SASL handler whatever it contains:
    // answering it here would leave that handler waiting for the line it expects.
    if (!command || !connection._ready || connection._upgrading || connection._server._closeTimeout || connection._nextHandler) {
      onCommand(command, callback);
      return;
    }
    if (!command.includes(0)) {
      if (authAllowed && isRefusedAuth(connection, authAllowed, command)) {
        connection._unauthenticatedCommands++;
        const max = connection._maxAllowedUnauthenticatedCommands;
        if (typeof max === 'number' && connection._unauthenticatedCommands >= max) {
          connection.send(421, '4.7.0 Error: too many unauthenticated commands');
          return;
        }
        connection.send(530, '5.7.0 Must issue a STARTTLS command first');
        const next = callback ?? (() => false);
        setImmediate(() => connection._whenWritable(next));
        return;
      }
      onCommand(command, callback);
      return;
    }
    connection._unrecognizedCommands++;
    if (connection._unrecognizedCommands >= 10) {
      connection.send(421, '4.7.0 Error: too many invalid commands');
      return;
    }
    connection.send(500, '5.5.2 Error: NUL character in command line');
    const next = callback ?? (() => false);
    setImmediate(() => connection._whenWritable(next));
  };
}

/**
 * Replies produced in one turn of the event loop leave in one socket write. A pipelining
 * client gets the replies to MAIL, RCPT and DATA (and, with connections kept open, the 250
 * for the previous message) together instead of one system call and one segment each; the
 * last reply of a batch waits at most until the end of the loop turn (setImmediate).
 * 220 (greeting, STARTTLS: the TLS handshake takes the socket next), 221 and 421 (the
 * connection closes) are flushed together with whatever waits, at once.
 */
function batchReplies(connection: Connection): void {
  let corked: net.Socket | tls.TLSSocket | null = null;
  const flush = (): void => {
    const socket = corked;
    corked = null;
    socket?.uncork();
  };
  const send = connection.send.bind(connection);
  connection.send = (code, data, context) => {
    const socket = connection._socket;
    if (corked !== null && corked !== socket) flush();
    // (Nothing is written while a TLS handshake runs on the socket: smtp-server drops it.)
    if (corked === null && !connection._upgrading && socket.writable) {
      socket.cork();
      corked = socket;
      setImmediate(flush);
    }
    send(code, data, context);
    if (code === 220 || code === 221 || code === 421) flush();
  };
}

/**
 * Runs smtp-server's connectionReady() (reverse lookup if enabled, onConnect, greeting) now
 * instead of from its 100 ms timer; the timer's later call is ignored. Not when init() did
 * not arm that timer: the connection was refused (maxClients, 421 sent and closing) or waits
 * for a TLS upgrade of its own (needsUpgrade), which arms it later.
 */
function greetNow(connection: Connection): void {
  const ready = connection.connectionReady.bind(connection);
  let called = false;
  connection.connectionReady = (next) => {
    if (called) return;
    called = true;
    ready(next);
  };
  if (connection.needsUpgrade || connection._closing || connection._closed) return;
  connection.connectionReady();
}

/** An AUTH command (not a continuation line of one) after EHLO that the hook refuses. */
function isRefusedAuth(connection: Connection, authAllowed: (session: SMTPServerSession) => boolean, command: Buffer): boolean {
  if (connection._nextHandler || !connection.hostNameAppearsAs || connection.session.user) return false;
  const name = command.toString('latin1').split(' ', 1)[0]!.toUpperCase();
  return name === 'AUTH' && !authAllowed(connection.session);
}

/** What server.ts needs from an SMTP listener. */
export interface SmtpListener {
  listen(port: number, host: string): Promise<void>;
  /** Stops accepting, says 421 to idle clients, lets transactions in flight finish. */
  close(): Promise<void>;
  address(): AddressInfo | null;
  /**
   * Replaces the certificate for new TLS handshakes (SIGHUP reload); sessions already
   * encrypted keep theirs. Enables STARTTLS if the server was created without a certificate.
   */
  updateTls(tls: TlsMaterial): void;
}

/** The listener API around an OnionSmtpServer; connection errors are logged, never thrown. */
export function smtpListener(server: OnionSmtpServer, log: Logger): SmtpListener {
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
      if (disabled.includes('STARTTLS') && !server.options.secure) disabled.splice(disabled.indexOf('STARTTLS'), 1);
    },
  };
}
