/**
 * The outbound scheduler: takes due queue entries, groups their recipients by destination
 * domain, and delivers each domain's share over one connection.
 *
 * - Local domains never leave the process: their recipients go into the store (local.ts).
 * - Other domains: the next hop comes from the resolver (`*.onion`: the name itself, port 25,
 *   no DNS), the connection from the connector (Tor's SOCKS port by host name, with the
 *   domain as the stream-isolation key), then one SMTP session carries every due message for
 *   that domain, one transaction after the other (up to `maxMessagesPerConnection`), including
 *   mail for it that was queued while the connection was open. Several
 *   MX hosts (in direct mode: addresses): the next one is tried when a connection cannot be made.
 * - Up to `concurrency` domains are worked on at once; a domain is never worked on twice at
 *   the same time.
 * - Every recipient's outcome is written to the entry's state durably right after its
 *   attempt: delivered; temporary failure -> retried after retry[attempts-1] (the last wait
 *   repeats), but never later than the entry's maximum age, and failed ("expired", 4.4.7) if
 *   it still fails then; permanent failure -> failed.
 * - After the workers for an entry are done, failed recipients get one DSN (dsn.ts) queued to
 *   the envelope sender (null sender `<>`, so a DSN is never answered by another one), and
 *   recipients waiting longer than `delayWarningMs` get one "delayed" DSN. Entries whose
 *   recipients are all done are removed.
 * - DSN requests (RFC 3461, dsn-params.ts) are honoured per recipient: NOTIFY without
 *   FAILURE (or NEVER) means no bounce, without DELAY no delay warning; with SUCCESS a
 *   delivered recipient gets a success report ("delivered" for our own mailboxes,
 *   "expanded" for an alias with several targets, "relayed" when the next hop does not
 *   speak DSN). A next hop that advertises DSN gets NOTIFY/ORCPT/RET/ENVID passed on
 *   instead, and reports from there on. A failure report returns the whole message unless
 *   the sender asked for RET=HDRS or it is larger than `returnLimit`.
 * - Crash safety: nothing is marked "in delivery" on disk. An entry whose delivery was cut
 *   by a crash is still pending and due, and is delivered again at the next start (possibly
 *   a duplicate; never a loss). A DSN is queued before the failure is marked as reported.
 * - What is due when lives in memory (queue-view.ts, due-index.ts): read once at start, kept
 *   current by the queue's own writes, and told of other processes' writes by request files
 *   (wake.ts) plus a periodic comparison of the entries directory. A pass reads only the
 *   entries it works on (due ones, read fresh from disk: the file stays the truth); with
 *   nothing due a pass reads nothing, whatever the size of the queue.
 * - `flush` (retry now) is kept in memory: pending recipients not attempted since the flush
 *   are due. A restart before they are tried forgets it (they keep their own schedule).
 * - Wake-ups: `wake()` (in-process, after an enqueue), request files from the CLI (wake.ts),
 *   a timer at the next due time, and the end of every worker.
 */
import type net from 'node:net';
import { formatDuration } from '../config/duration.js';
import type { Logger } from '../log/logger.js';
import { wants, type OutboundDsn, type RecipientDsn, type SuccessAction } from './dsn-params.js';
import { buildDsn, dsnStatus, type DsnAction, type DsnRecipient } from './dsn.js';
import { dueRecipients } from './entry-schedule.js';
import type { LocalDelivery } from './local.js';
import { QueueError, type OutboundQueue, type QueueEntry, type QueueRecipient } from './queue.js';
import { QueueView } from './queue-view.js';
import type { NextHop, Resolution } from './resolver.js';
import { openSmtpSession, setupFailure, type SmtpSession, type SmtpTransactionResult, type StartTlsMode } from './smtp-client.js';
import { openDirectConnection, openTorConnection, TorConnectError } from './transport.js';
import { takeRequests, watchRequests, type WakeWatcher } from './wake.js';

/** Default waits between attempts: 1m, 5m, 15m, 30m, 1h, 2h, 4h, then every 4h. */
export const DEFAULT_RETRY_MS = [60_000, 300_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 14_400_000];
export const DEFAULT_MAX_AGE_MS = 5 * 86_400_000;
export const DEFAULT_DELAY_WARNING_MS = 4 * 3_600_000;
/** Largest message a bounce returns in full (bytes); larger ones come back as their header. */
export const DEFAULT_RETURN_LIMIT = 1024 * 1024;

