/**
 * The real onionpost daemon as the benchmarks run it: `onionpost --config FILE start` in its own
 * process (so that its memory and CPU time can be measured alone), with a config in `dir`:
 * data dir `dir/data`, SMTP and plain IMAP on the given ports, no submission, no TLS
 * listeners, no Tor.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';

/** Project root (dist/bench/lib -> root). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const BIN = path.join(ROOT, 'bin', 'onionpost.js');

export interface BenchDaemonOptions {
  dir: string;
  domain: string;
  smtpPort: number;
  imapPort: number;
  usersFile: string;
  logLevel: string;
  /** More lines for the [smtp] section ("max_recipients = 100"). */
  smtpSettings?: string[];
  /** Directory for `node --cpu-prof` output of the daemon. */
  cpuProfDir?: string;
}

export interface BenchDaemon {
  /** Its stdout and stderr are utf8 text streams, for the caller to read. */
  child: ChildProcessByStdio<null, Readable, Readable>;
  /** Resolves with the exit code when the process has exited. */
  exited: Promise<number | null>;
  /** SIGTERM (SIGKILL after 20 s); resolves with the exit code. */
  stop(): Promise<number | null>;
}

/** Writes `dir/onionpost.toml` and starts the daemon; does not wait for it to be ready. */
export async function spawnBenchDaemon(options: BenchDaemonOptions): Promise<BenchDaemon> {
  const { dir } = options;
  await mkdir(dir, { recursive: true });
  const configFile = path.join(dir, 'onionpost.toml');
  await writeFile(
    configFile,
    [
      'data_dir = "data"',
      `domain = ${JSON.stringify(options.domain)}`,
      '[smtp]',
      `port = ${options.smtpPort}`,
      ...(options.smtpSettings ?? []),
      '[submission]',
      'port = 0',
      'tls_port = 0',
      '[imap]',
      `port = ${options.imapPort}`,
      'tls_port = 0',
      '[users]',
      `file = ${JSON.stringify(options.usersFile)}`,
      '[log]',
      `level = ${JSON.stringify(options.logLevel)}`,
      '[tor]',
      'control = ""',
      '',
    ].join('\n'),
  );
  const nodeArgs = options.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${options.cpuProfDir}`] : [];
  const child = spawn(process.execPath, [...nodeArgs, BIN, '--config', configFile, 'start'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let stopping: Promise<number | null> | null = null;
  const stop = (): Promise<number | null> => {
    stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    })();
    return stopping;
  };
  return { child, exited, stop };
}
