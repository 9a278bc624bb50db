/**
 * A private, offline Tor network on 127.0.0.1 for tests: 1 directory authority + 4 relays (all
 * exits to loopback only, all HSDirs), 1 tor hosting v3 onion services, 1 client tor with
 * SocksPort (ExtendedErrors), DNSPort and ControlPort. Settings follow the team's verified notes on
 * a private Tor test network.
 *
 * Safety: every tor started here gets the private network's DirAuthority line (a tor without it
 * would contact the public Tor network), an empty --defaults-torrc, and __OwningControllerProcess,
 * so it exits when its owner does.
 *
 * Layout of DIR: network.json (the description), resolv.conf (the exits' DNS server), and one
 * directory per node (auth, relay1..relay4, onion, client) with its torrc, data and logs.
 * DIR/onion/hs/<name>/ holds each onion's keys and survives a restart, so names stay stable.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants, closeSync, existsSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { openTorConnection, TorConnectError } from '../src/delivery/transport.js';
import { processAlive } from '../src/cli/process-alive.js';

export interface OnionSpec {
  /** Directory name and key in `onions`: [a-z0-9_-]+. */
  name: string;
  /** Loopback port the onion's port 25 forwards to (ignored when `ports` is given). */
  targetPort?: number;
  /** Virtual port for `targetPort`; default 25. */
  virtualPort?: number;
  /** Several ports: onion's virtualPort -> 127.0.0.1:targetPort. */
  ports?: { virtualPort: number; targetPort: number }[];
}

export interface TorNetworkOptions {
  dir: string;
  onions?: OnionSpec[];
  /** Tors exit when this process exits. Default: the calling process. */
  owner?: number;
  /** DNS server (`127.0.0.1:PORT`) the exits use to resolve non-onion names; default: a port where nothing listens. */
  exitDns?: string;
  /** Give up after this long. Default 120 s. */
  readyTimeoutMs?: number;
  /** Progress messages. */
  log?: (message: string) => void;
}

export interface TorNetworkDescription {
  dir: string;
  socksPort: number;
  dnsPort: number;
  controlPort: number;
  controlCookieFile: string;
  onions: Record<string, string>;
  /** Onion name -> virtual port -> target port. */
  onionPorts: Record<string, Record<string, number>>;
  authority: { orPort: number; dirPort: number };
  relayOrPorts: number[];
  exitDns: string;
  owner: number;
  pids: Record<string, number>;
  /** Milliseconds from start until every onion answered through the SocksPort. */
  readyMs: number;
  /** Milliseconds from start until the consensus listed every relay. */
  consensusMs: number;
}

export interface TorNetwork extends TorNetworkDescription {
  /** Stops every tor of this network (idempotent). */
  stop(): Promise<void>;
}

const RELAY_NAMES = ['relay1', 'relay2', 'relay3', 'relay4'];
const ALL_NODES = ['auth', ...RELAY_NAMES, 'onion', 'client'];
const VOTING = { initialInterval: 8, voteDelay: 2, distDelay: 2 };

/** Finds an executable in PATH and the usual system directories (Debian puts tor in sbin). */
export function findExecutable(name: string, envOverride?: string): string {
  if (envOverride && process.env[envOverride]) return process.env[envOverride]!;
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter), '/usr/sbin', '/usr/local/sbin', '/usr/local/bin', '/usr/bin', '/sbin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // next
    }
  }
  throw new Error(`tor-testnet: '${name}' not found (install the tor package: scripts/install-test-deps.sh)`);
}

/** Reserves `n` distinct free TCP ports on 127.0.0.1 (held open together, then released). */
async function freePorts(n: number): Promise<number[]> {
  const servers: net.Server[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const srv = net.createServer();
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(0, '127.0.0.1', () => resolve());
      });
      servers.push(srv);
    }
    return servers.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function tail(file: string, lines = 8): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Every process whose command line is `tor ... -f DIR/<node>/torrc` for this DIR. */