/** Opens a stream to a next hop (normally through Tor's SOCKS port); resolves with a paused socket. */
export type Connector = (hop: NextHop, domain: string) => Promise<net.Socket>;

export interface SchedulerOptions {
  queue: OutboundQueue;
  /** Our primary domain: EHLO name, Reporting-MTA and MAILER-DAEMON@ of bounces. */
  domain: string;
  /** Every domain of ours (primary first): delivered locally. */
  localDomains: string[];
  resolver: { resolve(domain: string): Promise<Resolution> };
  connect: Connector;
  /** How connections are made, for the log ("tor socks 127.0.0.1:9050", "DIRECT"). */
  route?: string;
  deliverLocal: LocalDelivery;
  retryMs?: number[];
  maxAgeMs?: number;
  /** null: no delay warnings. */
  delayWarningMs?: number | null;
  /** Largest message returned in full by a bounce, bytes (default 1 MiB). */
  returnLimit?: number;
  /** Domains worked on at once (default 4). */
  concurrency?: number;
  /** Messages per connection before it is closed (default 100). */
  maxMessagesPerConnection?: number;
  startTls?: StartTlsMode;
  /** Greeting + EHLO + STARTTLS time limit (default 2 min: Tor adds latency). */
  greetingTimeoutMs?: number;
  /** Watch `<queue>/wake/` for requests from the CLI (default true). */
  watchRequests?: boolean;
  /** Poll interval of that directory, ms (default 5 s). */
  requestPollMs?: number;
  /** Longest wait between queue scans, ms (default 5 min; a safety net only). */
  maxSleepMs?: number;
  /**
   * How often the entries directory is compared with what the scheduler knows, ms (default
   * 5 min; a safety net for entries written by other processes whose request file was lost).
   */
  reconcileMs?: number;
  logger: Logger;
  /** Clock (tests). */
  now?: () => number;
}

export interface AttemptEvent {
  id: string;
  recipient: string;
  domain: string;
  outcome: 'delivered' | 'deferred' | 'failed';
  response: string;
}

/** One recipient's outcome, before it is written to the entry. */
interface Outcome {
  status: 'delivered' | 'temporary' | 'permanent';
  response: string;
  code?: number;
  remoteMta?: string;
  /** RFC 3463 status when known (else derived from the response). */
  enhanced?: string;
  /** Delivered: what a success report says (if one was asked for); null: none is ours to send. */
  success?: SuccessAction | null;
}

interface WorkItem {
  entry: QueueEntry;
  /** The entry's due recipients for this domain. */
  recipients: string[];
}

/** A timer that never keeps the process alive (a stopped daemon must be able to exit). */
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms).unref());

export class DeliveryScheduler {
  private readonly queue: OutboundQueue;
  private readonly domain: string;
  private readonly localDomains: Set<string>;
  private readonly log: Logger;
  private readonly retryMs: number[];
  private readonly maxAgeMs: number;
  private readonly delayWarningMs: number | null;
  private readonly concurrency: number;
  private readonly maxPerConnection: number;
  private readonly now: () => number;
  /** Domains being worked on -> their worker. */
  private readonly active = new Map<string, Promise<void>>();
  /** Entry id -> number of workers holding some of its recipients. */
  private readonly busyEntries = new Map<string, number>();
  private readonly sockets = new Set<net.Socket>();
  /** What is due when (in memory). */
  private readonly view: QueueView;
  private scanning: Promise<void> | null = null;
  private rescan = false;
  /** Request files may be waiting (set by the watcher; at start). */
  private requestsPending = true;
  /** Time for the periodic directory comparison. */
  private reconcilePending = false;
  private timer: NodeJS.Timeout | null = null;
  private reconcileTimer: NodeJS.Timeout | null = null;
  private watcher: WakeWatcher | null = null;
  private started = false;
  /** The view is loaded: passes may run. */
  private ready = false;
  private stopping = false;
  private listeners: Array<(e: AttemptEvent) => void> = [];
  private signalStop!: () => void;
  private readonly stopped = new Promise<void>((resolve) => (this.signalStop = resolve));

