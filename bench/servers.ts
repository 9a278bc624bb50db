/**
 * The servers under test: the real onionpost daemon in its own process (so its memory can
 * be measured alone), and Dovecot through the test helper.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { freePort } from '../test/helpers/ports.js';
import { spawnBenchDaemon } from './lib/onionpost-daemon.js';

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
  const imapPort = await freePort();
  const smtpPort = await freePort();
  const { child, exited, stop } = await spawnBenchDaemon({ dir, domain: 'localhost', smtpPort, imapPort, usersFile, logLevel: 'warn', cpuProfDir: options.cpuProfDir });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: string) => (out += d));
  child.stderr.on('data', (d: string) => (err += d.length > 100_000 ? '' : d));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`onionpost did not start in 30 s\n${out}\n${err}`)), 30_000);
    child.stdout.on('data', () => {
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
  return {
    pid: child.pid!,
    imapPort,
    stderr: () => err,
    stop,
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
