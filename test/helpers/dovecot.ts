/**
 * Starts a real Dovecot (`dovecot -F`) on a loopback port with its own config, run dir and
 * log in a temp dir, serving a Maildir tree that onionpost also serves (never both at once).
 *
 * - passdb and userdb are passwd-file on the same users file onionpost writes (our
 *   `{ARGON2ID}` / `{SHA512-CRYPT}` hashes verify in Dovecot); uid, gid and home come from
 *   `override_fields`, since our files leave them empty.
 * - `mail_location = maildir:<mailRoot>/%u` (Maildir++ layout, control files and Dovecot's
 *   own index files in the Maildir, as a stock Dovecot keeps them), IMAP separator `/` and
 *   the special-use folders onionpost creates, so LIST looks the same from both servers.
 * - Dovecot refuses to access mail as root. Run as root (as the tests and CI do), its mail
 *   processes run as `nobody`: start() hands the Maildir tree to that account (and lets it
 *   through the parent directories), stop() gives it back to us. Run as another user,
 *   everything runs as that user and nothing is chowned.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, chown, lstat, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './ports.js';
import { waitFor } from './wait-for.js';

export interface DovecotOptions {
  /** Directory holding one Maildir per user: `mail_location = maildir:<mailRoot>/%u`. */
  mailRoot: string;
  /** Dovecot passwd-file (the users file onionpost writes). */
  usersFile: string;
  /** Upper bound on concurrent IMAP sessions (process and per-user limits). Default 100. */
  maxConnections?: number;
  /** Extra lines for dovecot.conf (appended last). */
  extraConfig?: string;
}

export interface Dovecot {
  /** IMAP port on 127.0.0.1 (plain; LOGIN allowed). */
  port: number;
  /** The temp dir with dovecot.conf, run/, dovecot.log. */
  dir: string;
  /** The master process. */
  pid: number;
  /** Everything Dovecot logged so far. */
  log(): string;
  /** Log lines that mean trouble (errors, warnings, panics, corrupted files). */
  problems(): string[];
  /** pids of the per-session `imap` processes right now. */
  imapPids(): number[];
  /** Stops Dovecot and waits for every process of it; gives the Maildir tree back. */
  stop(): Promise<void>;
  /** stop(), then removes the temp dir (not the Maildir). */
  cleanup(): Promise<void>;
}

/** The account Dovecot's mail processes run as. */
export interface MailAccount {
  uid: number;
  gid: number;
  name: string;
  group: string;
}

/**
 * Why Dovecot cannot be used here (null when it can): both `dovecot` and `doveadm` must run
 * and Dovecot's `imap` binary must be installed.
 */
export function dovecotMissing(): string | null {
  const env = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' };
  const version = spawnSync('dovecot', ['--version'], { env, encoding: 'utf8', timeout: 10_000 });
  if (version.error || version.status !== 0) return 'dovecot is not installed (scripts/install-test-deps.sh installs dovecot-imapd)';
  const pw = spawnSync('doveadm', ['pw', '-l'], { env, encoding: 'utf8', timeout: 10_000 });
  if (pw.error || pw.status !== 0) return 'doveadm is not installed (package dovecot-core)';
  const conf = spawnSync('dovecot', ['-c', '/dev/null', 'config', '-h', 'libexec_dir'], { env, encoding: 'utf8', timeout: 10_000 });
  const libexec = conf.status === 0 ? conf.stdout.trim() : '';
  if (libexec !== '' && !existsSync(path.join(libexec, 'imap'))) return `Dovecot's imap binary is missing in ${libexec} (package dovecot-imapd)`;
  return null;
}

/** Dovecot's version string, e.g. "2.3.19.1 (9b53102964)". */
export function dovecotVersion(): string {
  const r = spawnSync('dovecot', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}

function isRoot(): boolean {
  return process.getuid?.() === 0;
}

function groupName(gid: number): string {
  try {
    for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[2] === String(gid)) return f[0];
    }
  } catch {
    // no /etc/group: ask id(1)
  }
  const r = spawnSync('id', ['-gn'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : String(gid);
}

function accountByName(name: string): MailAccount | null {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[0] === name && /^\d+$/.test(f[2] ?? '') && /^\d+$/.test(f[3] ?? '')) {
        return { name, uid: Number(f[2]), gid: Number(f[3]), group: groupName(Number(f[3])) };
      }
    }
  } catch {
    // no /etc/passwd: fall through
  }
  return null;
}