  constructor(private readonly options: SchedulerOptions) {
    this.queue = options.queue;
    this.domain = options.domain.toLowerCase();
    this.localDomains = new Set(options.localDomains.map((d) => d.toLowerCase()));
    this.log = options.logger.child({ component: 'delivery' });
    this.retryMs = options.retryMs && options.retryMs.length > 0 ? options.retryMs : DEFAULT_RETRY_MS;
    this.maxAgeMs = options.maxAgeMs ?? DEFAULT_MAX_AGE_MS;
    this.delayWarningMs = options.delayWarningMs === undefined ? DEFAULT_DELAY_WARNING_MS : options.delayWarningMs;
    this.concurrency = Math.max(1, options.concurrency ?? 4);
    this.maxPerConnection = Math.max(1, options.maxMessagesPerConnection ?? 100);
    this.now = options.now ?? Date.now;
    this.view = new QueueView(this.queue, { delayWarningMs: this.delayWarningMs, logger: this.log });
  }

  /** Calls `fn` after every recorded attempt (tests, metrics). */
  onAttempt(fn: (e: AttemptEvent) => void): void {
    this.listeners.push(fn);
  }

  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    await this.queue.open();
    if (this.options.watchRequests ?? true) {
      const onRequest = (): void => {
        this.requestsPending = true;
        this.wake();
      };
      this.watcher = await watchRequests(this.queue.dir, onRequest, this.options.requestPollMs);
    }
    // Requests left while the daemon was down: the load below reads every entry anyway (a
    // request file is written after its entry), so only the flushes are worth keeping.
    const early = await takeRequests(this.queue.dir);
    const t0 = Date.now();
    await this.view.load();
    if (early.flushAll) await this.flush();
    else for (const id of early.flush) await this.flush(id);
    const index = this.view.index;
    this.log.info(
      { route: this.options.route, queued: index.size, waiting: index.waiting(), loadMs: Date.now() - t0, concurrency: this.concurrency },
      'delivery scheduler started',
    );
    this.reconcileTimer = setInterval(() => {
      this.reconcilePending = true;
      this.wake();
    }, this.options.reconcileMs ?? 300_000);
    this.reconcileTimer.unref();
    this.ready = true;
    this.wake();
  }

  /**
   * Stops scheduling; lets connections in flight finish for up to `graceMs`, then cuts them
   * (their messages stay queued and are sent again later).
   */
  async stop(graceMs = 8000): Promise<void> {
    this.stopping = true;
    this.signalStop();
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.reconcileTimer) clearInterval(this.reconcileTimer);
    this.reconcileTimer = null;
    this.watcher?.close();
    this.watcher = null;
    this.view.close();
    const work = Promise.allSettled([...this.active.values(), this.scanning ?? Promise.resolve()]);
    const timedOut = await Promise.race([work.then(() => false), sleep(graceMs).then(() => true)]);
    if (timedOut) {
      this.log.warn({ domains: [...this.active.keys()] }, 'stopping: cutting deliveries in flight (they stay queued)');
      for (const s of this.sockets) s.destroy();
      await Promise.race([work, sleep(2000)]);
    }
  }

  /** Looks at the queue now (new mail, a flush request). Cheap to call often. */
  wake(): void {
    if (this.stopping || !this.ready) return;
    void this.scan();
  }

  /**
   * Makes one entry (or every entry) due now; `queue flush`. Returns how many recipients were
   * made due. In memory only: no entry is read or written (one not known yet is read).
   */
  async flush(id?: string): Promise<number> {
    if (id !== undefined && !this.view.index.has(id)) await this.view.read(id);
    const count = this.view.index.flush(id, this.now());
    if (count > 0) this.log.info({ id: id ?? 'all', recipients: count }, 'flush: retrying now');
    return count;
  }

  /** Entries the scheduler knows of, and those with recipients still to attempt (no file is read). */
  queued(): { entries: number; waiting: number } {
    return { entries: this.view.index.size, waiting: this.view.index.waiting() };
  }

  /** Resolves once nothing is being scanned or delivered (tests). */
  async idle(): Promise<void> {
    for (;;) {
      if (this.scanning) {
        await this.scanning;
        continue;
      }
      if (this.active.size > 0) {
        await Promise.allSettled([...this.active.values()]);
        continue;
      }
      if (this.scanning) continue;
      return;
    }
  }

  private scan(): Promise<void> {
    if (this.scanning) {
      this.rescan = true;
      return this.scanning;
    }
    this.scanning = (async () => {
      try {
        do {
          this.rescan = false;
          await this.pass();
        } while (this.rescan && !this.stopping);
      } catch (err) {
        this.log.error({ err }, 'queue scan failed; trying again in 30 s');
        this.arm(this.now() + 30_000);
      } finally {
        this.scanning = null;
      }
    })();
    return this.scanning;
  }

  /** Requests from other processes, then sweeps and workers for what is due (nothing is read otherwise). */
  private async pass(): Promise<void> {
    if (this.requestsPending) {
      this.requestsPending = false;
      const requests = await takeRequests(this.queue.dir);
      if (requests.rescan) await this.reconcile();
      for (const id of requests.changed) await this.view.read(id);
      if (requests.flushAll) await this.flush();
      else for (const id of requests.flush) await this.flush(id);
    }
    if (this.reconcilePending) {
      this.reconcilePending = false;
      await this.reconcile();
    }
    const index = this.view.index;
    index.promote(this.now());
    await this.sweep(index.takeSweeps());
    if (this.stopping) return;

    // Domains nobody works on, in the order they came due; each worker takes a connection's worth.
    for (const domain of index.readyDomains()) {
      if (this.active.size >= this.concurrency) break;
      if (this.active.has(domain)) continue;
      const ids = index.take(domain, this.maxPerConnection);
      if (ids.length > 0) this.startWorker(domain, ids);
    }
    // Next wake-up: the earliest time something comes due. Due now but no free slot (or its
    // domain busy): the end of a worker wakes us.
    this.arm(index.nextAt() ?? Infinity);
  }

  private async reconcile(): Promise<void> {
    const { added, removed } = await this.view.reconcile();
    if (added + removed > 0) this.log.info({ added, removed }, 'queue entries written or removed by another process');
  }

  private arm(at: number): void {
    if (this.stopping) return;
    if (this.timer) clearTimeout(this.timer);
    const delay = Math.max(0, Math.min(at - this.now(), this.options.maxSleepMs ?? 300_000));
    this.timer = setTimeout(() => {
      this.timer = null;
      this.wake();
    }, delay);
    this.timer.unref();
  }

  /** Works on `domain` with the due entries `ids` (taken off the index's ready list). */
  private startWorker(domain: string, ids: string[]): void {
    const held: string[] = [];
    const hold = (more: string[]): void => {
      for (const id of more) this.busyEntries.set(id, (this.busyEntries.get(id) ?? 0) + 1);
      held.push(...more);
    };
    hold(ids);
    const work = (async () => {
      try {
        const items = await this.workItems(domain, ids);
        if (items.length === 0) return;
        if (this.localDomains.has(domain)) await this.deliverLocally(domain, items);
        else await this.deliverRemote(domain, items, hold);
      } catch (err) {
        // Most likely the queue cannot be written (disk full?): hold this domain back a while.
        this.log.error({ domain, err }, 'delivery worker failed; its messages stay queued (next try in 30 s)');
        await Promise.race([sleep(30_000), this.stopped]);
      } finally {
        for (const id of held) {
          const n = (this.busyEntries.get(id) ?? 1) - 1;
          if (n <= 0) this.busyEntries.delete(id);
          else this.busyEntries.set(id, n);
          // Back into the schedule as it now stands (what was not attempted is due again).
          this.view.index.release(id);
        }
        this.active.delete(domain);
        this.wake();
      }
    })();
    this.active.set(domain, work);
  }

  /** Reads the entries `ids` afresh and keeps those with recipients of `domain` due now. */
  private async workItems(domain: string, ids: string[]): Promise<WorkItem[]> {
    const now = this.now();
    const out: WorkItem[] = [];
    for (const id of ids) {
      const entry = await this.view.read(id);
      if (!entry) continue; // deleted meanwhile, or unreadable (logged)
      const recipients = dueRecipients(entry, domain, now, this.view.index.flushedAt(id));
      if (recipients.length > 0) out.push({ entry, recipients });
    }
    return out;
  }

  private async deliverLocally(domain: string, items: WorkItem[]): Promise<void> {
    for (const item of items) {
      if (this.stopping) return;
      const raw = await this.queue.readMessage(item.entry.id);
      if (!raw) continue; // deleted meanwhile
      const outcomes = new Map<string, Outcome>();
      for (const address of item.recipients) {
        const dsn = this.recipientDsn(item.entry, address);
        const r = await this.options.deliverLocal(address, raw, item.entry.from, item.entry.id, { ...dsn, ret: item.entry.ret, envid: item.entry.envid });
        outcomes.set(address, { status: r.status, response: r.response, code: r.code, enhanced: r.enhanced, success: r.success ?? null });
      }
      await this.record(item.entry, outcomes, domain, { local: true });
    }
  }

  /** Due entries of `domain` not in `seen` (mail that came due while a connection is open). */
  private async dueFor(domain: string, seen: Set<string>, limit: number, hold: (ids: string[]) => void): Promise<WorkItem[] | null> {
    const index = this.view.index;
    index.promote(this.now());
    const ids = index.take(domain, limit, seen);
    if (ids.length === 0) return null;
    for (const id of ids) seen.add(id);
    hold(ids);
    return this.workItems(domain, ids);
  }

  private async deliverRemote(domain: string, items: WorkItem[], hold: (ids: string[]) => void): Promise<void> {
    const started = this.now();
    const resolution = await this.options.resolver.resolve(domain);
    if (resolution.kind !== 'hosts') {
      const outcome: Outcome =
        resolution.kind === 'permanent'
          ? { status: 'permanent', response: resolution.reason, enhanced: '5.4.4' }
          : { status: 'temporary', response: resolution.reason, enhanced: '4.4.3' };
      for (const item of items) await this.record(item.entry, new Map(item.recipients.map((a) => [a, outcome])), domain);
      return;
    }

    // Connect: the hosts in order of preference; the next one only when a connection fails.
    let socket: net.Socket | null = null;
    let hop: NextHop | null = null;
    const errors: TorConnectError[] = [];
    for (const h of resolution.hosts) {
      if (this.stopping) return;
      try {
        socket = await this.options.connect(h, domain);
        hop = h;
        break;
      } catch (err) {
        const e = err instanceof TorConnectError ? err : new TorConnectError(String((err as Error)?.message ?? err), 'CONNECTION_LOST', 'temporary', h.host, h.port);
        errors.push(e);
        this.log.info({ domain, host: h.host, ...(h.address ? { address: h.address } : {}), port: h.port, code: e.code, err: e.message }, 'connection failed');
      }
    }
    if (!socket || !hop) {
      const permanent = errors.length > 0 && errors.every((e) => e.kind === 'permanent');
      const last = errors[errors.length - 1];
      const outcome: Outcome = {
        status: permanent ? 'permanent' : 'temporary',
        response: last ? last.message : `no host to connect to for ${domain}`,
        enhanced: permanent ? (last?.code === 'ONION_INVALID_ADDRESS' ? '5.1.2' : '5.4.4') : '4.4.1',
      };
      for (const item of items) await this.record(item.entry, new Map(item.recipients.map((a) => [a, outcome])), domain);
      return;
    }
    const host = hop.host;
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    const connectMs = this.now() - started;
    this.log.info({ domain, host, ...(hop.address ? { address: hop.address } : {}), port: hop.port, route: this.options.route, connectMs, messages: items.length }, 'connected');

    const setupStart = this.now();
    const opened = await openSmtpSession({
      socket,
      host,
      ehloName: this.domain,
      startTls: this.options.startTls ?? 'opportunistic',
      greetingTimeoutMs: this.options.greetingTimeoutMs ?? 120_000,
    });
    if (!opened.ok) {
      for (const item of items) {
        const result = setupFailure(item.recipients, opened);
        await this.record(item.entry, this.outcomesOf(result, host), domain);
      }
      return;
    }
    const session: SmtpSession = opened.session;
    const setupMs = this.now() - setupStart;
    let sent = 0;
    const seen = new Set(items.map((i) => i.entry.id));
    let batch = items;
    try {
      for (;;) {
        for (const item of batch) {
          if (this.stopping || !session.usable || sent >= this.maxPerConnection) break;
          const raw = await this.queue.readMessage(item.entry.id);
          if (!raw) continue;
          const t0 = this.now();
          const result = await session.send({ from: item.entry.from, to: item.recipients, dsn: this.outboundDsn(item.entry, item.recipients) }, raw);
          sent++;
          await this.record(item.entry, this.outcomesOf(result, host), domain, { ms: this.now() - t0, tls: result.tls, ...(sent === 1 ? { setupMs } : { reused: true }) });
        }
        if (this.stopping || !session.usable || sent >= this.maxPerConnection) break;
        // Mail for this domain queued meanwhile goes over the same connection.
        const more = await this.dueFor(domain, seen, this.maxPerConnection - sent, hold);
        if (more === null) break;
        batch = more;
      }
    } finally {
      session.quit();
    }
  }

  private recipientDsn(entry: QueueEntry, address: string): RecipientDsn {
    const r = entry.recipients.find((x) => x.address === address);
    return { ...(r?.notify ? { notify: r.notify } : {}), ...(r?.orcpt ? { orcpt: r.orcpt } : {}) };
  }

  /** The DSN parameters of a transaction (sent only if the next hop advertises DSN). */
  private outboundDsn(entry: QueueEntry, recipients: string[]): OutboundDsn {
    return {
      ...(entry.ret ? { ret: entry.ret } : {}),
      ...(entry.envid !== undefined ? { envid: entry.envid } : {}),
      recipients: new Map(recipients.map((a) => [a, this.recipientDsn(entry, a)])),
    };
  }

  private outcomesOf(result: SmtpTransactionResult, host: string): Map<string, Outcome> {
    return new Map(
      result.recipients.map((r) => [
        r.recipient,
        {
          status: r.status,
          response: r.code !== undefined && !/^\d{3}/.test(r.response) ? `${r.code} ${r.response}` : r.response,
          code: r.code,
          remoteMta: r.code !== undefined ? host : undefined,
          // A next hop that speaks DSN got the request and reports from now on.
          success: result.dsn ? null : 'relayed',
        },
      ]),
    );
  }

  /** Writes the outcomes of one attempt into the entry (durably), and logs them. */
  private async record(entry: QueueEntry, outcomes: Map<string, Outcome>, domain: string, extra: Record<string, unknown> = {}): Promise<void> {
    const now = this.now();
    let updated: QueueEntry;
    try {
      updated = await this.queue.update(entry.id, (cur) => ({
        recipients: cur.recipients.map((r) => {
          const o = outcomes.get(r.address);
          return o && r.status === 'pending' ? this.apply(r, o, cur.createdAt, now) : r;
        }),
      }));
    } catch (err) {
      if (err instanceof QueueError && err.code === 'not-found') {
        this.log.info({ id: entry.id, domain }, 'queue entry deleted during delivery');
        return;
      }
      throw err;
    }
    for (const r of updated.recipients) {
      if (!outcomes.has(r.address)) continue;
      const outcome: AttemptEvent['outcome'] = r.status === 'delivered' ? 'delivered' : r.status === 'failed' ? 'failed' : 'deferred';
      const fields = {
        id: entry.id,
        to: r.address,
        domain,
        attempts: r.attempts,
        ...(r.status === 'pending' && r.nextAttempt ? { retryIn: formatDuration(r.nextAttempt - now) } : {}),
        ...extra,
        reply: outcome === 'delivered' ? outcomes.get(r.address)!.response : r.lastError,
      };
      if (outcome === 'delivered') this.log.info(fields, 'delivered');
      else if (outcome === 'failed') this.log.warn(fields, 'delivery failed');
      else this.log.info(fields, 'delivery deferred');
      const event: AttemptEvent = { id: entry.id, recipient: r.address, domain, outcome, response: outcomes.get(r.address)!.response };
      for (const fn of this.listeners) fn(event);
    }
  }

  private apply(r: QueueRecipient, o: Outcome, createdAt: number, now: number): QueueRecipient {
    const base: QueueRecipient = { ...r, attempts: r.attempts + 1, lastAttempt: now };
    delete base.remoteMta;
    delete base.lastCode;
    if (o.remoteMta) base.remoteMta = o.remoteMta;
    if (o.status === 'delivered') {
      delete base.lastError;
      delete base.enhanced;
      if (o.success && wants(r.notify, 'SUCCESS')) {
        base.successAction = o.success;
        base.successReported = false;
      }
      return { ...base, status: 'delivered', nextAttempt: null };
    }
    base.lastError = o.response;
    if (o.code !== undefined) base.lastCode = o.code;
    if (o.status === 'permanent') {
      return { ...base, status: 'failed', nextAttempt: null, bounced: false, enhanced: dsnStatus({ reply: o.response, permanent: true, fallback: o.enhanced }) };
    }
    const deadline = createdAt + this.maxAgeMs;
    if (now >= deadline) {
      return {
        ...base,
        status: 'failed',
        nextAttempt: null,
        bounced: false,
        enhanced: '4.4.7',
        lastError: `delivery time expired: still failing after ${formatDuration(now - createdAt)} in the queue; last error: ${o.response}`,
      };
    }
    const wait = this.retryMs[Math.min(base.attempts - 1, this.retryMs.length - 1)]!;
    return { ...base, nextAttempt: Math.min(now + wait, deadline), enhanced: dsnStatus({ reply: o.response, permanent: false, fallback: o.enhanced }) };
  }

  /**
   * Bounces, delay warnings and clean-up of the entries `ids` (their sweep is due). Entries a
   * worker holds are left for later: its end puts them back into the schedule.
   */
  private async sweep(ids: string[]): Promise<void> {
    const now = this.now();
    for (const id of ids) {
      if (this.busyEntries.has(id)) continue;
      let entry = await this.view.read(id);
      if (!entry) continue;
      const { createdAt } = entry;
      try {
        const failed = entry.recipients.filter((r) => r.status === 'failed' && !r.bounced);
        const delayed =
          this.delayWarningMs === null
            ? []
            : entry.recipients.filter((r) => r.status === 'pending' && !r.warned && r.attempts > 0 && now - createdAt >= this.delayWarningMs!);
        const succeeded = entry.recipients.filter((r) => r.status === 'delivered' && r.successAction && !r.successReported);
        if (failed.length > 0 || delayed.length > 0 || succeeded.length > 0) {
          // NOTIFY decides per recipient; what nobody asked for is only marked as done.
          const report = {
            failed: failed.filter((r) => wants(r.notify, 'FAILURE')),
            delayed: delayed.filter((r) => wants(r.notify, 'DELAY')),
            succeeded,
          };
          const unwanted = failed.length - report.failed.length;
          if (unwanted > 0) this.log.info({ id: entry.id, failed: unwanted }, 'no bounce: the sender asked not to be notified of failures (NOTIFY)');
          if (report.failed.length + report.delayed.length + report.succeeded.length > 0) {
            if (entry.from !== '') await this.queueDsn(entry, report, now);
            else if (report.failed.length > 0) this.log.info({ id: entry.id, failed: report.failed.length }, 'no bounce for a message from the null sender');
          }
          const done = new Set([...failed, ...delayed, ...succeeded].map((r) => r.address));
          entry = await this.queue.update(entry.id, (cur) => ({
            recipients: cur.recipients.map((r) => {
              if (!done.has(r.address)) return r;
              if (r.status === 'failed') return { ...r, bounced: true };
              if (r.status === 'pending') return { ...r, warned: true };
              return r.successAction ? { ...r, successReported: true } : r;
            }),
          }));
        }
        if (entry.recipients.every((r) => (r.status === 'delivered' && (!r.successAction || r.successReported)) || (r.status === 'failed' && r.bounced))) {
          await this.queue.remove(entry.id);
          const delivered = entry.recipients.filter((r) => r.status === 'delivered').length;
          this.log.info({ id: entry.id, delivered, failed: entry.recipients.length - delivered, ageMs: now - entry.createdAt }, 'removed from the queue: done');
        }
      } catch (err) {
        if (err instanceof QueueError && err.code === 'not-found') continue;
        this.log.error({ id, err }, 'bounce/clean-up of a queue entry failed; trying again in 30 s');
        this.view.index.postponeSweep(id, now + 30_000);
      }
    }
  }

  private async queueDsn(
    entry: QueueEntry,
    report: { failed: QueueRecipient[]; delayed: QueueRecipient[]; succeeded: QueueRecipient[] },
    now: number,
  ): Promise<void> {
    const { failed, delayed, succeeded } = report;
    const raw = await this.queue.readMessage(entry.id);
    const header = raw ? raw.subarray(0, headerEnd(raw)) : Buffer.alloc(0);
    // RFC 3461 4.3: RET applies to failure reports; others carry the header only.
    const returnFull = failed.length > 0 && entry.ret !== 'HDRS' && raw !== null && raw.length <= (this.options.returnLimit ?? DEFAULT_RETURN_LIMIT);
    const toDsn = (r: QueueRecipient, action: DsnAction): DsnRecipient => ({
      address: r.address,
      ...(r.orcpt ? { originalRecipient: r.orcpt } : {}),
      action,
      status: action === 'failed' || action === 'delayed' ? (r.enhanced ?? (action === 'failed' ? '5.0.0' : '4.0.0')) : '2.0.0',
      ...(r.remoteMta && (r.lastCode !== undefined || action === 'relayed') ? { remoteMta: r.remoteMta } : {}),
      ...(r.lastError && r.status !== 'delivered'
        ? { diagnostic: { type: r.lastCode !== undefined && !r.lastError.startsWith('delivery time expired') ? 'smtp' : 'X-Onionpost', text: r.lastError } as const }
        : {}),
      ...(r.lastAttempt ? { lastAttempt: r.lastAttempt } : {}),
      ...(action === 'delayed' ? { willRetryUntil: entry.createdAt + this.maxAgeMs } : {}),
    });
    const dsn = buildDsn({
      reportingDomain: this.domain,
      queueId: entry.id,
      arrivalDate: entry.createdAt,
      sender: entry.from,
      recipients: [...failed.map((r) => toDsn(r, 'failed')), ...delayed.map((r) => toDsn(r, 'delayed')), ...succeeded.map((r) => toDsn(r, r.successAction!))],
      originalHeader: header,
      ...(returnFull ? { originalMessage: raw } : {}),
      ...(entry.envid !== undefined ? { envid: entry.envid } : {}),
      now: new Date(now),
    });
    const kind = failed.length > 0 ? 'bounce queued' : delayed.length > 0 ? 'delay warning queued' : 'success report queued';
    try {
      const queued = await this.queue.enqueue({ from: '', recipients: [entry.from], raw: dsn, origin: 'local' });
      this.log.info({ id: entry.id, dsn: queued.id, to: entry.from, failed: failed.length, delayed: delayed.length, succeeded: succeeded.length }, kind);
      this.rescan = true;
    } catch (err) {
      if (err instanceof QueueError && err.code === 'invalid') {
        // A sender address the queue cannot take: nobody to tell.
        this.log.warn({ id: entry.id, err: err.message }, 'no report: the sender address is not usable');
        return;
      }
      throw err;
    }
  }
}

