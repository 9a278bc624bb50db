/**
 * Delivery of queued mail for our own domains: into the store, never through the network.
 * Such queue entries come from `onionpost sendmail` (which queues everything) and from bounces
 * (DSNs) to our own users.
 *
 * The address is resolved again when it is delivered (users and aliases may have changed):
 * a user -> INBOX; an alias -> the INBOX of each of its users, and its remote targets go back
 * into the queue as a new entry (origin "forward"); nobody of that name -> permanent 5.1.1.
 *
 * DSN (RFC 3461): the outcome says what a success report would say ("delivered" into one
 * mailbox, "expanded" for an alias with several targets, nothing for an alias with one
 * remote target: the forwarded entry reports). Forwarded targets keep the request
 * (dsn-params.forwardedDsn: ORCPT the alias address, no SUCCESS after an expansion).
 */
import type { Logger } from '../log/logger.js';
import type { MailStore } from '../store/types.js';
import type { Resolution } from '../users/recipients.js';
import { forwardedDsn, localSuccess, type MessageDsn, type RecipientDsn } from './dsn-params.js';
import type { EnqueueInput } from './queue.js';

export interface LocalOutcome {
  status: 'delivered' | 'temporary' | 'permanent';
  /** What happened, like an SMTP reply ("250 2.0.0 ...", "550 5.1.1 ..."). */
  response: string;
  code: number;
  enhanced: string;
  /** Delivered: what a success report would say; null: none is ours to send. */
  success?: 'delivered' | 'expanded' | null;
}

export interface LocalDeliveryOptions {
  store: MailStore;
  resolveRecipient: (address: string) => Resolution | Promise<Resolution>;
  /** Called before each append (e.g. create the user's mailboxes once per process). */
  prepareRecipient?: (user: string) => Promise<void>;
  /** Queues the remote targets of an alias. */
  enqueue: (input: EnqueueInput) => Promise<unknown>;
  /** Whether a remote alias target can be reached from here (the relay policy). */
  canReach?: (address: string, domain: string) => boolean;
  logger?: Logger;
}

export type LocalDelivery = (address: string, raw: Buffer, envelopeFrom: string, queueId: string, dsn?: RecipientDsn & MessageDsn) => Promise<LocalOutcome>;

function code(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null ? ((err as { code?: unknown }).code as string | undefined) : undefined;
}

export function createLocalDelivery(options: LocalDeliveryOptions): LocalDelivery {
  const { store, logger } = options;

  async function append(user: string, raw: Buffer): Promise<void> {
    if (options.prepareRecipient) await options.prepareRecipient(user);
    try {
      await store.deliver(user, raw);
    } catch (err) {
      if (code(err) !== 'TRYCREATE') throw err;
      await store.ensureUser(user);
      await store.deliver(user, raw);
    }
  }

  return async function deliverLocal(address, raw, envelopeFrom, queueId, dsn = {}) {
    let resolution: Resolution;
    try {
      resolution = await options.resolveRecipient(address);
    } catch (err) {
      logger?.error({ id: queueId, to: address, err }, 'local delivery: address lookup failed');
      return { status: 'temporary', code: 451, enhanced: '4.3.0', response: '451 4.3.0 temporary address lookup failure' };
    }
    let users: string[];
    let remote: string[] = [];
    switch (resolution.kind) {
      case 'local':
        users = [resolution.user];
        break;
      case 'alias':
        users = resolution.users;
        remote = resolution.remote.filter((target) => {
          const domain = target.slice(target.lastIndexOf('@') + 1);
          const ok = options.canReach ? options.canReach(target, domain) : true;
          if (!ok) logger?.warn({ id: queueId, alias: address, target }, 'alias target dropped: cannot be reached from here');
          return ok;
        });
        if (users.length === 0 && remote.length === 0) {
          return { status: 'permanent', code: 550, enhanced: '5.7.1', response: `550 5.7.1 <${address}>: its alias targets cannot be reached from this server` };
        }
        break;
      case 'unknown-local':
        return { status: 'permanent', code: 550, enhanced: '5.1.1', response: `550 5.1.1 <${address}>: Recipient address rejected: User unknown` };
      case 'remote':
        // Not ours (any more): the scheduler only calls this for local domains.
        return { status: 'temporary', code: 451, enhanced: '4.3.0', response: `451 4.3.0 <${address}> is no longer in a local domain` };
    }
    try {
      for (const user of users) await append(user, raw);
      if (remote.length > 0) {
        const carried = forwardedDsn(address, dsn, users.length + remote.length);
        await options.enqueue({
          from: envelopeFrom,
          recipients: remote.map((target) => ({ address: target, ...carried })),
          raw,
          origin: 'forward',
          ...(dsn.ret ? { ret: dsn.ret } : {}),
          ...(dsn.envid !== undefined ? { envid: dsn.envid } : {}),
        });
      }
    } catch (err) {
      logger?.error({ id: queueId, to: address, err }, 'local delivery failed');
      if (code(err) === 'OVERQUOTA') return { status: 'temporary', code: 452, enhanced: '4.2.2', response: '452 4.2.2 mailbox full' };
      return { status: 'temporary', code: 451, enhanced: '4.3.0', response: '451 4.3.0 local delivery failed (the server log says why)' };
    }
    const what = [users.length ? `${users.length === 1 ? 'mailbox' : 'mailboxes'} of ${users.join(', ')}` : '', remote.length ? `forwarded to ${remote.length} address${remote.length === 1 ? '' : 'es'}` : '']
      .filter(Boolean)
      .join('; ');
    return { status: 'delivered', code: 250, enhanced: '2.0.0', response: `250 2.0.0 delivered locally (${what})`, success: localSuccess(users.length, remote.length) };
  };
}
