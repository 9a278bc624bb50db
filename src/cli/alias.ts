/**
 * `onionpost alias add|del|list`: edits the aliases file (config `users.aliases`). A running
 * daemon notices the change by itself within about a second (or at once on SIGHUP).
 */
import type { Config } from '../config/types.js';
import { AliasDb, AliasDbError, type AliasDbErrorCode } from '../users/aliases.js';
import { RecipientResolver } from '../users/recipients.js';
import { UserDb } from '../users/user-db.js';
import { CliError, type CliIO, type CommandGroup } from './command.js';
import { splitSubcommandArgs, usageError as usageErrorOf } from './subcommand-args.js';
import { tableFileCommand } from './table-file-command.js';

export const ALIAS_USAGE = `usage: onionpost alias <subcommand> [arguments]

subcommands:
  add NAME TARGET[,TARGET...] [TARGET...]  add targets to an alias (created when new)
  del NAME [TARGET[,TARGET...]]            remove an alias, or only the given targets
  list                                     list the aliases, one "name: targets" per line

NAME is a local part ("info": in every local domain) or "info@<one of our domains>".
A TARGET is a user or another alias ("alice"), "\\alice" (the user alice, never an alias),
or an address ("bob@<somebody>.onion": forwarded through the outbound queue).
Examples:
  onionpost alias add postmaster root
  onionpost alias add root alice
  onionpost alias add team alice,bob carol@example.onion
  onionpost alias del team carol@example.onion
The file is an aliases(5) file like /etc/mail/aliases; comments and the other entries stay
as they are. Mail for postmaster@ and root@ reaches the first user even without an alias.
`;

const EXIT: Record<AliasDbErrorCode, number> = {
  'invalid-name': 65,
  'invalid-target': 65,
  'unknown-alias': 67,
  io: 74,
  locked: 75,
};

function usageError(message: string): CliError {
  return usageErrorOf(ALIAS_USAGE, message);
}

interface Parsed {
  sub: 'add' | 'del' | 'list';
  name?: string;
  targets: string[];
}

function parseArgs(args: string[]): Parsed | 'help' {
  // No options at all; an unknown subcommand is reported after an unknown option.
  const split = splitSubcommandArgs({ group: 'alias', usage: ALIAS_USAGE, optionsOf: () => [] }, args);
  if (split === 'help') return 'help';
  const { sub, positional } = split;
  switch (sub) {
    case 'list':
      if (positional.length > 0) throw usageError(`alias list: unexpected argument "${positional[0]}"`);
      return { sub, targets: [] };
    case 'add':
      if (positional.length === 0) throw usageError('alias add: the alias NAME is missing');
      if (positional.length === 1) throw usageError('alias add: at least one TARGET is needed');
      return { sub, name: positional[0]!, targets: positional.slice(1) };
    case 'del':
      if (positional.length === 0) throw usageError('alias del: the alias NAME is missing');
      return { sub, name: positional[0]!, targets: positional.slice(1) };
    default:
      throw usageError(`alias: unknown subcommand "${sub}"`);
  }
}

const aliasCommand: CommandGroup = tableFileCommand({
  usage: ALIAS_USAGE,
  parse: parseArgs,
  open: (config) => new AliasDb(config.users.aliases, { localDomains: config.localDomains }),
  errorClass: AliasDbError,
  exitCodes: EXIT,
  async run(parsed, { config, db, io, warnProblems }) {
    switch (parsed.sub) {
      case 'list': {
        const aliases = db.list();
        warnProblems();
        for (const a of aliases) io.stdout.write(`${a.name}: ${a.targets.join(', ')}\n`);
        if (aliases.length === 0) io.stderr.write(`onionpost: no aliases in ${db.file}\n`);
        return 0;
      }
      case 'add': {
        const name = parsed.name!.toLowerCase();
        const users = new UserDb(config.users.file, { localDomains: config.localDomains });
        const user = users.get(name);
        if (user && (user.name === name || !name.includes('@'))) {
          throw new CliError(`"${name}" is a user; an alias of that name would never be used (users come first)`, 73);
        }
        warnProblems();
        const alias = await db.add(name, parsed.targets);
        io.stdout.write(`alias ${alias.name}: ${alias.targets.join(', ')}\n`);
        explain(io, config, users, db, alias.name);
        return 0;
      }
      case 'del': {
        warnProblems();
        const removed = await db.remove(parsed.name!, parsed.targets);
        if (parsed.targets.length === 0) io.stdout.write(`removed alias ${removed.name}\n`);
        else {
          io.stdout.write(`removed ${removed.targets.join(', ')} from alias ${removed.name}\n`);
          const left = db.get(removed.name);
          if (!left) io.stdout.write(`alias ${removed.name} had no targets left and was removed\n`);
        }
        return 0;
      }
    }
  },
});

export default aliasCommand;

/** Prints where the alias leads now, and warns when it leads nowhere. */
function explain(io: CliIO, config: Config, users: UserDb, db: AliasDb, name: string): void {
  const resolver = new RecipientResolver({ localDomains: config.localDomains, userDb: users, aliases: db, postmaster: config.users.postmaster ?? undefined });
  const address = name.includes('@') ? name : `${name}@${config.domain}`;
  const r = resolver.resolve(address);
  switch (r.kind) {
    case 'local':
      io.stdout.write(`  ${address} -> ${r.user}\n`);
      return;
    case 'alias':
      io.stdout.write(`  ${address} -> ${[...r.users, ...r.remote].join(', ')}\n`);
      if (r.remote.length > 0) io.stdout.write('  (remote targets are forwarded through the outbound queue)\n');
      return;
    default:
      io.stderr.write(`onionpost: warning: ${address} leads to no user yet (a missing user, or a loop); mail to it is refused until it does\n`);
  }
}