/** Connections through Tor's SOCKS port (`socks` is read at each connection: SIGHUP may change it). */
export function torConnector(options: { socks: () => { host: string; port: number }; timeoutMs?: number }): Connector {
  return (hop, domain) => openTorConnection({ socks: options.socks(), host: hop.host, port: hop.port, isolationKey: domain, timeoutMs: options.timeoutMs });
}

/**
 * Direct mode: connections without Tor, to the address in the hop (looked up by a resolver made
 * with `addresses: true`; never by the system resolver). Every one is logged as a warning.
 */
export function directConnector(options: { timeoutMs?: number; logger: Logger }): Connector {
  return (hop, domain) => {
    options.logger.warn({ domain, host: hop.host, address: hop.address, port: hop.port }, 'DIRECT MODE: connecting WITHOUT Tor (this reveals our address and DNS queries)');
    return openDirectConnection({ host: hop.host, address: hop.address, port: hop.port, timeoutMs: options.timeoutMs });
  };
}

/** Length of the header section (through the empty line), or the whole message if there is none. */
function headerEnd(raw: Buffer): number {
  const crlf = raw.indexOf('\r\n\r\n');
  const lf = raw.indexOf('\n\n');
  const ends = [crlf >= 0 ? crlf + 4 : -1, lf >= 0 ? lf + 2 : -1].filter((n) => n >= 0);
  return ends.length > 0 ? Math.min(...ends) : raw.length;
}
