/**
 * The servers of `npm run bench:smtp`: the real onionpost daemon in its own process, and
 * OpenSMTPD (when installed, and only as root) on loopback, delivering to Maildir.
 *
 * OpenSMTPD facts this relies on (Debian's opensmtpd 6.8):
 * - one smtpd per machine (queue, control socket and pid file are compiled-in paths): when
 *   one is already running, the bench leaves it alone and skips OpenSMTPD;
 * - it delivers only as real system users with a home (never as root): the bench creates a
 *   user of its own for the run (home in the bench's temp dir) and deletes it again; a user
 *   of that name it did not create makes it skip OpenSMTPD;
 * - it looks up every client's name before the greeting, which stalls without reachable
 *   DNS: it runs in a private mount namespace (`unshare -m`) where /etc/resolv.conf is a
 *   bind-mounted file saying `lookup file` (hosts file only);
 * - it ends a session after 100 messages unless `smtp limit max-mails N`.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { chmod, chown, mkdir, readdir, unlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { freePort } from '../../test/helpers/ports.js';
import { spawnBenchDaemon } from './onionpost-daemon.js';

export interface BenchServer {
  name: string;
  port: number;
  pid: number;
  /** The Maildir (folder with cur/ new/ tmp/) a recipient's messages end up in. */
  maildirOf(user: string): string;
  stop(): Promise<void>;
  /** CPU time used so far by the server's processes (user + system, children waited for), ms. */
  cpuMs(): number;
  /** Last lines of the server's stderr, for error messages. */
  log(): string;
}

function keepTail(max: number): { add: (s: string) => void; get: () => string } {
  let text = '';
  return {
    add: (s) => {
      text += s;
      if (text.length > max * 2) text = text.slice(-max);
    },
    get: () => text.slice(-max),
  };
}

