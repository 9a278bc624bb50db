/**
 * Composition root: builds the store, users, SMTP and IMAP listeners from a Config and
 * starts, stops and reloads them. Nothing else wires modules together.
 */
import { mkdir, readdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { loadConfig } from './config/load.js';
import type { Config } from './config/types.js';
import { createLocalDelivery } from './delivery/local.js';
import { OutboundQueue, type EnqueueInput } from './delivery/queue.js';
import { NextHopResolver } from './delivery/resolver.js';
import { DeliveryScheduler, directConnector, torConnector } from './delivery/scheduler.js';
import { createImapServer } from './imap/imap-server.js';
import type { Logger } from './log/logger.js';
import { AuthThrottle } from './smtp/auth-throttle.js';
import { createInboundSmtpServer } from './smtp/inbound-server.js';
import { RelayPolicy } from './smtp/policy.js';
import { createSubmissionServer } from './smtp/submission-server.js';
import { expandMaildirTemplate } from './store/maildir-location.js';
import { MaildirStore } from './store/maildir/maildir-store.js';
import type { MailStore } from './store/types.js';
import { ensureCertificate, type CertificateMaterial } from './tls/certificate.js';
import { OnionPublisher, onionKeyDir, onionPortMap, readOnionKey, type OnionStatus } from './tor/onion-service.js';
import { AliasDb } from './users/aliases.js';
import { RecipientResolver } from './users/recipients.js';
import { userQuotaBytes } from './users/quota-rule.js';
import { UserDb } from './users/user-db.js';

export interface Listening {
  name: 'smtp' | 'submission' | 'submissions' | 'imap' | 'imaps';
  description: string;
  host: string;
  port: number;
}

interface Listener {
  listen(port: number, host: string): Promise<void>;
  close(): Promise<void>;
  address(): AddressInfo | string | null;
  /** New certificate for new TLS handshakes (SIGHUP). */
  updateTls?(tls: { key: Buffer | string; cert: Buffer | string }): void;
  /** Open connections, when the listener can tell. */
  connectionCount?(): number;
}

/** What `onionpost status` shows (through the daemon's status socket). */
export interface ServerStatus {
  pid: number;
  startedAt: number;
  domain: string;
  dataDir: string;
  config: string | null;
  listeners: Array<Listening & { connections: number | null }>;
  onion: OnionStatus | null;
  users: number;
  /** Outbound queue entries. */
  queue: number | null;
  lastReload: { at: number; ok: boolean; message: string } | null;
}

export interface ReloadResult {
  ok: boolean;
  /** What was applied, and what changed but needs a restart. */
  applied: string[];
  needsRestart: string[];
  errors: string[];
}

export class OnionpostServer {
  readonly store: MailStore;
  readonly users: UserDb;
  readonly aliases: AliasDb;
  readonly queue: OutboundQueue;
  private readonly ensured = new Map<string, Promise<void>>();
  private readonly listeners: Array<{ name: Listening['name']; description: string; server: Listener; host: string; port: number }> = [];
  private readonly listening: Listening[] = [];
  private started = false;
  private startedAt = 0;
  private onion: OnionPublisher | null = null;
  private lastReload: ServerStatus['lastReload'] = null;
  /** Outbound delivery (started after the listeners, as the daemon user). */
  scheduler: DeliveryScheduler | null = null;

  constructor(
    /** The running config; SIGHUP replaces the parts that can change without a restart. */
    public config: Config,
    private readonly logger: Logger,
  ) {
    this.users = new UserDb(config.users.file, { localDomains: config.localDomains, logger });
    this.aliases = new AliasDb(config.users.aliases, { localDomains: config.localDomains, logger });
    this.queue = new OutboundQueue({ dir: config.queue.dir, logger });
    this.store = new MaildirStore({ maildirFor: (user) => this.maildirFor(user), logger, quotaFor: (user) => this.quotaFor(user) });
  }

  private readonly badQuotaRules = new Set<string>();

  /** A user's storage limit in bytes (null: unlimited): users-file rule, else [quota] default. */
  quotaFor(user: string): number | null {
    const own = userQuotaBytes(this.users.get(user)?.extraFields ?? {}, (message) => {
      if (this.badQuotaRules.has(`${user}\0${message}`)) return;
      this.badQuotaRules.add(`${user}\0${message}`);
      this.logger.warn({ user }, `users file: ${message}; the default quota applies`);
    });
    if (own !== undefined) return own;
    return this.config.quota.default > 0 ? this.config.quota.default : null;
  }

  /** The Maildir root of a user, from the `store.maildir` template. */
  maildirFor(user: string): string {
    return expandMaildirTemplate(this.config.store.maildir, { user, home: this.users.get(user)?.home || undefined }, this.config.dataDir);
  }

  /** Creates the user's mailboxes once per process (the store call is idempotent). */
  private ensureUser(user: string): Promise<void> {
    let p = this.ensured.get(user);
    if (!p) {
      p = this.store.ensureUser(user).catch((err: unknown) => {
        this.ensured.delete(user);
        throw err;
      });
      this.ensured.set(user, p);
    }
    return p;
  }

  /** The certificate of `config` (generated when not configured and missing). */
  private async loadTls(config: Config): Promise<CertificateMaterial> {
    const tls = await ensureCertificate({
      certFile: config.tls.cert,
      keyFile: config.tls.key,
      domain: this.config.domain,
      generate: !config.tls.configured,
      logger: this.logger,
    });
    if (tls.generated) this.logger.info({ cert: config.tls.cert }, 'generated a self-signed certificate');
    return tls;
  }

  /**
   * Binds every listener, calls `afterListen` (the privilege drop happens there), then
   * publishes the onion service when the data dir has its key (waits up to `onionWaitMs` for
   * the first attempt; later attempts continue in the background).
   */
  async start(options: { afterListen?: () => void; onionWaitMs?: number } = {}): Promise<Listening[]> {
    const { config, logger } = this;
    await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
    const tls = await this.loadTls(config);

    await this.queue.open();
    const resolver = new RecipientResolver({
      localDomains: config.localDomains,
      userDb: this.users,
      aliases: this.aliases,
      postmaster: config.users.postmaster ?? undefined,
      logger,
    });
    const relay = new RelayPolicy({
      openToOnion: config.relay.openToOnion,
      onionRatePerMinute: config.relay.onionRatePerMinute,
      clearnet: config.relay.clearnet,
    });
    // What SMTP queues wakes the scheduler at once (in-process signal).
    const queue = {
      enqueue: async (input: EnqueueInput) => {
        const entry = await this.queue.enqueue(input);
        this.scheduler?.wake();
        return entry;
      },
    };
    const authenticate = async (username: string, password: string): Promise<{ id: string; username: string } | null> => {
      const user = await this.users.authenticate(username, password);
      if (!user) return null;
      await this.ensureUser(user.name);
      return { id: user.name, username: user.name };
    };

    const smtp = createInboundSmtpServer({
      domain: config.domain,
      store: this.store,
      resolveRecipient: (address: string) => resolver.resolve(address),
      prepareRecipient: (user: string) => this.ensureUser(user),
      maxMessageSize: config.smtp.maxMessageSize,
      maxRecipients: config.smtp.maxRecipients,
      logger,
      tls: { key: tls.key, cert: tls.cert },
      queue,
      relay,
    });
    const tlsOptions = { key: tls.key, cert: tls.cert };
    // One throttle for both submission listeners: failed logins count across them.
    const throttle = new AuthThrottle();
    const submission = (implicitTls: boolean) =>
      createSubmissionServer({
        domain: config.domain,
        store: this.store,
        queue,
        resolveRecipient: (address: string) => resolver.resolve(address),
        authenticate: async (username: string, password: string) => (await this.users.authenticate(username, password))?.name ?? null,
        throttle,
        relay,
        tls: tlsOptions,
        implicitTls,
        allowPlaintextLoopback: config.submission.allowPlaintextLoopback,
        prepareRecipient: (user: string) => this.ensureUser(user),
        maxMessageSize: config.smtp.maxMessageSize,
        maxRecipients: config.smtp.maxRecipients,
        logger,
      });
    const planned: Array<{ name: Listening['name']; description: string; server: Listener; host: string; port: number }> = [
      { name: 'smtp', description: 'SMTP, incoming mail (STARTTLS offered)', server: smtp, ...config.smtp.inbound },
      { name: 'submission', description: 'SMTP submission (STARTTLS, AUTH)', server: submission(false), ...config.submission.starttls },
      { name: 'submissions', description: 'SMTP submission over TLS (AUTH)', server: submission(true), ...config.submission.tls },
      {
        name: 'imap',
        description: 'IMAP (STARTTLS offered)',
        server: createImapServer({ store: this.store, authenticate, logger, tls: tlsOptions, secure: false, maxMessage: config.smtp.maxMessageSize }),
        ...config.imap.plain,
      },
      {
        name: 'imaps',
        description: 'IMAP over TLS',
        server: createImapServer({ store: this.store, authenticate, logger, tls: tlsOptions, secure: true, maxMessage: config.smtp.maxMessageSize }),
        ...config.imap.tls,
      },
    ];
    const result: Listening[] = [];
    try {
      for (const l of planned) {
        if (l.port === 0) continue;
        try {
          await l.server.listen(l.port, l.host);
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          const hint =
            code === 'EADDRINUSE'
              ? 'another program (or another onionpost) already listens there; stop it or choose another port in the config'
              : code === 'EACCES'
                ? 'ports below 1024 need root (onionpost drops privileges after binding) or a higher port'
                : String(err);
          throw new Error(`cannot listen on ${l.host}:${l.port} for ${l.name}: ${hint}`);
        }
        this.listeners.push(l);
        const addr = l.server.address();
        const port = typeof addr === 'object' && addr ? addr.port : l.port;
        result.push({ name: l.name, description: l.description, host: l.host, port });
        logger.info({ listener: l.name, host: l.host, port }, 'listening');
      }
      options.afterListen?.();
      this.started = true;
      this.startedAt = Date.now();
      await this.startDelivery(resolver, relay);
      this.listening.push(...result);
      await this.startOnion(options.onionWaitMs ?? 5000);
    } catch (err) {
      await this.stop();
      throw err;
    }
    return result;
  }

  /** The outbound scheduler: queue -> local store or Tor's SOCKS port. */
  private async startDelivery(recipients: RecipientResolver, relay: RelayPolicy): Promise<void> {
    const { config, logger } = this;
    const d = config.delivery;
    if (d.direct) {
      logger.warn('[delivery] direct = true: outbound mail is sent WITHOUT Tor, with DNS lookups through [tor] dns; this reveals the server. Only for tests and clearnet setups.');
      if (config.relay.clearnet && !config.tor.dns) {
        logger.warn('[delivery] direct = true without [tor] dns: mail to clearnet domains cannot be routed (no resolver) and waits in the queue until it expires. Set [tor] dns to a DNS server (host:port).');
      }
    }
    this.scheduler = new DeliveryScheduler({
      queue: this.queue,
      domain: config.domain,
      localDomains: config.localDomains,
      // Direct mode: no Tor to resolve names, so the resolver looks the addresses up too.
      resolver: new NextHopResolver({ clearnet: config.relay.clearnet, resolver: config.tor.dns ?? undefined, addresses: d.direct }),
      connect: d.direct
        ? directConnector({ timeoutMs: d.connectTimeout, logger })
        : torConnector({ socks: () => this.config.tor.socks, timeoutMs: d.connectTimeout }),
      route: d.direct ? 'DIRECT (no Tor)' : `tor socks ${config.tor.socks.host}:${config.tor.socks.port}`,
      deliverLocal: createLocalDelivery({
        store: this.store,
        resolveRecipient: (address) => recipients.resolve(address),
        prepareRecipient: (user) => this.ensureUser(user),
        enqueue: (input) => this.queue.enqueue(input),
        canReach: (address, domain) => relay.destination(address, domain).ok,
        logger,
      }),
      retryMs: config.queue.retry,
      maxAgeMs: config.queue.maxAge,
      delayWarningMs: config.queue.delayWarning,
      concurrency: config.queue.concurrency,
      startTls: d.starttls,
      logger,
    });
    await this.scheduler.start();
  }

  /** Publishes `<data_dir>/onion/` through Tor's control port, if there is a key and a control port. */
  private async startOnion(waitMs: number): Promise<void> {
    const { config, logger } = this;
    const key = await readOnionKey(onionKeyDir(config.dataDir));
    if (!key) return;
    if (!config.tor.control) {
      logger.warn({ onion: key.hostname }, 'onion: the data dir has an onion key but [tor] control is empty; not publishing it (a torrc HiddenServiceDir must do it)');
      return;
    }
    if (key.hostname !== config.domain && !config.localDomains.includes(key.hostname)) {
      logger.warn({ onion: key.hostname, domain: config.domain }, 'onion: the onion in the data dir is not one of our domains; mail to it will be refused (run onionpost init to set the domain)');
    }
    this.onion = new OnionPublisher({
      control: config.tor.control,
      auth: { password: config.tor.controlPassword || null, cookieFile: config.tor.cookieFile },
      key,
      ports: onionPortMap(this.listening),
      logger,
    });
    await this.onion.start(waitMs);
  }

  onionStatus(): OnionStatus | null {
    return this.onion?.state() ?? null;
  }

  async status(): Promise<ServerStatus> {
    let queue: number | null = null;
    try {
      queue = (await readdir(path.join(this.config.queue.dir, 'entries'))).filter((n) => !n.startsWith('.')).length;
    } catch {
      queue = null;
    }
    const counts = new Map(this.listeners.map((l) => [l.name, l.server.connectionCount?.() ?? null]));
    return {
      pid: process.pid,
      startedAt: this.startedAt,
      domain: this.config.domain,
      dataDir: this.config.dataDir,
      config: this.config.file,
      listeners: this.listening.map((l) => ({ ...l, connections: counts.get(l.name) ?? null })),
      onion: this.onionStatus(),
      users: this.users.list().length,
      queue,
      lastReload: this.lastReload,
    };
  }

  /**
   * SIGHUP: re-reads the config file, users, aliases and the certificate, without dropping a
   * connection. Applied at once: users and aliases; the certificate (new TLS handshakes use
   * it; sessions already encrypted keep theirs), also from new tls.cert/tls.key paths; the
   * [tor] settings (the onion is published again through the new control port). Everything
   * else (listeners, domain, paths, limits, log level, daemon user) is logged as "needs a
   * restart" and keeps its running value. An invalid config file changes nothing but users,
   * aliases and the certificate files, and is logged as an error.
   */
  async reload(): Promise<ReloadResult> {
    const { logger } = this;
    const result: ReloadResult = { ok: true, applied: [], needsRestart: [], errors: [] };
    let next = this.config;
    if (this.config.file) {
      try {
        next = loadConfig(this.config.file);
        result.applied.push('config file');
      } catch (err) {
        result.errors.push(`config: ${(err as Error).message}`);
      }
    }
    const section = (c: Config, k: keyof Config): string => JSON.stringify(c[k]);
    for (const k of Object.keys(next) as Array<keyof Config>) {
      if (k === 'tls' || k === 'tor' || k === 'file') continue;
      if (section(next, k) !== section(this.config, k)) result.needsRestart.push(k);
    }

    this.users.reload();
    this.aliases.reload();
    result.applied.push('users', 'aliases');

    try {
      const tls = await this.loadTls(next);
      for (const l of this.listeners) l.server.updateTls?.({ key: tls.key, cert: tls.cert });
      result.applied.push('certificate');
    } catch (err) {
      next = { ...next, tls: this.config.tls };
      result.errors.push(`certificate: ${(err as Error).message} (keeping the certificate in use)`);
    }

    if (section(next, 'tor') !== section(this.config, 'tor')) {
      if (this.onion && next.tor.control) {
        await this.onion.update({
          control: next.tor.control,
          auth: { password: next.tor.controlPassword || null, cookieFile: next.tor.cookieFile },
          ports: onionPortMap(this.listening),
        });
        result.applied.push('tor');
      } else result.needsRestart.push('tor');
    }

    this.config = { ...this.config, tls: next.tls, tor: this.onion || !next.tor.control ? next.tor : this.config.tor };
    result.ok = result.errors.length === 0;
    const message = result.ok ? `reloaded ${result.applied.join(', ')}` : result.errors.join('; ');
    this.lastReload = { at: Date.now(), ok: result.ok, message };
    if (result.ok) logger.info({ applied: result.applied, needsRestart: result.needsRestart }, 'reloaded');
    else logger.error({ errors: result.errors, applied: result.applied }, 'reload: errors; the running settings stay for those parts');
    if (result.needsRestart.length > 0) logger.warn({ sections: result.needsRestart }, 'reload: these settings changed and take effect at the next restart');
    return result;
  }

  /** Stops accepting, lets transactions in flight finish, says BYE to IMAP clients. */
  async stop(): Promise<void> {
    const closing = this.listeners.splice(0).map((l) =>
      l.server.close().catch((err: unknown) => this.logger.warn({ err, listener: l.name }, 'error while closing')),
    );
    await Promise.all(closing);
    // Deliveries in flight get a few seconds; what is cut stays queued.
    await this.scheduler?.stop();
    this.scheduler = null;
    // After the listeners: removing the onion would cut the circuits of transactions in flight.
    await this.onion?.stop();
    this.onion = null;
    await this.store.close();
    if (this.started) this.logger.info('stopped');
    this.started = false;
  }
}
