/**
 * `onionpost init` and `onionpost start` against a real Tor control port: a private, offline
 * Tor network (scripts/tor-testnet-lib.ts) whose client tor has ControlPort + cookie auth.
 * The onion service is created by init (ADD_ONION NEW:ED25519-V3), published again by the
 * daemon from the stored key, reached through Tor's SocksPort, removed when the daemon stops,
 * and re-published after Tor was unreachable or the control connection was lost.
 */
import assert from 'node:assert/strict';
import { X509Certificate, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startTorNetwork, type TorNetwork } from '../scripts/tor-testnet-lib.js';
import { openTorConnection } from '../src/delivery/transport.js';
import { TorControlClient } from '../src/tor/control-client.js';
import { readOnionKey } from '../src/tor/onion-service.js';
import { runCli } from './helpers/cli.js';
import { spawnDaemon, type DaemonProcess } from './helpers/daemon.js';
import { freePort } from './helpers/ports.js';
import { waitForEvery } from './helpers/wait-for.js';

type Running = DaemonProcess;

async function writeConfig(dir: string, extra: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, 'onionpost.toml');
  const p = async (): Promise<number> => freePort();
  await writeFile(
    file,
    `data_dir = "data"\n[smtp]\nport = ${await p()}\n[submission]\nport = ${await p()}\ntls_port = ${await p()}\n[imap]\nport = ${await p()}\ntls_port = ${await p()}\n[log]\nlevel = "info"\n${extra}`,
  );
  return file;
}

/** The daemon is ready when it printed its hints (it has no users yet). */
const startD = (configFile: string): Promise<Running> => spawnDaemon(configFile, { ready: /Next: add a user/ });

