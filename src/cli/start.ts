/** `onionpost start`: runs the server in the foreground until SIGTERM/SIGINT; SIGHUP reloads. */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createLogger } from '../log/logger.js';
import { OnionpostServer } from '../server.js';
import { CliError, type CommandGroup } from './command.js';
import { PidFile } from './instance-lock.js';

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
  const logger = createLogger(config.log.level);
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
    listening = await server.start();
  } catch (err) {
    releaseLocks();
    if (err instanceof CliError) throw err;
    throw new CliError(err instanceof Error ? err.message : String(err), 75);
  }
  const out = ctx.io.stdout;
  out.write(`onionpost is running for ${config.domain}\n`);
  for (const l of listening) out.write(`  ${l.name.padEnd(6)} ${`${l.host}:${l.port}`.padEnd(22)} ${l.description}\n`);
  out.write(`  data   ${config.dataDir}\n`);
  out.write(`  config ${config.file ?? '(embedded default; see config/onionpost.example.toml)'}\n`);
  out.write(
    `Next: add a user with \`onionpost user add alice\` (from this folder: \`node bin/onionpost.js user add alice\`),\n` +
      `then send mail to alice@${config.domain} on port ${config.smtp.inbound.port} and read it over IMAP.\n`,
  );

  return await new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal }, 'stopping');
      const timer = setTimeout(() => {
        logger.error('graceful stop took too long; exiting');
        resolve(1);
      }, 30_000);
      timer.unref();
      server.stop().then(
        () => {
          clearTimeout(timer);
          process.off('SIGHUP', hup);
          releaseLocks();
          resolve(0);
        },
        (err: unknown) => {
          logger.error({ err }, 'error while stopping');
          releaseLocks();
          resolve(1);
        },
      );
    };
    const hup = (): void => {
      server.reload().catch((err: unknown) => logger.error({ err }, 'reload failed'));
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', hup);
  });
};

export default start;
