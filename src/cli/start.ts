/**
 * `onionpost start`: runs the server in the foreground until SIGTERM/SIGINT; SIGHUP reloads.
 *
 * Lifecycle
 * - One daemon per data dir (`<data_dir>/onionpost.pid`), plus `--pidfile FILE` if asked.
 * - As root with `[daemon] user`: binds every listener, gives the data dir to that user,
 *   then switches to it for good (supplementary groups from /etc/group, gid, uid), before
 *   anything talks to Tor or reads mail.
 * - The onion service in `<data_dir>/onion/` is published through Tor's control port; when
 *   Tor cannot be reached that is logged loudly and retried in the background.
 * - `<data_dir>/onionpost.sock` answers `onionpost status`.
 * - SIGHUP: OnionpostServer.reload(). SIGTERM/SIGINT: stop accepting, let SMTP transactions
 *   finish (up to 10 s), BYE to IMAP clients, remove the onion, exit 0; a second signal or
 *   30 s exits at once with 1.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createLogger } from '../log/logger.js';
import { OnionpostServer } from '../server.js';
import { CliError, type CommandGroup } from './command.js';
import { PidFile } from './instance-lock.js';
import { chownTree, configuredAccount, dropPrivileges } from './privileges.js';
import { serveStatus } from './status-socket.js';

/** Longest graceful stop before the process exits anyway (SMTP gives transactions 10 s). */
const STOP_LIMIT_MS = 30_000;

function parseStartArgs(args: string[]): { pidfile: string | null } {
  try {
    const { values } = parseArgs({ args, options: { pidfile: { type: 'string' } }, strict: true, allowPositionals: false });
    return { pidfile: values.pidfile ? path.resolve(values.pidfile) : null };
  } catch (err) {
    throw new CliError(`start: ${(err as Error).message}\nusage: onionpost start [--config FILE] [--pidfile FILE]`, 64);
  }
}

const start: CommandGroup = async (args, ctx) => {
  const { pidfile } = parseStartArgs(args);
  const config = ctx.config();
  const logger = createLogger(config.log.level, { format: config.log.format });
  const account = configuredAccount(config.daemon);
  const isRoot = process.getuid?.() === 0;
  // Until the real handler is installed, a SIGHUP (e.g. logrotate) must not kill the start.
  const earlyHup = (): void => logger.warn('SIGHUP while starting: ignored');
  process.on('SIGHUP', earlyHup);
  try {
    mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new CliError(`cannot create the data dir ${config.dataDir}: ${(err as Error).message} (check data_dir in the config)`, 73);
  }
  const locks = [PidFile.acquire(path.join(config.dataDir, 'onionpost.pid'), `the data dir ${config.dataDir}`)];
  const releaseLocks = (): void => locks.splice(0).forEach((l) => l.release());
  const server = new OnionpostServer(config, logger);
  let listening;
  try {
    if (pidfile) locks.push(PidFile.acquire(pidfile, `the pidfile`));
    listening = await server.start({
      afterListen: () => {
        if (account && isRoot) {
          const changed = chownTree(config.dataDir, account.uid, account.gid);
          dropPrivileges(account);
          logger.info({ user: account.name, uid: account.uid, gid: account.gid, chowned: changed }, 'switched to the daemon user');
        } else if (account && process.getuid?.() !== account.uid) {
          logger.warn({ user: account.name }, '[daemon] user is set but onionpost was not started as root: cannot switch users; running as the current user');
        } else if (isRoot) {
          logger.warn('running as root: set [daemon] user in the config so that onionpost drops privileges after binding its ports');
        }
      },
    });
  } catch (err) {
    process.off('SIGHUP', earlyHup);
    releaseLocks();
    if (err instanceof CliError) throw err;
    throw new CliError(err instanceof Error ? err.message : String(err), 75);
  }
  const status = await serveStatus(config.dataDir, () => server.status(), logger);
  const out = ctx.io.stdout;
  out.write(`onionpost is running for ${config.domain}\n`);
  for (const l of listening) out.write(`  ${l.name.padEnd(12)} ${`${l.host}:${l.port}`.padEnd(22)} ${l.description}\n`);
  const onion = server.onionStatus();
  if (onion) {
    out.write(
      onion.state === 'published'
        ? `  onion        ${onion.address} published through Tor (${onion.control})\n`
        : `  onion        ${onion.address} NOT published: ${onion.error ?? onion.state}; retrying in the background\n`,
    );
  }
  out.write(`  data         ${config.dataDir}\n`);
  out.write(`  config       ${config.file ?? '(embedded default; see config/onionpost.example.toml)'}\n`);
  out.write(
    `Next: add a user with \`onionpost user add alice\` (from this folder: \`node bin/onionpost.js user add alice\`),\n` +
      `then send mail to alice@${config.domain} on port ${config.smtp.inbound.port} and read it over IMAP.\n`,
  );

  return await new Promise<number>((resolve) => {
    let stopping = false;
    const finish = (code: number): void => {
      process.off('SIGHUP', hup);
      releaseLocks();
      resolve(code);
      // Whatever handle is still open (a client that ignores BYE, a slow disk) must not keep
      // a stopped daemon alive; normally the process has exited before this fires.
      setTimeout(() => process.exit(code), 2000).unref();
    };
    const stop = (signal: string): void => {
      if (stopping) {
        logger.warn({ signal }, 'second signal: exiting now');
        finish(1);
        return;
      }
      stopping = true;
      logger.info({ signal }, 'stopping: no new connections; finishing transactions in flight');
      const timer = setTimeout(() => {
        logger.error('graceful stop took too long; exiting');
        finish(1);
      }, STOP_LIMIT_MS);
      timer.unref();
      void status?.close();
      server.stop().then(
        () => {
          clearTimeout(timer);
          finish(0);
        },
        (err: unknown) => {
          clearTimeout(timer);
          logger.error({ err }, 'error while stopping');
          finish(1);
        },
      );
    };
    const hup = (): void => {
      logger.info('SIGHUP: reloading');
      server.reload().catch((err: unknown) => logger.error({ err }, 'reload failed'));
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', hup);
    process.off('SIGHUP', earlyHup);
  });
};

export default start;
