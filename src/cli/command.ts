/** The contract every CLI command group implements (src/cli/<group>.ts). */
import type { Config } from '../config/types.js';

export interface CliIO {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (mode: boolean) => unknown };
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
}

export interface CliContext {
  io: CliIO;
  /** Loads the file given with --config (or the embedded default); throws ConfigError. */
  config(): Config;
  /** The config file in use: --config FILE, $ONIONPOST_CONFIG, or ./onionpost.toml if it exists; null: the embedded default. */
  configFile(): string | null;
}

/**
 * A failure the user can fix: the message says what is wrong and how to fix it.
 * Exit codes follow sysexits where one fits (64 usage, 65 data, 67 no user, 73 can't create,
 * 74 I/O, 75 temporary failure, 78 config); 1 otherwise.
 */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = 1,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** A command group: gets the arguments after its name, returns the exit code. */
export type CommandGroup = (args: string[], ctx: CliContext) => Promise<number>;
