/**
 * Real SMTP listeners for tests: port 25 role and submission (587 and 465 roles) on
 * ephemeral ports, with a real users file (argon2id hashes), a real aliases file, a real
 * MaildirStore and a real outbound queue, all in one temp dir.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import assert from 'node:assert/strict';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import { OutboundQueue } from '../../src/delivery/queue.js';
import { silentLogger } from '../../src/log/logger.js';
import { AuthThrottle } from '../../src/smtp/auth-throttle.js';
import { createInboundSmtpServer, type InboundSmtpOptions } from '../../src/smtp/inbound-server.js';
import type { SmtpListener } from '../../src/smtp/onion-smtp-server.js';
import { RelayPolicy, type RelayPolicyOptions } from '../../src/smtp/policy.js';
import { createSubmissionServer, type SubmissionOptions } from '../../src/smtp/submission-server.js';
import { MaildirStore } from '../../src/store/maildir/maildir-store.js';
import { ensureCertificate } from '../../src/tls/certificate.js';
import { randomOnionAddress } from '../../src/tor/onion-address.js';
import { AliasDb } from '../../src/users/aliases.js';
import { RecipientResolver } from '../../src/users/recipients.js';
import { UserDb } from '../../src/users/user-db.js';
import { maildirMessagesByAge } from './maildir-files.js';
import { SmtpWire } from './smtp-wire.js';

export const DOMAIN = randomOnionAddress();
export const EXTRA_DOMAIN = 'mail.example';
/** A valid v3 onion domain somewhere else. */
export const REMOTE = randomOnionAddress();
export const PASSWORDS: Record<string, string> = { alice: 'alice secret', bob: 'bob: secret ü' };

export interface HarnessOptions {
  aliases?: string;
  relay?: Partial<RelayPolicyOptions>;
  submission?: Partial<SubmissionOptions>;
  inbound?: Partial<InboundSmtpOptions>;
  throttle?: AuthThrottle;
}

export interface Harness {
  dir: string;
  cert: Buffer;
  ports: { smtp: number; submission: number; submissions: number };
  queue: OutboundQueue;
  store: MaildirStore;
  users: UserDb;
  aliases: AliasDb;
  throttle: AuthThrottle;
  servers: SmtpListener[];
  /** Every message file of a user's INBOX (new/ and cur/), oldest first. */
  inbox(user: string): Promise<Buffer[]>;
  stop(): Promise<void>;
}

let hashed: string | undefined;

export async function startHarness(options: HarnessOptions = {}): Promise<Harness> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-smtpx-'));
  const localDomains = [DOMAIN, EXTRA_DOMAIN];
  const usersFile = path.join(dir, 'users.passwd');
  if (hashed === undefined) {
    // Hash once per process (argon2id costs ~0.2 s), then reuse the file text.
    const seed = new UserDb(usersFile, { localDomains });
    for (const [name, pw] of Object.entries(PASSWORDS)) await seed.add(name, pw);
    hashed = await readFile(usersFile, 'utf8');
  } else await writeFile(usersFile, hashed, { mode: 0o600 });
  const aliasesFile = path.join(dir, 'aliases');
  await writeFile(
    aliasesFile,
    options.aliases ??
      [
        '# test aliases',
        'team: alice, bob',
        'sales: alice',
        `shared: alice, carol@${REMOTE}`,
        `fwd: dave@${REMOTE}`,
        'clear: someone@example.com',
        'postmaster: root',
        '',
      ].join('\n'),
  );
  const users = new UserDb(usersFile, { localDomains, checkIntervalMs: 0 });
  const aliases = new AliasDb(aliasesFile, { localDomains, checkIntervalMs: 0 });
  const resolver = new RecipientResolver({ localDomains, userDb: users, aliases });
  const store = new MaildirStore({ maildirFor: (user) => path.join(dir, 'mail', user) });
  const queue = new OutboundQueue({ dir: path.join(dir, 'queue') });
  await queue.open();
  const material = await ensureCertificate({ certFile: path.join(dir, 'cert.pem'), keyFile: path.join(dir, 'key.pem'), domain: DOMAIN, generate: true });
  const tls = { key: material.key, cert: material.cert };
  const relay = new RelayPolicy({ openToOnion: false, onionRatePerMinute: 60, clearnet: false, ...options.relay });
  const throttle = options.throttle ?? new AuthThrottle({ baseDelayMs: 100, maxDelayMs: 400, globalFreeFailures: 1000 });
  const logger = silentLogger();

  const inbound = createInboundSmtpServer({
    domain: DOMAIN,
    store,
    resolveRecipient: (a) => resolver.resolve(a),
    maxMessageSize: 64 * 1024,
    maxRecipients: 5,
    logger,
    tls,
    queue,
    relay,
    ...options.inbound,
  });
  const submission = (implicitTls: boolean) =>
    createSubmissionServer({
      domain: DOMAIN,
      store,
      queue,
      resolveRecipient: (a) => resolver.resolve(a),
      authenticate: async (u, p) => (await users.authenticate(u, p))?.name ?? null,
      throttle,
      relay,
      tls,
      implicitTls,
      maxMessageSize: 64 * 1024,
      maxRecipients: 5,
      logger,
      ...options.submission,
    });
  const servers = [inbound, submission(false), submission(true)];
  for (const s of servers) await s.listen(0, '127.0.0.1');
  const [smtp, sub, subs] = servers.map((s) => s.address()!.port) as [number, number, number];

  return {
    dir,
    cert: material.cert,
    ports: { smtp, submission: sub, submissions: subs },
    queue,
    store,
    users,
    aliases,
    throttle,
    servers,
    inbox: (user: string): Promise<Buffer[]> => maildirMessagesByAge(path.join(dir, 'mail', user)),
    async stop() {
      await Promise.all(servers.map((s) => s.close()));
      await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** base64 of an AUTH PLAIN token. */
export function plainToken(user: string, password: string, authzid = ''): string {
  return Buffer.from(`${authzid}\0${user}\0${password}`, 'utf8').toString('base64');
}

/**
 * A harness for the tests of the enclosing describe(): started before them (and handed to
 * `use`), stopped after them.
 */
export function harnessForSuite(use: (h: Harness) => void, options: HarnessOptions = {}): void {
  let h: Harness | undefined;
  before(async () => {
    h = await startHarness(options);
    use(h);
  });
  after(async () => {
    await h?.stop();
  });
}

/**
 * A byte-level session on `port` past the 220 greeting and a 250 to `EHLO <ehlo>` (no EHLO
 * when ehlo is null), and with `login` (a user of PASSWORDS) past a 235 to AUTH PLAIN.
 */
export async function openSession(port: number, options: { ehlo?: string | null; login?: string } = {}): Promise<SmtpWire> {
  const { ehlo = 'client.example', login } = options;
  const c = await SmtpWire.connect(port);
  assert.equal((await c.read()).code, 220);
  if (ehlo !== null) assert.equal((await c.command(`EHLO ${ehlo}`)).code, 250);
  if (login) {
    const r = await c.command(`AUTH PLAIN ${plainToken(login, PASSWORDS[login]!)}`);
    assert.equal(r.code, 235, r.text);
  }
  return c;
}
