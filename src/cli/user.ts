/**
 * `onionpost user add|passwd|del|list`: edits the users file (config `users.file`).
 * A running daemon notices the change by itself within about a second.
 */
import { StringDecoder } from 'node:string_decoder';
import type { Config } from '../config/types.js';
import { readFileSync } from 'node:fs';
import { parsePasswd, validateUserName, type PasswdEntryLine } from '../users/passwd-file.js';
import { describeScheme } from '../users/password-hash.js';
import { UserDb, UserDbError, type UserDbErrorCode } from '../users/user-db.js';
import { CliError, type CliIO, type CommandGroup } from './command.js';
import { splitSubcommandArgs, usageError as usageErrorOf } from './subcommand-args.js';
import { tableFileCommand } from './table-file-command.js';

export const USER_USAGE = `usage: onionpost user <subcommand> [arguments]

subcommands:
  add NAME [--password-stdin]     create a user; their address is NAME@<domain>
  passwd NAME [--password-stdin]  set a new password
  del NAME                        remove a user (their mail is not deleted)
  list                            list the users, one per line
  import FILE [--dry-run]         add the users of a Dovecot passwd-file, keeping their
                                  password hashes ({SHA512-CRYPT}, {BLF-CRYPT}, {ARGON2ID}...)
                                  and fields; names that exist already are skipped

Without --password-stdin the password is asked for twice on the terminal, not echoed.
With --password-stdin one line is read from standard input, for example:
  printf '%s\\n' "$PASSWORD" | onionpost user add alice --password-stdin
User names: lower-case letters, digits, ".", "-" and "_", at most 64 characters.
`;

/** sysexits codes for the user-db errors. */
const EXIT: Record<UserDbErrorCode, number> = {
  'invalid-name': 65, // EX_DATAERR
  'invalid-password': 65,
  'unknown-user': 67, // EX_NOUSER
  exists: 73, // EX_CANTCREAT
  io: 74, // EX_IOERR
  locked: 75, // EX_TEMPFAIL
};

interface Parsed {
  sub: string;
  name?: string;
  passwordStdin: boolean;
  dryRun: boolean;
}

const SUBCOMMANDS: Record<string, { takesName: boolean; options: readonly string[] }> = {
  import: { takesName: true, options: ['--dry-run'] },
  add: { takesName: true, options: ['--password-stdin'] },
  passwd: { takesName: true, options: ['--password-stdin'] },
  del: { takesName: true, options: [] },
  list: { takesName: false, options: [] },
};

function usageError(message: string): CliError {
  return usageErrorOf(USER_USAGE, message);
}

function parseArgs(args: string[]): Parsed | 'help' {
  const split = splitSubcommandArgs({ group: 'user', usage: USER_USAGE, optionsOf: (sub) => SUBCOMMANDS[sub]?.options }, args);
  if (split === 'help') return 'help';
  const { sub, positional, options } = split;
  const passwordStdin = options.has('--password-stdin');
  const dryRun = options.has('--dry-run');
  if (SUBCOMMANDS[sub]!.takesName) {
    const what = sub === 'import' ? 'FILE' : 'NAME';
    if (positional.length === 0) throw usageError(`user ${sub}: the ${sub === 'import' ? 'passwd-FILE' : 'user NAME'} is missing`);
    if (positional.length > 1) throw usageError(`user ${sub}: only one ${what}, got ${positional.length}`);
    return { sub, name: positional[0]!, passwordStdin, dryRun };
  }
  if (positional.length > 0) throw usageError(`user ${sub}: unexpected argument "${positional[0]}"`);
  return { sub, passwordStdin, dryRun };
}

