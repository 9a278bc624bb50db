/** `onionpost start`: runs the server in the foreground until SIGTERM/SIGINT; SIGHUP reloads. */
import { createLogger } from '../log/logger.js';
import { OnionpostServer } from '../server.js';
import { CliError, type CommandGroup } from './command.js';

const start: CommandGroup = async (args, ctx) => {
  if (args.length > 0) throw new CliError(`start takes no arguments besides --config, got: ${args.join(' ')}`, 64);
  const config = ctx.config();
  const logger = createLogger(config.log.level);
  const server = new OnionpostServer(config, logger);
  let listening;
  try {
    listening = await server.start();
  } catch (err) {
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
          resolve(0);
        },
        (err: unknown) => {
          logger.error({ err }, 'error while stopping');
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
