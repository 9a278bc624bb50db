/**
 * IMAP rules over a real MaildirStore: LOGINDISABLED on clear-text non-loopback
 * connections, CONDSTORE modseqs across a restart, EXAMINE being read-only, mailbox names
 * refused with a readable NO, quota (IMAP and SMTP), COMPRESS=DEFLATE.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import net from 'node:net';
import { loadConfig } from '../src/config/load.js';
import type { ImapServer } from '../src/imap/imap-server.js';
import { silentLogger } from '../src/log/logger.js';
import { createInboundSmtpServer } from '../src/smtp/inbound-server.js';
import { MaildirStore, type MaildirStoreOptions } from '../src/store/maildir/maildir-store.js';
import { parseQuotaRule, userQuotaBytes } from '../src/users/quota-rule.js';
import { ImapWire } from './helpers/imap-wire.js';
import { SmtpWire } from './helpers/smtp-wire.js';
import { startOneUserImap } from './helpers/imap-test-server.js';

const run = promisify(execFile);
const USER = 'alice';
const PASSWORD = 'rules rule';

const crlf = (lines: string[]): Buffer => Buffer.from(lines.join('\r\n') + '\r\n', 'utf8');
const msg = (subject: string, body = 'hello'): Buffer => crlf([`Subject: ${subject}`, 'From: a@b.onion', '', body]);

interface Env {
  dir: string;
  store: MaildirStore;
  server: ImapServer;
  port: number;
  maildirFor(user: string): string;
}

async function startEnv(dir: string, options: Partial<MaildirStoreOptions> = {}, tls?: { key: Buffer; cert: Buffer }, host = '127.0.0.1'): Promise<Env> {
  const maildirFor = (u: string): string => path.join(dir, 'mail', u);
  const store = new MaildirStore({ maildirFor, ...options });
  await store.ensureUser(USER);
  const server = await startOneUserImap(store, { user: USER, password: PASSWORD, tls, host });
  return { dir, store, server, port: server.address()!.port, maildirFor };
}

async function stopEnv(env: Env): Promise<void> {
  await env.server.close();
  await env.store.close();
}

async function login(port: number, host = '127.0.0.1'): Promise<ImapWire> {
  const wire = await ImapWire.connect(port, host);
  await wire.readLine();
  assert.match((await wire.command(`LOGIN ${USER} "${PASSWORD}"`)).tagged, /OK/);
  return wire;
}

function externalAddress(): string | null {
  for (const list of Object.values(os.networkInterfaces())) {
    for (const i of list ?? []) if (!i.internal && i.family === 'IPv4') return i.address;
  }
  return null;
}

async function selfSignedCert(dir: string): Promise<{ key: Buffer; cert: Buffer } | null> {
  const keyFile = path.join(dir, 'key.pem');
  const certFile = path.join(dir, 'cert.pem');
  try {
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=t.onion', '-keyout', keyFile, '-out', certFile]);
  } catch {
    return null;
  }
  return { key: await readFile(keyFile), cert: await readFile(certFile) };
}

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function tempDir(): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'onionpost-rules-'));
  dirs.push(d);
  return d;
}

describe('clear-text login rules and LOGINDISABLED', () => {
  it('a non-loopback clear-text connection is told LOGINDISABLED (no AUTH=); loopback and TLS are not', async (t) => {
    const address = externalAddress();
    if (!address) {
      t.skip('no non-loopback IPv4 address on this machine');
      return;
    }
    const dir = await tempDir();
    const tls = await selfSignedCert(dir);
    const env = await startEnv(dir, {}, tls ?? undefined, '0.0.0.0');
    try {
      const local = await ImapWire.connect(env.port, '127.0.0.1');
      await local.readLine();
      const localCap = await local.command('CAPABILITY');
      assert.doesNotMatch(localCap.text, /LOGINDISABLED/);
      assert.match(localCap.text, / AUTH=PLAIN /);
      local.close();

      const remote = await ImapWire.connect(env.port, address);
      await remote.readLine();
      const cap = await remote.command('CAPABILITY');
      assert.match(cap.text, /^\* CAPABILITY IMAP4rev1 .*LOGINDISABLED/);
      assert.doesNotMatch(cap.text, /AUTH=|SASL-IR/);
      assert.match((await remote.command(`LOGIN ${USER} "${PASSWORD}"`)).tagged, /^W2 NO \[PRIVACYREQUIRED\]/);
      if (tls) {
        assert.match(cap.text, / STARTTLS/);
        assert.match((await remote.command('STARTTLS')).tagged, /^W3 OK/);
        await remote.startTls();
        const after = await remote.command('CAPABILITY');
        assert.doesNotMatch(after.text, /LOGINDISABLED/);
        assert.match(after.text, / AUTH=PLAIN /);
        assert.match((await remote.command(`LOGIN ${USER} "${PASSWORD}"`)).tagged, /^W5 OK/);
      }
      remote.close();
    } finally {
      await stopEnv(env);
    }
  });
});

describe('CONDSTORE across a restart', () => {
  it('HIGHESTMODSEQ and per-message MODSEQ survive; CHANGEDSINCE keeps working; counting goes on', async () => {
    const dir = await tempDir();
    let env = await startEnv(dir);
    let wire = await login(env.port);
    const uids: number[] = [];
    for (let i = 0; i < 4; i++) uids.push((await env.store.append(USER, 'INBOX', msg(`c${i}`))).uid);
    await wire.command('SELECT INBOX (CONDSTORE)');
    await wire.command(`UID STORE ${uids[1]} +FLAGS.SILENT (\\Flagged)`);
    await wire.command(`UID STORE ${uids[2]} +FLAGS.SILENT (\\Deleted)`);
    await wire.command('EXPUNGE');
    const sel = await wire.command('SELECT INBOX (CONDSTORE)');
    const highest = Number(/HIGHESTMODSEQ (\d+)/.exec(sel.text)![1]);
    const modseqs = (await wire.command('UID FETCH 1:* (MODSEQ)')).text;
    wire.close();
    await stopEnv(env);

    env = await startEnv(dir);
    wire = await login(env.port);
    try {
      const sel2 = await wire.command('SELECT INBOX (CONDSTORE)');
      assert.equal(Number(/HIGHESTMODSEQ (\d+)/.exec(sel2.text)![1]), highest, 'HIGHESTMODSEQ after restart');
      assert.equal((await wire.command('UID FETCH 1:* (MODSEQ)')).text, modseqs);
      assert.equal((await wire.command(`UID FETCH 1:* (FLAGS) (CHANGEDSINCE ${highest})`)).text, '');
      const changed = await wire.command(`UID STORE ${uids[0]} +FLAGS (\\Seen)`);
      const m = Number(/MODSEQ \((\d+)\)/.exec(changed.text)![1]);
      assert.ok(m > highest, `new modseq ${m} > ${highest}`);
      const since = await wire.command(`UID FETCH 1:* (FLAGS) (CHANGEDSINCE ${highest})`);
      assert.equal(since.text.match(/ FETCH /g)?.length, 1);
    } finally {
      wire.close();
      await stopEnv(env);
    }
  });
});

describe('EXAMINE is read-only', () => {
  it('no STORE, no EXPUNGE, no MOVE, no \\Seen; COPY works', async () => {
    const dir = await tempDir();
    const env = await startEnv(dir);
    const rw = await login(env.port);
    const ro = await login(env.port);
    try {
      const a = await env.store.append(USER, 'INBOX', msg('ro a'));
      const b = await env.store.append(USER, 'INBOX', msg('ro b'));
      await rw.command('SELECT INBOX');
      await rw.command(`UID STORE ${a.uid} +FLAGS (\\Deleted)`);
      assert.match((await ro.command('EXAMINE INBOX')).tagged, /OK \[READ-ONLY\]/);
      assert.match((await ro.command('STORE 1 +FLAGS (\\Seen)')).tagged, /^W\d+ NO \[READ-ONLY\] Mailbox is read-only/);
      assert.match((await ro.command(`UID STORE ${b.uid} +FLAGS (\\Seen)`)).tagged, /^W\d+ NO \[READ-ONLY\] Mailbox is read-only/);
      assert.match((await ro.command('EXPUNGE')).tagged, /^W\d+ OK/);
      assert.match((await ro.command(`UID EXPUNGE ${a.uid}`)).tagged, /^W\d+ (OK|NO)/);
      const move = await ro.command(`UID MOVE ${b.uid} Archive`);
      assert.match(move.tagged, /^W\d+ NO \[READ-ONLY\] Mailbox is read-only/);
      const body = await ro.command(`UID FETCH ${b.uid} (BODY[] FLAGS)`);
      assert.doesNotMatch(body.text, /\\Seen/);
      assert.match((await ro.command(`UID COPY ${b.uid} Archive`)).tagged, /^W\d+ OK \[COPYUID /);
      assert.match((await ro.command('CLOSE')).tagged, /OK/);
      const inbox = await env.store.openMailbox(USER, 'INBOX');
      assert.deepEqual(inbox!.uids, [a.uid, b.uid], 'nothing expunged or moved');
      const metas = await env.store.getMessages(inbox!.id, [a.uid, b.uid]);
      assert.deepEqual(metas.map((m) => m.flags), [['\\Deleted'], []]);
      assert.equal((await env.store.mailboxStatus(USER, 'Archive'))!.messages, 1);
    } finally {
      rw.close();
      ro.close();
      await stopEnv(env);
    }
  });
});

describe('mailbox names', () => {
  it('bad names get NO [CANNOT] with the reason; names are modified UTF-7 on disk', async () => {
    const dir = await tempDir();
    const env = await startEnv(dir);
    const wire = await login(env.port);
    try {
      const cases: Array<[string, RegExp]> = [
        ['CREATE "a/../b"', /NO \[CANNOT\] Mailbox name contains "\." or "\.\." levels/],
        ['CREATE ".hidden"', /NO \[CANNOT\] Character "\." is not allowed/],
        ['CREATE "x/.y"', /NO \[CANNOT\] Character "\." is not allowed/],
        ['CREATE "/lead"', /NO \[CANNOT\] Mailbox name begins with the hierarchy separator/],
        ['CREATE "a//b"', /NO \[CANNOT\] Adjacent hierarchy separators/],
        ['CREATE "star*"', /NO \[CANNOT\] Characters "\*" and "%" are not allowed/],
        [`CREATE "${'x'.repeat(300)}"`, /NO \[CANNOT\] Mailbox name is too long/],
        ['RENAME Archive "Arch.ive"', /NO \[CANNOT\] Character "\." is not allowed/],
        ['RENAME Archive "/Top"', /NO \[CANNOT\] Mailbox name begins with the hierarchy separator/],
        ['CREATE INBOX', /NO \[ALREADYEXISTS\]/],
        ['CREATE Archive', /NO \[ALREADYEXISTS\] Mailbox Archive already exists/],
        ['DELETE Nope', /NO \[NONEXISTENT\]/],
      ];
      for (const [command, expected] of cases) {
        const r = await wire.command(command);
        assert.match(r.tagged, expected, `${command} -> ${r.tagged}`);
      }
      // a control character can only come as a literal
      const bad = Buffer.from('tab\there');
      wire.write(`L1 CREATE {${bad.length}}\r\n`);
      assert.match(await wire.readLine(), /^\+/);
      wire.write(Buffer.concat([bad, Buffer.from('\r\n')]));
      assert.match((await wire.readTagged('L1')).tagged, /^L1 NO \[CANNOT\] Mailbox name contains control characters/);

      assert.match((await wire.command('CREATE "Entw&APw-rfe/Kladde"')).tagged, /OK/);
      assert.ok(existsSync(path.join(env.maildirFor(USER), '.Entw&APw-rfe.Kladde', 'cur')));
      assert.match((await wire.command('ENABLE UTF8=ACCEPT')).tagged, /OK/);
      assert.match((await wire.command('CREATE "Grüße"')).tagged, /OK/);
      assert.ok(existsSync(path.join(env.maildirFor(USER), '.Gr&APwA3w-e', 'cur')));
      const list = await wire.command('LIST "" "*"');
      assert.match(list.raw.toString('utf8'), /"Entwürfe\/Kladde"/);
      assert.match(list.raw.toString('utf8'), /"Grüße"/);
    } finally {
      wire.close();
      await stopEnv(env);
    }
  });
});

describe('quota', () => {
  it('parses Dovecot quota rules (storage in KiB unless a unit is given; 0 = unlimited)', () => {
    assert.equal(parseQuotaRule('*:storage=512M'), 512 * 1024 ** 2);
    assert.equal(parseQuotaRule('*:storage=1048576'), 1024 ** 3, 'no unit: kilobytes');
    assert.equal(parseQuotaRule('*:bytes=1000'), 1000);
    assert.equal(parseQuotaRule('*:storage=2g:messages=100'), 2 * 1024 ** 3);
    assert.equal(parseQuotaRule('*:storage=0'), null);
    assert.equal(parseQuotaRule('Trash:storage=+100M'), undefined, 'mailbox rules are not ours');
    for (const bad of ['storage=1G', '*:storage=1Q', '*:storage=-5', '*:size=1G']) assert.throws(() => parseQuotaRule(bad), bad);
    assert.equal(userQuotaBytes({ userdb_quota_rule: '*:storage=512M', quota_rule: '*:storage=1G' }), 512 * 1024 ** 2);
    assert.equal(userQuotaBytes({ quota_rule: '*:storage=1G' }), 1024 ** 3);
    assert.equal(userQuotaBytes({}), undefined);
    const complaints: string[] = [];
    assert.equal(userQuotaBytes({ userdb_quota_rule: '*:storage=lots' }, (m) => complaints.push(m)), undefined);
    assert.equal(complaints.length, 1);
  });

  it('config: [quota] default (1G; 0 = unlimited)', async () => {
    const dir = await tempDir();
    assert.equal(loadConfig(null, dir).quota.default, 1024 ** 3);
    const { writeFile } = await import('node:fs/promises');
    const file = path.join(dir, 'q.toml');
    await writeFile(file, '[quota]\ndefault = 0\n');
    assert.equal(loadConfig(file).quota.default, 0);
    await writeFile(file, '[quota]\ndefault = "10G"\n');
    assert.equal(loadConfig(file).quota.default, 10 * 1024 ** 3);
    await writeFile(file, '[quota]\ndefault = "lots"\n');
    assert.throws(() => loadConfig(file), /key "quota\.default"/);
  });

  it('GETQUOTA/GETQUOTAROOT report the limit; APPEND and COPY over it get NO [OVERQUOTA]; SMTP gets 452 4.2.2', async () => {
    const dir = await tempDir();
    const limit = 8 * 1024;
    const env = await startEnv(dir, { quotaFor: (user) => (user === USER ? limit : null) });
    const wire = await login(env.port);
    const smtp = createInboundSmtpServer({
      domain: 'q.onion',
      store: env.store,
      resolveRecipient: (address) => (address.startsWith(`${USER}@`) ? { kind: 'local', user: USER } : { kind: 'unknown-local' }),
      maxMessageSize: 1024 * 1024,
      maxRecipients: 5,
      logger: silentLogger(),
    });
    await smtp.listen(0, '127.0.0.1');
    const smtpPort = (smtp.address() as net.AddressInfo).port;
    try {
      const big = msg('big', 'x'.repeat(3000));
      const first = await env.store.append(USER, 'INBOX', big);
      const root = await wire.command('GETQUOTAROOT INBOX');
      const used = await env.store.usage(USER);
      assert.equal(root.text, `* QUOTAROOT "INBOX" ""\r\n* QUOTA "" (STORAGE ${Math.ceil(used / 1024)} ${limit / 1024})\r\n`);
      assert.match((await wire.command('GETQUOTA ""')).text, new RegExp(`STORAGE \\d+ ${limit / 1024}\\)`));

      await env.store.append(USER, 'Sent', big);
      wire.write(`A1 APPEND INBOX {${big.length}}\r\n`);
      const cont = await wire.readLine();
      if (cont.startsWith('+')) {
        wire.write(Buffer.concat([big, Buffer.from('\r\n')]));
        const r = await wire.readTagged('A1');
        assert.match(r.tagged, /^A1 NO \[OVERQUOTA\] Quota exceeded/);
      } else {
        assert.match(cont, /^A1 NO \[OVERQUOTA\]/);
      }
      await wire.command('SELECT INBOX');
      assert.match((await wire.command(`UID COPY ${first.uid} Archive`)).tagged, /NO \[OVERQUOTA\] Quota exceeded/);

      // SMTP: the message is refused as "mailbox full, try later" and not stored
      const s = await SmtpWire.connect(smtpPort);
      assert.equal((await s.read()).code, 220);
      await s.command('EHLO client.onion');
      assert.equal((await s.command('MAIL FROM:<x@y.onion>')).code, 250);
      assert.equal((await s.command(`RCPT TO:<${USER}@q.onion>`)).code, 250);
      assert.equal((await s.command('DATA')).code, 354);
      const reply = await s.command(Buffer.concat([big, Buffer.from('.\r\n')]));
      assert.equal(reply.code, 452);
      assert.match(reply.text, /4\.2\.2/);
      await s.command('QUIT');
      assert.equal((await env.store.mailboxStatus(USER, 'INBOX'))!.messages, 1);

      // room again after deleting
      await wire.command(`UID STORE ${first.uid} +FLAGS.SILENT (\\Deleted)`);
      await wire.command('EXPUNGE');
      wire.write(`A2 APPEND INBOX {${big.length}}\r\n`);
      assert.match(await wire.readLine(), /^\+/);
      wire.write(Buffer.concat([big, Buffer.from('\r\n')]));
      assert.match((await wire.readTagged('A2')).tagged, /^A2 OK \[APPENDUID /);
    } finally {
      wire.close();
      await smtp.close();
      await stopEnv(env);
    }
  });
});

describe('COMPRESS=DEFLATE', () => {
  it('after COMPRESS DEFLATE both directions are raw deflate and the session works', async () => {
    const dir = await tempDir();
    const env = await startEnv(dir);
    await env.store.append(USER, 'INBOX', msg('compressed', 'ü'.repeat(2000)));
    const socket = net.connect(env.port, '127.0.0.1');
    try {
      let plain = '';
      const readUntil = async (re: RegExp, get: () => string): Promise<string> => {
        const t0 = Date.now();
        while (!re.test(get())) {
          if (Date.now() - t0 > 5000) throw new Error(`timeout waiting for ${re}: ${get()}`);
          await new Promise((r) => setTimeout(r, 5));
        }
        return get();
      };
      const onPlain = (d: Buffer): void => {
        plain += d.toString('latin1');
      };
      socket.on('data', onPlain);
      await readUntil(/\* OK/, () => plain);
      socket.write(`a LOGIN ${USER} "${PASSWORD}"\r\n`);
      await readUntil(/a OK/, () => plain);
      socket.write('b COMPRESS DEFLATE\r\n');
      await readUntil(/b OK/, () => plain);
      socket.off('data', onPlain);
      const inflate = zlib.createInflateRaw();
      const deflate = zlib.createDeflateRaw();
      let text = '';
      let rawIn = 0;
      socket.on('data', (d: Buffer) => {
        rawIn += d.length;
        inflate.write(d);
      });
      inflate.on('data', (d: Buffer) => {
        text += d.toString('latin1');
      });
      deflate.on('data', (d: Buffer) => socket.write(d));
      const send = (line: string): void => {
        deflate.write(line);
        deflate.flush(zlib.constants.Z_SYNC_FLUSH);
      };
      send('c SELECT INBOX\r\n');
      await readUntil(/c OK/, () => text);
      send('d FETCH 1 (BODY[])\r\n');
      const all = await readUntil(/d OK/, () => text);
      const literal = /BODY\[\] \{(\d+)\}/.exec(all);
      assert.ok(literal);
      assert.ok(Number(literal[1]) > 4000);
      assert.ok(rawIn < Number(literal[1]) / 4, `compressed: ${rawIn} bytes on the wire for a ${literal[1]}-byte literal`);
    } finally {
      socket.destroy();
      await stopEnv(env);
    }
  });
});