/** `nobody` when we are root, else ourselves. */
export function mailAccount(): MailAccount {
  if (isRoot()) return accountByName('nobody') ?? { name: 'nobody', uid: 65534, gid: 65534, group: 'nogroup' };
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  return { name: os.userInfo().username, uid, gid, group: groupName(gid) };
}

/** chown -R (never following symlinks). */
export async function chownTree(root: string, uid: number, gid: number): Promise<void> {
  const walk = async (p: string): Promise<void> => {
    const st = await lstat(p);
    if (st.uid !== uid || st.gid !== gid) await chown(p, uid, gid).catch(() => undefined);
    if (st.isDirectory()) await Promise.all((await readdir(p)).map((n) => walk(path.join(p, n))));
  };
  if (existsSync(root)) await walk(root);
}

/**
 * Lets everybody traverse (not list) each directory from `dir` up to the temp dir; above it
 * (or outside it) directories must already allow that: we do not loosen them.
 */
async function openPath(dir: string): Promise<void> {
  const top = path.resolve(os.tmpdir());
  for (let d = path.resolve(dir); d !== path.dirname(d); d = path.dirname(d)) {
    const st = await stat(d).catch(() => null);
    if (!st || (st.mode & 0o001) !== 0) continue;
    if (d.startsWith(top + path.sep)) await chmod(d, (st.mode & 0o7777) | 0o001);
    else throw new Error(`Dovecot's mail processes (user nobody) cannot reach ${dir}: ${d} is not searchable by others (chmod o+x it, or use a Maildir under ${top})`);
  }
}

function processTable(): Array<{ pid: number; ppid: number; comm: string }> {
  const r = spawnSync('ps', ['-A', '-o', 'pid=,ppid=,comm='], { encoding: 'utf8' });
  if (r.status !== 0) return [];
  return r.stdout
    .split('\n')
    .map((l) => /^\s*(\d+)\s+(\d+)\s+(.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ pid: Number(m[1]), ppid: Number(m[2]), comm: m[3].trim() }));
}

/** Every process below `pid` (children, grandchildren...). */
function descendants(pid: number): Array<{ pid: number; comm: string }> {
  const table = processTable();
  const out: Array<{ pid: number; comm: string }> = [];
  const queue = [pid];
  while (queue.length > 0) {
    const p = queue.shift()!;
    for (const row of table) {
      if (row.ppid === p) {
        out.push({ pid: row.pid, comm: row.comm });
        queue.push(row.pid);
      }
    }
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Resolves when a connection to 127.0.0.1:port gets an IMAP greeting. */
function greets(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = '';
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(2000, () => done(false));
    s.on('error', () => done(false));
    s.on('data', (d) => {
      buf += d.toString('latin1');
      if (buf.includes('\r\n')) done(buf.startsWith('* OK'));
    });
  });
}

function configText(o: { dir: string; port: number; mailRoot: string; usersFile: string; account: MailAccount; max: number }): string {
  const { dir, account } = o;
  const root = isRoot();
  // The runtime settings scale with the session limit; the fd limit Dovecot checks at start
  // is the one the caller's process has.
  return [
    'protocols = imap',
    'listen = 127.0.0.1',
    'ssl = no',
    `base_dir = ${path.join(dir, 'run')}`,
    `state_dir = ${path.join(dir, 'state')}`,
    `log_path = ${path.join(dir, 'dovecot.log')}`,
    `info_log_path = ${path.join(dir, 'dovecot.log')}`,
    'disable_plaintext_auth = no',
    'auth_mechanisms = plain login',
    `first_valid_uid = ${account.uid}`,
    `first_valid_gid = ${account.gid}`,
    `mail_uid = ${account.uid}`,
    `mail_gid = ${account.gid}`,
    `mail_location = maildir:${o.mailRoot}/%u`,
    // Dovecot's stock settings otherwise (fsync, index files in the Maildir, IDLE checks).
    // auth and anvil serve every login process at once (imap-login + imap-urlauth-login).
    `default_client_limit = ${Math.max(1000, 2 * (o.max + 20) + 100)}`,
    `default_process_limit = ${Math.max(100, o.max + 20)}`,
    ...(root
      ? []
      : [
          // Not root: every service runs as us, without chroot.
          `default_internal_user = ${account.name}`,
          `default_internal_group = ${account.group}`,
          `default_login_user = ${account.name}`,
          'service anvil {\n  chroot =\n}',
          'service imap-login {\n  chroot =\n}',
        ]),
    'namespace inbox {',
    '  inbox = yes',
    '  separator = /',
    '  mailbox Sent {\n    special_use = \\Sent\n  }',
    '  mailbox Drafts {\n    special_use = \\Drafts\n  }',
    '  mailbox Trash {\n    special_use = \\Trash\n  }',
    '  mailbox Junk {\n    special_use = \\Junk\n  }',
    '  mailbox Archive {\n    special_use = \\Archive\n  }',
    '}',
    'passdb {',
    '  driver = passwd-file',
    `  args = ${o.usersFile}`,
    '}',
    'userdb {',
    '  driver = passwd-file',
    `  args = ${o.usersFile}`,
    `  override_fields = uid=${account.uid} gid=${account.gid} home=${path.join(dir, 'home')}/%u`,
    '}',
    // The auth process reads the users file; run it as us so the file can stay private.
    ...(root ? ['service auth {\n  user = root\n}'] : []),
    'service imap-login {',
    '  inet_listener imap {',
    '    address = 127.0.0.1',
    `    port = ${o.port}`,
    '  }',
    '  inet_listener imaps {',
    '    port = 0',
    '  }',
    `  process_limit = ${o.max + 20}`,
    '}',
    'service imap {',
    `  process_limit = ${o.max + 20}`,
    '}',
    'protocol imap {',
    `  mail_max_userip_connections = ${o.max + 20}`,
    '}',
    '',
  ].join('\n');
}