/** Resolves once `port` answers with a 220 greeting (or rejects after timeoutMs). */
export async function waitForGreeting(port: number, timeoutMs: number, exited: () => string | null): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const why = exited();
    if (why !== null) throw new Error(why);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      let buf = '';
      const done = (v: boolean): void => {
        s.destroy();
        resolve(v);
      };
      s.setTimeout(3000, () => done(false));
      s.on('error', () => done(false));
      s.on('data', (d) => {
        buf += d.toString('latin1');
        if (buf.includes('\r\n')) {
          s.write('QUIT\r\n');
          done(buf.startsWith('220'));
        }
      });
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`no SMTP greeting on port ${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface OnionpostOptions {
  dir: string;
  domain: string;
  users: string[];
  /** Directory for `node --cpu-prof` output of the daemon. */
  cpuProfDir?: string;
}

/** Starts `onionpost start` (SMTP on a free port, IMAP on another, no submission, no Tor). */
export async function startOnionpost(options: OnionpostOptions): Promise<BenchServer> {
  const { dir, domain } = options;
  await mkdir(dir, { recursive: true });
  const usersFile = path.join(dir, 'users.passwd');
  // Inbound SMTP needs the user names only; nobody logs in, so the password field is locked.
  await writeFile(usersFile, options.users.map((u) => `${u}:!::::::\n`).join(''), { mode: 0o600 });
  const port = await freePort();
  const imapPort = await freePort();
  const { child, stop: stopDaemon } = await spawnBenchDaemon({
    dir,
    domain,
    smtpPort: port,
    imapPort,
    usersFile,
    smtpSettings: ['max_recipients = 100'],
    // The default log level (info: a line per message), as deployed; OpenSMTPD logs each
    // message too (-d, to the same kind of pipe). BENCH_SMTP_LOG_LEVEL overrides it.
    logLevel: process.env.BENCH_SMTP_LOG_LEVEL || 'info',
    cpuProfDir: options.cpuProfDir,
  });
  const err = keepTail(4000);
  let out = '';
  child.stdout.on('data', (d: string) => (out = (out + d).slice(-4000)));
  child.stderr.on('data', (d: string) => err.add(d));
  await waitForGreeting(port, 30_000, () => (child.exitCode !== null || child.signalCode !== null ? `onionpost exited (${child.exitCode ?? child.signalCode})\n${out}\n${err.get()}` : null));
  const dataDir = path.join(dir, 'data');
  return {
    name: 'onionpost',
    port,
    pid: child.pid!,
    cpuMs: () => cpuOf([child.pid!]),
    maildirOf: (user) => path.join(dataDir, 'mail', user),
    log: () => err.get(),
    async stop() {
      await stopDaemon();
    },
  };
}

/** The smtpd binary, or null when OpenSMTPD is not installed. */
export function findSmtpd(): string | null {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/usr/local/sbin'])) {
    if (!dir) continue;
    const p = path.join(dir, 'smtpd');
    if (existsSync(p)) return p;
  }
  return null;
}

/** Why OpenSMTPD cannot run here, or null when it can. */
export function opensmtpdUnavailable(): string | null {
  if (findSmtpd() === null) return 'not installed (Debian: apt-get install opensmtpd)';
  if (process.getuid?.() !== 0) return 'needs root (it delivers as a system user and binds its queue)';
  if (spawnSync('unshare', ['--version']).status !== 0) return 'needs unshare(1) for a private mount namespace';
  const running = smtpdPids();
  if (running.length > 0) return `an smtpd is already running (pid ${running.join(', ')}); only one fits on a machine`;
  return null;
}

/** Pids of the processes for which `match(pid)` holds (from /proc; none elsewhere). */
function pidsWhere(match: (pid: string) => boolean): number[] {
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  return entries.filter((e) => /^\d+$/.test(e) && match(e)).map(Number);
}

/** Pids of processes named smtpd (from /proc; Linux). */
function smtpdPids(): number[] {
  return pidsWhere((pid) => {
    try {
      return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'smtpd';
    } catch {
      return false; // gone
    }
  });
}

/** /proc/PID/stat fields after the command name (index 0 = state), or null. */
function procStat(pid: number | string): string[] | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // pid (comm) state ppid pgrp ...: comm may contain spaces, so split after the last ')'
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** Pids in process group `pgid` (from /proc). */
function groupPids(pgid: number): number[] {
  return pidsWhere((pid) => {
    const f = procStat(pid);
    return f !== null && Number(f[2]) === pgid;
  });
}

/** utime + stime + cutime + cstime of the processes, ms (Linux; 0 elsewhere). */
function cpuOf(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    const f = procStat(pid);
    if (f !== null) ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
  }
  return ticks * 10; // USER_HZ is 100 on Linux
}

function run(cmd: string, args: string[]): { ok: boolean; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

/** OpenSMTPD's spool (compiled in: PATH_SPOOL), and the parts of it that hold messages. */
const SPOOL = '/var/spool/smtpd';
const SPOOL_PARTS = ['queue', 'incoming', 'temporary'];

/**
 * The spool's message entries: queue/<bucket>/<msgid>, incoming/<msgid>, temporary/<file>
 * (paths relative to the spool). Unreadable parts are skipped.
 */
function spoolEntries(): Set<string> {
  const out = new Set<string>();
  const list = (rel: string): string[] => {
    try {
      return readdirSync(path.join(SPOOL, rel));
    } catch {
      return [];
    }
  };
  for (const bucket of list('queue')) for (const id of list(`queue/${bucket}`)) out.add(`queue/${bucket}/${id}`);
  for (const id of list('incoming')) out.add(`incoming/${id}`);
  for (const f of list('temporary')) out.add(`temporary/${f}`);
  return out;
}

/** Whether a spool entry (a file, or a directory of envelope and message files) is the bench's. */
function isBenchEntry(rel: string, domain: string): boolean {
  const markers = [`smtpname: ${domain}\n`, `\tby ${domain} (OpenSMTPD)`];
  const full = path.join(SPOOL, rel);
  let files: string[];
  try {
    files = statSync(full).isDirectory() ? readdirSync(full).map((f) => path.join(full, f)) : [full];
  } catch {
    return false;
  }
  for (const f of files) {
    try {
      const head = readFileSync(f).subarray(0, 4096).toString('latin1');
      if (markers.some((m) => head.includes(m))) return true;
    } catch {
      // unreadable: not ours to judge
    }
  }
  return false;
}

/**
 * After smtpd stopped: removes what a run cut short left in the spool (messages accepted but
 * not delivered yet), which the next smtpd on this machine would otherwise try to deliver.
 * Only entries that appeared during the run and carry the bench's domain are removed.
 */
function removeBenchSpool(before: Set<string>, domain: string): number {
  let removed = 0;
  const ids = new Set<string>();
  const fresh = [...spoolEntries()].filter((rel) => !before.has(rel) && SPOOL_PARTS.includes(rel.split('/')[0]!));
  const remove = (rel: string): void => {
    try {
      rmSync(path.join(SPOOL, rel), { recursive: true, force: true });
      ids.add(path.basename(rel));
      removed++;
    } catch {
      // leave it
    }
  };
  for (const rel of fresh) if (!rel.startsWith('temporary/') && isBenchEntry(rel, domain)) remove(rel);
  // temporary/<msgid>: a message being written when smtpd stopped, often still empty.
  for (const rel of fresh) if (rel.startsWith('temporary/') && (ids.has(path.basename(rel)) || isBenchEntry(rel, domain))) remove(rel);
  return removed;
}

export interface OpensmtpdOptions {
  dir: string;
  domain: string;
  /** System user that receives the mail (created for the run, deleted at stop). */
  user: string;
  maxMails: number;
}

/** The comment (GECOS) of the user the bench creates: how a leftover is recognised. */
const USER_COMMENT = 'onionpost bench (temporary)';

/** Starts OpenSMTPD; call opensmtpdUnavailable() first. */
export async function startOpensmtpd(options: OpensmtpdOptions): Promise<BenchServer> {
  const { dir, domain, user } = options;
  const smtpd = findSmtpd()!;
  await mkdir(dir, { recursive: true });
  // The delivery runs as `user`, whose home is below `dir`: every level must be traversable.
  await chmod(dir, 0o711);
  const home = path.join(dir, 'home');

  // A user of that name that this bench did not make is left alone (its mail too).
  const existing = run('getent', ['passwd', user]);
  if (existing.ok) {
    if (existing.out.split(':')[4] !== USER_COMMENT) throw new Error(`a user named ${user} exists and is not the bench's; OpenSMTPD needs one of its own`);
    // Left by a bench run that was killed: its home (in that run's temp dir) is gone.
    const del = run('userdel', [user]);
    if (!del.ok) throw new Error(`userdel ${user} (left by an earlier run) failed: ${del.out}`);
  }
  const add = run('useradd', ['--home-dir', home, '--no-create-home', '--shell', '/bin/sh', '--user-group', '--comment', USER_COMMENT, user]);
  if (!add.ok) throw new Error(`useradd ${user} failed: ${add.out}`);
  let created = true;
  const userHome = home;
  await mkdir(home, { mode: 0o700 });
  await chown(home, Number(run('id', ['-u', user]).out), Number(run('id', ['-g', user]).out));
  const removeUser = (): void => {
    if (created) {
      const del = run('userdel', [user]);
      if (!del.ok) console.error(`bench: userdel ${user} failed: ${del.out}`);
      created = false;
    }
  };

  try {
    const port = await freePort();
    const aliases = path.join(dir, 'aliases');
    await writeFile(aliases, '# bench: no aliases\npostmaster: root\n', { mode: 0o644 });
    const conf = path.join(dir, 'smtpd.conf');
    await writeFile(
      conf,
      [
        `table aliases file:${aliases}`,
        `smtp limit max-mails ${options.maxMails}`,
        `listen on 127.0.0.1 port ${port} hostname ${domain}`,
        'action "local" maildir "~/mail" alias <aliases>',
        `match from any for domain "${domain}" action "local"`,
        '',
      ].join('\n'),
      { mode: 0o644 },
    );
    const check = run(smtpd, ['-n', '-f', conf]);
    if (!check.ok) throw new Error(`smtpd -n rejected the config: ${check.out}`);
    const resolv = path.join(dir, 'resolv.conf');
    await writeFile(resolv, 'lookup file\n', { mode: 0o644 });

    const spoolBefore = spoolEntries();
    // A private mount namespace with our resolv.conf; its own process group, so that
    // every smtpd process it forks can be found (and ended) by that group at stop.
    const child: ChildProcess = spawn(
      'unshare',
      ['--mount', '--propagation', 'private', '--', 'sh', '-c', 'mount --bind "$0" /etc/resolv.conf && exec "$1" -d -f "$2"', resolv, smtpd, conf],
      { stdio: ['ignore', 'ignore', 'pipe'], detached: true },
    );
    const err = keepTail(process.env.BENCH_SMTP_DEBUG ? 20_000_000 : 4000);
    child.stderr!.setEncoding('utf8').on('data', (d: string) => err.add(d));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const pgid = child.pid!;
    const stop = async (): Promise<void> => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
      // Its privilege-separated children normally leave with it; make sure.
      for (let i = 0; i < 50 && groupPids(pgid).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
      const left = groupPids(pgid);
      if (left.length > 0) {
        try {
          process.kill(-pgid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
        for (let i = 0; i < 50 && groupPids(pgid).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
      }
      const removed = removeBenchSpool(spoolBefore, domain);
      if (removed > 0) console.error(`bench: removed ${removed} undelivered bench messages from OpenSMTPD's spool`);
    };
    try {
      await waitForGreeting(port, 20_000, () => (child.exitCode !== null || child.signalCode !== null ? `smtpd exited (${child.exitCode ?? child.signalCode})\n${err.get()}` : null));
    } catch (e) {
      await stop();
      throw e;
    }
    return {
      name: 'OpenSMTPD',
      port,
      pid: child.pid!,
      // Every smtpd process (and, through their cutime, the delivery processes they waited for).
      cpuMs: () => cpuOf(groupPids(pgid)),
      maildirOf: () => path.join(userHome, 'mail'),
      log: () => err.get(),
      async stop() {
        await stop();
        removeUser();
      },
    };
  } catch (e) {
    removeUser();
    throw e;
  }
}

/** Messages in a Maildir (new/ + cur/); 0 when it does not exist yet. */
export async function countMaildir(maildir: string): Promise<number> {
  let n = 0;
  for (const sub of ['new', 'cur']) {
    try {
      n += (await readdir(path.join(maildir, sub))).length;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  return n;
}

/** Removes the messages of a Maildir (new/ and cur/), for servers that keep no index of it. */
export async function emptyMaildir(maildir: string): Promise<void> {
  for (const sub of ['new', 'cur']) {
    let names: string[] = [];
    try {
      names = await readdir(path.join(maildir, sub));
    } catch {
      continue;
    }
    for (const n of names) await unlink(path.join(maildir, sub, n)).catch(() => undefined);
  }
}

/** Waits until the Maildir holds `count` messages; resolves with the time it happened (performance.now()). */
export async function waitForMaildir(maildir: string, count: number, timeoutMs: number): Promise<{ at: number; count: number }> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const n = await countMaildir(maildir);
    const now = performance.now();
    if (n >= count) return { at: now, count: n };
    if (now > deadline) return { at: now, count: n };
    await new Promise((r) => setTimeout(r, 5));
  }
}
