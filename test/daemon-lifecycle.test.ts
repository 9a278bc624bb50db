/**
 * The daemon as an admin runs it (real `onionpost` processes, no Tor): init without a control
 * port, one instance per data dir and --pidfile, SIGHUP reload (users, certificate, config)
 * with an old IMAP session staying up, SIGTERM in the middle of an SMTP DATA, status, check,
 * and the privilege drop when started as root.
 */
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { chmod, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import tls from 'node:tls';
import { ensureCertificate } from '../src/tls/certificate.js';
import { randomOnionAddress } from '../src/tor/onion-address.js';
import { runCli } from './helpers/cli.js';
import { startDaemon, type Daemon } from './helpers/daemon.js';
import { ImapWire } from './helpers/imap-wire.js';
import { maildirFiles } from './helpers/maildir-files.js';
import { freePort } from './helpers/ports.js';
import { SmtpWire } from './helpers/smtp-wire.js';
import { sleep } from './helpers/wait-for.js';


async function addUser(d: Daemon, name: string, password: string): Promise<void> {
  const res = await runCli(['--config', d.configFile, 'user', 'add', name, '--password-stdin'], { input: `${password}\n` });
  assert.equal(res.code, 0, res.stderr);
}

async function peerFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.destroy();
      resolve(fp);
    });
    s.on('error', reject);
  });
}

async function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.on('error', () => resolve(true));
  });
}

async function login(port: number, user: string, password: string): Promise<ImapWire> {
  const imap = await ImapWire.connect(port);
  assert.match(await imap.readLine(), /^\* OK/);
  const r = await imap.command(`LOGIN ${user} "${password}"`);
  assert.match(r.tagged, /OK/, r.text);
  return imap;
}

