/** Config, users and log reading for tests that run whole onionpost daemons side by side. */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { UserDb } from '../../src/users/user-db.js';
import { freePort } from './ports.js';

export interface MailDaemonPorts {
  smtp: number;
  submission: number;
  submissions: number;
  imap: number;
  imaps: number;
}

/** One JSON log line of the daemon (pino). */
export interface LogLine {
  time: number;
  msg: string;
  [key: string]: unknown;
}

/**
 * Writes `<dir>/onionpost.toml` for `domain` with free ports for every listener and
 * `extraToml` (tables such as [tor], [queue], [delivery]) first, and adds the users.
 */
export async function prepareMailDaemon(
  dir: string,
  domain: string,
  users: Record<string, string>,
  extraToml: string,
): Promise<{ config: string; ports: MailDaemonPorts }> {
  await mkdir(path.join(dir, 'data'), { recursive: true, mode: 0o700 });
  const ports: MailDaemonPorts = { smtp: await freePort(), submission: await freePort(), submissions: await freePort(), imap: await freePort(), imaps: await freePort() };
  const config = path.join(dir, 'onionpost.toml');
  await writeFile(
    config,
    `data_dir = "data"\ndomain = "${domain}"\n${extraToml}\n` +
      `[smtp]\nport = ${ports.smtp}\n[submission]\nport = ${ports.submission}\ntls_port = ${ports.submissions}\n` +
      `[imap]\nport = ${ports.imap}\ntls_port = ${ports.imaps}\n[log]\nlevel = "info"\n`,
  );
  const db = new UserDb(path.join(dir, 'data', 'users.passwd'), { localDomains: [domain] });
  for (const [name, pw] of Object.entries(users)) await db.add(name, pw);
  return { config, ports };
}

/** The JSON log lines in a daemon's standard error. */
export function jsonLogLines(stderr: string): LogLine[] {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as LogLine);
}
