/**
 * A DNS spy to preload into a daemon under test (`NODE_OPTIONS=--import=<URL of this file>`,
 * see `dnsSpyEnv`). It records, one JSON line per call in the file named by
 * ONIONPOST_TEST_DNS_SPY:
 * - every question to the *system* resolver: `dns.lookup` (getaddrinfo: /etc/hosts and
 *   resolv.conf; what `net.connect` uses for a host name) with a name that is not an address
 *   literal (literals never leave the process), and the default resolver's `resolve*()`
 *   and `reverse()` (resolv.conf's servers), callback and promise forms;
 * - every query made through a `dns.Resolver` / `dns.promises.Resolver` object, with the
 *   servers that object was set to ask.
 * Its first line says it was installed (`api: 'spy'`), so that an empty log means "nothing
 * asked", not "no spy". It only watches: each call goes on to the real function.
 */
import dns from 'node:dns';
import { appendFileSync } from 'node:fs';
import net from 'node:net';

export interface DnsSpyRecord {
  /** system: getaddrinfo or the default resolver; resolver: a Resolver object; spy: installed (first line). */
  api: 'system' | 'resolver' | 'spy';
  fn: string;
  name: string;
  /** The servers of the Resolver object that was asked. */
  servers?: string[];
}

const ENV = 'ONIONPOST_TEST_DNS_SPY';

/** Environment for a child process with the spy preloaded, recording into `logFile`. */
export function dnsSpyEnv(logFile: string): Record<string, string> {
  const self = import.meta.url;
  const existing = process.env.NODE_OPTIONS ? `${process.env.NODE_OPTIONS} ` : '';
  return { NODE_OPTIONS: `${existing}--import=${self}`, [ENV]: logFile };
}

/** Parses what the spy wrote (no file: nothing was recorded). */
export function parseDnsSpyLog(text: string): DnsSpyRecord[] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as DnsSpyRecord);
}

const QUERY_METHODS = [
  'resolve',
  'resolve4',
  'resolve6',
  'resolveAny',
  'resolveCaa',
  'resolveCname',
  'resolveMx',
  'resolveNaptr',
  'resolveNs',
  'resolvePtr',
  'resolveSoa',
  'resolveSrv',
  'resolveTxt',
  'reverse',
] as const;

type AnyFunction = (this: unknown, ...args: unknown[]) => unknown;

function spyOn(target: object, fn: string, describe: (self: unknown, args: unknown[]) => DnsSpyRecord | null, write: (r: DnsSpyRecord) => void): void {
  const holder = target as Record<string, unknown>;
  const original = holder[fn];
  if (typeof original !== 'function') return;
  const real = original as AnyFunction;
  holder[fn] = function spied(this: unknown, ...args: unknown[]): unknown {
    const record = describe(this, args);
    if (record) write(record);
    return real.apply(this, args);
  };
}

function install(logFile: string): void {
  const write = (r: DnsSpyRecord): void => appendFileSync(logFile, `${JSON.stringify(r)}\n`);
  const nameOf = (args: unknown[]): string => String(args[0]);
  const serversOf = (self: unknown): string[] => {
    const getServers = (self as { getServers?: () => string[] } | null)?.getServers;
    return typeof getServers === 'function' ? getServers.call(self) : [];
  };
  for (const api of [dns, dns.promises]) {
    for (const fn of ['lookup', 'lookupService']) {
      spyOn(api, fn, (_self, args) => (fn === 'lookup' && net.isIP(nameOf(args)) !== 0 ? null : { api: 'system', fn, name: nameOf(args) }), write);
    }
    for (const fn of QUERY_METHODS) spyOn(api, fn, (_self, args) => ({ api: 'system', fn, name: nameOf(args) }), write);
  }
  for (const proto of [dns.Resolver.prototype, dns.promises.Resolver.prototype]) {
    for (const fn of QUERY_METHODS) spyOn(proto, fn, (self, args) => ({ api: 'resolver', fn, name: nameOf(args), servers: serversOf(self) }), write);
  }
  write({ api: 'spy', fn: 'install', name: `pid ${process.pid}` });
}

const logFile = process.env[ENV];
if (logFile) install(logFile);