export async function startDovecot(options: DovecotOptions): Promise<Dovecot> {
  const reason = dovecotMissing();
  if (reason) throw new Error(reason);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-dovecot-'));
  const account = mailAccount();
  const me = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
  const mailRoot = path.resolve(options.mailRoot);
  let child: ChildProcess | null = null;
  let handedOver = false;
  const giveBack = async (): Promise<void> => {
    if (handedOver) {
      handedOver = false;
      await chownTree(mailRoot, me.uid, me.gid);
    }
  };
  try {
    for (const d of ['run', 'state', 'home']) await mkdir(path.join(dir, d), { mode: 0o755 });
    await mkdir(mailRoot, { recursive: true });
    if (isRoot()) {
      await chown(path.join(dir, 'home'), account.uid, account.gid);
      await openPath(dir);
      await openPath(mailRoot);
      await chownTree(mailRoot, account.uid, account.gid);
      handedOver = true;
    }
    const port = await freePort();
    const max = options.maxConnections ?? 100;
    const conf = path.join(dir, 'dovecot.conf');
    await writeFile(conf, configText({ dir, port, mailRoot, usersFile: path.resolve(options.usersFile), account, max }) + (options.extraConfig ?? ''));
    const logFile = path.join(dir, 'dovecot.log');
    const readLog = (): string => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');

    const proc = spawn('dovecot', ['-F', '-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    let output = '';
    proc.stdout!.setEncoding('utf8').on('data', (d: string) => (output += d));
    proc.stderr!.setEncoding('utf8').on('data', (d: string) => (output += d));
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.once('error', (err) => (output += String(err)));
    await waitFor('Dovecot to greet on its IMAP port', async () => {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        throw new Error(`dovecot exited (${proc.exitCode ?? proc.signalCode}): ${output}\n${readLog()}`);
      }
      return greets(port);
    }, 15_000);
    const pid = proc.pid!;

    let stopping: Promise<void> | null = null;
    const stop = (): Promise<void> => {
      stopping ??= (async () => {
        const procs = descendants(pid);
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
        // The master stops its children; make sure none outlives it (they would hold the Maildir).
        const left = () => procs.filter((p) => alive(p.pid));
        await waitFor('Dovecot processes to exit', async () => left().length === 0, 5000).catch(() => {
          for (const p of left()) {
            try {
              process.kill(p.pid, 'SIGKILL');
            } catch {
              // gone meanwhile
            }
          }
        });
        await giveBack();
      })();
      return stopping;
    };

    return {
      port,
      dir,
      pid,
      log: readLog,
      problems: () =>
        readLog()
          .split('\n')
          .filter((l) => /(Error|Warning|Panic|Fatal):|[Cc]orrupt|[Bb]roken/.test(l) && !/master: Warning: Killed with signal 15/.test(l)),
      imapPids: () =>
        descendants(pid)
          .filter((p) => p.comm === 'imap')
          .map((p) => p.pid),
      stop,
      cleanup: async () => {
        await stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    if (child && child.exitCode === null && child.signalCode === null) {
      const c = child;
      const gone = new Promise<void>((resolve) => c.once('exit', () => resolve()));
      c.kill('SIGTERM');
      await gone;
    }
    await giveBack();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
