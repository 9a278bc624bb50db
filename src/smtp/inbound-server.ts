/**
 * Port 25: mail from other MTAs (through the onion service) for our local domains.
 *
 * Session policy
 * - Banner and EHLO name are the primary domain, never the host name (smtp-server `name`);
 *   the EHLO reply does not echo the client's address either.
 * - No reverse DNS (a query outside Tor, and every onion client is 127.0.0.1 anyway).
 * - No AUTH on this listener; STARTTLS only when a certificate is given (otherwise smtp-server
 *   would offer it with its built-in, publicly known test key).
 * - RCPT: local user -> 250; alias -> 250 (its local users get a copy, its remote targets go
 *   to the outbound queue, if the relay policy can reach them); unknown local -> 550 5.1.1;
 *   any other domain -> 550 5.7.1 Relaying denied, unless `relay.open_to_onion` accepts it
 *   for the queue (policy.ts); resolver failure -> 451 4.3.0. More than maxRecipients
 *   -> 452 4.5.3 (smtp-server). SIZE is advertised, MAIL FROM SIZE= over the limit and DATA
 *   over the limit both get 552 5.3.4, and an oversized message is never stored.
 * - Command lines longer than maxCommandLength (default 4096) end the session with 421.
 * - DATA: the message ends only at CRLF "." CRLF (smtp-server's parser; test/smtp-inbound
 *   proves bare-LF variants do not end it). It is collected up to maxMessageSize (beyond that
 *   bytes are counted and dropped), NUL bytes -> 554 5.6.0, then our Received header is
 *   prepended and one copy is appended to the INBOX of every distinct local user, and one
 *   queue entry is written for the remote recipients (dispatch.ts). 250 only after all of
 *   that is on disk.
 * - DSN (RFC 3461) is advertised and honoured: RET/ENVID on MAIL, NOTIFY/ORCPT on RCPT
 *   (checked by dsn-extension.ts: 501 5.5.4 for bad values) go into the queue entry with
 *   the remote recipients, and local deliveries a sender asked about (NOTIFY=SUCCESS) get
 *   a success report (dispatch.ts).
 */
import type { SMTPServerAddress, SMTPServerEnvelope, SMTPServerSession } from 'smtp-server';
import { newQueueId } from '../delivery/queue.js';
import type { Logger } from '../log/logger.js';
import type { MailStore } from '../store/types.js';
import { createDispatcher, type MessageQueue } from './dispatch.js';
import { checkDsnParams, messageDsnOf } from './dsn-extension.js';
import { addressHandler, commonListenerOptions } from './listener-options.js';
import { dataHandler } from './message.js';
import { OnionSmtpServer, smtpError, smtpListener, type SmtpListener } from './onion-smtp-server.js';
import type { RelayPolicy } from './policy.js';
import { buildReceivedHeader, receivedProtocol } from './received-header.js';
import { planTransaction, type Targets } from './transaction-plan.js';
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
  /** Longest command line, bytes (default 4096); longer ones end the session with 421. */
  maxCommandLength?: number;
  /** Outbound queue for remote alias targets and open_to_onion relaying. */
  queue?: MessageQueue;
  /** Relay policy; without it nothing is relayed and remote alias targets are refused. */
  relay?: RelayPolicy;
}

export type InboundSmtpServer = SmtpListener;

