/**
 * Submission: mail from our users' clients (RFC 6409), on 587 (STARTTLS) and 465 (implicit
 * TLS, RFC 8314). One function builds either listener.
 *
 * Authentication
 * - AUTH PLAIN and LOGIN, checked against the user file. CRAM-MD5 and DIGEST-MD5 are not
 *   offered: they need the plain password (or an equivalent) stored on the server, and our
 *   users file keeps only slow salted hashes (argon2id).
 * - AUTH only over TLS (after STARTTLS on 587, always on 465), or in plain text from a
 *   loopback address when `allowPlaintextLoopback` is on (every onion client arrives from
 *   127.0.0.1, and the onion circuit is itself end-to-end encrypted). EHLO lists AUTH
 *   exactly when it can be used; before that AUTH gets 530 5.7.0.
 * - Failed logins are delayed per user name and globally (auth-throttle.ts), never per IP;
 *   the third failure on one connection ends it (421 4.7.0).
 * - Commands before AUTH are limited (maxUnauthenticatedCommands, default 10: 421), and so
 *   is the length of a command line (maxCommandLength, default 8192: room for AUTH PLAIN
 *   with the longest password the user file accepts; 421 beyond).
 *
 * Submission rules (after AUTH; MAIL/RCPT/DATA before it get 530)
 * - The envelope sender must belong to the authenticated user: an address in any of our
 *   domains that resolves to that user (own name, plus-address, an alias whose expansion
 *   includes the user). Otherwise, and for the null sender: 553 5.7.1.
 * - RCPT: our users and aliases -> their INBOX (and alias forwarding to the queue); other
 *   domains -> the outbound queue if the relay policy can reach them (policy.ts: valid
 *   .onion always, clearnet only with relay.clearnet), else 550 5.7.1 / 550 5.1.2.
 * - DATA: exactly one From field, and every address in it (and in Sender, if present) must
 *   belong to the user, else 553 5.7.1. Date and Message-ID (`<random@primary domain>`) are
 *   added when missing; the Date is in UTC (no time zone leak). Then our Received header
 *   (`from unknown ... with ESMTPSA`: the client's EHLO name is not recorded, it is often the
 *   user's machine name; no IP, no user name) and the same durable path as port 25: 250 only
 *   after every local copy and the queue entry are fsync'd.
 * - Bcc (and Resent-Bcc) fields are removed, with their continuation lines, before anything
 *   is stored or queued: no recipient, local or remote, sees who else got a blind copy. The
 *   rest of the message is kept byte for byte.
 * - DSN (RFC 3461) as on port 25 (RET/ENVID, NOTIFY/ORCPT, success reports for local
 *   deliveries); the queue passes the request on or reports for remote recipients.
 */
import type { SMTPServerAddress, SMTPServerAuthentication, SMTPServerAuthenticationResponse, SMTPServerSession } from 'smtp-server';
import { newQueueId } from '../delivery/queue.js';
import type { Logger } from '../log/logger.js';
import type { MailStore } from '../store/types.js';
import { parseAddressList } from './address-header.js';
import { AuthThrottle } from './auth-throttle.js';
import { createDispatcher, type MessageQueue } from './dispatch.js';
import { checkDsnParams, messageDsnOf } from './dsn-extension.js';
import { addressHandler, commonListenerOptions } from './listener-options.js';
import { BLIND_COPY_FIELDS, dataHandler, fieldsNamed, newMessageId, parseHeader, withoutFields } from './message.js';
import { OnionSmtpServer, smtpError, smtpListener, type SmtpListener } from './onion-smtp-server.js';
import type { RelayPolicy } from './policy.js';
import { buildReceivedHeader, receivedProtocol, rfc5322Date } from './received-header.js';
import { planTransaction, type Targets } from './transaction-plan.js';
import type { ResolveRecipient, TlsMaterial } from './types.js';

export interface SubmissionOptions {
  /** Primary domain: banner, EHLO name, Received "by", Message-ID right-hand side. */
  domain: string;
  store: MailStore;
  queue: MessageQueue;
  resolveRecipient: ResolveRecipient;
  /** Checks a login; returns the canonical user name, or null. */
  authenticate: (username: string, password: string) => Promise<string | null>;
  /** Failed-login delays; share one between the 587 and 465 listeners. */
  throttle?: AuthThrottle;
  relay: RelayPolicy;
  tls: TlsMaterial;
  /** true: TLS from the first byte (465); false: STARTTLS (587). */
  implicitTls: boolean;
  /** AUTH in plain text from 127.0.0.0/8 and ::1 (default true). */
  allowPlaintextLoopback?: boolean;
  prepareRecipient?: (user: string) => Promise<void>;
  maxMessageSize: number;
  maxRecipients: number;
  logger: Logger;
  maxClients?: number;
  socketTimeoutMs?: number;
  closeTimeoutMs?: number;
  /** Commands allowed before AUTH (default 10). */
  maxUnauthenticatedCommands?: number;
  /** Longest command line, bytes (default 8192). */
  maxCommandLength?: number;
  /** Failed AUTH attempts on one connection before it is closed (default 3). */
  maxAuthFailures?: number;
}