export function findNetworkTors(dir: string): { pid: number; node: string }[] {
  const abs = path.resolve(dir);
  const found: { pid: number; node: string }[] = [];
  const match = (pid: number, argv: string[]): void => {
    if (pid === process.pid || !argv[0] || !/(^|\/)tor$/.test(argv[0])) return;
    const i = argv.indexOf('-f');
    const torrc = i >= 0 ? argv[i + 1] : undefined;
    if (!torrc || path.dirname(path.dirname(torrc)) !== abs || path.basename(torrc) !== 'torrc') return;
    found.push({ pid, node: path.basename(path.dirname(torrc)) });
  };
  if (existsSync('/proc/self/cmdline')) {
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').filter(Boolean);
        match(Number(entry), argv);
      } catch {
        // gone
      }
    }
  } else {
    // BSD: ps prints the arguments separated by spaces (our paths contain none in practice).
    const ps = spawnSync('ps', ['-axww', '-o', 'pid=,command='], { encoding: 'utf8' });
    for (const line of (ps.stdout ?? '').split('\n')) {
      const m = /^\s*(\d+)\s+(.*)$/.exec(line);
      if (m) match(Number(m[1]), m[2]!.split(/\s+/));
    }
  }
  return found;
}

async function killAndWait(pids: number[], graceMs = 5000): Promise<void> {
  const targets = [...new Set(pids)].filter((p) => p > 1 && p !== process.pid);
  for (const pid of targets) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
  const deadline = Date.now() + graceMs;
  while (targets.some(processAlive) && Date.now() < deadline) await sleep(50);
  for (const pid of targets.filter(processAlive)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  const hardDeadline = Date.now() + 2000;
  while (targets.some(processAlive) && Date.now() < hardDeadline) await sleep(20);
}

/**
 * Stops every tor of the network in DIR: those in DIR/network.json and its pid files, if their
 * command line still points into DIR, and any other tor whose `-f` is DIR/<node>/torrc.
 */
export async function stopTorNetwork(dir: string): Promise<number[]> {
  const abs = path.resolve(dir);
  const running = findNetworkTors(abs);
  const pids = running.map((r) => r.pid);
  await killAndWait(pids);
  // Stragglers (a tor that was still starting when we looked).
  const again = findNetworkTors(abs).map((r) => r.pid);
  if (again.length) await killAndWait(again);
  await rm(path.join(abs, 'network.json'), { force: true });
  return [...new Set([...pids, ...again])];
}

const MARKER = '.tor-testnet';

/**
 * Keeps DIR/onion/hs (onion keys) and removes the rest of a previous run. Refuses a non-empty
 * directory that this script did not create (it would wipe it).
 */
async function resetDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const entries = readdirSync(dir);
  if (entries.length > 0 && !entries.includes(MARKER)) {
    throw new Error(`tor-testnet: ${dir} is not empty and was not made by tor-testnet; give an empty or new directory`);
  }
  await writeFile(path.join(dir, MARKER), 'a private Tor test network (scripts/tor-testnet); safe to delete when stopped\n');
  for (const entry of entries) {
    if (entry === MARKER) continue;
    if (entry === 'onion') continue;
    await rm(path.join(dir, entry), { recursive: true, force: true });
  }
  const onionDir = path.join(dir, 'onion');
  if (existsSync(onionDir)) {
    for (const entry of readdirSync(onionDir)) {
      if (entry !== 'hs') await rm(path.join(onionDir, entry), { recursive: true, force: true });
    }
  }
}

function run(cmd: string, args: string[], input?: string): string {
  const res = spawnSync(cmd, args, { input: input ?? '', encoding: 'utf8', timeout: 30_000 });
  if (res.status !== 0) {
    throw new Error(`tor-testnet: ${path.basename(cmd)} failed (${res.status ?? res.signal}): ${res.stderr || res.stdout}`);
  }
  return res.stdout;
}