export function createInboundSmtpServer(options: InboundSmtpOptions): InboundSmtpServer {
  const { domain, resolveRecipient, maxMessageSize, relay, queue } = options;
  const log = options.logger.child({ component: 'smtp-inbound' });
  const primary = domain.toLowerCase();
  const dispatch = createDispatcher({ domain: primary, store: options.store, prepareRecipient: options.prepareRecipient, queue, logger: log });

  // Where each accepted RCPT goes, keyed by smtp-server's address object (the same object
  // ends up in session.envelope.rcptTo), so DATA does not resolve a second time.
  const recipientTargets = new WeakMap<SMTPServerAddress, Targets>();
  // Transactions that already took a relay token (one per message).
  const relayCharged = new WeakSet<SMTPServerEnvelope>();

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
        recipientTargets.set(address, { users: [resolution.user], remote: [], relayed: false });
        return;
      case 'alias': {
        const remote: string[] = [];
        let refusal: { code: number; enhanced: string; message: string } | undefined;
        for (const target of resolution.remote) {
          const at = target.lastIndexOf('@');
          const verdict = relay && queue ? relay.destination(target, target.slice(at + 1)) : { ok: false as const, code: 550, enhanced: '5.7.1', message: 'forwarding is not available' };
          if (verdict.ok) remote.push(target);
          else {
            refusal ??= verdict;
            log.warn({ cid: session.id, target }, 'alias target dropped: cannot be reached from here');
          }
        }
        if (resolution.users.length === 0 && remote.length === 0) {
          throw smtpError(550, '5.7.1', `<${address.address}>: Recipient address rejected: its alias targets cannot be reached from this server${refusal ? ` (${refusal.message})` : ''}`);
        }
        recipientTargets.set(address, { users: resolution.users, remote, relayed: false });
        return;
      }
      case 'unknown-local':
        log.debug({ cid: session.id }, 'RCPT rejected: unknown user');
        throw smtpError(550, '5.1.1', `<${address.address}>: Recipient address rejected: User unknown`);
      case 'remote': {
        if (!relay || !queue) {
          log.debug({ cid: session.id }, 'RCPT rejected: relaying denied');
          throw smtpError(550, '5.7.1', 'Relaying denied');
        }
        const first = !relayCharged.has(session.envelope);
        const verdict = relay.inbound(address.address, resolution.domain, first);
        if (!verdict.ok) {
          log.info({ cid: session.id, code: verdict.code }, 'RCPT rejected by relay policy');
          throw smtpError(verdict.code, verdict.enhanced, verdict.message);
        }
        relayCharged.add(session.envelope);
        recipientTargets.set(address, { users: [], remote: [address.address], relayed: true });
        return;
      }
      default:
        throw smtpError(451, '4.3.0', 'Error: temporary recipient lookup failure, try again later');
    }
  }

  async function deliver(session: SMTPServerSession, chunks: Buffer[], size: number): Promise<string> {
    const rcptTo = session.envelope.rcptTo;
    const plan = planTransaction(rcptTo, (rcpt) => recipientTargets.get(rcpt));
    if (plan === null) {
      // Cannot happen unless smtp-server changes how it keeps RCPT objects; fail safe.
      log.error({ cid: session.id }, 'accepted recipient without a resolved target');
      throw smtpError(451, '4.3.0', 'Error: local error in processing, try again later');
    }
    const { users, remote, relayed, successes } = plan;

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

    const from = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const dsn = messageDsnOf(session.envelope.mailFrom);
    await dispatch({ cid: session.id, id, from, users, remote, raw, origin: relayed ? 'relay' : 'forward', dsn, successes });
    log.info({ cid: session.id, id, size, recipients: rcptTo.length, users: users.length, remote: remote.length, protocol: session.transmissionType }, 'message accepted');
    return `2.0.0 Ok: queued as ${id}`;
  }

  const onData = dataHandler(maxMessageSize, deliver, log);

  const server = new OnionSmtpServer(
    {
      ...commonListenerOptions(primary, options, 4096),
      authOptional: true,
      disabledCommands: options.tls ? ['AUTH'] : ['AUTH', 'STARTTLS'],
      ...(options.tls ? { key: options.tls.key, cert: options.tls.cert, minVersion: 'TLSv1.2' as const } : {}),
      onRcptTo: addressHandler(onRcptTo),
      onData,
    },
    { checkParams: checkDsnParams },
  );

  return smtpListener(server, log);
}
