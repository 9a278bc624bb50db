import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeXtext, encodeOrcpt, encodeXtext, forwardedDsn, isXtext, localSuccess, parseNotify, wants } from '../src/delivery/dsn-params.js';
import { buildDsn, dsnStatus, enhancedCodeOf } from '../src/delivery/dsn.js';
import { parseDsn } from './helpers/mime.js';

const OURS = `${'a'.repeat(56)}.onion`;
const PEER = `${'b'.repeat(56)}.onion`;
const HEADER = Buffer.from(`Received: from x\r\n\tby ${OURS}\r\nFrom: Alice <alice@${OURS}>\r\nTo: bob@${PEER}\r\nSubject: Grüße\r\nMessage-ID: <m1@${OURS}>\r\n\r\n`);

describe('delivery/dsn: RFC 3464 delivery status notifications', () => {
  it('failed and delayed recipients, per-message and per-recipient fields, original header only', () => {
    const now = new Date(Date.UTC(2026, 10, 26, 12, 0, 0));
    const raw = buildDsn({
      reportingDomain: OURS,
      queueId: '0123456789ABCDEF',
      arrivalDate: Date.UTC(2026, 10, 26, 11, 0, 0),
      sender: `alice@${OURS}`,
      recipients: [
        {
          address: `bob@${PEER}`,
          action: 'failed',
          status: '5.1.1',
          remoteMta: PEER,
          diagnostic: { type: 'smtp', text: `550 5.1.1 <bob@${PEER}>: Recipient address rejected: User unknown in local recipient table, and this reply is long enough to be folded` },
          lastAttempt: now.getTime(),
        },
        { address: `carol@${PEER}`, action: 'delayed', status: '4.4.1', diagnostic: { type: 'X-Onionpost', text: 'descriptor not found\r\n(SOCKS f0)' }, willRetryUntil: now.getTime() + 3600_000 },
      ],
      originalHeader: HEADER,
      now,
    });
    const text = raw.toString('utf8');
    assert.doesNotMatch(text, /(^|[^\r])\n/, 'CRLF line ends only');
    for (const line of text.split('\r\n')) assert.ok(Buffer.byteLength(line) <= 998, 'no line over 998 bytes');
    const dsn = parseDsn(raw);
    assert.equal(dsn.top.header('from'), `Mail Delivery System <MAILER-DAEMON@${OURS}>`);
    assert.equal(dsn.top.header('to'), `<alice@${OURS}>`);
    assert.equal(dsn.top.header('date'), 'Thu, 26 Nov 2026 12:00:00 +0000');
    assert.equal(dsn.top.header('in-reply-to'), `<m1@${OURS}>`);
    assert.equal(dsn.top.header('subject'), 'Undelivered Mail Returned to Sender');
    assert.deepEqual(dsn.perMessage, { 'reporting-mta': `dns; ${OURS}`, 'x-onionpost-queue-id': '0123456789ABCDEF', 'arrival-date': 'Thu, 26 Nov 2026 11:00:00 +0000' });
    assert.equal(dsn.recipients.length, 2);
    const [bob, carol] = dsn.recipients as [Record<string, string>, Record<string, string>];
    assert.equal(bob['final-recipient'], `rfc822; bob@${PEER}`);
    assert.equal(bob.action, 'failed');
    assert.equal(bob.status, '5.1.1');
    assert.equal(bob['remote-mta'], `dns; ${PEER}`);
    assert.equal(bob['diagnostic-code'], `smtp; 550 5.1.1 <bob@${PEER}>: Recipient address rejected: User unknown in local recipient table, and this reply is long enough to be folded`);
    assert.match(dsn.status.body, /\r\n Recipient|\r\n [a-z]/, 'the long Diagnostic-Code is folded');
    assert.equal(bob['last-attempt-date'], 'Thu, 26 Nov 2026 12:00:00 +0000');
    assert.equal(carol.action, 'delayed');
    assert.equal(carol['diagnostic-code'], 'X-Onionpost; descriptor not found (SOCKS f0)', 'line breaks in a reason never break the format');
    assert.equal(carol['will-retry-until'], 'Thu, 26 Nov 2026 13:00:00 +0000');
    assert.equal(carol['remote-mta'], undefined);
    assert.equal(dsn.headers.header('content-transfer-encoding'), '8bit', 'UTF-8 in the original header is declared');
    assert.ok(dsn.headers.body.includes(Buffer.from('Subject: Grüße\r\n').toString('latin1')), 'the original header bytes, unchanged');
    assert.match(dsn.human.body, /could not be delivered to one recipient/);
    assert.match(dsn.human.body, /delayed/);
  });

  it('refuses to write a DSN for the null sender', () => {
    assert.throws(() => buildDsn({ reportingDomain: OURS, queueId: '0123456789ABCDEF', arrivalDate: 0, sender: '', recipients: [{ address: 'x@y', action: 'failed', status: '5.0.0' }], originalHeader: HEADER }), /null sender/);
  });

  it('status codes: the reply own enhanced code when it fits, else one of the right class', () => {
    assert.equal(enhancedCodeOf('550 5.1.1 <x>: no'), '5.1.1');
    assert.equal(enhancedCodeOf('550-5.7.1 policy'), '5.7.1');
    assert.equal(enhancedCodeOf('550 no code'), null);
    assert.equal(dsnStatus({ reply: '550 5.1.1 x', permanent: true }), '5.1.1');
    assert.equal(dsnStatus({ reply: '451 4.3.0 x', permanent: true }), '5.0.0');
    assert.equal(dsnStatus({ reply: 'socks error', permanent: false, fallback: '4.4.1' }), '4.4.1');
  });

  it('ENVID and ORCPT are echoed (Original-Envelope-Id first, Original-Recipient before Final-Recipient); success actions; header only', () => {
    const raw = buildDsn({
      reportingDomain: OURS,
      queueId: '0123456789ABCDEF',
      arrivalDate: Date.UTC(2026, 10, 26, 11, 0, 0),
      sender: `alice@${OURS}`,
      envid: 'env  1+x',
      recipients: [
        { address: `bob@${PEER}`, originalRecipient: `rfc822;Bob+tag@${PEER}`, action: 'relayed', status: '2.0.0', remoteMta: PEER },
        { address: `team@${OURS}`, action: 'expanded', status: '2.0.0' },
        { address: `carol@${OURS}`, action: 'delivered', status: '2.0.0' },
      ],
      originalHeader: HEADER,
    });
    const dsn = parseDsn(raw);
    assert.equal(dsn.top.header('subject'), 'Successful Mail Delivery Report');
    assert.equal(dsn.returned, 'headers');
    assert.deepEqual(Object.keys(dsn.perMessage), ['original-envelope-id', 'reporting-mta', 'arrival-date', 'x-onionpost-queue-id'], 'RFC 3464 2.2 order');
    assert.equal(dsn.perMessage['original-envelope-id'], 'env  1+x', 'spelled as given');
    const [bob, team, carol] = dsn.recipients as [Record<string, string>, Record<string, string>, Record<string, string>];
    assert.deepEqual(Object.keys(bob).slice(0, 4), ['original-recipient', 'final-recipient', 'action', 'status'], 'RFC 3464 2.3 order');
    assert.equal(bob['original-recipient'], `rfc822; Bob+tag@${PEER}`);
    assert.equal(bob.action, 'relayed');
    assert.equal(bob['remote-mta'], `dns; ${PEER}`);
    assert.equal(team.action, 'expanded');
    assert.equal(carol.action, 'delivered');
    assert.equal(carol['original-recipient'], undefined);
    assert.match(dsn.human.body, /successful delivery/);
    assert.match(dsn.human.body, /does not send delivery reports/);
  });

  it('a failure report with the whole message: message/rfc822, byte for byte (line ends CRLF)', () => {
    const message = Buffer.concat([HEADER, Buffer.from('Body line \xe9\r\n.\r\nlast\r\n', 'latin1')]);
    const raw = buildDsn({
      reportingDomain: OURS,
      queueId: '0123456789ABCDEF',
      arrivalDate: 0,
      sender: `alice@${OURS}`,
      recipients: [{ address: `bob@${PEER}`, action: 'failed', status: '5.1.1' }],
      originalHeader: HEADER,
      originalMessage: message,
    });
    const dsn = parseDsn(raw);
    assert.equal(dsn.returned, 'message');
    assert.equal(dsn.headers.header('content-type'), 'message/rfc822');
    assert.equal(dsn.headers.header('content-transfer-encoding'), '8bit');
    assert.equal(`${dsn.headers.body}\r\n`, message.toString('latin1'), 'the message, unchanged');
    assert.ok(raw.toString('latin1').includes(`\r\n\r\n${message.toString('latin1')}\r\n--=_onionpost_`), 'followed by the closing delimiter');
    assert.equal(dsn.top.header('in-reply-to'), `<m1@${OURS}>`);
    assert.match(dsn.human.body, /Your message is attached/);
  });

  it('DSN parameters: xtext, NOTIFY, defaults, and how a request carries over an alias', () => {
    assert.ok(isXtext('abc+2B+3D'));
    assert.ok(!isXtext('a+b'));
    assert.ok(!isXtext('a+2b'), 'hex digits are upper case');
    assert.ok(!isXtext('a=b'));
    assert.ok(!isXtext('a b'));
    assert.equal(decodeXtext('a+2Bb+3Dc+20d'), 'a+b=c d');
    assert.equal(encodeXtext('a+b=c d~'), 'a+2Bb+3Dc+20d~');
    assert.equal(encodeOrcpt('rfc822;a+b@x.onion'), 'rfc822;a+2Bb@x.onion');
    assert.deepEqual(parseNotify('success, delay'), ['SUCCESS', 'DELAY']);
    assert.equal(parseNotify('never,failure'), null);
    assert.equal(parseNotify('failure,failure'), null);
    assert.equal(parseNotify('often'), null);
    assert.ok(wants(undefined, 'FAILURE') && wants(undefined, 'DELAY') && !wants(undefined, 'SUCCESS'), 'RFC 3461 defaults');
    assert.ok(!wants(['NEVER'], 'FAILURE'));
    assert.deepEqual(forwardedDsn('team@a.onion', { notify: ['SUCCESS', 'FAILURE'] }, 3), { notify: ['FAILURE'], orcpt: 'rfc822;team@a.onion' });
    assert.deepEqual(forwardedDsn('team@a.onion', { notify: ['SUCCESS'], orcpt: 'rfc822;T@a.onion' }, 2), { notify: ['NEVER'], orcpt: 'rfc822;T@a.onion' });
    assert.deepEqual(forwardedDsn('fwd@a.onion', { notify: ['SUCCESS'] }, 1), { notify: ['SUCCESS'], orcpt: 'rfc822;fwd@a.onion' });
    assert.deepEqual(forwardedDsn('fwd@a.onion', {}, 2), { orcpt: 'rfc822;fwd@a.onion' });
    assert.equal(localSuccess(1, 0), 'delivered');
    assert.equal(localSuccess(0, 1), null);
    assert.equal(localSuccess(1, 1), 'expanded');
    assert.equal(localSuccess(3, 0), 'expanded');
  });
});