const userCommand: CommandGroup = tableFileCommand({
  usage: USER_USAGE,
  parse: parseArgs,
  open: (config) => new UserDb(config.users.file, { localDomains: config.localDomains }),
  errorClass: UserDbError,
  exitCodes: EXIT,
  async run(parsed, { config, db, io, warnProblems }) {
    switch (parsed.sub) {
      case 'list': {
        const users = db.list();
        warnProblems();
        for (const u of users) io.stdout.write(`${u.name}\n`);
        if (users.length === 0) io.stderr.write(`onionpost: no users in ${db.file}\n`);
        return 0;
      }
      case 'add': {
        const name = bareName(parsed.name!, config);
        const invalid = validateUserName(name);
        if (invalid) throw new UserDbError('invalid-name', invalid);
        warnProblems();
        // Fail before asking for a password when the name is already taken.
        const existing = db.get(name);
        if (existing) throw new UserDbError('exists', `user "${existing.name}" already exists`);
        const password = await readPassword(io, parsed.passwordStdin);
        const user = await db.add(name, password);
        io.stdout.write(`added user ${user.name}: mail address ${user.name}@${config.domain}\n`);
        return 0;
      }
      case 'passwd': {
        warnProblems();
        const existing = db.get(parsed.name!);
        if (!existing) throw new UserDbError('unknown-user', `no user "${parsed.name}" in ${db.file}`);
        const password = await readPassword(io, parsed.passwordStdin);
        const user = await db.setPassword(existing.name, password);
        io.stdout.write(`changed the password of ${user.name}\n`);
        return 0;
      }
      case 'import': {
        warnProblems();
        return await importUsers(parsed.name!, parsed.dryRun, db, io);
      }
      case 'del': {
        warnProblems();
        const user = await db.remove(parsed.name!);
        io.stdout.write(`removed user ${user.name} (their mail was not deleted)\n`);
        return 0;
      }
    }
    throw usageError(`user: unknown subcommand "${parsed.sub}"`);
  },
});

export default userCommand;

/**
 * `user import FILE`: entries with a usable hash are added with all their fields; lines that
 * cannot be used (bad names, unsupported schemes) are reported and skipped; so are names
 * that exist already. Exit 0 when the file was read, even if some lines were skipped.
 */
async function importUsers(file: string, dryRun: boolean, db: UserDb, io: CliIO): Promise<number> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new CliError(`cannot read ${file}: ${e.code === 'ENOENT' ? 'no such file' : e.message}`, e.code === 'ENOENT' ? 66 : 74);
  }
  const { doc, problems } = parsePasswd(text);
  for (const p of problems) io.stderr.write(`onionpost: warning: ${file}:${p.line}: ${p.message}\n`);
  const usable: PasswdEntryLine[] = [];
  const plainNames = new Set<string>();
  for (const line of doc.lines) {
    if (line.kind !== 'entry') continue;
    const hash = line.fields[1] ?? '';
    const d = describeScheme(hash);
    if (hash === '' || !d.supported) {
      io.stderr.write(`onionpost: warning: ${file}:${line.lineNo}: user "${line.key}" skipped: ${hash === '' ? 'no password' : d.reason}\n`);
      continue;
    }
    if (/^(PLAIN|CLEAR|CLEARTEXT)$/i.test(d.scheme)) plainNames.add(line.key);
    usable.push(line);
  }
  const { added, existing } = await db.importEntries(usable, { dryRun });
  for (const name of existing) io.stderr.write(`onionpost: warning: user "${name}" already exists; skipped (their entry is unchanged)\n`);
  for (const name of added) io.stdout.write(`${dryRun ? 'would add' : 'added'} user ${name}\n`);
  io.stdout.write(`${dryRun ? 'dry run: would import' : 'imported'} ${added.length} user(s) from ${file}; ${existing.length} already existed, ${doc.lines.filter((l) => l.kind === 'entry').length - usable.length + problems.length} line(s) unusable\n`);
  const plain = added.filter((n) => plainNames.has(n));
  if (plain.length > 0) io.stderr.write(`onionpost: warning: ${plain.join(', ')}: {PLAIN} password(s) stored in clear; set new ones with: onionpost user passwd NAME\n`);
  return 0;
}

/** `alice` or `alice@<one of our domains>` -> `alice` (new users get bare names). */
function bareName(name: string, config: Config): string {
  const at = name.lastIndexOf('@');
  if (at === -1) return name;
  const domain = name.slice(at + 1).toLowerCase();
  if (!config.localDomains.includes(domain)) {
    throw new CliError(
      `"${name}" is not in a local domain (${config.localDomains.join(', ')}); give the bare user name, e.g. "${name.slice(0, at)}"`,
      65,
    );
  }
  return name.slice(0, at);
}

// ---------------------------------------------------------------------------------------
// Reading the password

async function readPassword(io: CliIO, fromStdin: boolean): Promise<string> {
  if (fromStdin) {
    const line = await readOneLine(io.stdin);
    if (line === null) throw new CliError('--password-stdin: standard input was empty; give the password as one line', 65);
    if (line === '') throw new CliError('--password-stdin: the password is empty', 65);
    return line;
  }
  if (!io.stdin.isTTY || typeof io.stdin.setRawMode !== 'function') {
    throw new CliError(
      'standard input is not a terminal, so the password cannot be asked for: use --password-stdin and give the password as one line on standard input',
      64,
    );
  }
  const [first, second] = await readHiddenLines(io, ['Password: ', 'Retype password: ']);
  if (first === '') throw new CliError('the password is empty', 65);
  if (first !== second) throw new CliError('the passwords do not match; nothing was changed', 65);
  return first!;
}

