/**
 * The DSN extension (RFC 3461) and Bcc removal on our SMTP listeners, over real sockets: port
 * 25 and submission (587 STARTTLS and 465 TLS roles) with a real users file, aliases file,
 * MaildirStore and outbound queue (smtp-harness). Clients: nodemailer (its `dsn` option) and
 * the byte-level SmtpWire for per-recipient parameters and malformed ones.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import type { QueueEntry } from '../src/delivery/queue.js';
import { BLIND_COPY_FIELDS, withoutFields } from '../src/smtp/message.js';
import { parseDsn } from './helpers/mime.js';
import { DOMAIN, PASSWORDS, REMOTE, harnessForSuite, openSession, type Harness } from './helpers/smtp-harness.js';
import { SmtpWire, type Reply } from './helpers/smtp-wire.js';

const SENDER = 'x@sender.onion';

const mta = (port: number): Promise<SmtpWire> => openSession(port, { ehlo: 'sender.onion' });
const submitter = (port: number, user: string): Promise<SmtpWire> => openSession(port, { ehlo: 'sender.onion', login: user });

function ok(r: Reply, what: string): void {
  assert.equal(r.code, 250, `${what}: ${r.text}`);
}

/** DATA with a small message; returns the queue id from the 250 reply. */
async function data(c: SmtpWire, header: string): Promise<string> {
  assert.equal((await c.command('DATA')).code, 354);
  const r = await c.command(`${header}\r\n\r\nhello\r\n.`);
  ok(r, 'end of data');
  return /queued as ([0-9A-F]{16})$/.exec(r.text)![1]!;
}

