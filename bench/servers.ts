/**
 * The servers under test: the real onionpost daemon in its own process (so its memory can
 * be measured alone), and Dovecot through the test helper.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../test/helpers/ports.js';

/** Project root (dist/bench -> root). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = path.join(ROOT, 'bin', 'onionpost.js');

export interface Onionpost {
  pid: number;
  imapPort: number;
  stop(): Promise<number | null>;
  stderr(): string;
}

/**
 * Starts `onionpost start` with a config in `dir` (data dir `dir/data`, users file
 * `usersFile`, Maildirs `dir/data/mail/%u`); only SMTP and plain IMAP listen.
 */
export async function startOnionpost(dir: string, usersFile: string, options: { cpuProfDir?: string } = {}): Promise<Onionpost> {
  await mkdir(dir, { recursive: true });
  const imapPort = await freePort();
  const smtpPort = await freePort();
  const configFile = path.join(dir, 'onionpost.toml');
  await writeFile(
    configFile,
    [
      'data_dir = "data"',
      'domain = "localhost"',
      '[smtp]',
      `port = ${smtpPort}`,
      '[submission]',
      'port = 0',
      'tls_port = 0',
      '[imap]',
      `port = ${imapPort}`,
      'tls_port = 0',
      '[users]',
      `file = ${JSON.stringify(usersFile)}`,
      '[log]',
      'level = "warn"',
      '[tor]',
      'control = ""',
      '',
    ].join('\n'),
  );
  const nodeArgs = options.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${options.cpuProfDir}`] : [];
  const child: ChildProcess = spawn(process.execPath, [...nodeArgs, BIN, '--config', configFile, 'start'], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d.length > 100_000 ? '' : d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`onionpost did not start in 30 s\n${out}\n${err}`)), 30_000);
    child.stdout!.on('data', () => {
      if (out.includes('onionpost is running')) {
        clearTimeout(timer);
        resolve();
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`onionpost exited with ${code} before it was ready\n${out}\n${err}`));
    });
  });
  let stopping: Promise<number | null> | null = null;
  return {
    pid: child.pid!,
    imapPort,
    stderr: () => err,
    stop: () => {
      stopping ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
        const code = await exited;
        clearTimeout(timer);
        return code;
      })();
      return stopping;
    },
  };
}

export interface Memory {
  /** Resident set size, bytes. */
  rss: number;
  /** Proportional set size (shared pages divided among their users), bytes; null where unknown. */
  pss: number | null;
}

/** RSS (and PSS on Linux) of a set of processes, summed. */
export function memoryOf(pids: number[]): Memory {
  let rss = 0;
  let pss: number | null = 0;
  if (pids.length === 0) return { rss: 0, pss: 0 };
  for (const pid of pids) {
    const rollup = `/proc/${pid}/smaps_rollup`;
    const status = `/proc/${pid}/status`;
    try {
      if (existsSync(status)) {
        const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(status, 'utf8'));
        rss += m ? Number(m[1]) * 1024 : 0;
      } else {
        const r = spawnSync('ps', ['-o', 'rss=', '-p', String(pid)], { encoding: 'utf8' });
        rss += Number(r.stdout.trim() || 0) * 1024;
      }
      if (pss !== null && existsSync(rollup)) {
        const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(rollup, 'utf8'));
        pss += m ? Number(m[1]) * 1024 : 0;
      } else {
        pss = null;
      }
    } catch {
      // the process just went away
    }
  }
  return { rss, pss };
}