function exitPolicy(): string[] {
  // Accept loopback, reject every other IPv4 block explicitly, then accept *4:* so that clients
  // consider these relays exits for host names (a final reject would make them refuse names).
  const blocks = ['0.0.0.0/2', '64.0.0.0/3', '96.0.0.0/4', '112.0.0.0/5', '120.0.0.0/6', '124.0.0.0/7', '126.0.0.0/8', '128.0.0.0/1'];
  return ['ExitPolicy accept 127.0.0.0/8:*', ...blocks.map((b) => `ExitPolicy reject ${b}:*`), 'ExitPolicy accept *4:*'];
}

interface Ports {
  authOr: number;
  authDir: number;
  relayOr: number[];
  socks: number;
  dns: number;
  control: number;
}

/** Thrown when a tor could not bind a port that was free a moment before (another process took it). */
class PortTakenError extends Error {}

/**
 * Starts the network and resolves once every onion answers through the client's SocksPort.
 * On failure every tor started is stopped and the error carries the tails of their logs.
 */
export async function startTorNetwork(options: TorNetworkOptions): Promise<TorNetwork> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(options);
    } catch (err) {
      if (!(err instanceof PortTakenError) || attempt >= 3) throw err;
      options.log?.(`tor-testnet: a port was taken meanwhile; starting again with new ports`);
    }
  }
}

