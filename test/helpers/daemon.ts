/** Starts the real `onionpost start` in a child process with a config in a temp dir. */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BIN, ROOT } from './cli.js';
import { freePort } from './ports.js';

/** A running `onionpost start` process. */
export interface DaemonProcess {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Sends SIGTERM and resolves with the exit code. */
  stop(): Promise<number | null>;
}

export interface Daemon extends DaemonProcess {
  dir: string;
  configFile: string;
  ports: { smtp: number; submission: number; submissions: number; imap: number; imaps: number };
  /** Stops (if running) and removes the temp dir. */
  cleanup(): Promise<void>;
}

export interface StartDaemonOptions {
  /** Extra arguments after `start` (e.g. --pidfile FILE). */
  args?: string[];
  /** Runs after the config is written and before the daemon starts (e.g. chmod the dir). */
  prepare?: (dir: string) => Promise<void>;
}

export async function startDaemon(extraToml = '', options: StartDaemonOptions = {}): Promise<Daemon> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-daemon-'));
  const ports = { smtp: await freePort(), submission: await freePort(), submissions: await freePort(), imap: await freePort(), imaps: await freePort() };
  const configFile = path.join(dir, 'onionpost.toml');
  await writeFile(
    configFile,
    `data_dir = "data"\ndomain = "localhost"\n${extraToml}\n` +
      `[smtp]\nport = ${ports.smtp}\n[submission]\nport = ${ports.submission}\ntls_port = ${ports.submissions}\n[imap]\nport = ${ports.imap}\ntls_port = ${ports.imaps}\n[log]\nlevel = "warn"\n`,
  );
  await options.prepare?.(dir);
  const daemon = await spawnDaemon(configFile, { args: options.args });
  return {
    dir,
    configFile,
    ports,
    ...daemon,
    cleanup: async () => {
      await daemon.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Runs `onionpost --config FILE start [args]` from the project root and resolves once its
 * stdout matches `ready` (default: the "onionpost is running" line), within 20 s. `env` is
 * added to this process's environment for the child.
 */
export async function spawnDaemon(configFile: string, options: { args?: string[]; ready?: RegExp; env?: NodeJS.ProcessEnv } = {}): Promise<DaemonProcess> {
  const ready = options.ready ?? /onionpost is running/;
  const child = spawn(process.execPath, [BIN, '--config', configFile, 'start', ...(options.args ?? [])], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(options.env ? { env: { ...process.env, ...options.env } } : {}),
  });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`daemon did not start in 20 s\nstdout: ${out}\nstderr: ${err}`)), 20_000);
    const check = (): void => {
      if (ready.test(out)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout!.on('data', check);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`daemon exited with ${code} before it was ready\nstdout: ${out}\nstderr: ${err}`));
    });
  });
  let stopped: Promise<number | null> | null = null;
  const stop = (): Promise<number | null> => {
    if (!stopped) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      stopped = exited;
    }
    return stopped;
  };
  return { child, stdout: () => out, stderr: () => err, stop };
}
