/**
 * Next-hop resolution: which host names to connect to (through Tor) for a destination domain.
 * The only module that asks DNS; through Tor it never resolves A/AAAA (Tor does that at the exit).
 *
 * - `*.onion`: the domain itself, port 25; no DNS at all (checked before any resolver is touched).
 * - other domains, only when clearnet delivery is enabled: an MX query to the configured resolver
 *   (normally Tor's DNSPort). Tor answers MX with NOTIMP (Node: ENOTIMP); that, and NODATA, mean
 *   "implicit MX": the domain itself (RFC 5321 5.1). Several MX: by preference, ties shuffled.
 *   NXDOMAIN and null MX (RFC 7505) are permanent; SERVFAIL, timeouts, refusals are temporary.
 * - direct mode (`addresses`: no Tor, so nobody else would resolve the names): the A and AAAA
 *   records of each mail host come from the same configured resolver, one hop per address
 *   (hosts by preference; per host IPv4 first, then IPv6), so that the transport connects to
 *   addresses and the system resolver is never asked. No address for any host: permanent
 *   when every answer said so (NXDOMAIN, NODATA), else temporary.
 *
 * Whether the domain is one of ours is the caller's business.
 */
import { promises as dnsPromises } from 'node:dns';
import net from 'node:net';
import { domainToASCII } from 'node:url';
import { isOnionDomain } from '../tor/onion-address.js';

export const SMTP_PORT = 25;

export interface NextHop {
  /** A host *name* (or, rarely, what an MX record said), to be resolved by Tor. */
  host: string;
  port: number;
  /** MX preference; 0 for an onion or an implicit MX. */
  preference: number;
  /**
   * Direct mode only: the IP address to connect to, looked up through the configured resolver.
   * Absent: the host name goes to Tor, which resolves it.
   */
  address?: string;
}

export type Resolution =
  | { kind: 'hosts'; hosts: NextHop[] }
  | { kind: 'temporary'; reason: string }
  | { kind: 'permanent'; reason: string };

export interface NextHopResolverOptions {
  /** Deliver to non-onion domains at all (through Tor exits). Off by default. */
  clearnet?: boolean;
  /** DNS server for MX queries, `ip:port` (`[v6]:port` for IPv6), normally Tor's DNSPort. */
  resolver?: string;
  /** Per-try timeout in ms (c-ares). Default 10 s. */
  timeoutMs?: number;
  /** Tries per query. Default 2. */
  tries?: number;
  /** Random source for shuffling MX hosts of equal preference (tests). */
  random?: () => number;
  /**
   * Direct mode (`[delivery] direct`): also look up each host's A/AAAA records through
   * `resolver` and return one hop per address (`NextHop.address`). Default false.
   */
  addresses?: boolean;
}

/** Lower-case A-label form without a trailing dot, or null when it is not a usable domain. */
export function normalizeDomain(domain: string): string | null {
  const trimmed = domain.trim().replace(/\.$/, '');
  if (!trimmed || trimmed.startsWith('.') || trimmed.includes('..')) return null;
  const ascii = domainToASCII(trimmed).toLowerCase();
  if (!ascii || ascii.length > 253 || !/^[a-z0-9_.-]+$/.test(ascii)) return null;
  if (ascii.split('.').some((label) => label.length === 0 || label.length > 63)) return null;
  return ascii;
}

