/**
 * The last step of every SMTP transaction (port 25 and submission): one copy per distinct
 * local user into their INBOX, one queue entry for all remote recipients - in parallel,
 * and the reply only after everything settled. Each append is atomic and fsync'd by the
 * store; the queue entry is fsync'd by the queue; so 250 means "on disk".
 *
 * If one part failed, SMTP cannot report per recipient after DATA (that is LMTP): the
 * answer is 451 and the sender retries the whole message, and those who already got it get
 * a duplicate. A duplicate is preferable to a lost message or a bounce for a temporary fault.
 *
 * Once everything is stored, recipients whose sender asked for it (RFC 3461 NOTIFY=SUCCESS)
 * and whose delivery ends here get a success report (RFC 3464, "delivered" or "expanded"),
 * queued to the envelope sender from the null sender; never for a message from the null
 * sender. A report that cannot be queued is logged: the message itself is delivered.
 */
import type { MessageDsn } from '../delivery/dsn-params.js';
import { buildDsn } from '../delivery/dsn.js';
import type { EnqueueInput, QueueOrigin, RecipientInput } from '../delivery/queue.js';
import type { Logger } from '../log/logger.js';
import type { MailStore } from '../store/types.js';
import { headerLength } from './message.js';
import { smtpError } from './onion-smtp-server.js';
import type { SuccessReport } from './transaction-plan.js';

/** The part of the outbound queue SMTP uses (OutboundQueue satisfies it). */
export interface MessageQueue {
  enqueue(input: EnqueueInput): Promise<unknown>;
}

export interface DispatcherOptions {
  /** Our primary domain: Reporting-MTA and MAILER-DAEMON@ of success reports. */
  domain: string;
  store: MailStore;
  /** Called before each append for a local user (e.g. create their mailboxes once). */
  prepareRecipient?: (user: string) => Promise<void>;
  queue?: MessageQueue;
  logger: Logger;
}

export interface Dispatch {
  /** Session id, for logs. */
  cid: string;
  /** Queue id (also in our Received header). */
  id: string;
  /** Envelope sender ('' for the null sender). */
  from: string;
  /** Distinct local users. */
  users: string[];
  /** Remote addresses (with their DSN requests), for the queue. */
  remote: RecipientInput[];
  raw: Buffer;
  origin: QueueOrigin;
  /** RET and ENVID of the transaction (RFC 3461). */
  dsn?: MessageDsn;
  /** Recipients to report as delivered once everything is stored. */
  successes?: SuccessReport[];
}

function hasCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

export type Dispatcher = (d: Dispatch) => Promise<void>;

export function createDispatcher(options: DispatcherOptions): Dispatcher {
  const { store, queue, logger: log } = options;

  async function appendToInbox(user: string, raw: Buffer): Promise<void> {
    if (options.prepareRecipient) await options.prepareRecipient(user);
    try {
      await store.deliver(user, raw);
    } catch (err) {
      if (!hasCode(err, 'TRYCREATE')) throw err;
      // First mail for a user whose mail storage does not exist yet.
      await store.ensureUser(user);
      await store.deliver(user, raw);
    }
  }

  /** Queues the success report of a dispatched message (RFC 3461 NOTIFY=SUCCESS), if one is due. */
  async function reportSuccess(d: Dispatch): Promise<void> {
    const successes = d.successes ?? [];
    if (successes.length === 0) return;
    if (d.from === '') {
      log.info({ cid: d.cid, id: d.id }, 'no success report for a message from the null sender');
      return;
    }
    if (!queue) {
      log.warn({ cid: d.cid, id: d.id }, 'no success report: no outbound queue');
      return;
    }
    const now = Date.now();
    try {
      const report = buildDsn({
        reportingDomain: options.domain.toLowerCase(),
        queueId: d.id,
        arrivalDate: now,
        sender: d.from,
        recipients: successes.map((s) => ({ address: s.address, ...(s.orcpt ? { originalRecipient: s.orcpt } : {}), action: s.action, status: '2.0.0', lastAttempt: now })),
        originalHeader: d.raw.subarray(0, headerLength(d.raw)),
        ...(d.dsn?.envid !== undefined ? { envid: d.dsn.envid } : {}),
      });
      const entry = (await queue.enqueue({ from: '', recipients: [d.from], raw: report, origin: 'local' })) as { id?: string } | undefined;
      log.info({ cid: d.cid, id: d.id, dsn: entry?.id, recipients: successes.length }, 'success report queued');
    } catch (err) {
      log.error({ cid: d.cid, id: d.id, err }, 'success report could not be queued (the message is delivered)');
    }
  }

  return async function dispatch(d: Dispatch): Promise<void> {
    const jobs: Array<{ what: string; run: () => Promise<unknown> }> = d.users.map((user) => ({ what: 'local', run: () => appendToInbox(user, d.raw) }));
    if (d.remote.length > 0) {
      if (!queue) {
        log.error({ cid: d.cid, id: d.id }, 'remote recipients but no outbound queue');
        throw smtpError(451, '4.3.0', 'Error: outbound queue unavailable, try again later');
      }
      jobs.push({ what: 'queue', run: () => queue.enqueue({ id: d.id, from: d.from, recipients: d.remote, raw: d.raw, origin: d.origin, ...d.dsn }) });
    }
    const results = await Promise.allSettled(jobs.map((j) => j.run()));
    const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [{ what: jobs[i]!.what, err: r.reason as unknown }] : []));
    if (failed.length === 0) {
      await reportSuccess(d);
      return;
    }
    for (const { what, err } of failed) {
      log.error({ cid: d.cid, id: d.id, err }, what === 'queue' ? 'queueing failed' : 'local delivery failed');
    }
    log.warn({ cid: d.cid, id: d.id, parts: jobs.length, failed: failed.length }, 'message deferred (451), possible duplicate on retry');
    // Store quota (StoreError OVERQUOTA): 452 4.2.2, not 552 5.2.2. RFC 3463 calls X.2.2
    // "mailbox full" a persistent transient failure (the user can make room), and RFC 5321
    // 452 is "insufficient storage"; the sender keeps retrying instead of bouncing at once.
    if (jobs.length === 1 && failed[0]!.what === 'local' && hasCode(failed[0]!.err, 'OVERQUOTA')) {
      throw smtpError(452, '4.2.2', 'Error: mailbox full, try again later');
    }
    throw smtpError(451, '4.3.0', failed.some((f) => f.what === 'queue') && failed.length === 1 ? 'Error: queueing failed, try again later' : 'Error: local delivery failed, try again later');
  };
}
