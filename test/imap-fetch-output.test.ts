/**
 * FETCH output assembled by fetch.ts (cached compiled ENVELOPE/BODYSTRUCTURE/BODY text
 * spliced into the response, literals spliced in as bytes, responses written in chunks) is
 * byte-identical to what imap-core's compiler makes of the same values, in both UTF8 modes,
 * cold and cached; and body literals of every size are byte-exact, partials included.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { imapHandler } from '../src/imap/imap-core.js';
import type { FetchValue, QueryMessage, StructValue } from '../src/imap/imap-core-types.js';
import type { ImapServer } from '../src/imap/imap-server.js';
import { bodyFromStructure, structureOf } from '../src/imap/message-cache.js';
import { MaildirStore } from '../src/store/maildir/maildir-store.js';
import { ImapWire } from './helpers/imap-wire.js';
import { startOneUserImap } from './helpers/imap-test-server.js';

const require = createRequire(import.meta.url);
const imapTools = require('@zone-eu/wildduck/imap-core/lib/imap-tools.js') as {
  getQueryResponse(query: Array<{ item: string }>, message: QueryMessage, options: { acceptUTF8Enabled: boolean }): FetchValue[];
};

const USER = 'alice';
const PASSWORD = 'pw pw pw';
const crlf = (lines: string[]): Buffer => Buffer.from(lines.join('\r\n') + '\r\n', 'utf8');

const MESSAGES: Buffer[] = [
  crlf(['From: Bob <bob@x.onion>', 'Subject: Grüße 🎉', 'Content-Type: text/html', '', '<p>hi</p>']),
  crlf(['To: a@b.onion', '', 'no from, no subject, no date']),
  crlf([
    'From: =?UTF-8?Q?J=C3=BCri?= <juri@bücher.example>, "Quote \\" me" <q@x.onion>',
    'Subject: =?ISO-8859-1?Q?caf=E9?= "quoted" \\ back',
    'Cc: undisclosed-recipients:;',
    'Date: Mon, 1 Sep 2026 10:00:00 +0200',
    'Message-ID: <m1@x.onion>',
    'Content-Type: multipart/mixed; boundary=zz',
    '',
    '--zz',
    'Content-Type: text/plain; charset=utf-8',
    'Content-Transfer-Encoding: 8bit',
    'Content-Disposition: inline',
    '',
    'Tere, sõber',
    '--zz',
    'Content-Type: message/rfc822',
    '',
    'From: C <c@y.onion>',
    'Subject: inner Grüße',
    '',
    'inner body',
    '--zz',
    'Content-Type: application/pdf; name="ä f.pdf"',
    'Content-Transfer-Encoding: base64',
    '',
    Buffer.from('%PDF-1').toString('base64'),
    '--zz--',
  ]),
];

function bigMessage(size: number, seed: number): Buffer {
  const head = crlf(['From: Bob <bob@x.onion>', `Subject: big ${seed}`, 'Content-Type: application/octet-stream', '']);
  const body = Buffer.alloc(size - head.length);
  for (let i = 0; i < body.length; i++) body[i] = (i % 78 === 76 ? 13 : i % 78 === 77 ? 10 : 32 + ((i * 31 + seed) % 200)) & 0xff;
  return Buffer.concat([head, body]);
}

/** What imap-core's compiler makes of `* n FETCH (ENVELOPE e BODYSTRUCTURE s BODY b)`. */
function reference(n: number, raw: Buffer, utf8: boolean): string {
  const s = structureOf(raw);
  const opts = { acceptUTF8Enabled: utf8 };
  // getQueryResponse mutates what it is given (and makes a NIL subject "")
  const nilSubject = s.envelope[1] === null;
  const envelope = imapTools.getQueryResponse([{ item: 'envelope' }], { envelope: s.envelope } as QueryMessage, opts)[0] as StructValue[];
  if (nilSubject) envelope[1] = null;
  const bs = imapTools.getQueryResponse([{ item: 'bodystructure' }], { bodystructure: s.bodystructure } as QueryMessage, opts)[0];
  const body = imapTools.getQueryResponse([{ item: 'bodystructure' }], { bodystructure: bodyFromStructure(s.bodystructure) } as QueryMessage, opts)[0];
  const atom = (value: string): { type: string; value: string } => ({ type: 'ATOM', value });
  return imapHandler.compiler({
    tag: '*',
    command: String(n),
    attributes: [atom('FETCH'), [atom('ENVELOPE'), envelope, atom('BODYSTRUCTURE'), bs, atom('BODY'), body]],
  });
}

