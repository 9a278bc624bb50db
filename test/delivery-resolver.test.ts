import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { NextHopResolver, normalizeDomain, resolveNextHop } from '../src/delivery/resolver.js';
import { randomOnionAddress } from '../src/tor/onion-address.js';
import { RCODE, startDnsServer, type TestDnsServer } from './helpers/dns-server.js';

describe('delivery/resolver against a DNS server on 127.0.0.1', () => {
  let dns: TestDnsServer;
  let resolver: NextHopResolver;

  before(async () => {
    dns = await startDnsServer({
      'multi.test': {
        mx: [
          { preference: 20, exchange: 'mx-b.multi.test' },
          { preference: 10, exchange: 'MX-A.multi.test' },
          { preference: 30, exchange: 'mx-c.multi.test' },
          { preference: 20, exchange: 'mx-b2.multi.test' },
        ],
      },
      'nodata.test': { mx: [] },
      'nxdomain.test': { rcode: RCODE.NXDOMAIN },
      'servfail.test': { rcode: RCODE.SERVFAIL },
      'refused.test': { rcode: RCODE.REFUSED },
      'notimp.test': { rcode: RCODE.NOTIMP },
      'silent.test': { silent: true },
      'nullmx.test': { mx: [{ preference: 0, exchange: '.' }] },
      'nullmx-and-real.test': {
        mx: [
          { preference: 0, exchange: '.' },
          { preference: 10, exchange: 'real.nullmx-and-real.test' },
        ],
      },
      'onion-mx.test': { mx: [{ preference: 5, exchange: 'abc.onion' }] },
      // Direct mode (addresses): A/AAAA of the mail hosts.
      'addr.test': {
        mx: [
          { preference: 30, exchange: 'gone.addr.test' },
          { preference: 20, exchange: 'mx2.addr.test' },
          { preference: 10, exchange: 'mx1.addr.test' },
        ],
      },
      'mx1.addr.test': { a: ['192.0.2.1', '192.0.2.2'], aaaa: ['2001:db8::1'] },
      'mx2.addr.test': { a: ['192.0.2.2', '192.0.2.3'] },
      'gone.addr.test': { rcode: RCODE.NXDOMAIN },
      'bare.test': { a: ['192.0.2.9'] },
      'noaddr.test': {},
      'broken-mx.test': { mx: [{ preference: 10, exchange: 'servfail.test' }, { preference: 20, exchange: 'gone.addr.test' }] },
    });
    resolver = new NextHopResolver({ clearnet: true, resolver: dns.address, timeoutMs: 300, tries: 1 });
  });
  after(async () => {
    resolver?.close();
    await dns?.close();
  });

  it('sorts several MX by preference, lower-cases names and shuffles only within a preference', async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const r = await resolver.resolve('Multi.Test');
      assert.equal(r.kind, 'hosts');
      if (r.kind !== 'hosts') return;
      assert.deepEqual(
        r.hosts.map((h) => h.preference),
        [10, 20, 20, 30],
      );
      assert.equal(r.hosts[0]!.host, 'mx-a.multi.test');
      assert.equal(r.hosts[3]!.host, 'mx-c.multi.test');
      assert.deepEqual(new Set(r.hosts.slice(1, 3).map((h) => h.host)), new Set(['mx-b.multi.test', 'mx-b2.multi.test']));
      assert.ok(r.hosts.every((h) => h.port === 25));
      seen.add(r.hosts[1]!.host);
    }
    assert.equal(seen.size, 2, 'equal preferences are randomized');
  });

  it('NODATA (no MX records) falls back to the domain itself (implicit MX)', async () => {
    assert.deepEqual(await resolver.resolve('nodata.test'), { kind: 'hosts', hosts: [{ host: 'nodata.test', port: 25, preference: 0 }] });
  });

  it('NOTIMP (what Tor answers to MX) falls back to the domain itself', async () => {
    assert.deepEqual(await resolver.resolve('notimp.test.'), { kind: 'hosts', hosts: [{ host: 'notimp.test', port: 25, preference: 0 }] });
  });

  it('NXDOMAIN is a permanent failure', async () => {
    const r = await resolver.resolve('nxdomain.test');
    assert.equal(r.kind, 'permanent');
    assert.match((r as { reason: string }).reason, /does not exist/);
  });

  it('SERVFAIL, REFUSED and timeouts are temporary failures', async () => {
    const servfail = await resolver.resolve('servfail.test');
    assert.equal(servfail.kind, 'temporary');
    assert.match((servfail as { reason: string }).reason, /SERVFAIL/);
    const refused = await resolver.resolve('refused.test');
    assert.equal(refused.kind, 'temporary');
    const t0 = Date.now();
    const silent = await resolver.resolve('silent.test');
    assert.equal(silent.kind, 'temporary');
    assert.match((silent as { reason: string }).reason, /did not answer/);
    assert.ok(Date.now() - t0 < 5000, 'the configured timeout applies');
  });

  it('a null MX (RFC 7505) is permanent; a null MX beside real ones is ignored', async () => {
    const r = await resolver.resolve('nullmx.test');
    assert.equal(r.kind, 'permanent');
    assert.match((r as { reason: string }).reason, /null MX/);
    assert.deepEqual(await resolver.resolve('nullmx-and-real.test'), {
      kind: 'hosts',
      hosts: [{ host: 'real.nullmx-and-real.test', port: 25, preference: 10 }],
    });
  });

  it('returns MX host names as they are (an onion MX stays a name; nothing resolves A/AAAA)', async () => {
    const before = dns.queries.length;
    assert.deepEqual(await resolver.resolve('onion-mx.test'), { kind: 'hosts', hosts: [{ host: 'abc.onion', port: 25, preference: 5 }] });
    assert.deepEqual(dns.queries.slice(before), [{ name: 'onion-mx.test', type: 'MX' }]);
  });

  it('never sends an onion name to DNS, and only MX queries were ever sent', async () => {
    const onion = randomOnionAddress();
    const before = dns.queries.length;
    for (const name of [onion, onion.toUpperCase(), `mail.${onion}`, `${onion}.`]) {
      const r = await resolver.resolve(name);
      assert.equal(r.kind, 'hosts');
      if (r.kind === 'hosts') assert.deepEqual(r.hosts, [{ host: name.toLowerCase().replace(/\.$/, ''), port: 25, preference: 0 }]);
    }
    assert.deepEqual(dns.queries.slice(before), [], 'no query for an onion name');
    assert.ok(dns.queries.length > 0);
    assert.ok(
      dns.queries.every((q) => q.type === 'MX' && !q.name.toLowerCase().endsWith('.onion')),
      JSON.stringify(dns.queries),
    );
  });

  it('with clearnet disabled, a non-onion domain is permanent and asks no DNS', async () => {
    const before = dns.queries.length;
    const r = await resolveNextHop('multi.test', { clearnet: false, resolver: dns.address });
    assert.equal(r.kind, 'permanent');
    assert.match((r as { reason: string }).reason, /clearnet/);
    const onion = randomOnionAddress();
    assert.deepEqual(await resolveNextHop(onion), { kind: 'hosts', hosts: [{ host: onion, port: 25, preference: 0 }] });
    assert.equal(dns.queries.length, before);
  });

  it('rejects malformed domains without asking DNS', async () => {
    const before = dns.queries.length;
    for (const bad of ['', 'a..b', '.lead', 'exa mple.test', '127.0.0.1', `${'x'.repeat(64)}.test`]) {
      assert.equal((await resolver.resolve(bad)).kind, 'permanent', bad);
    }
    assert.equal(dns.queries.length, before);
    assert.equal(normalizeDomain('Bücher.Example.'), 'xn--bcher-kva.example');
  });

  it('a DNS server that is not there is a temporary failure', async () => {
    const closed = await startDnsServer();
    const address = closed.address;
    await closed.close();
    const r = await resolveNextHop('multi.test', { clearnet: true, resolver: address, timeoutMs: 300, tries: 1 });
    assert.equal(r.kind, 'temporary');
  });

  it('direct mode (addresses): one hop per A/AAAA address of each host, from the configured server', async () => {
    const direct = new NextHopResolver({ clearnet: true, resolver: dns.address, timeoutMs: 300, tries: 1, addresses: true });
    try {
      const hop = (host: string, preference: number, address: string) => ({ host, port: 25, preference, address });
      assert.deepEqual(await direct.resolve('addr.test'), {
        kind: 'hosts',
        hosts: [
          hop('mx1.addr.test', 10, '192.0.2.1'),
          hop('mx1.addr.test', 10, '192.0.2.2'),
          hop('mx1.addr.test', 10, '2001:db8::1'),
          hop('mx2.addr.test', 20, '192.0.2.3'),
        ],
      }, 'by preference, IPv4 first, each address once; a host without address is left out');
      // No MX: the domain's own addresses; none at all: permanent.
      assert.deepEqual(await direct.resolve('bare.test'), { kind: 'hosts', hosts: [hop('bare.test', 0, '192.0.2.9')] });
      const none = await direct.resolve('noaddr.test');
      assert.equal(none.kind, 'permanent');
      assert.match((none as { reason: string }).reason, /noaddr\.test has no A or AAAA record/);
      // One host failing temporarily (SERVFAIL), the other gone: temporary.
      const broken = await direct.resolve('broken-mx.test');
      assert.equal(broken.kind, 'temporary');
      assert.match((broken as { reason: string }).reason, /servfail\.test.*ESERVFAIL.*gone\.addr\.test does not exist/);
      // An onion MX is never looked up, and cannot be reached directly.
      const before = dns.queries.length;
      const onion = await direct.resolve('onion-mx.test');
      assert.equal(onion.kind, 'permanent');
      assert.deepEqual(dns.queries.slice(before), [{ name: 'onion-mx.test', type: 'MX' }]);
      // Without `addresses`, the same domain gives names only (Tor resolves them).
      const names = await resolver.resolve('bare.test');
      assert.deepEqual(names, { kind: 'hosts', hosts: [{ host: 'bare.test', port: 25, preference: 0 }] });
    } finally {
      direct.close();
    }
  });

  it('a resolver given as a host name is a configuration error', () => {
    assert.throws(() => new NextHopResolver({ clearnet: true, resolver: 'localhost:53' }), /ip:port/);
  });
});
