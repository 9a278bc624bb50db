/**
 * Recipient resolution: is an envelope address one of our users, an unknown name in one of
 * our domains, or somebody else's?
 *
 * Rules, in order, for `local-part@domain`:
 * 1. The domain (case-insensitive, a trailing '.' ignored) must be one of `localDomains`,
 *    else the address is remote. An address without '@' is taken to be in the primary
 *    (first) local domain; RFC 5321 only allows that for `<Postmaster>`, but it is handy for
 *    the local `sendmail` path.
 * 2. The local part is compared case-insensitively, and a `+tag` is dropped:
 *    `Alice+lists@` is `alice`. (User names can never contain '+'.)
 * 3. A user of that name (`alice`, or `alice@<that domain>` in a Dovecot-style file).
 * 4. The alias table, when one is plugged in (`aliases` option): its target is resolved the
 *    same way (a bare name in the same domain, or a full address, which may be remote).
 * 5. `postmaster` always resolves (RFC 5321 4.5.1), unless there are no users at all:
 *    to a real user or alias named postmaster if there is one, else to the `postmaster`
 *    option (a user name or local address), else to the first user listed in the users file
 *    (in that domain if possible) - normally the administrator, who created it first.
 * 6. Otherwise: unknown-local (the SMTP layer answers 550).
 */
import type { Logger } from '../log/logger.js';
import type { User } from './user-db.js';

export type Resolution =
  | { kind: 'local'; user: string }
  | { kind: 'unknown-local' }
  | { kind: 'remote'; domain: string };

/** What the resolver needs from the user database (UserDb satisfies it). */
export interface UserLookup {
  get(name: string): User | undefined;
  list(): User[];
}

/**
 * An alias table. `localPart` is lower case with any +tag removed; `domain` is one of the
 * local domains. Returns the target (a user name, or an address), or undefined.
 * Aliases with several targets will need a `resolveAll` that returns a list; `resolve`
 * stays the one-recipient answer.
 */
export interface AliasLookup {
  lookup(localPart: string, domain: string): string | undefined;
}

export interface RecipientResolverOptions {
  /** Lower-case domains we accept mail for; the first one is the primary domain. */
  localDomains: string[];
  userDb: UserLookup;
  /** The user that receives postmaster@ mail when no user or alias is called postmaster. */
  postmaster?: string;
  aliases?: AliasLookup;
  logger?: Logger;
}

/** Alias chains longer than this are treated as loops. */
const MAX_ALIAS_DEPTH = 8;

export class RecipientResolver {
  private readonly localDomains: string[];
  private readonly userDb: UserLookup;
  private readonly postmaster: string | undefined;
  private readonly aliases: AliasLookup | undefined;
  private readonly logger: Logger | undefined;
  private warnedPostmaster = false;

  constructor(opts: RecipientResolverOptions) {
    this.localDomains = opts.localDomains.map(normalizeDomain);
    this.userDb = opts.userDb;
    this.postmaster = opts.postmaster?.trim() || undefined;
    this.aliases = opts.aliases;
    this.logger = opts.logger;
  }

  /** True when `domain` is one of ours. */
  isLocalDomain(domain: string): boolean {
    return this.localDomains.includes(normalizeDomain(domain));
  }

  resolve(address: string): Resolution {
    return this.resolveAt(address, 0);
  }

  private resolveAt(address: string, depth: number): Resolution {
    const parsed = splitAddress(address, this.localDomains[0]);
    if (!parsed) return { kind: 'unknown-local' };
    const { local, domain } = parsed;
    if (!this.localDomains.includes(domain)) return { kind: 'remote', domain };
    const base = local.split('+', 1)[0]!;
    if (base === '') return { kind: 'unknown-local' };
    return this.resolveLocal(base, domain, depth);
  }

  private resolveLocal(base: string, domain: string, depth: number): Resolution {
    const user = this.findUser(base, domain);
    if (user) return { kind: 'local', user: user.name };

    if (this.aliases && depth < MAX_ALIAS_DEPTH) {
      const target = this.aliases.lookup(base, domain);
      if (target !== undefined) {
        const r = target.includes('@')
          ? this.resolveAt(target, depth + 1)
          : this.resolveLocal(target.toLowerCase(), domain, depth + 1);
        if (r.kind !== 'unknown-local' || base !== 'postmaster') return r;
      }
    } else if (this.aliases) {
      this.logger?.warn({ alias: base, domain }, 'alias chain too long (a loop?)');
      return { kind: 'unknown-local' };
    }

    if (base === 'postmaster') return this.postmasterFor(domain);
    return { kind: 'unknown-local' };
  }

  /** `name` in `domain`: the entry `name@domain`, or a bare `name` (valid in every local domain). */
  private findUser(name: string, domain: string): User | undefined {
    const qualified = this.userDb.get(`${name}@${domain}`);
    if (qualified && (qualified.domain === null || qualified.domain === domain) && qualified.localPart === name) {
      return qualified;
    }
    const bare = this.userDb.get(name);
    if (bare && bare.localPart === name && (bare.domain === null || bare.domain === domain)) return bare;
    return undefined;
  }

  private postmasterFor(domain: string): Resolution {
    if (this.postmaster) {
      const p = splitAddress(this.postmaster, domain);
      const user = p && this.localDomains.includes(p.domain) ? this.findUser(p.local, p.domain) : undefined;
      if (user) return { kind: 'local', user: user.name };
      if (!this.warnedPostmaster) {
        this.warnedPostmaster = true;
        this.logger?.warn({ postmaster: this.postmaster }, 'configured postmaster is not a user; using the first user');
      }
    }
    const users = this.userDb.list();
    const pick = users.find((u) => u.domain === null || u.domain === domain) ?? users[0];
    return pick ? { kind: 'local', user: pick.name } : { kind: 'unknown-local' };
  }
}

function normalizeDomain(d: string): string {
  return d.trim().toLowerCase().replace(/\.$/, '');
}

/**
 * `local@domain` -> lower-cased parts. Angle brackets and a quoted local part
 * (`"alice"@x`) are accepted. No '@' means the default domain. Null for an empty address.
 */
function splitAddress(address: string, defaultDomain: string | undefined): { local: string; domain: string } | null {
  let a = address.trim();
  if (a.startsWith('<') && a.endsWith('>')) a = a.slice(1, -1).trim();
  if (a === '') return null;
  const at = a.lastIndexOf('@');
  let local = at === -1 ? a : a.slice(0, at);
  const domain = at === -1 ? defaultDomain : a.slice(at + 1);
  if (domain === undefined || domain === '' || local === '') return null;
  const quoted = /^"((?:[^"\\]|\\.)*)"$/.exec(local);
  if (quoted) local = quoted[1]!.replace(/\\(.)/g, '$1');
  return { local: local.toLowerCase(), domain: normalizeDomain(domain) };
}
