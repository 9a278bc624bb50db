/**
 * Recipient resolution: is an envelope address one of our users, an alias, an unknown name in
 * one of our domains, or somebody else's?
 *
 * Rules, in order, for `local-part@domain`:
 * 1. The domain (case-insensitive, a trailing '.' ignored) must be one of `localDomains`,
 *    else the address is remote. An address without '@' is taken to be in the primary
 *    (first) local domain; RFC 5321 only allows that for `<Postmaster>`, but it is handy for
 *    the local `sendmail` path.
 * 2. The local part is compared case-insensitively, and a `+tag` is dropped:
 *    `Alice+lists@` is `alice`. (User names can never contain '+'.)
 * 3. A user of that name (`alice`, or `alice@<that domain>` in a Dovecot-style file). Users
 *    come before aliases: an alias with a user's name is never consulted.
 * 4. The alias table, when one is plugged in (`aliases` option): first the local part with
 *    its +tag (`info+x` if there is such an alias), then without (`info`). Every target is
 *    resolved the same way: a bare name in the same domain (a user or another alias),
 *    `\name` (that user only, never an alias), or a full address (ours: resolved again;
 *    anybody else's: a remote target). Aliases of aliases nest at most 8 deep; an alias
 *    met again on its own expansion path is a loop: that branch is dropped (and logged),
 *    the other targets stay.
 * 5. `postmaster` always resolves (RFC 5321 4.5.1), unless there are no users at all, and
 *    so does `root` (the conventional target of system mail, e.g. `postmaster: root`):
 *    to a real user or alias of that name if there is one (and it leads somewhere), else to
 *    the `postmaster` option (a user name or local address), else to the first user listed
 *    in the users file (in that domain if possible) - normally the administrator.
 * 6. Otherwise: unknown-local (the SMTP layer answers 550).
 *
 * Results: `local` (exactly one local user, no forwarding: the common case), `alias` (an
 * alias that expands to several users and/or remote addresses, deduplicated), `unknown-local`,
 * `remote` (the address itself is not in our domains).
 */
import type { Logger } from '../log/logger.js';
import type { User } from './user-db.js';

export type Resolution =
  | { kind: 'local'; user: string }
  | { kind: 'alias'; users: string[]; remote: string[] }
  | { kind: 'unknown-local' }
  | { kind: 'remote'; domain: string };

/** What the resolver needs from the user database (UserDb satisfies it). */
export interface UserLookup {
  get(name: string): User | undefined;
  list(): User[];
}

/**
 * An alias table (AliasDb satisfies it). `localPart` is lower case; `domain` is one of the
 * local domains. Returns the targets (names, `\names` or addresses), or undefined.
 */
export interface AliasLookup {
  lookup(localPart: string, domain: string): readonly string[] | string | undefined;
}

export interface RecipientResolverOptions {
  /** Lower-case domains we accept mail for; the first one is the primary domain. */
  localDomains: string[];
  userDb: UserLookup;
  /** The user that receives postmaster@ and root@ mail when no user or alias has that name. */
  postmaster?: string;
  aliases?: AliasLookup;
  logger?: Logger;
}

/** Alias chains longer than this are treated as loops. */
const MAX_ALIAS_DEPTH = 8;
/** Most targets one address may expand to (a guard against an exploding alias table). */
const MAX_EXPANSION = 1000;

/** Names that always reach somebody while there are users. */
const ADMIN_NAMES = new Set(['postmaster', 'root']);

interface Expansion {
  users: string[];
  remote: string[];
  /** Alias keys on the current expansion path (loop detection). */
  path: string[];
  steps: number;
  aliased: boolean;
}