describe('FETCH output', () => {
  let dir: string;
  let store: MaildirStore;
  let server: ImapServer;
  const bigs = [bigMessage(70 * 1024, 1), bigMessage(1536 * 1024, 2), bigMessage(3 * 1024 * 1024 + 7, 3)];

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-fetchout-'));
    store = new MaildirStore({ maildirFor: (u) => path.join(dir, 'mail', u) });
    await store.ensureUser(USER);
    for (const m of MESSAGES) await store.append(USER, 'INBOX', m);
    for (const m of bigs) await store.append(USER, 'INBOX', m);
    server = await startOneUserImap(store, { user: USER, password: PASSWORD });
  });
  after(async () => {
    await server.close();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  const login = async (): Promise<ImapWire> => {
    const wire = await ImapWire.connect(server.address()!.port);
    await wire.readLine();
    assert.match((await wire.command(`LOGIN ${USER} "${PASSWORD}"`)).tagged, /OK/);
    return wire;
  };

  for (const utf8 of [false, true]) {
    it(`ENVELOPE/BODYSTRUCTURE/BODY as imap-core compiles them (UTF8=ACCEPT ${utf8 ? 'on' : 'off'}), cold and cached`, async () => {
      const wire = await login();
      try {
        if (utf8) await wire.command('ENABLE UTF8=ACCEPT');
        await wire.command('SELECT INBOX');
        const expected = MESSAGES.map((m, i) => reference(i + 1, m, utf8) + '\r\n').join('');
        for (let round = 0; round < 2; round++) {
          const reply = await wire.command(`FETCH 1:${MESSAGES.length} (ENVELOPE BODYSTRUCTURE BODY)`);
          assert.equal(reply.text, expected, `round ${round}`);
        }
      } finally {
        wire.close();
      }
    });
  }

  it('metadata lines put together by the fast path equal the general path, flags and keywords included', async () => {
    const wire = await login();
    try {
      await wire.command('SELECT INBOX');
      assert.match((await wire.command('STORE 1 +FLAGS (\\Flagged $Label1 Junk)')).tagged, /OK/);
      assert.match((await wire.command('STORE 2 +FLAGS (\\Seen \\Answered)')).tagged, /OK/);
      const items = 'UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY MODSEQ';
      for (let round = 0; round < 2; round++) {
        const fast = await wire.command(`FETCH 1:* (${items})`);
        // a body section sends the same items through formatResponse and the compiler
        const general = await wire.command(`FETCH 1:* (${items} BODY.PEEK[]<0.0>)`);
        const expected = general.text.replace(/ BODY\[\]<0> \{0\}\r\n\)\r\n/g, ')\r\n');
        assert.equal(fast.text, expected);
        assert.match(fast.text, /^\* 1 FETCH \(UID 1 FLAGS \(\\Flagged \$Label1 Junk\) INTERNALDATE "[^"]+" RFC822\.SIZE \d+ ENVELOPE \(/);
        assert.equal(fast.text.match(/ FETCH /g)?.length, MESSAGES.length + bigs.length);
      }
      const uid = await wire.command('UID FETCH 2:3 (flags)');
      assert.match(uid.text, /^\* 2 FETCH \(flags \(\\(Seen|Answered) \\(Seen|Answered)\) UID 2\)\r\n\* 3 FETCH \(flags \(\) UID 3\)\r\n$/);
    } finally {
      wire.close();
    }
  });

  it('whole-message lines put together by the fast path (BODY[], RFC822 with metadata) equal the general path', async () => {
    const wire = await login();
    try {
      await wire.command('SELECT INBOX');
      const items = 'FLAGS BODY.PEEK[] RFC822.SIZE RFC822 ENVELOPE INTERNALDATE';
      for (let round = 0; round < 2; round++) {
        const fast = await wire.command(`UID FETCH 1:* (${items})`, 20000);
        const general = await wire.command(`UID FETCH 1:* (${items} BODY.PEEK[]<0.0>)`, 20000);
        // (UID FETCH: imap-core puts UID last)
        const expected = general.text.replace(/ BODY\[\]<0> \{0\}\r\n( UID \d+)?\)\r\n/g, '$1)\r\n');
        assert.ok(fast.text === expected, `round ${round}`);
        assert.match(fast.text.slice(0, 200), /^\* 1 FETCH \(FLAGS \([^)]*\\Seen[^)]*\) BODY\[\] \{\d+\}\r\n/);
        assert.equal(fast.text.match(/ INTERNALDATE "[^"]+" UID \d+\)\r\n/g)?.length, MESSAGES.length + bigs.length);
      }
    } finally {
      wire.close();
    }
  });

  it('a store failure in the middle of a big FETCH ends it with a tagged reply after whole responses', async () => {
    const wire = await login();
    const readMessages = store.readMessages.bind(store);
    let calls = 0;
    store.readMessages = async (id, uids, arena) => {
      if (++calls > 1) throw new Error('disk on fire');
      return readMessages(id, uids, arena);
    };
    try {
      await wire.command('SELECT INBOX');
      const reply = await wire.command('FETCH 1:* (BODY.PEEK[])', 20000);
      assert.doesNotMatch(reply.tagged, / OK/);
      // what came before the tagged reply is whole responses, each ending in ")\r\n"
      const before = reply.raw.subarray(0, reply.raw.length - reply.tagged.length - 2);
      assert.ok(before.length > 0 && before.subarray(-3).toString() === ')\r\n', before.subarray(-40).toString('latin1'));
      assert.match(reply.text, /^\* 1 FETCH \(BODY\[\] \{/);
      // and the session goes on
      store.readMessages = readMessages;
      assert.match((await wire.command('NOOP')).tagged, /OK/);
    } finally {
      store.readMessages = readMessages;
      wire.close();
    }
  });

  it('BODY[], partials and RFC822 of messages of every size are byte-exact', async () => {
    const wire = await login();
    try {
      await wire.command('SELECT INBOX');
      const all = [...MESSAGES, ...bigs];
      const reply = await wire.command(`FETCH 1:* (BODY.PEEK[])`, 20000);
      const expected = Buffer.concat(
        all.map((m, i) => Buffer.concat([Buffer.from(`* ${i + 1} FETCH (BODY[] {${m.length}}\r\n`), m, Buffer.from(')\r\n')])),
      );
      assert.ok(reply.raw.subarray(0, expected.length).equals(expected));
      const n = all.length;
      const partial = await wire.command(`FETCH ${n} (BODY.PEEK[]<100.50> RFC822.SIZE BODY.PEEK[]<3145000>)`, 20000);
      const m = all[n - 1];
      const exp = Buffer.concat([
        Buffer.from(`* ${n} FETCH (BODY[]<100> {50}\r\n`),
        m.subarray(100, 150),
        Buffer.from(` RFC822.SIZE ${m.length} BODY[]<3145000> {${m.length - 3145000}}\r\n`),
        m.subarray(3145000),
        Buffer.from(')\r\n'),
      ]);
      assert.ok(partial.raw.subarray(0, exp.length).equals(exp), partial.raw.subarray(0, 200).toString('latin1'));
      const rfc = await wire.command(`FETCH 3 (RFC822.HEADER BODY.PEEK[1] BODY.PEEK[]<0.0>)`);
      const three = MESSAGES[2];
      const headerEnd = three.indexOf('\r\n\r\n') + 4;
      assert.ok(rfc.raw.toString('latin1').startsWith(`* 3 FETCH (RFC822.HEADER {${headerEnd}}\r\n${three.subarray(0, headerEnd).toString('latin1')} BODY[1] {`));
      assert.match(rfc.text, /BODY\[\]<0> \{0\}\r\n\)\r\n$/);
    } finally {
      wire.close();
    }
  });
});