/** greeting() retried while the onion's descriptor is not published yet (SOCKS f0, for a few seconds after ADD_ONION). */
async function greetingWhenUp(socksPort: number, host: string, port: number, pattern: RegExp, timeoutMs = 40_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await greeting(socksPort, host, port, pattern);
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** Reads through Tor until `pattern` shows up; returns what it read. */
async function greeting(socksPort: number, host: string, port: number, pattern: RegExp): Promise<string> {
  const sock = await openTorConnection({ socks: { host: '127.0.0.1', port: socksPort }, host, port, timeoutMs: 30_000, isolationKey: randomBytes(4).toString('hex') });
  try {
    return await new Promise<string>((resolve, reject) => {
      let text = '';
      const timer = setTimeout(() => reject(new Error(`no ${pattern} from ${host}:${port}; got ${JSON.stringify(text)}`)), 15_000);
      sock.on('data', (d: Buffer) => {
        text += d.toString('latin1');
        if (pattern.test(text)) {
          clearTimeout(timer);
          resolve(text);
        }
      });
      sock.on('error', reject);
      sock.resume();
    });
  } finally {
    sock.destroy();
  }
}

const waitFor = waitForEvery(200);

describe('init and start with a real Tor control port (private Tor network)', { timeout: 150_000 }, () => {
  let dir: string;
  let tor: TorNetwork | undefined;
  const daemons: Running[] = [];
  const proxies: net.Server[] = [];

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-dtor-'));
    tor = await startTorNetwork({ dir: path.join(dir, 'tor') });
    process.stderr.write(`# private Tor network ready in ${tor.readyMs} ms\n`);
  });

  after(async () => {
    for (const d of daemons) await d.stop().catch(() => undefined);
    for (const p of proxies) p.close();
    await tor?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  let configFile: string;
  let onion: string;

  it('init creates a v3 onion through the control port (cookie auth), stores its key 0600 and makes it the domain', async () => {
    configFile = await writeConfig(path.join(dir, 'a'), '');
    const res = await runCli(['--config', configFile, 'init', '--tor-control', `127.0.0.1:${tor!.controlPort}`]);
    assert.equal(res.code, 0, res.stderr + res.stdout);
    const text = await readFile(configFile, 'utf8');
    onion = /^domain = "([a-z2-7]{56}\.onion)"$/m.exec(text)?.[1] ?? '';
    assert.ok(onion, `domain set in the config:\n${text}`);
    assert.match(text, new RegExp(`^control = "127\\.0\\.0\\.1:${tor!.controlPort}"$`, 'm'));
    assert.match(text, /^\[log\]\nlevel = "info"$/m, 'the existing config kept its content');
    assert.match(res.stdout, new RegExp(`domain +${onion}`));
    assert.match(res.stdout, /onion ports +25 -> 127\.0\.0\.1:\d+, 143 -> .*, 465 -> .*, 587 -> .*, 993 -> /);

    const keyDir = path.join(dir, 'a', 'data', 'onion');
    const stored = await readOnionKey(keyDir);
    assert.equal(stored?.hostname, onion);
    assert.equal((await stat(path.join(keyDir, 'hs_ed25519_secret_key'))).mode & 0o777, 0o600);
    assert.equal((await stat(keyDir)).mode & 0o777, 0o700);
    const cert = new X509Certificate(await readFile(path.join(dir, 'a', 'data', 'tls', 'cert.pem')));
    assert.equal(cert.checkHost(onion), onion, 'the certificate is for the onion');

    // Run again: same onion, nothing new created.
    const again = await runCli(['--config', configFile, 'init']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /onion service key in .* \(kept/);
    assert.match(await readFile(configFile, 'utf8'), new RegExp(`^domain = "${onion}"$`, 'm'));
  });

  it('start publishes the onion from the stored key: SMTP and IMAP answer through Tor; status says so; stop removes it', async () => {
    const t0 = Date.now();
    const d = await startD(configFile);
    daemons.push(d);
    try {
      await startedAndPublished(d, t0);
    } finally {
      await d.stop();
    }
  });
  const startedAndPublished = async (d: Running, t0: number): Promise<void> => {
    assert.match(d.stdout(), new RegExp(`onion +${onion} published through Tor`));
    const smtp = await greetingWhenUp(tor!.socksPort, onion, 25, /^220 .*\r\n/);
    const tFirst = Date.now() - t0;
    assert.match(smtp, new RegExp(`^220 ${onion} `));
    const imap = await greeting(tor!.socksPort, onion, 143, /^\* OK .*\r\n/);
    assert.match(imap, /^\* OK onionpost ready/);
    process.stderr.write(`# daemon start -> SMTP banner through the onion: ${tFirst} ms\n`);

    const st = await runCli(['--config', configFile, 'status']);
    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, new RegExp(`onion +${onion}: published through Tor \\(127\\.0\\.0\\.1:${tor!.controlPort}\\)`));

    assert.equal(await d.stop(), 0, d.stderr());
    // The onion is gone from tor: adding the same key again is not a collision.
    const key = (await readOnionKey(path.join(dir, 'a', 'data', 'onion')))!;
    const c = await TorControlClient.connect({ kind: 'tcp', host: '127.0.0.1', port: tor!.controlPort });
    try {
      const { serviceId } = await c.addOnion({ key: key.key, ports: [{ virtualPort: 25, target: '127.0.0.1:9' }] });
      assert.equal(`${serviceId}.onion`, onion);
      await c.delOnion(serviceId);
    } finally {
      c.close();
    }
  };

  it('Tor unreachable at start: the daemon runs, says so loudly, and publishes once Tor is back; a lost control connection is re-made', async () => {
    // A TCP relay in front of the control port: off at first, then on, then its connections cut.
    const relayPort = await freePort();
    const text = await readFile(configFile, 'utf8');
    await writeFile(configFile, text.replace(/^control = .*$/m, `control = "127.0.0.1:${relayPort}"`));
    const d = await startD(configFile);
    daemons.push(d);
    try {
      await unreachableThenBack(d, relayPort);
    } finally {
      await d.stop();
    }
  });
  const unreachableThenBack = async (d: Running, relayPort: number): Promise<void> => {
    assert.match(d.stdout(), new RegExp(`onion +${onion} NOT published: no Tor control port at 127\\.0\\.0\\.1:${relayPort} \\(ECONNREFUSED\\).*retrying in the background`));
    // The log is written asynchronously (pino): wait for the line.
    await waitFor('the error in the log', async () => (/cannot publish .* retrying in the background/.test(d.stderr()) ? true : null), 5000);

    const links = new Set<net.Socket>();
    const relay = net.createServer((a) => {
      const b = net.connect(tor!.controlPort, '127.0.0.1');
      links.add(a);
      a.on('close', () => links.delete(a));
      a.pipe(b).pipe(a);
      a.on('error', () => b.destroy());
      b.on('error', () => a.destroy());
      a.on('close', () => b.destroy());
      b.on('close', () => a.destroy());
    });
    proxies.push(relay);
    await new Promise<void>((resolve) => relay.listen(relayPort, '127.0.0.1', () => resolve()));
    const tUp = Date.now();
    await waitFor('published after Tor came back', async () => ((await runCli(['--config', configFile, 'status'])).stdout.includes('published through Tor') ? true : null), 15_000);
    process.stderr.write(`# control port back -> onion published: ${Date.now() - tUp} ms\n`);
    assert.match(await greetingWhenUp(tor!.socksPort, onion, 25, /^220 .*\r\n/), new RegExp(`^220 ${onion} `));

    for (const s of links) s.destroy();
    await waitFor('lost connection noticed', async () => (/control connection lost/.test(d.stderr()) ? true : null), 5000);
    await waitFor('published again', async () => ((await runCli(['--config', configFile, 'status'])).stdout.includes('published through Tor') ? true : null), 15_000).catch((err: Error) => {
      throw new Error(`${err.message}\n${d.stderr()}`);
    });
    assert.equal(await d.stop(), 0, d.stderr());
  };

  it('init with a cookie Tor did not write fails with a clear message and exit 69, and creates no key', async () => {
    const cfg = await writeConfig(path.join(dir, 'b'), '');
    const fake = path.join(dir, 'b', 'not-the-cookie');
    await writeFile(fake, randomBytes(32));
    const res = await runCli(['--config', cfg, 'init', '--tor-control', `127.0.0.1:${tor!.controlPort}`, '--tor-cookie', fake]);
    assert.equal(res.code, 69, res.stdout + res.stderr);
    assert.match(res.stderr, /onionpost: Tor: the process at 127\.0\.0\.1:\d+ does not know Tor's cookie/);
    assert.equal(await readOnionKey(path.join(dir, 'b', 'data', 'onion')), null);
  });
});
