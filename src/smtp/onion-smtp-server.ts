/**
 * smtp-server with two per-connection adjustments shared by our SMTP listeners
 * (inbound now, submission later). Both rely on members that smtp-server 3.21 declares in
 * its own typings (SMTPServer.connect, SMTPConnection.send/_onCommand); the tests in
 * test/smtp-inbound.test.ts exercise both, so an upgrade that breaks them fails there.
 *
 * 1. Explicit enhanced status codes. With ENHANCEDSTATUSCODES on, smtp-server derives the
 *    enhanced code of a handler error from the reply code alone (550 -> 5.1.1, 451 -> 4.3.0),
 *    so "550 5.7.1 Relaying denied" is impossible through the public API. Any reply text we
 *    (or the library) produce that already starts with a matching "x.y.z " is sent as is.
 * 2. NUL bytes in command lines get a clear "500 5.5.2" instead of being silently accepted
 *    as junk arguments of NOOP/RSET/DATA or reported as an unknown command.
 */
import type net from 'node:net';
import type tls from 'node:tls';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';

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

export class OnionSmtpServer extends SMTPServer {
  constructor(options: SMTPServerOptions) {
    super(options);
  }

  override connect(socket: net.Socket | tls.TLSSocket, socketOptions?: Parameters<SMTPServer['connect']>[1]): void {
    const before = new Set(this.connections);
    super.connect(socket, socketOptions);
    // connect() adds exactly one connection and only arms a timer before the greeting, so
    // the wrappers are in place before any reply is written or any command is read.
    for (const connection of this.connections) {
      if (!before.has(connection)) {
        adjustConnection(connection);
      }
    }
  }
}

function adjustConnection(connection: Connection): void {
  const send = connection.send.bind(connection);
  connection.send = (code, data, context) => {
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
    if (!command || !command.includes(0) || !connection._ready || connection._upgrading || connection._server._closeTimeout) {
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