export type SubmissionServer = SmtpListener;

export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  const a = address.toLowerCase();
  return a === '::1' || /^(::ffff:)?127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(a);
}

export function createSubmissionServer(options: SubmissionOptions): SubmissionServer {
  const { domain, resolveRecipient, relay, maxMessageSize } = options;
  const primary = domain.toLowerCase();
  const log = options.logger.child({ component: options.implicitTls ? 'submissions' : 'submission' });
  const throttle = options.throttle ?? new AuthThrottle();
  const allowPlaintextLoopback = options.allowPlaintextLoopback ?? true;
  const maxAuthFailures = options.maxAuthFailures ?? 3;
  const dispatch = createDispatcher({ domain: primary, store: options.store, prepareRecipient: options.prepareRecipient, queue: options.queue, logger: log });

  const recipientTargets = new WeakMap<SMTPServerAddress, Targets>();
  /** Failed AUTH attempts per connection (keyed by session id). */
  const authFailures = new Map<string, number>();

  const authAllowed = (session: SMTPServerSession): boolean => session.secure || (allowPlaintextLoopback && isLoopback(session.remoteAddress));

  async function resolve(address: string, session: SMTPServerSession) {
    try {
      return await resolveRecipient(address);
    } catch (err) {
      log.error({ cid: session.id, err }, 'address lookup failed');
      throw smtpError(451, '4.3.0', 'Error: temporary address lookup failure, try again later');
    }
  }

  /** Does `address` (one of ours) lead to `user`? */
  async function owns(user: string, address: string, session: SMTPServerSession): Promise<boolean> {
    if (!address.includes('@')) return false;
    const r = await resolve(address, session);
    if (r.kind === 'local') return r.user === user;
    if (r.kind === 'alias') return r.users.includes(user);
    return false;
  }

  async function onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession): Promise<SMTPServerAuthenticationResponse> {
    if (!authAllowed(session)) throw smtpError(530, '5.7.0', 'Must issue a STARTTLS command first');
    if (auth.method !== 'PLAIN' && auth.method !== 'LOGIN') throw smtpError(504, '5.5.4', 'Unrecognized authentication type');
    const username = auth.username ?? '';
    const password = auth.password ?? '';
    let user: string | null = null;
    if (auth.method === 'PLAIN' && auth.authzid && auth.authcid && auth.authzid.toLowerCase() !== auth.authcid.toLowerCase()) {
      // RFC 4616: acting as somebody else (an authorization identity) is not supported.
      await throttle.run(username, async () => null);
    } else if (username !== '' && password !== '') {
      user = await throttle.run(username, () => options.authenticate(username, password));
    } else {
      await throttle.run(username, async () => null);
    }
    if (user !== null) {
      authFailures.delete(session.id);
      log.info({ cid: session.id, user, method: auth.method }, 'authenticated');
      return { user };
    }
    const failures = (authFailures.get(session.id) ?? 0) + 1;
    authFailures.set(session.id, failures);
    log.info({ cid: session.id, method: auth.method, failures }, 'authentication failed');
    if (failures >= maxAuthFailures) {
      authFailures.delete(session.id);
      throw smtpError(421, '4.7.0', 'Error: too many failed authentication attempts');
    }
    return { message: '5.7.8 Error: authentication credentials invalid', responseCode: 535 };
  }

  async function onMailFrom(address: SMTPServerAddress, session: SMTPServerSession): Promise<void> {
    const user = session.user as string | undefined;
    if (!user) throw smtpError(530, '5.7.0', 'Authentication required');
    if (address.address === '' || !(await owns(user, address.address, session))) {
      log.info({ cid: session.id, user }, 'MAIL FROM rejected: not the user\'s address');
      throw smtpError(553, '5.7.1', `<${address.address}>: Sender address rejected: not owned by user ${user}`);
    }
  }

  async function onRcptTo(address: SMTPServerAddress, session: SMTPServerSession): Promise<void> {
    const resolution = await resolve(address.address, session);
    switch (resolution.kind) {
      case 'local':
        recipientTargets.set(address, { users: [resolution.user], remote: [] });
        return;
      case 'alias': {
        const remote = resolution.remote.filter((target) => {
          const verdict = relay.destination(target, target.slice(target.lastIndexOf('@') + 1));
          if (!verdict.ok) log.warn({ cid: session.id, target }, 'alias target dropped: cannot be reached from here');
          return verdict.ok;
        });
        if (resolution.users.length === 0 && remote.length === 0) {
          throw smtpError(550, '5.7.1', `<${address.address}>: Recipient address rejected: its alias targets cannot be reached from this server`);
        }
        recipientTargets.set(address, { users: resolution.users, remote });
        return;
      }
      case 'unknown-local':
        throw smtpError(550, '5.1.1', `<${address.address}>: Recipient address rejected: User unknown`);
      case 'remote': {
        const verdict = relay.submission(address.address, resolution.domain);
        if (!verdict.ok) throw smtpError(verdict.code, verdict.enhanced, verdict.message);
        recipientTargets.set(address, { users: [], remote: [address.address] });
        return;
      }
      default:
        throw smtpError(451, '4.3.0', 'Error: temporary address lookup failure, try again later');
    }
  }

  /** Checks From/Sender; returns the header fields to add (Date, Message-ID), CRLF-terminated. */
  async function checkHeader(user: string, first: Buffer, session: SMTPServerSession): Promise<string> {
    const fields = parseHeader(first);
    const from = fieldsNamed(fields, 'From');
    if (from.length !== 1) {
      throw smtpError(550, '5.6.0', from.length === 0 ? 'Error: the message has no From header field' : 'Error: the message has more than one From header field');
    }
    const addresses = parseAddressList(from[0]!.value);
    if (addresses.length === 0) throw smtpError(550, '5.6.0', 'Error: the From header field has no address');
    for (const sender of fieldsNamed(fields, 'Sender')) addresses.push(...parseAddressList(sender.value));
    for (const a of addresses) {
      if (!(await owns(user, a, session))) {
        log.info({ cid: session.id, user }, 'message rejected: From/Sender not the user\'s address');
        throw smtpError(553, '5.7.1', `Error: From/Sender address <${a}> is not owned by user ${user}`);
      }
    }
    let add = '';
    if (fieldsNamed(fields, 'Date').length === 0) add += `Date: ${rfc5322Date(new Date())}\r\n`;
    if (fieldsNamed(fields, 'Message-ID').length === 0) add += `Message-ID: ${newMessageId(primary)}\r\n`;
    return add;
  }

  async function deliver(session: SMTPServerSession, chunks: Buffer[], size: number): Promise<string> {
    const user = session.user as string;
    const sent = Buffer.concat(chunks, size);
    chunks.length = 0;
    const added = await checkHeader(user, sent, session);
    const message = withoutFields(sent, BLIND_COPY_FIELDS);

    const rcptTo = session.envelope.rcptTo;
    const plan = planTransaction(rcptTo, (rcpt) => recipientTargets.get(rcpt));
    if (plan === null) {
      log.error({ cid: session.id }, 'accepted recipient without a resolved target');
      throw smtpError(451, '4.3.0', 'Error: local error in processing, try again later');
    }
    const { users, remote, successes } = plan;

    const id = newQueueId();
    const received = buildReceivedHeader({
      helo: null,
      domain: primary,
      protocol: receivedProtocol({ opening: session.openingCommand, secure: session.secure, authenticated: true }),
      id,
      recipient: rcptTo.length === 1 ? rcptTo[0]!.address : undefined,
    });
    const prefix = Buffer.from(received + added, 'utf8');
    const raw = Buffer.concat([prefix, message], prefix.length + message.length);
    const from = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const dsn = messageDsnOf(session.envelope.mailFrom);
    await dispatch({ cid: session.id, id, from, users, remote, raw, origin: 'submission', dsn, successes });
    log.info(
      { cid: session.id, id, user, size, recipients: rcptTo.length, users: users.length, remote: remote.length, ...(message !== sent ? { bccRemoved: true } : {}) },
      'message submitted',
    );
    return `2.0.0 Ok: queued as ${id}`;
  }

  const onData = dataHandler(maxMessageSize, deliver, log);

  const server = new OnionSmtpServer(
    {
      ...commonListenerOptions(primary, options, 8192),
      secure: options.implicitTls,
      key: options.tls.key,
      cert: options.tls.cert,
      minVersion: 'TLSv1.2',
      maxAllowedUnauthenticatedCommands: options.maxUnauthenticatedCommands ?? 10,
      authOptional: false,
      authMethods: ['PLAIN', 'LOGIN'],
      // Our authAllowed hook decides (TLS, or loopback when allowed); smtp-server's own
      // check would answer 538 even where plain-text AUTH is allowed.
      allowInsecureAuth: true,
      authRequiredMessage: '5.7.0 Authentication required',
      disabledCommands: options.implicitTls ? ['STARTTLS'] : [],
      onAuth(auth, session, callback) {
        onAuth(auth, session).then(
          (response) => callback(null, response),
          (err: Error) => callback(err),
        );
      },
      onMailFrom: addressHandler(onMailFrom),
      onRcptTo: addressHandler(onRcptTo),
      onData,
      onClose(session) {
        authFailures.delete(session.id);
      },
    },
    { authAllowed, checkParams: checkDsnParams },
  );

  return smtpListener(server, log);
}
