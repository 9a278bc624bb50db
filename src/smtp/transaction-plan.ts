/**
 * From the accepted RCPTs of a transaction to what dispatch does with the message: the
 * distinct local users, the remote addresses for the queue (each with its DSN request), and
 * the recipients whose sender asked for a success report that is ours to give now.
 *
 * DSN (RFC 3461 6.2.7): a RCPT that is one local user is "delivered" once the copy is
 * stored; one that expands to several targets (an alias) is "expanded", and its remote
 * targets are asked for failures and delays only; one that leads to a single remote address
 * keeps its request, and the queue (or the next hop) reports.
 */
import type { SMTPServerAddress } from 'smtp-server';
import { forwardedDsn, localSuccess, wants } from '../delivery/dsn-params.js';
import type { RecipientInput } from '../delivery/queue.js';
import { recipientDsnOf } from './dsn-extension.js';

/** Where one accepted RCPT goes. */
export interface Targets {
  users: string[];
  remote: string[];
  /** Relayed for somebody else (port 25, open_to_onion). */
  relayed?: boolean;
}

/** A recipient to tell the sender about at once (RFC 3464 Action). */
export interface SuccessReport {
  /** The RCPT address. */
  address: string;
  /** Its ORCPT, decoded. */
  orcpt?: string;
  action: 'delivered' | 'expanded';
}

export interface TransactionPlan {
  users: string[];
  remote: RecipientInput[];
  successes: SuccessReport[];
  relayed: boolean;
}

/** null when an accepted RCPT has no targets (cannot happen unless smtp-server changes). */
export function planTransaction(rcptTo: readonly SMTPServerAddress[], targetsOf: (rcpt: SMTPServerAddress) => Targets | undefined): TransactionPlan | null {
  const plan: TransactionPlan = { users: [], remote: [], successes: [], relayed: false };
  for (const rcpt of rcptTo) {
    const targets = targetsOf(rcpt);
    if (!targets) return null;
    const dsn = recipientDsnOf(rcpt);
    const count = targets.users.length + targets.remote.length;
    for (const u of targets.users) if (!plan.users.includes(u)) plan.users.push(u);
    for (const r of targets.remote) {
      if (plan.remote.some((x) => x.address.toLowerCase() === r.toLowerCase())) continue;
      const direct = count === 1 && r.toLowerCase() === rcpt.address.toLowerCase();
      plan.remote.push({ address: r, ...(direct ? dsn : forwardedDsn(rcpt.address, dsn, count)) });
    }
    const success = localSuccess(targets.users.length, targets.remote.length);
    if (success && wants(dsn.notify, 'SUCCESS')) plan.successes.push({ address: rcpt.address, ...(dsn.orcpt ? { orcpt: dsn.orcpt } : {}), action: success });
    plan.relayed ||= targets.relayed ?? false;
  }
  return plan;
}
