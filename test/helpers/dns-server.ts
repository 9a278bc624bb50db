/**
 * A tiny authoritative DNS server on 127.0.0.1 (UDP) for tests, built on dns-packet. It records
 * every query it receives and answers from a table; names match case-insensitively (Tor's exits
 * randomize the case of the names they resolve).
 */
import dgram from 'node:dgram';
import dnsPacket from 'dns-packet';

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;

export interface DnsRule {
  /** rcode to answer with (default NOERROR). */
  rcode?: number;
  /** Never answer (to test timeouts). */
  silent?: boolean;
  mx?: { preference: number; exchange: string }[];
  a?: string[];
  aaaa?: string[];
}

export interface DnsQueryRecord {
  name: string;
  type: string;
}

export interface TestDnsServer {
  port: number;
  address: string;
  /** Every query received, in order. */
  queries: DnsQueryRecord[];
  /** Rules by lower-case name; `*` is the fallback (default: NXDOMAIN). */
  rules: Map<string, DnsRule>;
  close(): Promise<void>;
}

export async function startDnsServer(rules: Record<string, DnsRule> = {}): Promise<TestDnsServer> {
  const socket = dgram.createSocket('udp4');
  const table = new Map(Object.entries(rules).map(([k, v]) => [k.toLowerCase(), v]));
  const queries: DnsQueryRecord[] = [];
  socket.on('message', (msg, rinfo) => {
    let query: dnsPacket.DecodedPacket;
    try {
      query = dnsPacket.decode(msg);
    } catch {
      return;
    }
    const q = query.questions?.[0];
    if (!q) return;
    queries.push({ name: q.name, type: q.type });
    const rule = table.get(q.name.toLowerCase()) ?? table.get('*') ?? { rcode: RCODE.NXDOMAIN };
    if (rule.silent) return;
    const answers: dnsPacket.Answer[] = [];
    if ((rule.rcode ?? 0) === RCODE.NOERROR) {
      if (q.type === 'MX') {
        for (const mx of rule.mx ?? []) answers.push({ type: 'MX', name: q.name, ttl: 60, class: 'IN', data: mx });
      } else if (q.type === 'A') {
        for (const a of rule.a ?? []) answers.push({ type: 'A', name: q.name, ttl: 60, class: 'IN', data: a });
      } else if (q.type === 'AAAA') {
        for (const a of rule.aaaa ?? []) answers.push({ type: 'AAAA', name: q.name, ttl: 60, class: 'IN', data: a });
      }
    }
    const reply = dnsPacket.encode({
      type: 'response',
      id: query.id,
      flags: dnsPacket.AUTHORITATIVE_ANSWER | dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | (rule.rcode ?? 0),
      questions: [q],
      answers,
    });
    socket.send(reply, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(0, '127.0.0.1', () => resolve());
  });
  const port = socket.address().port;
  return {
    port,
    address: `127.0.0.1:${port}`,
    queries,
    rules: table,
    close: () => new Promise<void>((resolve) => socket.close(() => resolve())),
  };
}
