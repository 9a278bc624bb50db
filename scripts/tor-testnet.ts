/**
 * tor-testnet: a private, offline Tor network on 127.0.0.1 for tests (see tor-testnet-lib.ts).
 *
 *   tor-testnet up --dir DIR [--onion NAME=TARGETPORT | NAME=VPORT:TARGETPORT,...]...
 *                  [--owner PID] [--exit-dns 127.0.0.1:PORT] [--timeout SECONDS]
 *   tor-testnet down --dir DIR
 *   tor-testnet status --dir DIR
 *
 * `up` prints a JSON description (ports, onion names, pids) on stdout once every onion answers
 * through the client's SocksPort, then exits; the tors keep running until the owner process
 * (default: the caller of this script) exits, or until `down`.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { findNetworkTors, startTorNetwork, stopTorNetwork, type OnionSpec } from './tor-testnet-lib.js';

const USAGE = `usage:
  tor-testnet up --dir DIR [--onion NAME=TARGETPORT | NAME=VPORT:TARGETPORT,...]... [--owner PID]
                 [--exit-dns 127.0.0.1:PORT] [--timeout SECONDS]
  tor-testnet down --dir DIR
  tor-testnet status --dir DIR`;

function fail(message: string): never {
  process.stderr.write(`tor-testnet: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function parseOnion(spec: string): OnionSpec {
  const m = /^([a-z0-9_-]+)=(.+)$/.exec(spec);
  if (!m) fail(`bad --onion ${spec}`);
  const [, name, rest] = m;
  if (/^\d+$/.test(rest!)) return { name: name!, targetPort: Number(rest) };
  const ports = rest!.split(',').map((p) => {
    const pm = /^(\d+):(\d+)$/.exec(p);
    if (!pm) fail(`bad port mapping ${p} in --onion ${spec}`);
    return { virtualPort: Number(pm[1]), targetPort: Number(pm[2]) };
  });
  return { name: name!, ports };
}

async function main(): Promise<void> {
  const [command, ...args] = process.argv.slice(2);
  let dir: string | undefined;
  const onions: OnionSpec[] = [];
  let owner = process.ppid;
  let exitDns = process.env.TORNET_EXIT_DNS || undefined;
  let timeoutSec = 120;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const value = (): string => args[++i] ?? fail(`${arg} needs a value`);
    if (arg === '--dir') dir = value();
    else if (arg === '--onion') onions.push(parseOnion(value()));
    else if (arg === '--owner') owner = Number(value());
    else if (arg === '--exit-dns') exitDns = value();
    else if (arg === '--timeout') timeoutSec = Number(value());
    else fail(`unknown argument ${arg}`);
  }
  if (!dir) fail('--dir is required');
  dir = path.resolve(dir);

  if (command === 'up') {
    if (!Number.isInteger(owner) || owner <= 1) fail(`bad --owner ${owner}`);
    try {
      process.kill(owner, 0);
    } catch {
      fail(`owner process ${owner} does not exist`);
    }
    const net = await startTorNetwork({
      dir,
      onions,
      owner,
      exitDns,
      readyTimeoutMs: timeoutSec * 1000,
      log: (m) => process.stderr.write(`${m}\n`),
    });
    const { stop: _stop, ...description } = net;
    process.stdout.write(`${JSON.stringify(description, null, 2)}\n`);
  } else if (command === 'down') {
    const pids = await stopTorNetwork(dir);
    process.stderr.write(`tor-testnet: stopped ${pids.length} tor process(es)${pids.length ? `: ${pids.join(' ')}` : ''}\n`);
  } else if (command === 'status') {
    const file = path.join(dir, 'network.json');
    const description = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as object) : null;
    process.stdout.write(`${JSON.stringify({ description, running: findNetworkTors(dir) }, null, 2)}\n`);
  } else {
    fail(command ? `unknown command ${command}` : 'no command');
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