describe('DSN (RFC 3461) and Bcc on the SMTP listeners', () => {
  let h: Harness;
  harnessForSuite((started) => (h = started));

  /** Queue entries that appeared after `known` (ids). */
  async function newEntries(known: Set<string>): Promise<QueueEntry[]> {
    return (await h.queue.list()).filter((e) => !known.has(e.id));
  }
  async function snapshot(): Promise<Set<string>> {
    return new Set((await h.queue.list()).map((e) => e.id));
  }

  it('EHLO advertises DSN on port 25, 587 and 465', async () => {
    const c = await SmtpWire.connect(h.ports.smtp);
    await c.read();
    const e25 = await c.command('EHLO sender.onion');
    assert.ok(e25.lines.some((l) => /^250[- ]DSN$/.test(l)), e25.text);
    c.close();
    const s = await SmtpWire.connect(h.ports.submission);
    await s.read();
    const e587 = await s.command('EHLO client.example');
    assert.ok(e587.lines.some((l) => /^250[- ]DSN$/.test(l)), e587.text);
    s.close();
    const t = await SmtpWire.connectTls(h.ports.submissions, { ca: [h.cert], servername: DOMAIN });
    await t.read();
    const e465 = await t.command('EHLO client.example');
    assert.ok(e465.lines.some((l) => /^250[- ]DSN$/.test(l)), e465.text);
    t.close();
  });

  it('bad RET, ENVID, NOTIFY and ORCPT values get 501 5.5.4 naming the parameter; the session stays usable', async () => {
    const c = await mta(h.ports.smtp);
    const badMail: Array<[string, string]> = [
      ['RET=PARTIAL', 'RET'],
      ['RET=', 'RET'],
      ['ENVID=a+zz', 'ENVID'],
      ['ENVID=a+0D+0Ab', 'ENVID'],
      ['ENVID=a=b', 'ENVID'],
      [`ENVID=${'x'.repeat(101)}`, 'ENVID'],
    ];
    for (const [param, name] of badMail) {
      const r = await c.command(`MAIL FROM:<${SENDER}> ${param}`);
      assert.equal(r.code, 501, `${param}: ${r.text}`);
      assert.match(r.text, new RegExp(`^501 5\\.5\\.4 .*\\b${name}\\b`), param);
    }
    ok(await c.command(`MAIL FROM:<${SENDER}> RET=hdrs ENVID=${'x'.repeat(100)}`), 'good MAIL');
    const badRcpt: Array<[string, string]> = [
      ['NOTIFY=NEVER,SUCCESS', 'NOTIFY'],
      ['NOTIFY=SOMETIMES', 'NOTIFY'],
      ['NOTIFY=SUCCESS,SUCCESS', 'NOTIFY'],
      ['NOTIFY', 'NOTIFY'],
      ['ORCPT=alice@example.onion', 'ORCPT'],
      ['ORCPT=rfc822;a+ZZ@x.onion', 'ORCPT'],
      ['ORCPT=rfc822;a+0A@x.onion', 'ORCPT'],
      [`ORCPT=rfc822;${'a'.repeat(500)}@x.onion`, 'ORCPT'],
    ];
    for (const [param, name] of badRcpt) {
      const r = await c.command(`RCPT TO:<alice@${DOMAIN}> ${param}`);
      assert.equal(r.code, 501, `${param}: ${r.text}`);
      assert.match(r.text, new RegExp(`^501 5\\.5\\.4 .*\\b${name}\\b`), param);
    }
    ok(await c.command(`RCPT TO:<alice@${DOMAIN}> NOTIFY=success,Delay ORCPT=rfc822;alice+2Bx@${DOMAIN}`), 'good RCPT');
    await data(c, `Subject: after refusals`);
    c.close();

    // Submission: the same checks after AUTH.
    const s = await submitter(h.ports.submission, 'alice');
    const r = await s.command(`MAIL FROM:<alice@${DOMAIN}> RET=ALL`);
    assert.match(r.text, /^501 5\.5\.4 .*RET/);
    ok(await s.command(`MAIL FROM:<alice@${DOMAIN}>`), 'MAIL');
    assert.match((await s.command(`RCPT TO:<bob@${DOMAIN}> NOTIFY=`)).text, /^501 5\.5\.4 .*NOTIFY/);
    s.close();
  });

  it('port 25: RET/ENVID/NOTIFY/ORCPT are kept with the queued recipients; an alias with several targets is "expanded" and forwards FAILURE only', async () => {
    const known = await snapshot();
    const c = await mta(h.ports.smtp);
    ok(await c.command(`MAIL FROM:<${SENDER}> RET=HDRS ENVID=env+2B1+3Dx`), 'MAIL');
    ok(await c.command(`RCPT TO:<alice@${DOMAIN}> NOTIFY=SUCCESS ORCPT=rfc822;Alice+2Btag@${DOMAIN}`), 'RCPT alice');
    ok(await c.command(`RCPT TO:<bob@${DOMAIN}>`), 'RCPT bob');
    ok(await c.command(`RCPT TO:<shared@${DOMAIN}> NOTIFY=SUCCESS,FAILURE`), 'RCPT shared');
    ok(await c.command(`RCPT TO:<fwd@${DOMAIN}> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;fwd@${DOMAIN}`), 'RCPT fwd');
    const id = await data(c, `From: ${SENDER}\r\nSubject: dsn on port 25\r\nMessage-ID: <p25@sender.onion>`);
    c.close();

    const entries = await newEntries(known);
    const forward = entries.find((e) => e.id === id)!;
    assert.ok(forward, 'the remote alias targets were queued');
    assert.equal(forward.ret, 'HDRS');
    assert.equal(forward.envid, 'env+1=x', 'ENVID decoded from xtext');
    const byAddress = new Map(forward.recipients.map((r) => [r.address, r]));
    assert.deepEqual(
      [byAddress.get(`carol@${REMOTE}`)!.notify, byAddress.get(`carol@${REMOTE}`)!.orcpt],
      [['FAILURE'], `rfc822;shared@${DOMAIN}`],
      'shared expanded to alice and carol: carol is asked for failures only, ORCPT is the alias',
    );
    assert.deepEqual(
      [byAddress.get(`dave@${REMOTE}`)!.notify, byAddress.get(`dave@${REMOTE}`)!.orcpt],
      [['SUCCESS', 'DELAY'], `rfc822;fwd@${DOMAIN}`],
      'fwd has one target: the request goes along unchanged',
    );

    const reports = entries.filter((e) => e.from === '');
    assert.equal(reports.length, 1, 'one success report');
    assert.deepEqual(reports[0]!.recipients.map((r) => r.address), [SENDER], 'to the envelope sender, from <>');
    const dsn = parseDsn((await h.queue.readMessage(reports[0]!.id))!);
    assert.equal(dsn.top.header('subject'), 'Successful Mail Delivery Report');
    assert.equal(dsn.top.header('to'), `<${SENDER}>`);
    assert.equal(dsn.top.header('in-reply-to'), '<p25@sender.onion>');
    assert.equal(dsn.perMessage['original-envelope-id'], 'env+1=x');
    assert.equal(dsn.perMessage['reporting-mta'], `dns; ${DOMAIN}`);
    assert.deepEqual(
      dsn.recipients.map((r) => [r['original-recipient'], r['final-recipient'], r.action, r.status]),
      [
        [`rfc822; Alice+tag@${DOMAIN}`, `rfc822; alice@${DOMAIN}`, 'delivered', '2.0.0'],
        [undefined, `rfc822; shared@${DOMAIN}`, 'expanded', '2.0.0'],
      ],
      'bob asked for nothing; fwd reports from the queue',
    );
    assert.equal(dsn.returned, 'headers', 'a success report carries the header only');
    assert.match(dsn.headers.body, /^Subject: dsn on port 25\r$/m);
    assert.doesNotMatch(dsn.headers.body, /hello/);
  });

  it('no success report for a message from the null sender, nor without NOTIFY=SUCCESS', async () => {
    const known = await snapshot();
    const c = await mta(h.ports.smtp);
    ok(await c.command('MAIL FROM:<>'), 'MAIL');
    ok(await c.command(`RCPT TO:<alice@${DOMAIN}> NOTIFY=SUCCESS`), 'RCPT');
    await data(c, 'Subject: a bounce');
    ok(await c.command(`MAIL FROM:<${SENDER}>`), 'MAIL');
    ok(await c.command(`RCPT TO:<alice@${DOMAIN}> NOTIFY=FAILURE,DELAY`), 'RCPT');
    await data(c, 'Subject: no success wanted');
    c.close();
    assert.deepEqual(await newEntries(known), []);
  });

  it('submission with nodemailer (dsn option): success report for the local recipient; the remote one is queued with the request', async () => {
    const known = await snapshot();
    const t = nodemailer.createTransport({
      host: '127.0.0.1',
      port: h.ports.submission,
      requireTLS: true,
      auth: { user: 'alice', pass: PASSWORDS.alice! },
      tls: { ca: [h.cert], servername: DOMAIN },
    });
    const info = await t.sendMail({
      envelope: { from: `alice@${DOMAIN}`, to: [`bob@${DOMAIN}`, `zed@${REMOTE}`] },
      raw: `From: alice@${DOMAIN}\r\nTo: bob@${DOMAIN}\r\nSubject: dsn by nodemailer\r\n\r\nbody\r\n`,
      dsn: { notify: ['SUCCESS', 'FAILURE'], ret: 'HDRS', id: 'nm 1' },
    });
    t.close();
    const id = /queued as ([0-9A-F]{16})$/.exec(info.response)![1]!;
    const entries = await newEntries(known);
    const queued = entries.find((e) => e.id === id)!;
    assert.equal(queued.ret, 'HDRS');
    assert.equal(queued.envid, 'nm 1');
    assert.deepEqual(queued.recipients.map((r) => [r.address, r.notify, r.orcpt]), [[`zed@${REMOTE}`, ['SUCCESS', 'FAILURE'], undefined]]);
    const report = entries.find((e) => e.from === '')!;
    assert.deepEqual(report.recipients.map((r) => r.address), [`alice@${DOMAIN}`]);
    const dsn = parseDsn((await h.queue.readMessage(report.id))!);
    assert.equal(dsn.perMessage['original-envelope-id'], 'nm 1');
    assert.deepEqual(dsn.recipients.map((r) => [r['final-recipient'], r.action]), [[`rfc822; bob@${DOMAIN}`, 'delivered']]);
  });

  it('a refused MAIL FROM with RET/ENVID leaves nothing behind for the next MAIL FROM of the session', async () => {
    const known = await snapshot();
    const s = await submitter(h.ports.submission, 'alice');
    const refused = await s.command(`MAIL FROM:<bob@${DOMAIN}> RET=HDRS ENVID=stale`);
    assert.equal(refused.code, 553, refused.text);
    ok(await s.command(`MAIL FROM:<alice@${DOMAIN}>`), 'MAIL');
    ok(await s.command(`RCPT TO:<zed@${REMOTE}>`), 'RCPT');
    const id = await data(s, `From: alice@${DOMAIN}\r\nSubject: fresh`);
    s.close();
    const entry = (await newEntries(known)).find((e) => e.id === id)!;
    assert.equal(entry.ret, undefined);
    assert.equal(entry.envid, undefined);
  });

  for (const [role, implicitTls] of [
    ['587', false],
    ['465', true],
  ] as const) {
    it(`submission (${role}): Bcc and Resent-Bcc fields (folded too) reach no recipient, local or remote; everything else byte for byte`, async () => {
      const known = await snapshot();
      const head = [
        `From: Alice <alice@${DOMAIN}>`,
        `To: bob@${DOMAIN}`,
        `Bcc: carol@${REMOTE},`,
        `\tsecret@${DOMAIN}`,
        'Subject: blind',
        `bcc: <other@${REMOTE}>`,
        `X-Not-Bcc: kept`,
        `Resent-Bcc: x@${DOMAIN}`,
        '  , y@' + DOMAIN,
        'Date: Thu, 26 Nov 2026 12:00:00 +0000',
        `Message-ID: <blind-${role}@${DOMAIN}>`,
      ];
      const body = ['', 'Bcc: this line is body text', ' and this one too', ''];
      const sent = Buffer.from([...head, ...body].join('\r\n'));
      const expected = Buffer.from(
        [
          `From: Alice <alice@${DOMAIN}>`,
          `To: bob@${DOMAIN}`,
          'Subject: blind',
          `X-Not-Bcc: kept`,
          'Date: Thu, 26 Nov 2026 12:00:00 +0000',
          `Message-ID: <blind-${role}@${DOMAIN}>`,
          ...body,
        ].join('\r\n'),
      );
      const t = nodemailer.createTransport({
        host: '127.0.0.1',
        port: implicitTls ? h.ports.submissions : h.ports.submission,
        secure: implicitTls,
        requireTLS: !implicitTls,
        auth: { user: 'alice', pass: PASSWORDS.alice! },
        tls: { ca: [h.cert], servername: DOMAIN },
      });
      const bobBefore = (await h.inbox('bob')).length;
      const aliceBefore = (await h.inbox('alice')).length;
      const info = await t.sendMail({ envelope: { from: `alice@${DOMAIN}`, to: [`bob@${DOMAIN}`, `alice@${DOMAIN}`, `carol@${REMOTE}`] }, raw: sent });
      t.close();
      const id = /queued as ([0-9A-F]{16})$/.exec(info.response)![1]!;

      const copies = [(await h.inbox('bob')).slice(bobBefore), (await h.inbox('alice')).slice(aliceBefore)].flat();
      assert.equal(copies.length, 2, 'bob and alice got a copy');
      const queued = (await newEntries(known)).find((e) => e.id === id)!;
      assert.deepEqual(queued.recipients.map((r) => r.address), [`carol@${REMOTE}`]);
      copies.push((await h.queue.readMessage(id))!);
      for (const stored of copies) {
        assert.ok(stored.subarray(stored.length - expected.length).equals(expected), `what the client sent, without the Bcc fields:\n${stored.toString()}`);
        const prefix = stored.subarray(0, stored.length - expected.length).toString();
        assert.match(prefix, /^Received: /, 'only our Received header in front');
        assert.doesNotMatch(stored.toString(), /secret@|other@|x@|y@|carol@/, 'no blind recipient anywhere');
      }
    });
  }

  it('withoutFields: removes the fields with their continuation lines, keeps every other byte (bare LF, CR, 8-bit, the body)', () => {
    const raw = Buffer.from('Bcc: first\nFrom: a@b\r\nBCC : x,\n\ty\n \n\rX: 1\xe9\nSubject: s\r\nbcc:\r\n\r\nBcc: body\n\tbody\r\n', 'latin1');
    const out = withoutFields(raw, BLIND_COPY_FIELDS);
    assert.equal(out.toString('latin1'), 'From: a@b\r\n\rX: 1\xe9\nSubject: s\r\n\r\nBcc: body\n\tbody\r\n');
    const none = Buffer.from('From: a@b\r\nX-Bcc: no\r\n\r\nBcc: body\r\n');
    assert.equal(withoutFields(none, BLIND_COPY_FIELDS), none, 'nothing to remove: the same buffer');
    const headerOnly = Buffer.from('Subject: s\r\nBcc: a,\r\n b');
    assert.equal(withoutFields(headerOnly, BLIND_COPY_FIELDS).toString(), 'Subject: s\r\n');
  });
});
