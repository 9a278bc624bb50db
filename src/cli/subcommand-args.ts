/**
 * Arguments of a command group with subcommands (`onionpost user ...`, `onionpost alias ...`):
 * `<subcommand> [options] [arguments]`, where options may stand anywhere after the subcommand.
 */
import { CliError } from './command.js';

/** A usage error (exit 64): the message, a blank line, then the group's usage text. */
export function usageError(usage: string, message: string): CliError {
  return new CliError(`${message}\n\n${usage}`, 64);
}

export interface SubcommandArgs {
  sub: string;
  positional: string[];
  /** The options given (each one of those the subcommand takes). */
  options: Set<string>;
}

export interface SubcommandSpec {
  /** The group's name, for messages: "user", "alias". */
  group: string;
  usage: string;
  /**
   * The options a subcommand takes; undefined: no such subcommand (a usage error before the
   * options are looked at).
   */
  optionsOf: (sub: string) => readonly string[] | undefined;
}

/**
 * 'help' for -h/--help anywhere, or `help` as the subcommand. After "--" everything is an
 * argument, and so is "-" alone; any other word starting with "-" must be one of the
 * subcommand's options (else a usage error).
 */
export function splitSubcommandArgs(spec: SubcommandSpec, args: string[]): SubcommandArgs | 'help' {
  const { group, usage } = spec;
  if (args.length === 0) throw usageError(usage, `${group}: a subcommand is missing`);
  if (args.some((a) => a === '-h' || a === '--help') || args[0] === 'help') return 'help';
  const [sub, ...rest] = args as [string, ...string[]];
  const known = spec.optionsOf(sub);
  if (!known) throw usageError(usage, `${group}: unknown subcommand "${sub}"`);
  const positional: string[] = [];
  const options = new Set<string>();
  let onlyPositional = false;
  for (const a of rest) {
    if (!onlyPositional && a === '--') onlyPositional = true;
    else if (!onlyPositional && known.includes(a)) options.add(a);
    else if (!onlyPositional && a.startsWith('-') && a !== '-') throw usageError(usage, `${group} ${sub}: unknown option "${a}"`);
    else positional.push(a);
  }
  return { sub, positional, options };
}