describe('onionpost init without a Tor control port', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-init-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes a documented config, the data dir and a certificate, and prints the torrc lines for its listeners', async () => {
    const unused = await freePort();
    const res = await runCli(['init', '--tor-control', `127.0.0.1:${unused}`], { cwd: dir });
    assert.equal(res.code, 0, res.stderr);
    const text = await readFile(path.join(dir, 'onionpost.toml'), 'utf8');
    assert.match(text, /^# Written by `onionpost init`/);
    assert.match(text, /^\[daemon\]$/m, 'the written config documents every key (it is the example)');
    assert.match(text, new RegExp(`^control = "127\\.0\\.0\\.1:${unused}"$`, 'm'));
    assert.equal((await stat(path.join(dir, 'data'))).mode & 0o777, 0o700);
    assert.equal((await stat(path.join(dir, 'data', 'tls', 'key.pem'))).mode & 0o777, 0o600);
    assert.match(res.stdout, new RegExp(`not set up yet: no Tor control port at 127\\.0\\.0\\.1:${unused} \\(ECONNREFUSED\\)`));
    assert.match(
      res.stdout,
      /\nHiddenServiceDir \/var\/lib\/tor\/onionpost\/\nHiddenServicePort 25 127\.0\.0\.1:2525\nHiddenServicePort 143 127\.0\.0\.1:2143\nHiddenServicePort 465 127\.0\.0\.1:2465\nHiddenServicePort 587 127\.0\.0\.1:2587\nHiddenServicePort 993 127\.0\.0\.1:2993\n/,
    );
    assert.match(res.stdout, /onionpost init --onion-dir \/var\/lib\/tor\/onionpost\n/);
  });

  it('--onion-dir: reads and checks DIR/hostname, edits only the domain, reissues our certificate; client-config; --force', async () => {
    const file = path.join(dir, 'onionpost.toml');
    await writeFile(file, `# my own comment\n${await readFile(file, 'utf8')}`);
    const certBefore = new X509Certificate(await readFile(path.join(dir, 'data', 'tls', 'cert.pem')));
    const keyBefore = await readFile(path.join(dir, 'data', 'tls', 'key.pem'), 'utf8');
    const hs = path.join(dir, 'hs');
    await rm(hs, { recursive: true, force: true });
    await runCli(['init', '--onion-dir', hs], { cwd: dir }).then((r) => {
      assert.equal(r.code, 66);
      assert.match(r.stderr, /cannot read .*hs\/hostname: tor writes it when it \(re\)loads a torrc/);
    });
    await import('node:fs/promises').then((fs) => fs.mkdir(hs));
    await writeFile(path.join(hs, 'hostname'), 'abcdef.onion\n');
    const bad = await runCli(['init', '--onion-dir', hs], { cwd: dir });
    assert.equal(bad.code, 66);
    assert.match(bad.stderr, /does not hold a v3 onion address/);

    const onion = randomOnionAddress();
    await writeFile(path.join(hs, 'hostname'), `${onion}\n`);
    const res = await runCli(['init', '--onion-dir', hs], { cwd: dir });
    assert.equal(res.code, 0, res.stderr);
    const text = await readFile(file, 'utf8');
    assert.match(text, /^# my own comment\n/, 'the existing config is edited, not replaced');
    assert.match(text, new RegExp(`^domain = "${onion}"$`, 'm'));
    const cert = new X509Certificate(await readFile(path.join(dir, 'data', 'tls', 'cert.pem')));
    assert.equal(cert.checkHost(onion), onion);
    assert.notEqual(cert.fingerprint256, certBefore.fingerprint256);
    assert.equal(await readFile(path.join(dir, 'data', 'tls', 'key.pem'), 'utf8'), keyBefore, 'same key, new certificate');

    const check = await runCli(['check'], { cwd: dir });
    assert.equal(check.code, 0, check.stderr);
    assert.match(check.stdout, new RegExp(`^domain = "${onion}"$`, 'm'));

    // client-config: settings that reach this onion through Tor.
    const added = await runCli(['user', 'add', 'alice', '--password-stdin'], { cwd: dir, input: 'pw\n' });
    assert.equal(added.code, 0, added.stderr);
    const cc = await runCli(['client-config', 'alice', '--socks', '127.0.0.1:9150'], { cwd: dir });
    assert.equal(cc.code, 0, cc.stderr);
    assert.match(cc.stdout, new RegExp(`^set folder = "imap://alice@${onion}:143/"$`, 'm'));
    assert.match(cc.stdout, new RegExp(`^set smtp_url = "smtp://alice@${onion}:587/"$`, 'm'));
    assert.match(cc.stdout, /torsocks neomutt/);
    assert.match(cc.stdout, /SOCKS Host 127\.0\.0\.1 Port 9150, SOCKS v5, and tick "Proxy DNS when using SOCKS v5"/);
    assert.match(cc.stdout, new RegExp(`^Tunnel "socat - SOCKS4A:127\\.0\\.0\\.1:${onion}:143,socksport=9150"$`, 'm'));
    const nobody = await runCli(['client-config', 'bob'], { cwd: dir });
    assert.equal(nobody.code, 67);
    assert.match(nobody.stderr, /no user "bob"/);

    const forced = await runCli(['init', '--force', '--no-tor'], { cwd: dir });
    assert.equal(forced.code, 0, forced.stderr);
    assert.doesNotMatch(await readFile(file, 'utf8'), /my own comment/);
    assert.match(forced.stdout, /\(rewritten\)/);
  });
});

