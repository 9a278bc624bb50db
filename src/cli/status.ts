/**
 * `onionpost status`: is the daemon of this config's data dir running, and how is it doing:
 * listeners (with open connections where the listener can tell), the onion service, users,
 * outbound queue size, last reload. Live facts come from the daemon's status socket
 * (`<data_dir>/onionpost.sock`); users, queue and onion key are read from the data dir when
 * the daemon is not running.
 *
 * Exit codes (as LSB init scripts): 0 running, 3 not running, 4 cannot tell.
 */
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { ServerStatus } from '../server.js';
import { onionKeyDir, readOnionKey } from '../tor/onion-service.js';
import { UserDb } from '../users/user-db.js';
import { CliError, type CommandGroup } from './command.js';
import { queryStatus } from './status-socket.js';

export const STATUS_USAGE = `usage: onionpost status [--config FILE] [--json]

Shows whether the daemon of the config's data dir runs, its listeners, onion service,
users and queue. Exit code 0: running, 3: not running, 4: cannot tell.
`;

function duration(ms: number): string {
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d > 0 ? `${d}d ${h}h` : h > 0 ? `${h}h ${m}m` : m > 0 ? `${m}m ${s % 60}s` : `${s}s`;
}

function livePid(file: string): number | null {
  try {
    const pid = Number.parseInt(readFileSync(file, 'utf8').trim(), 10);
    if (!Number.isInteger(pid) || pid <= 0) return null;
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? Number.parseInt(readFileSync(file, 'utf8').trim(), 10) : null;
  }
}

const status: CommandGroup = async (args, ctx) => {
  let json = false;
  try {
    const { values } = parseArgs({ args, options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true });
    if (values.help) {
      ctx.io.stdout.write(STATUS_USAGE);
      return 0;
    }
    json = values.json ?? false;
  } catch (err) {
    throw new CliError(`status: ${(err as Error).message}\n\n${STATUS_USAGE}`, 64);
  }
  const config = ctx.config();
  const out = ctx.io.stdout;
  const answer = await queryStatus(config.dataDir);

  if (answer.kind === 'ok' && !(answer.status as { error?: string }).error) {
    const st = answer.status as ServerStatus;
    if (json) {
      out.write(`${JSON.stringify({ running: true, ...st }, null, 2)}\n`);
      return 0;
    }
    out.write(`onionpost is running (pid ${st.pid}, up ${duration(Date.now() - st.startedAt)})\n`);
    out.write(`  domain       ${st.domain}\n`);
    if (st.onion) {
      const o = st.onion;
      out.write(
        o.state === 'published'
          ? `  onion        ${o.address}: published through Tor (${o.control}) for ${duration(Date.now() - o.since)}\n`
          : `  onion        ${o.address}: NOT published (${o.state}): ${o.error ?? ''}\n`,
      );
    } else out.write(`  onion        not managed by onionpost (no key in ${onionKeyDir(st.dataDir)})\n`);
    for (const l of st.listeners) {
      const conns = l.connections === null ? '' : `  ${l.connections} connection${l.connections === 1 ? '' : 's'}`;
      out.write(`  ${l.name.padEnd(12)} ${`${l.host}:${l.port}`.padEnd(22)}${conns}\n`);
    }
    out.write(`  users        ${st.users}\n`);
    out.write(`  queue        ${st.queue === null ? 'no queue yet' : `${st.queue} message${st.queue === 1 ? '' : 's'}`}\n`);
    if (st.lastReload) out.write(`  last reload  ${new Date(st.lastReload.at).toISOString()} ${st.lastReload.ok ? 'ok' : 'FAILED'}: ${st.lastReload.message}\n`);
    out.write(`  data         ${st.dataDir}\n`);
    return 0;
  }

  // Not answering: find out what we can from the data dir.
  const pid = livePid(path.join(config.dataDir, 'onionpost.pid'));
  const users = new UserDb(config.users.file, { localDomains: config.localDomains }).list().length;
  let queue: number | null = null;
  try {
    queue = readdirSync(path.join(config.queue.dir, 'entries')).filter((n) => !n.startsWith('.')).length;
  } catch {
    queue = null;
  }
  let onion: string | null = null;
  try {
    onion = (await readOnionKey(onionKeyDir(config.dataDir)))?.hostname ?? null;
  } catch (err) {
    onion = `damaged key: ${(err as Error).message}`;
  }
  const code = pid !== null ? 4 : 3;
  if (json) {
    out.write(`${JSON.stringify({ running: pid !== null ? null : false, pid, domain: config.domain, onion, users, queue, dataDir: config.dataDir, error: answer.kind === 'error' ? answer.message : null }, null, 2)}\n`);
    return code;
  }
  if (pid !== null) {
    out.write(`onionpost seems to run (pid ${pid} holds ${path.join(config.dataDir, 'onionpost.pid')}) but does not answer on its status socket${answer.kind === 'error' ? `: ${answer.message}` : ''}\n`);
  } else {
    out.write(`onionpost is not running (data dir ${config.dataDir})\n`);
  }
  out.write(`  domain       ${config.domain}\n`);
  out.write(`  onion        ${onion ?? `not managed by onionpost (no key in ${onionKeyDir(config.dataDir)})`}\n`);
  out.write(`  users        ${users}\n`);
  out.write(`  queue        ${queue === null ? 'no queue yet' : `${queue} message${queue === 1 ? '' : 's'}`}\n`);
  return code;
};

export default status;
