/**
 * The frame of a command group that edits one of the daemon's table files (`onionpost user`:
 * the users file, `onionpost alias`: the aliases file): the help text, a warning for every
 * line of the file that was skipped, and the table's own errors turned into exit codes.
 */
import type { Config } from '../config/types.js';
import { CliError, type CliIO, type CommandGroup } from './command.js';

/** A table read from its file (UserDb, AliasDb). */
export interface TableFile {
  /** "file:line: message" for lines that were skipped. */
  readonly problems: readonly string[];
}

export interface TableCommandEnv<D extends TableFile> {
  config: Config;
  db: D;
  io: CliIO;
  /** Writes the table's problems to stderr as warnings. */
  warnProblems(): void;
}

export interface TableCommandSpec<P, D extends TableFile, C extends string> {
  /** Written to stdout for help. */
  usage: string;
  /** The arguments, or 'help'; throws CliError for bad ones (before the config is loaded). */
  parse(args: string[]): P | 'help';
  open(config: Config): D;
  /** The table's error class; its `code` picks the exit code. */
  errorClass: abstract new (...args: never[]) => Error & { readonly code: C };
  exitCodes: Record<C, number>;
  run(parsed: P, env: TableCommandEnv<D>): Promise<number>;
}

export function tableFileCommand<P, D extends TableFile, C extends string>(spec: TableCommandSpec<P, D, C>): CommandGroup {
  return async (args, ctx) => {
    const parsed = spec.parse(args);
    if (parsed === 'help') {
      ctx.io.stdout.write(spec.usage);
      return 0;
    }
    const config = ctx.config();
    const db = spec.open(config);
    const { io } = ctx;
    const warnProblems = (): void => {
      for (const p of db.problems) io.stderr.write(`onionpost: warning: ${p}\n`);
    };
    try {
      return await spec.run(parsed, { config, db, io, warnProblems });
    } catch (err) {
      if (err instanceof spec.errorClass) throw new CliError(err.message, spec.exitCodes[err.code]);
      throw err;
    }
  };
}
