/** `onionpost [--config FILE] <command> [args]`: finds the config, dispatches to a command group. */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, loadConfig } from '../config/load.js';
import type { Config } from '../config/types.js';
import { CliError, type CliContext, type CliIO, type CommandGroup } from './command.js';

const COMMANDS: Record<string, { summary: string; load: () => Promise<{ default: CommandGroup }> }> = {
  start: { summary: 'run the mail server in the foreground', load: () => import('./start.js') },
  user: { summary: 'manage users: user add|passwd|del|list|import', load: () => import('./user.js') },
  init: { summary: 'set up: config file, data dir, certificate, onion service', load: () => import('./init.js') },
  alias: { summary: 'manage aliases: alias add|del|list', load: () => import('./alias.js') },
  check: { summary: 'validate the config and print the effective settings', load: () => import('./check.js') },
  status: { summary: 'show whether the daemon runs: listeners, onion, users, queue', load: () => import('./status.js') },
  sendmail: { summary: 'queue a message from standard input (sendmail(8) options: -t -f -F -i -oi ...)', load: () => import('./sendmail.js') },
  queue: { summary: 'the outbound queue: queue list|show|flush|delete', load: () => import('./queue.js') },
  import: { summary: 'import mail: import maildir PATH --user U | import imap URL --user U', load: () => import('./import.js') },
  'client-config': { summary: 'print mutt, Thunderbird and mbsync settings for a user', load: () => import('./client-config.js') },
};

export const USAGE = `usage: onionpost [--config FILE] <command> [arguments]

commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(14)} ${c.summary}`)
  .join('\n')}

The config file is, in this order: --config FILE, $ONIONPOST_CONFIG, ./onionpost.toml if it
exists, else the embedded default (data in ./data, SMTP on 2525, IMAP on 2143).
Every key is documented in config/onionpost.example.toml.
`;

/** Removes --config/-c from anywhere in argv (every command takes it) and returns it. */
export function extractConfigOption(argv: string[]): { configFile: string | null; rest: string[] } {
  const rest: string[] = [];
  let configFile: string | null = null;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      rest.push(...argv.slice(i));
      break;
    }
    if (arg === '--config' || arg === '-c') {
      const value = argv[i + 1];
      if (value === undefined || value.startsWith('-')) throw new CliError(`${arg} needs a file name: --config FILE`, 64);
      configFile = value;
      i++;
    } else if (arg.startsWith('--config=')) {
      configFile = arg.slice('--config='.length);
      if (!configFile) throw new CliError('--config= needs a file name: --config=FILE', 64);
    } else rest.push(arg);
  }
  return { configFile, rest };
}

function findConfigFile(explicit: string | null, cwd: string): string | null {
  if (explicit !== null) return explicit;
  const fromEnv = process.env.ONIONPOST_CONFIG;
  if (fromEnv) return fromEnv;
  const local = path.join(cwd, 'onionpost.toml');
  return existsSync(local) ? local : null;
}

export async function run(argv: string[], io: CliIO = process): Promise<number> {
  try {
    const { configFile, rest } = extractConfigOption(argv);
    const [command, ...args] = rest;
    if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
      (command === undefined ? io.stderr : io.stdout).write(USAGE);
      return command === undefined ? 64 : 0;
    }
    const entry = COMMANDS[command];
    if (!entry) throw new CliError(`unknown command "${command}"\n\n${USAGE}`, 64);
    let cached: Config | undefined;
    const ctx: CliContext = {
      io,
      config: () => (cached ??= loadConfig(findConfigFile(configFile, process.cwd()))),
      configFile: () => findConfigFile(configFile, process.cwd()),
    };
    const group = (await entry.load()).default;
    return await group(args, ctx);
  } catch (err) {
    if (err instanceof CliError || err instanceof ConfigError) {
      const prefix = err instanceof ConfigError ? 'config error: ' : '';
      io.stderr.write(`onionpost: ${prefix}${err.message}\n`);
      return err.exitCode;
    }
    io.stderr.write(`onionpost: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return 70;
  }
}