describe('daemon lifecycle', () => {
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  });

  it('one daemon per data dir, and per --pidfile; both files are removed at exit; init refuses while it runs', async () => {
    const pidDir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-pid-'));
    cleanups.push(() => rm(pidDir, { recursive: true, force: true }));
    const pidfile = path.join(pidDir, 'onionpost.pid');
    const d = await startDaemon('', { args: ['--pidfile', pidfile] });
    cleanups.push(() => d.cleanup());
    assert.equal((await readFile(pidfile, 'utf8')).trim(), String(d.child.pid));

    const second = await runCli(['--config', d.configFile, 'start']);
    assert.equal(second.code, 75);
    assert.match(second.stderr, new RegExp(`another onionpost \\(pid ${d.child.pid}\\) is already running on the data dir .*; stop it first`));

    const other = await startDaemon('', { args: ['--pidfile', pidfile] }).then(
      async (o) => {
        await o.cleanup();
        return 'started';
      },
      (err: Error) => err.message,
    );
    assert.match(other, /exited with 75[\s\S]*another onionpost \(pid \d+\) is already running on the pidfile/);

    const init = await runCli(['--config', d.configFile, 'init', '--no-tor']);
    assert.equal(init.code, 75);
    assert.match(init.stderr, /init changes it: stop the daemon first/);

    assert.equal(await d.stop(), 0, d.stderr());
    await assert.rejects(stat(pidfile), { code: 'ENOENT' });
    await assert.rejects(stat(path.join(d.dir, 'data', 'onionpost.pid')), { code: 'ENOENT' });
    await assert.rejects(stat(path.join(d.dir, 'data', 'onionpost.sock')), { code: 'ENOENT' });
    const st = await runCli(['--config', d.configFile, 'status']);
    assert.equal(st.code, 3);
    assert.match(st.stdout, /^onionpost is not running/);
  });

  it('SIGHUP: new user, new certificate and config take effect for new connections; an IMAP session stays up; a broken config is refused', async () => {
    const d = await startDaemon('[tls]\ncert = "c1.pem"\nkey = "k1.pem"\n', {
      prepare: async (dir) => {
        for (const n of ['1', '2']) {
          await ensureCertificate({ certFile: path.join(dir, `c${n}.pem`), keyFile: path.join(dir, `k${n}.pem`), domain: 'localhost', generate: true });
        }
      },
    });
    cleanups.push(() => d.cleanup());
    const fp = async (n: string): Promise<string> => new X509Certificate(await readFile(path.join(d.dir, `c${n}.pem`))).fingerprint256;
    assert.equal(await peerFingerprint(d.ports.imaps), await fp('1'));
    await addUser(d, 'alice', 'alice password');
    const old = await login(d.ports.imap, 'alice', 'alice password');

    const config = await readFile(d.configFile, 'utf8');
    await writeFile(d.configFile, config.replace('c1.pem', 'c2.pem').replace('k1.pem', 'k2.pem'));
    await addUser(d, 'bob', 'bob password');
    d.child.kill('SIGHUP');
    await sleep(300);
    assert.equal(await peerFingerprint(d.ports.imaps), await fp('2'), 'new TLS connections get the new certificate');
    const bob = await login(d.ports.imap, 'bob', 'bob password');
    bob.close();
    assert.match((await old.command('NOOP')).tagged, /OK/, 'the old session is still there');
    assert.match((await old.command('SELECT INBOX')).tagged, /OK/);
    let st = await runCli(['--config', d.configFile, 'status']);
    assert.match(st.stdout, /last reload +\S+ ok: reloaded config file, users, aliases, certificate/);
    assert.match(st.stdout, /imap +127\.0\.0\.1:\d+ +1 connection\n/);
    assert.match(st.stdout, /users +2\n/);

    // A config that does not parse: logged, nothing changes, the daemon stays.
    await writeFile(d.configFile, `${config}\n[smtp\n`);
    d.child.kill('SIGHUP');
    await sleep(300);
    // `status` cannot read the broken config either: restore it to ask.
    await writeFile(d.configFile, config.replace('c1.pem', 'c2.pem').replace('k1.pem', 'k2.pem'));
    st = await runCli(['--config', d.configFile, 'status']);
    assert.equal(st.code, 0);
    assert.match(st.stdout, /last reload +\S+ FAILED: config: .*not valid TOML/);
    for (let i = 0; i < 50 && !/reload: errors; the running settings stay/.test(d.stderr()); i++) await sleep(100); // pino writes asynchronously
    assert.match(d.stderr(), /reload: errors; the running settings stay/);
    assert.equal(await peerFingerprint(d.ports.imaps), await fp('2'));
    assert.match((await old.command('NOOP')).tagged, /OK/);
    old.close();
    assert.equal(await d.stop(), 0, d.stderr());
  });

  it('SIGTERM during DATA: the transaction completes with 250 and is stored, new connections are refused, IMAP gets BYE, exit 0', async () => {
    const d = await startDaemon();
    cleanups.push(() => d.cleanup());
    await addUser(d, 'alice', 'pw');
    const imap = await login(d.ports.imap, 'alice', 'pw');
    const idle = await SmtpWire.connect(d.ports.smtp);
    assert.equal((await idle.read()).code, 220);
    const smtp = await SmtpWire.connect(d.ports.smtp);
    assert.equal((await smtp.read()).code, 220);
    assert.equal((await smtp.command('EHLO peer.onion')).code, 250);
    assert.equal((await smtp.command('MAIL FROM:<bob@peer.onion>')).code, 250);
    assert.equal((await smtp.command('RCPT TO:<alice@localhost>')).code, 250);
    assert.equal((await smtp.command('DATA')).code, 354);
    smtp.write('Subject: in flight\r\nFrom: bob@peer.onion\r\n\r\nfirst half\r\n');

    const t0 = Date.now();
    const exited = d.stop(); // SIGTERM
    await sleep(300);
    assert.equal(await refused(d.ports.smtp), true, 'no new SMTP connections');
    assert.equal(await refused(d.ports.imap), true, 'no new IMAP connections');
    assert.equal((await idle.read()).code, 421, 'an idle SMTP client is told to go away');
    smtp.write('second half\r\n.\r\n');
    const reply = await smtp.read();
    assert.equal(reply.code, 250, reply.text);
    smtp.write('QUIT\r\n');
    const bye = await imap.readLine(3000);
    assert.match(bye, /^\* BYE/);
    assert.equal(await exited, 0, d.stderr());
    const elapsed = Date.now() - t0;
    process.stderr.write(`# SIGTERM -> exit with one SMTP DATA in flight and one IMAP session: ${elapsed} ms\n`);
    assert.ok(elapsed < 15_000);
    const files = await maildirFiles(path.join(d.dir, 'data', 'mail', 'alice'));
    assert.equal(files.length, 1);
    const stored = await readFile(files[0]!, 'utf8');
    assert.match(stored, /first half\r\nsecond half\r\n$/);
  });

  it('check: exit 2 naming the problem; passwords are never printed', async () => {
    const d = await startDaemon('[tor]\ncontrol_password = "s3cret"\n');
    cleanups.push(() => d.cleanup());
    await d.stop();
    const ok = await runCli(['--config', d.configFile, 'check', '--all']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /^control_password = "\*\*\*\*\*\*\*\*"$/m);
    assert.doesNotMatch(ok.stdout, /s3cret/);
    assert.match(ok.stdout, /^\[imap\]\nhost = "127\.0\.0\.1"\nport = \d+/m);
    const config = await readFile(d.configFile, 'utf8');
    await writeFile(d.configFile, `${config}[tls]\ncert = "missing.pem"\nkey = "missing.key"\n`);
    const bad = await runCli(['--config', d.configFile, 'check']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /error: keys "tls\.cert"\/"tls\.key": TLS certificate file .*missing\.pem and key file .*missing\.key not found/);
    await writeFile(d.configFile, config.replace('[log]', '[log]\nlevle = "x"'));
    const unknown = await runCli(['--config', d.configFile, 'check']);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown key "log\.levle"/);
  });

  it('as root with [daemon] user: binds a port below 1024, then runs as that user and owns the data dir', async (t) => {
    if (process.getuid?.() !== 0) {
      t.skip('needs root');
      return;
    }
    let low = 0;
    for (let p = 600 + Math.floor(Math.random() * 300); p < 1000 && !low; p++) {
      const free = await new Promise<boolean>((resolve) => {
        const s = net.createServer();
        s.once('error', () => resolve(false));
        s.listen(p, '127.0.0.1', () => s.close(() => resolve(true)));
      });
      if (free) low = p;
    }
    assert.ok(low, 'a free port below 1024');
    const d = await startDaemon('[daemon]\nuser = "nobody"\n', {
      prepare: async (dir) => {
        await chmod(dir, 0o755); // the temp dir is 0700 root: nobody must reach the data dir inside
        const text = await readFile(path.join(dir, 'onionpost.toml'), 'utf8');
        await writeFile(path.join(dir, 'onionpost.toml'), text.replace(/(\[imap\]\nport = )\d+/, `$1${low}`));
      },
    });
    cleanups.push(() => d.cleanup());
    const status = await readFile(`/proc/${d.child.pid}/status`, 'utf8');
    const nobody = (await readFile('/etc/passwd', 'utf8')).split('\n').find((l) => l.startsWith('nobody:'))!.split(':');
    assert.match(status, new RegExp(`^Uid:\\s+${nobody[2]}\\s+${nobody[2]}\\s+${nobody[2]}\\s+${nobody[2]}$`, 'm'));
    assert.match(status, new RegExp(`^Gid:\\s+${nobody[3]}\\s+${nobody[3]}\\s+${nobody[3]}\\s+${nobody[3]}$`, 'm'));
    assert.doesNotMatch(status, /^Groups:.*\b0\b/m, 'no supplementary group root');
    assert.match(status, /^CapEff:\s+0+$/m);

    const st = await runCli(['--config', d.configFile, 'status']);
    assert.equal(st.code, 0, st.stdout + st.stderr);
    assert.match(st.stdout, new RegExp(`imap +127\\.0\\.0\\.1:${low} `));
    await addUser(d, 'alice', 'pw'); // as root: the file gets the data dir's owner
    // The daemon (status above read the users file) would notice within a second; SIGHUP now,
    // which also re-reads config and certificate as the unprivileged user.
    d.child.kill('SIGHUP');
    let reloaded = '';
    for (let i = 0; i < 20 && !/last reload .* ok/.test(reloaded); i++) {
      await sleep(100);
      reloaded = (await runCli(['--config', d.configFile, 'status'])).stdout;
    }
    assert.match(reloaded, /last reload +\S+ ok: reloaded config file, users, aliases, certificate/);
    const imap = await login(low, 'alice', 'pw');
    imap.close();
    const smtp = await SmtpWire.connect(d.ports.smtp);
    await smtp.read();
    await smtp.command('EHLO x.onion');
    await smtp.command('MAIL FROM:<x@x.onion>');
    assert.equal((await smtp.command('RCPT TO:<alice@localhost>')).code, 250);
    await smtp.command('DATA');
    assert.equal((await smtp.command('Subject: hi\r\n\r\nhello\r\n.')).code, 250);
    smtp.close();

    const walk = async (p: string, out: Array<{ p: string; uid: number }>): Promise<void> => {
      const st = await stat(p);
      out.push({ p, uid: st.uid });
      if (st.isDirectory()) for (const n of await readdir(p)) await walk(path.join(p, n), out);
    };
    const owners: Array<{ p: string; uid: number }> = [];
    await walk(path.join(d.dir, 'data'), owners);
    const notNobody = owners.filter((o) => o.uid !== Number(nobody[2]));
    assert.deepEqual(notNobody, [], 'everything in the data dir belongs to nobody');
    assert.equal((await maildirFiles(path.join(d.dir, 'data', 'mail', 'alice'))).length, 1, 'the message was stored');
    assert.equal(await d.stop(), 0, d.stderr());
  });
});