async function startOnce(options: TorNetworkOptions): Promise<TorNetwork> {
  const t0 = Date.now();
  const dir = path.resolve(options.dir);
  const log = options.log ?? (() => {});
  const owner = options.owner ?? process.pid;
  const deadline = t0 + (options.readyTimeoutMs ?? 120_000);
  const onions = (options.onions ?? []).map((o) => {
    if (!/^[a-z0-9_-]+$/.test(o.name)) throw new Error(`tor-testnet: onion name must match [a-z0-9_-]+: ${o.name}`);
    const ports = o.ports ?? (o.targetPort ? [{ virtualPort: o.virtualPort ?? 25, targetPort: o.targetPort }] : []);
    if (ports.length === 0) throw new Error(`tor-testnet: onion ${o.name} has no target port`);
    return { name: o.name, ports };
  });
  if (new Set(onions.map((o) => o.name)).size !== onions.length) throw new Error('tor-testnet: duplicate onion names');
  const tor = findExecutable('tor', 'TOR');
  const gencert = findExecutable('tor-gencert', 'TOR_GENCERT');

  if (existsSync(dir)) await stopTorNetwork(dir);
  await resetDir(dir);

  const [authOr, authDir, r1, r2, r3, r4, socks, dns, control, spare] = await freePorts(10);
  const ports: Ports = { authOr: authOr!, authDir: authDir!, relayOr: [r1!, r2!, r3!, r4!], socks: socks!, dns: dns!, control: control! };
  const exitDns = options.exitDns ?? `127.0.0.1:${spare}`;
  if (!/^127\.\d+\.\d+\.\d+:\d+$/.test(exitDns)) throw new Error(`tor-testnet: exitDns must be 127.x.x.x:PORT, got ${exitDns}`);

  const defaults = path.join(dir, 'torrc-defaults');
  await writeFile(defaults, '# intentionally empty: nothing from the system tor configuration\n');
  await writeFile(path.join(dir, 'resolv.conf'), `nameserver ${exitDns}\n`);

  // Authority keys and fingerprints.
  const authDirPath = path.join(dir, 'auth');
  await mkdir(path.join(authDirPath, 'keys'), { recursive: true, mode: 0o700 });
  run(
    gencert,
    [
      '--create-identity-key',
      '--passphrase-fd',
      '0',
      '-m',
      '12',
      '-a',
      `127.0.0.1:${ports.authDir}`,
      '-i',
      path.join(authDirPath, 'keys', 'authority_identity_key'),
      '-s',
      path.join(authDirPath, 'keys', 'authority_signing_key'),
      '-c',
      path.join(authDirPath, 'keys', 'authority_certificate'),
    ],
    '\n',
  );
  const cert = await readFile(path.join(authDirPath, 'keys', 'authority_certificate'), 'utf8');
  const v3ident = /^fingerprint ([0-9A-F]{40})$/m.exec(cert)?.[1];
  if (!v3ident) throw new Error('tor-testnet: no fingerprint in the authority certificate');
  // --list-fingerprint never touches the network; still, it gets a placeholder private DirAuthority.
  const fpTorrc = path.join(authDirPath, 'torrc-fingerprint');
  await writeFile(
    fpTorrc,
    [
      'DirAuthority placeholder orport=1 no-v2 127.0.0.1:1 FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF',
      'TestingTorNetwork 1',
      'DisableNetwork 1',
      `DataDirectory ${authDirPath}`,
      'Nickname auth',
      'SocksPort 0',
      'Address 127.0.0.1',
      `ORPort 127.0.0.1:${ports.authOr}`,
      '',
    ].join('\n'),
  );
  const fpOut = run(tor, ['--defaults-torrc', defaults, '-f', fpTorrc, '--list-fingerprint', '--quiet']);
  const relayFp = /^auth ((?:[0-9A-F]{4} ?){10})/m.exec(fpOut)?.[1]?.replace(/ /g, '');
  if (!relayFp || relayFp.length !== 40) throw new Error(`tor-testnet: cannot read the authority fingerprint from: ${fpOut}`);
  const dirAuthority = `DirAuthority auth orport=${ports.authOr} no-v2 v3ident=${v3ident} 127.0.0.1:${ports.authDir} ${relayFp}`;

  const common = (node: string): string[] => [
    'TestingTorNetwork 1',
    dirAuthority,
    `__OwningControllerProcess ${owner}`,
    `DataDirectory ${path.join(dir, node)}`,
    `PidFile ${path.join(dir, node, 'tor.pid')}`,
    `Log notice file ${path.join(dir, node, 'notice.log')}`,
    `Nickname ${node}`,
    'RunAsDaemon 0',
    'SafeLogging 0',
    'ShutdownWaitLength 0',
    'OutboundBindAddress 127.0.0.1',
    'PathsNeededToBuildCircuits 0.25',
    'LearnCircuitBuildTimeout 0',
    'CircuitBuildTimeout 30',
    'UseEntryGuards 0',
    'Schedulers Vanilla',
  ];
  const relay = (node: string, orPort: number): string[] => [
    ...common(node),
    'SocksPort 0',
    'Address 127.0.0.1',
    `ORPort 127.0.0.1:${orPort}`,
    'AssumeReachable 1',
    `ContactInfo tor-testnet ${node}`,
    'ExitRelay 1',
    'ExitPolicyRejectPrivate 0',
    ...exitPolicy(),
    `ServerDNSResolvConfFile ${path.join(dir, 'resolv.conf')}`,
    'ServerDNSDetectHijacking 0',
    'ServerDNSTestAddresses',
    'ServerDNSAllowBrokenConfig 1',
  ];

  const children = new Map<string, ChildProcess>();
  const exited = new Map<string, number | string>();
  const stopAll = async (): Promise<void> => {
    await killAndWait([...children.values()].map((c) => c.pid ?? 0).concat(findNetworkTors(dir).map((r) => r.pid)));
  };
  const startNode = async (node: string, lines: string[]): Promise<void> => {
    const nodeDir = path.join(dir, node);
    await mkdir(nodeDir, { recursive: true, mode: 0o700 });
    const torrc = path.join(nodeDir, 'torrc');
    await writeFile(torrc, `${lines.join('\n')}\n`);
    const out = openSync(path.join(nodeDir, 'stdout.log'), 'a');
    try {
      const child = spawn(tor, ['--defaults-torrc', defaults, '-f', torrc], { detached: true, stdio: ['ignore', out, out] });
      child.on('exit', (code, signal) => exited.set(node, code ?? signal ?? 'exit'));
      child.on('error', (err) => exited.set(node, err.message));
      child.unref();
      children.set(node, child);
    } finally {
      closeSync(out);
    }
  };
  const check = (): void => {
    if (Date.now() > deadline) throw new Error('timed out');
    for (const [node, how] of exited) {
      throw new Error(`tor '${node}' exited early (${how}):\n${tail(path.join(dir, node, 'stdout.log'))}\n${tail(path.join(dir, node, 'notice.log'))}`);
    }
  };

  try {
    // The first vote ~4 s after start: valid-after = now + 8 s, vote = valid-after - (VoteDelay + DistDelay).
    const nowSec = Math.floor(Date.now() / 1000);
    const offset = nowSec % VOTING.initialInterval;
    await startNode('auth', [
      ...relay('auth', ports.authOr),
      `DirPort 127.0.0.1:${ports.authDir}`,
      'AuthoritativeDirectory 1',
      'V3AuthoritativeDirectory 1',
      `TestingV3AuthInitialVotingInterval ${VOTING.initialInterval}`,
      `TestingV3AuthInitialVoteDelay ${VOTING.voteDelay}`,
      `TestingV3AuthInitialDistDelay ${VOTING.distDelay}`,
      `TestingV3AuthVotingStartOffset ${offset}`,
      'V3AuthVotingInterval 10',
      'V3AuthVoteDelay 2',
      'V3AuthDistDelay 2',
      'V3AuthNIntervalsValid 2',
      'TestingDirAuthVoteGuard *',
      'TestingDirAuthVoteExit *',
      'TestingDirAuthVoteHSDir *',
      'TestingMinExitFlagThreshold 0',
    ]);
    for (const [i, node] of RELAY_NAMES.entries()) await startNode(node, relay(node, ports.relayOr[i]!));
    log(`tor-testnet: authority and ${RELAY_NAMES.length} relays started (${Date.now() - t0} ms)`);

    // Wait for a consensus that lists every relay as Running, Valid, HSDir and Exit.
    let listed = 0;
    for (;;) {
      check();
      listed = await countConsensusRelays(ports.authDir);
      if (listed >= 1 + RELAY_NAMES.length) break;
      await sleep(250);
    }
    const consensusMs = Date.now() - t0;
    log(`tor-testnet: consensus lists all ${listed} relays (${consensusMs} ms)`);

    for (const o of onions) await mkdir(path.join(dir, 'onion', 'hs', o.name), { recursive: true, mode: 0o700 });
    await startNode('onion', [
      ...common('onion'),
      'SocksPort 0',
      'FetchDirInfoEarly 1',
      ...onions.flatMap((o) => [
        `HiddenServiceDir ${path.join(dir, 'onion', 'hs', o.name)}`,
        ...o.ports.map((p) => `HiddenServicePort ${p.virtualPort} 127.0.0.1:${p.targetPort}`),
      ]),
    ]);
    await startNode('client', [
      ...common('client'),
      `SocksPort 127.0.0.1:${ports.socks} ExtendedErrors`,
      `DNSPort 127.0.0.1:${ports.dns}`,
      `ControlPort 127.0.0.1:${ports.control}`,
      'CookieAuthentication 1',
      'FetchDirInfoEarly 1',
      'UseMicrodescriptors 0',
    ]);

    const hostnames: Record<string, string> = {};
    for (const o of onions) {
      const file = path.join(dir, 'onion', 'hs', o.name, 'hostname');
      for (;;) {
        check();
        if (existsSync(file)) {
          const name = readFileSync(file, 'utf8').trim();
          if (name.endsWith('.onion')) {
            hostnames[o.name] = name;
            break;
          }
        }
        await sleep(100);
      }
    }

    // Wait until the client is bootstrapped, then until each onion answers through the SocksPort
    // (00, or 01 when the onion is up but nothing listens on its target yet).
    const clientLog = path.join(dir, 'client', 'notice.log');
    for (;;) {
      check();
      if (/Bootstrapped 100%/.test(tail(clientLog, 200))) break;
      await sleep(100);
    }
    log(`tor-testnet: client bootstrapped (${Date.now() - t0} ms)`);
    let attempt = 0;
    for (const o of onions) {
      const host = hostnames[o.name]!;
      const vport = o.ports[0]!.virtualPort;
      for (;;) {
        check();
        attempt++;
        const result = await probe(ports.socks, host, vport, `tor-testnet-probe-${attempt}`, Math.max(1000, Math.min(30_000, deadline - Date.now())));
        if (result === 'up') break;
        log(`tor-testnet: onion ${o.name} not yet reachable (${result})`);
        await sleep(250);
      }
      log(`tor-testnet: onion ${o.name} answers (${Date.now() - t0} ms)`);
    }

    const pids: Record<string, number> = {};
    for (const [node, child] of children) pids[node] = child.pid ?? 0;
    const description: TorNetworkDescription = {
      dir,
      socksPort: ports.socks,
      dnsPort: ports.dns,
      controlPort: ports.control,
      controlCookieFile: path.join(dir, 'client', 'control_auth_cookie'),
      onions: hostnames,
      onionPorts: Object.fromEntries(onions.map((o) => [o.name, Object.fromEntries(o.ports.map((p) => [String(p.virtualPort), p.targetPort]))])),
      authority: { orPort: ports.authOr, dirPort: ports.authDir },
      relayOrPorts: ports.relayOr,
      exitDns,
      owner,
      pids,
      readyMs: Date.now() - t0,
      consensusMs,
    };
    await writeFile(path.join(dir, 'network.json'), `${JSON.stringify(description, null, 2)}\n`);
    let stopped: Promise<void> | null = null;
    return {
      ...description,
      stop: () => {
        stopped ??= (async () => {
          await stopAll();
          await rm(path.join(dir, 'network.json'), { force: true });
        })();
        return stopped;
      },
    };
  } catch (err) {
    const logs = ALL_NODES.filter((n) => existsSync(path.join(dir, n, 'notice.log')))
      .map((n) => `--- ${n}/notice.log\n${tail(path.join(dir, n, 'notice.log'), 5)}`)
      .join('\n');
    await stopAll();
    const message = err instanceof Error ? err.message : String(err);
    const text = `tor-testnet: the network did not come up after ${Date.now() - t0} ms: ${message}\n${logs}`;
    const bindFailed = ALL_NODES.some((n) => /Address already in use/.test(tail(path.join(dir, n, 'stdout.log'), 50) + tail(path.join(dir, n, 'notice.log'), 50)));
    if (bindFailed) throw new PortTakenError(text, { cause: err });
    throw new Error(text, { cause: err });
  }
}

/** Number of relays in the authority's current consensus with Running, Valid, Exit and HSDir. */
function countConsensusRelays(dirPort: number): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port: dirPort, path: '/tor/status-vote/current/consensus', timeout: 2000 }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        resolve(0);
        return;
      }
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => {
        let n = 0;
        for (const m of body.matchAll(/^s (.*)$/gm)) {
          const flags = m[1]!.split(' ');
          if (['Running', 'Valid', 'Exit', 'HSDir'].every((f) => flags.includes(f))) n++;
        }
        resolve(n);
      });
      res.on('error', () => resolve(0));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

async function probe(socksPort: number, host: string, port: number, isolationKey: string, timeoutMs: number): Promise<string> {
  try {
    const sock = await openTorConnection({ socks: { host: '127.0.0.1', port: socksPort }, host, port, isolationKey, timeoutMs });
    sock.destroy();
    return 'up';
  } catch (err) {
    if (err instanceof TorConnectError && err.reply === 0x01) return 'up';
    return err instanceof TorConnectError ? `${err.code}${err.reply !== undefined ? ` ${err.reply.toString(16)}` : ''}` : String(err);
  }
}
