/** Tor control-port addresses as written in the config (`[tor] control`) and on the command line. */
import { isIPv6 } from 'node:net';

export type ControlAddress = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

/**
 * "127.0.0.1:9051", "[::1]:9051", "localhost:9051", "9051" (127.0.0.1), "unix:/run/tor/control"
 * or an absolute path "/run/tor/control". Throws Error with a readable message otherwise.
 */
export function parseControlAddress(text: string): ControlAddress {
  const t = text.trim();
  if (t.startsWith('unix:')) {
    const p = t.slice('unix:'.length);
    if (!p.startsWith('/')) throw new Error(`"${text}": a unix socket needs an absolute path, e.g. "unix:/run/tor/control"`);
    return { kind: 'unix', path: p };
  }
  if (t.startsWith('/')) return { kind: 'unix', path: t };
  const port = (s: string): number => {
    const n = /^\d{1,5}$/.test(s) ? Number(s) : NaN;
    if (!(n >= 1 && n <= 65535)) throw new Error(`"${text}": the port must be 1-65535`);
    return n;
  };
  if (/^\d+$/.test(t)) return { kind: 'tcp', host: '127.0.0.1', port: port(t) };
  const v6 = /^\[([0-9a-fA-F:.]+)\]:(\d+)$/.exec(t);
  if (v6) return { kind: 'tcp', host: v6[1]!, port: port(v6[2]!) };
  const m = /^([A-Za-z0-9.-]+):(\d+)$/.exec(t);
  if (m) return { kind: 'tcp', host: m[1]!, port: port(m[2]!) };
  throw new Error(`"${text}" is not a control port address: use "HOST:PORT" (e.g. "127.0.0.1:9051") or "unix:/PATH"`);
}

export function formatControlAddress(a: ControlAddress): string {
  return a.kind === 'unix' ? `unix:${a.path}` : isIPv6(a.host) ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}