/** `ip:port` / `[ip6]:port` / `ip` -> the form `Resolver.setServers` takes; throws on a host name. */
function parseResolverAddress(resolver: string): string {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(resolver) ?? /^([^:]+)(?::(\d+))?$/.exec(resolver);
  const host = m?.[1];
  const port = m?.[2] ? Number(m[2]) : 53;
  if (!host || !net.isIP(host) || !(port >= 1 && port <= 65535)) {
    throw new Error(`resolver must be "ip:port" (e.g. "127.0.0.1:9053", Tor's DNSPort), got ${JSON.stringify(resolver)}`);
  }
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

function temporary(reason: string): Resolution {
  return { kind: 'temporary', reason };
}
function permanent(reason: string): Resolution {
  return { kind: 'permanent', reason };
}

export class NextHopResolver {
  private readonly dns: dnsPromises.Resolver | null;
  private readonly server: string | null;
  private readonly clearnet: boolean;
  private readonly random: () => number;
  private readonly addresses: boolean;

  constructor(options: NextHopResolverOptions = {}) {
    this.clearnet = options.clearnet ?? false;
    this.random = options.random ?? Math.random;
    this.addresses = options.addresses ?? false;
    if (this.clearnet && options.resolver) {
      this.server = parseResolverAddress(options.resolver);
      this.dns = new dnsPromises.Resolver({ timeout: options.timeoutMs ?? 10_000, tries: options.tries ?? 2 });
      this.dns.setServers([this.server]);
    } else {
      this.server = null;
      this.dns = null;
    }
  }

  /** Cancels queries in flight (they fail as temporary). */
  close(): void {
    this.dns?.cancel();
  }

  async resolve(domain: string): Promise<Resolution> {
    // The onion check comes first: an onion name must never reach any resolver.
    if (isOnionDomain(domain.trim())) {
      const onion = domain.trim().toLowerCase().replace(/\.$/, '');
      if (!/^[a-z0-9.-]+\.onion$/.test(onion)) return permanent(`invalid onion domain ${JSON.stringify(domain)}`);
      return { kind: 'hosts', hosts: [{ host: onion, port: SMTP_PORT, preference: 0 }] };
    }
    const name = normalizeDomain(domain);
    if (!name) return permanent(`invalid domain ${JSON.stringify(domain)}`);
    if (net.isIP(name)) return permanent(`${name} is an address literal, not a domain`);
    if (!this.clearnet) {
      return permanent(`${name} is not an onion domain, and delivery to clearnet domains is disabled`);
    }
    if (!this.dns) return temporary(`cannot look up the mail exchangers of ${name}: no resolver is configured`);

    let resolution: Resolution;
    try {
      resolution = this.fromRecords(await this.dns.resolveMx(name), name);
    } catch (err) {
      resolution = this.classify(err as NodeJS.ErrnoException, name);
    }
    return this.addresses && resolution.kind === 'hosts' ? this.withAddresses(resolution.hosts, name) : resolution;
  }

  /** Direct mode: one hop per address of each host (in the hosts' order), from the configured resolver. */
  private async withAddresses(hosts: NextHop[], name: string): Promise<Resolution> {
    const found = await Promise.all(hosts.map((hop) => this.addressesOf(hop.host)));
    const out: NextHop[] = [];
    const seen = new Set<string>();
    const problems: string[] = [];
    let retry = false;
    hosts.forEach((hop, i) => {
      const f = found[i]!;
      if ('problem' in f) {
        problems.push(f.problem);
        retry ||= f.temporary;
        return;
      }
      for (const address of f.addresses) {
        if (seen.has(address)) continue;
        seen.add(address);
        out.push({ ...hop, address });
      }
    });
    if (out.length > 0) return { kind: 'hosts', hosts: out };
    const reason = `no address to connect to for ${name}: ${problems.join('; ')}`;
    return retry ? temporary(reason) : permanent(reason);
  }

  /** A and AAAA records of `host` (IPv4 first), or why there are none. */
  private async addressesOf(host: string): Promise<{ addresses: string[] } | { problem: string; temporary: boolean }> {
    if (net.isIP(host)) return { addresses: [host] };
    // c-ares would refuse an onion name anyway (and it must never reach a resolver).
    if (isOnionDomain(host)) return { problem: `${host} is an onion service, which direct delivery cannot reach`, temporary: false };
    const dns = this.dns!;
    const settle = (p: Promise<string[]>): Promise<string[] | NodeJS.ErrnoException> => p.catch((err: NodeJS.ErrnoException) => err);
    const [v4, v6] = await Promise.all([settle(dns.resolve4(host)), settle(dns.resolve6(host))]);
    const addresses = [v4, v6].flatMap((r) => (Array.isArray(r) ? r : []));
    if (addresses.length > 0) return { addresses };
    const errors = [v4, v6].filter((r): r is NodeJS.ErrnoException => !Array.isArray(r));
    // No data, NXDOMAIN, a type the server does not do: a definite "no address".
    const definite = (e: NodeJS.ErrnoException): boolean => e.code === 'ENODATA' || e.code === 'ENOTFOUND' || e.code === 'ENOTIMP';
    const failure = errors.find((e) => !definite(e));
    if (failure) return { problem: `DNS server ${this.server} did not answer the address query for ${host} (${failure.code ?? failure.message})`, temporary: true };
    if (errors.some((e) => e.code === 'ENOTFOUND')) return { problem: `${host} does not exist (NXDOMAIN)`, temporary: false };
    return { problem: `${host} has no A or AAAA record`, temporary: false };
  }

  private implicit(name: string): Resolution {
    return { kind: 'hosts', hosts: [{ host: name, port: SMTP_PORT, preference: 0 }] };
  }

  private classify(err: NodeJS.ErrnoException, name: string): Resolution {
    switch (err.code) {
      case 'ENOTIMP': // Tor's DNSPort answers MX with NOTIMP: connect to the domain itself, Tor resolves it.
      case 'ENODATA': // the name exists but has no MX: implicit MX (RFC 5321 5.1).
        return this.implicit(name);
      case 'ENOTFOUND':
        return permanent(`the domain ${name} does not exist (NXDOMAIN)`);
      case 'EBADNAME':
        return permanent(`invalid domain ${name}`);
      case 'ESERVFAIL':
        return temporary(`DNS server ${this.server} failed to look up MX for ${name} (SERVFAIL)`);
      case 'ETIMEOUT':
        return temporary(`DNS server ${this.server} did not answer the MX query for ${name} in time`);
      case 'EREFUSED':
        return temporary(`DNS server ${this.server} refused the MX query for ${name}`);
      case 'ECONNREFUSED':
        return temporary(`DNS server ${this.server} is not reachable (connection refused)`);
      case 'ECANCELLED':
        return temporary(`the MX query for ${name} was cancelled`);
      default:
        return temporary(`MX lookup for ${name} failed: ${err.code ?? ''} ${err.message}`.trim());
    }
  }

  private fromRecords(records: { exchange: string; priority: number }[], name: string): Resolution {
    if (records.length === 0) return this.implicit(name);
    const normal = records.filter((r) => r.exchange.replace(/\.$/, '') !== '');
    if (normal.length === 0) {
      return permanent(`the domain ${name} does not accept mail (null MX, RFC 7505)`);
    }
    // A null MX among other records is a misconfiguration; the real exchangers are used.
    const best = new Map<string, number>();
    for (const r of normal) {
      const host = r.exchange.toLowerCase().replace(/\.$/, '');
      const prev = best.get(host);
      if (prev === undefined || r.priority < prev) best.set(host, r.priority);
    }
    const hosts = [...best].map(([host, preference]) => ({ host, port: SMTP_PORT, preference, key: this.random() }));
    hosts.sort((a, b) => a.preference - b.preference || a.key - b.key);
    return { kind: 'hosts', hosts: hosts.map(({ host, port, preference }) => ({ host, port, preference })) };
  }
}

/** One-shot form of `NextHopResolver.resolve`. */
export async function resolveNextHop(domain: string, options: NextHopResolverOptions = {}): Promise<Resolution> {
  const resolver = new NextHopResolver(options);
  try {
    return await resolver.resolve(domain);
  } finally {
    resolver.close();
  }
}
