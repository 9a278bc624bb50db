/**
 * scripts/tor-testnet as a user runs it: `up` prints JSON and exits leaving the tors running
 * under their owner; `down` stops them; a reused directory keeps its onion names; the tors exit
 * by themselves when their owner process does.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { findNetworkTors, type TorNetworkDescription } from '../scripts/tor-testnet-lib.js';
import { openTorConnection } from '../src/delivery/transport.js';
import { outputOf, ROOT, type CliResult } from './helpers/cli.js';

const SCRIPT = path.join(ROOT, 'scripts', 'tor-testnet');

/** Resolves when all stdio is closed, so no tor kept the pipes open. */
function runScript(args: string[]): Promise<CliResult> {
  return outputOf(spawn('bash', [SCRIPT, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] }));
}

function startOwner(): ChildProcess {
  const owner = spawn('sleep', ['600'], { stdio: 'ignore' });
  owner.unref();
  return owner;
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('scripts/tor-testnet up/down', { timeout: 180_000 }, () => {
  let dir: string;
  let target: net.Server;
  let targetPort: number;
  const owners: ChildProcess[] = [];

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-tornet-cli-'));
    target = net.createServer((s) => s.end('220 cli-target\r\n'));
    await new Promise<void>((resolve) => target.listen(0, '127.0.0.1', () => resolve()));
    targetPort = (target.address() as net.AddressInfo).port;
  });
  after(async () => {
    await runScript(['down', '--dir', dir]);
    for (const o of owners) o.kill('SIGKILL');
    await new Promise<void>((resolve) => target.close(() => resolve()));
    assert.deepEqual(findNetworkTors(dir), []);
    await rm(dir, { recursive: true, force: true });
  });

  let firstName = '';

  it('up prints the network as JSON and exits; the tors keep running; down stops them all', async () => {
    const owner = startOwner();
    owners.push(owner);
    const up = await runScript(['up', '--dir', dir, '--onion', `mail=${targetPort}`, '--owner', String(owner.pid)]);
    assert.equal(up.code, 0, up.stderr);
    const net1 = JSON.parse(up.stdout) as TorNetworkDescription;
    process.stderr.write(`tor-testnet up: ready in ${net1.readyMs} ms\n`);
    assert.equal(net1.owner, owner.pid);
    assert.match(net1.onions.mail!, /^[a-z2-7]{56}\.onion$/);
    assert.deepEqual(Object.keys(net1.pids).sort(), ['auth', 'client', 'onion', 'relay1', 'relay2', 'relay3', 'relay4']);
    assert.ok(Object.values(net1.pids).every(alive), 'all 7 tors run after up exited');
    assert.equal(findNetworkTors(dir).length, 7);
    firstName = net1.onions.mail!;

    const sock = await openTorConnection({ socks: { host: '127.0.0.1', port: net1.socksPort }, host: firstName, port: 25, isolationKey: 'cli', timeoutMs: 60_000 });
    const greeting = await new Promise<string>((resolve, reject) => {
      let text = '';
      sock.setEncoding('utf8');
      sock.on('data', (d: string) => (text += d));
      sock.on('end', () => resolve(text));
      sock.on('error', reject);
      sock.resume();
    });
    assert.equal(greeting, '220 cli-target\r\n');

    const down = await runScript(['down', '--dir', dir]);
    assert.equal(down.code, 0, down.stderr);
    assert.match(down.stderr, /stopped 7 tor process/);
    assert.deepEqual(findNetworkTors(dir), []);
    assert.ok(!Object.values(net1.pids).some(alive));
  });

  it('a reused directory keeps the onion name; the tors exit when their owner does', async () => {
    assert.ok(firstName, 'needs the first test');
    const owner = startOwner();
    owners.push(owner);
    const up = await runScript(['up', '--dir', dir, '--onion', `mail=${targetPort}`, '--owner', String(owner.pid)]);
    assert.equal(up.code, 0, up.stderr);
    const net2 = JSON.parse(up.stdout) as TorNetworkDescription;
    assert.equal(net2.onions.mail, firstName);
    owner.kill('SIGKILL');
    // Tor polls its owning controller process every 15 s.
    const deadline = Date.now() + 45_000;
    while (findNetworkTors(dir).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual(findNetworkTors(dir), [], 'tors exited with their owner');
  });

  it('rejects bad usage', async () => {
    const res = await runScript(['up']);
    assert.equal(res.code, 2);
    assert.match(res.stderr, /--dir is required/);
    const res2 = await runScript(['up', '--dir', dir, '--owner', '999999999']);
    assert.equal(res2.code, 2);
    assert.match(res2.stderr, /owner process/);
  });
});