export class RecipientResolver {
  private readonly localDomains: string[];
  private readonly userDb: UserLookup;
  private readonly postmaster: string | undefined;
  private readonly aliases: AliasLookup | undefined;
  private readonly logger: Logger | undefined;
  private warnedPostmaster = false;
  private readonly warned = new Set<string>();

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
    const parsed = splitAddress(address, this.localDomains[0]);
    if (!parsed) return { kind: 'unknown-local' };
    const { local, domain } = parsed;
    if (!this.localDomains.includes(domain)) return { kind: 'remote', domain };
    const x: Expansion = { users: [], remote: [], path: [], steps: 0, aliased: false };
    this.expand(local, domain, 0, x);
    if (x.users.length === 0 && x.remote.length === 0) return { kind: 'unknown-local' };
    if (x.remote.length === 0 && x.users.length === 1) return { kind: 'local', user: x.users[0]! };
    return { kind: 'alias', users: x.users, remote: x.remote };
  }

  /** Adds what `local@domain` (ours) leads to; returns true if it led anywhere. */
  private expand(local: string, domain: string, depth: number, x: Expansion): boolean {
    if (++x.steps > MAX_EXPANSION) {
      this.warnOnce(`expansion:${local}@${domain}`, { alias: local, domain }, `alias expansion stopped after ${MAX_EXPANSION} targets`);
      return false;
    }
    const base = local.split('+', 1)[0]!;
    if (base === '') return false;
    const user = this.findUser(base, domain);
    if (user) {
      addUnique(x.users, user.name);
      return true;
    }

    let found = false;
    const hit = this.lookupAlias(local, base, domain);
    if (hit) {
      const pathKey = `${hit.key}@${domain}`;
      if (x.path.includes(pathKey)) {
        this.warnOnce(`loop:${pathKey}`, { alias: hit.key, domain, path: [...x.path, pathKey] }, 'alias loop; that branch is dropped');
      } else if (depth >= MAX_ALIAS_DEPTH) {
        this.warnOnce(`depth:${pathKey}`, { alias: hit.key, domain }, 'alias chain too long (a loop?)');
      } else {
        x.path.push(pathKey);
        x.aliased = true;
        for (const target of hit.targets) {
          if (this.expandTarget(target, domain, depth + 1, x)) found = true;
        }
        x.path.pop();
      }
    }
    if (found) return true;
    if (ADMIN_NAMES.has(base)) return this.addPostmaster(domain, x);
    return false;
  }

  private expandTarget(target: string, domain: string, depth: number, x: Expansion): boolean {
    if (target.startsWith('\\')) {
      const name = target.slice(1).toLowerCase();
      const user = this.findUser(name, domain) ?? this.findUser(name, this.localDomains[0]!);
      if (user) {
        addUnique(x.users, user.name);
        return true;
      }
      this.warnOnce(`user:${name}`, { target }, 'alias target is not a user');
      return false;
    }
    if (!target.includes('@')) return this.expand(target.toLowerCase(), domain, depth, x);
    const parsed = splitAddress(target, domain);
    if (!parsed) return false;
    if (this.localDomains.includes(parsed.domain)) return this.expand(parsed.local, parsed.domain, depth, x);
    // A remote target keeps its local part as written (remote local parts may be case-sensitive).
    const at = target.lastIndexOf('@');
    const address = `${target.slice(0, at)}@${parsed.domain}`;
    if (!x.remote.some((r) => r.toLowerCase() === address.toLowerCase())) x.remote.push(address);
    return true;
  }

  private lookupAlias(local: string, base: string, domain: string): { key: string; targets: readonly string[] } | undefined {
    if (!this.aliases) return undefined;
    const get = (k: string) => {
      const t = this.aliases!.lookup(k, domain);
      if (t === undefined) return undefined;
      const list = typeof t === 'string' ? [t] : t;
      return list.length > 0 ? list : undefined;
    };
    if (local !== base) {
      const exact = get(local);
      if (exact) return { key: local, targets: exact };
    }
    const t = get(base);
    return t ? { key: base, targets: t } : undefined;
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

  private addPostmaster(domain: string, x: Expansion): boolean {
    if (this.postmaster) {
      const p = splitAddress(this.postmaster, domain);
      const user = p && this.localDomains.includes(p.domain) ? this.findUser(p.local, p.domain) : undefined;
      if (user) {
        addUnique(x.users, user.name);
        return true;
      }
      if (!this.warnedPostmaster) {
        this.warnedPostmaster = true;
        this.logger?.warn({ postmaster: this.postmaster }, 'configured postmaster is not a user; using the first user');
      }
    }
    const users = this.userDb.list();
    const pick = users.find((u) => u.domain === null || u.domain === domain) ?? users[0];
    if (!pick) return false;
    addUnique(x.users, pick.name);
    return true;
  }

  private warnOnce(key: string, fields: Record<string, unknown>, message: string): void {
    if (this.warned.has(key)) return;
    if (this.warned.size > 1000) this.warned.clear();
    this.warned.add(key);
    this.logger?.warn(fields, message);
  }
}

function addUnique(list: string[], value: string): void {
  if (!list.includes(value)) list.push(value);
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
