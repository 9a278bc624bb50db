/**
 * Composition root: builds the store, users, SMTP and IMAP listeners from a Config and
 * starts, stops and reloads them. Nothing else wires modules together.
 */
import { mkdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { Config } from './config/types.js';
import { OutboundQueue } from './delivery/queue.js';
import { createImapServer } from './imap/imap-server.js';
import type { Logger } from './log/logger.js';
import { AuthThrottle } from './smtp/auth-throttle.js';
import { createInboundSmtpServer } from './smtp/inbound-server.js';
import { RelayPolicy } from './smtp/policy.js';
import { createSubmissionServer } from './smtp/submission-server.js';
import { expandMaildirTemplate } from './store/maildir-location.js';
import { MaildirStore } from './store/maildir/maildir-store.js';
import type { MailStore } from './store/types.js';
import { ensureCertificate } from './tls/certificate.js';
import { AliasDb } from './users/aliases.js';
import { RecipientResolver } from './users/recipients.js';
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
}

export class OnionpostServer {
  readonly store: MailStore;
  readonly users: UserDb;
  readonly aliases: AliasDb;
  readonly queue: OutboundQueue;
  private readonly ensured = new Map<string, Promise<void>>();
  private readonly listeners: Array<{ name: Listening['name']; description: string; server: Listener; host: string; port: number }> = [];
  private started = false;

  constructor(
    readonly config: Config,
    private readonly logger: Logger,
  ) {
    this.users = new UserDb(config.users.file, { localDomains: config.localDomains, logger });
    this.aliases = new AliasDb(config.users.aliases, { localDomains: config.localDomains, logger });
    this.queue = new OutboundQueue({ dir: config.queue.dir, logger });
    this.store = new MaildirStore({ maildirFor: (user) => this.maildirFor(user), logger });
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

  async start(): Promise<Listening[]> {
    const { config, logger } = this;
    await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
    const tls = await ensureCertificate({
      certFile: config.tls.cert,
      keyFile: config.tls.key,
      domain: config.domain,
      generate: !config.tls.configured,
    });
    if (tls.generated) logger.info({ cert: config.tls.cert }, 'generated a self-signed certificate');

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
      queue: this.queue,
      relay,
    });
    const tlsOptions = { key: tls.key, cert: tls.cert };
    // One throttle for both submission listeners: failed logins count across them.
    const throttle = new AuthThrottle();
    const submission = (implicitTls: boolean) =>
      createSubmissionServer({
        domain: config.domain,
        store: this.store,
        queue: this.queue,
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
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.started = true;
    return result;
  }

  /** Re-reads what can change without a restart (users and aliases now; config and certificates later). */
  async reload(): Promise<void> {
    this.users.reload();
    this.aliases.reload();
    this.logger.info('reloaded');
  }

  /** Stops accepting, lets transactions in flight finish, says BYE to IMAP clients. */
  async stop(): Promise<void> {
    const closing = this.listeners.splice(0).map((l) =>
      l.server.close().catch((err: unknown) => this.logger.warn({ err, listener: l.name }, 'error while closing')),
    );
    await Promise.all(closing);
    await this.store.close();
    if (this.started) this.logger.info('stopped');
    this.started = false;
  }
}