/**
 * Stops reading. A paused pipe or terminal still keeps the process alive while its writer
 * stays open, so the handle is also unref'd: the command exits once it is done.
 */
function release(stream: NodeJS.ReadableStream): void {
  stream.pause();
  (stream as { unref?: () => void }).unref?.();
}

/** One line from a stream (without "\n" or "\r\n"); null when it ends before any byte. */
export function readOneLine(stream: NodeJS.ReadableStream): Promise<string | null> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = false;
    const finish = (value: string | null, err?: Error) => {
      stream.removeListener('data', onData);
      stream.removeListener('end', onEnd);
      stream.removeListener('error', onError);
      release(stream);
      if (err) reject(err);
      else resolve(value);
    };
    const onData = (chunk: Buffer | string) => {
      got = true;
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      const nl = buf.indexOf(0x0a);
      if (nl === -1) {
        chunks.push(buf);
        return;
      }
      chunks.push(buf.subarray(0, nl));
      finish(Buffer.concat(chunks).toString('utf8').replace(/\r$/, ''));
    };
    const onEnd = () => finish(got ? Buffer.concat(chunks).toString('utf8').replace(/\r$/, '') : null);
    const onError = (err: Error) => finish(null, new CliError(`cannot read standard input: ${err.message}`, 74));
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('error', onError);
    stream.resume();
  });
}

/**
 * Asks for one line per prompt on a terminal in raw mode, echoing nothing. Backspace,
 * Ctrl-U (clear), Ctrl-C (abort, exit 130) and Ctrl-D (abort on an empty line) work;
 * other control keys and escape sequences (arrows) are ignored.
 */
export function readHiddenLines(io: CliIO, prompts: string[]): Promise<string[]> {
  const stdin = io.stdin;
  return new Promise((resolve, reject) => {
    const decoder = new StringDecoder('utf8');
    const lines: string[] = [];
    let current: string[] = [];
    let escape: 'none' | 'esc' | 'csi' = 'none';
    let done = false;

    const cleanup = () => {
      done = true;
      stdin.removeListener('data', onData);
      stdin.removeListener('end', onEnd);
      stdin.removeListener('error', onEnd);
      try {
        stdin.setRawMode?.(false);
      } finally {
        release(stdin);
      }
    };
    const fail = (err: CliError) => {
      io.stderr.write('\n');
      cleanup();
      reject(err);
    };
    const onEnd = () => {
      if (!done) fail(new CliError('no password given (end of input)', 65));
    };
    const onData = (chunk: Buffer | string) => {
      const text = typeof chunk === 'string' ? chunk : decoder.write(chunk);
      for (const ch of text) {
        if (done) return;
        if (escape === 'esc') {
          escape = ch === '[' || ch === 'O' ? 'csi' : 'none';
          continue;
        }
        if (escape === 'csi') {
          if (/[@-~]/.test(ch)) escape = 'none';
          continue;
        }
        switch (ch) {
          case '\r':
          case '\n':
            io.stderr.write('\n');
            lines.push(current.join(''));
            current = [];
            if (lines.length === prompts.length) {
              cleanup();
              resolve(lines);
              return;
            }
            io.stderr.write(prompts[lines.length]!);
            break;
          case '\u0003': // Ctrl-C
            fail(new CliError('interrupted', 130));
            return;
          case '\u0004': // Ctrl-D
            if (current.length === 0) {
              fail(new CliError('no password given', 65));
              return;
            }
            break;
          case '\u007f':
          case '\b':
            current.pop();
            break;
          case '\u0015': // Ctrl-U
            current = [];
            break;
          case '\u001b':
            escape = 'esc';
            break;
          default:
            if (ch >= ' ') current.push(ch);
        }
      }
    };

    // No-echo (raw) mode before the prompt appears: whatever is typed after it is ours,
    // Ctrl-C included (in cooked mode the terminal would turn it into SIGINT).
    try {
      stdin.setRawMode!(true);
    } catch (err) {
      reject(new CliError(`cannot switch the terminal to no-echo mode: ${(err as Error).message}; use --password-stdin`, 74));
      return;
    }
    io.stderr.write(prompts[0]!);
    stdin.on('data', onData);
    stdin.on('end', onEnd);
    stdin.on('error', onEnd);
    stdin.resume();
  });
}

