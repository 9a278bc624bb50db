import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildReceivedHeader, receivedProtocol, rfc5322Date, sanitizeHelo } from '../src/smtp/received-header.js';

describe('Received header', () => {
  it('keeps plain domain names (lower-cased), replaces everything else with "unknown"', () => {
    const hidden = ['myhost.lan'];
    assert.equal(sanitizeHelo('Peer.Example.ONION', hidden), 'peer.example.onion');
    assert.equal(sanitizeHelo('localhost', hidden), 'localhost');
    for (const bad of [
      '[127.0.0.1]',
      '127.0.0.1',
      '10.1.2.3',
      '[IPv6:::1]',
      '::1',
      'myhost',
      'myhost.lan',
      'MyHost.lan.',
      'myhost.example.org',
      'a b',
      'x;y',
      'x(comment)',
      'evil\r\nX-Injected: yes',
      'exa_mple.com',
      '-bad.example',
      'a..b',
      '',
      undefined,
      false,
      'a'.repeat(64) + '.onion',
      'grüße.example',
    ]) {
      assert.equal(sanitizeHelo(bad as string, hidden), 'unknown', JSON.stringify(bad));
    }
  });

  it('protocol keywords follow RFC 3848', () => {
    assert.equal(receivedProtocol({ opening: 'HELO', secure: false, authenticated: false }), 'SMTP');
    assert.equal(receivedProtocol({ opening: 'EHLO', secure: false, authenticated: false }), 'ESMTP');
    assert.equal(receivedProtocol({ opening: 'EHLO', secure: true, authenticated: false }), 'ESMTPS');
    assert.equal(receivedProtocol({ opening: 'EHLO', secure: false, authenticated: true }), 'ESMTPA');
    assert.equal(receivedProtocol({ opening: 'EHLO', secure: true, authenticated: true }), 'ESMTPSA');
  });

  it('dates are RFC 5322 in UTC', () => {
    assert.equal(rfc5322Date(new Date(Date.UTC(2026, 10, 26, 9, 5, 7))), 'Thu, 26 Nov 2026 09:05:07 +0000');
    assert.equal(rfc5322Date(new Date(Date.UTC(2027, 0, 3, 23, 59, 59))), 'Sun, 3 Jan 2027 23:59:59 +0000');
  });

  it('has the RFC 5321 4.4 form, folded with CRLF + TAB', () => {
    const date = new Date(Date.UTC(2026, 10, 26, 9, 5, 7));
    assert.equal(
      buildReceivedHeader({ helo: 'peer.onion', domain: 'our.onion', protocol: 'ESMTPS', id: 'ABC123', recipient: 'alice@our.onion', date, hiddenNames: [] }),
      'Received: from peer.onion\r\n\tby our.onion (onionpost) with ESMTPS id ABC123\r\n\tfor <alice@our.onion>; Thu, 26 Nov 2026 09:05:07 +0000\r\n',
    );
    assert.equal(
      buildReceivedHeader({ helo: '[127.0.0.1]', domain: 'our.onion', protocol: 'SMTP', id: 'X', date, hiddenNames: [] }),
      'Received: from unknown\r\n\tby our.onion (onionpost) with SMTP id X;\r\n\tThu, 26 Nov 2026 09:05:07 +0000\r\n',
    );
  });

  it('a recipient that could break the header grammar is left out', () => {
    for (const r of ['a;b@our.onion', 'a b@our.onion', '"q"@our.onion', 'a>@our.onion', 'x\r\n@our.onion']) {
      const h = buildReceivedHeader({ helo: 'peer.onion', domain: 'our.onion', protocol: 'ESMTP', id: 'X', recipient: r, hiddenNames: [] });
      assert.ok(!h.includes(' for '), h);
      assert.equal(h.split('\r\n').length, 4, 'three lines and the final CRLF');
    }
    const utf8 = buildReceivedHeader({ helo: 'peer.onion', domain: 'our.onion', protocol: 'ESMTP', id: 'X', recipient: 'jürgen@our.onion', hiddenNames: [] });
    assert.match(utf8, /for <jürgen@our\.onion>;/);
  });
});
