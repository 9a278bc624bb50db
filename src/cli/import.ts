/**
 * `onionpost import maildir PATH --user U` and `onionpost import imap URL --user U`:
 * bring existing mail into a user's store (see src/import/). Both can be run again: what was
 * imported before is skipped. Progress on standard error when it is a terminal.
 */
import { parseArgs } from 'node:util';
import { ImportError, formatSummary } from '../import/common.js';
import { importImap } from '../import/imap-import.js';
import { importMaildir } from '../import/maildir-import.js';
import { CliError, type CommandGroup } from './command.js';
import { readHiddenLines, readOneLine } from './user.js';

export const IMPORT_USAGE = `usage: onionpost import <source> [arguments]

sources:
  maildir PATH --user NAME [--no-keep-uids]
      a Maildir++ tree (Dovecot's ~/Maildir: cur/ new/ and .Folder dirs). Folders that are
      empty here and have a dovecot-uidlist keep their UIDs and UIDVALIDITY (the files are
      copied as they are); other folders get the messages appended with new UIDs.
      Flags, keywords and dates (file mtimes) are kept.
  imap URL --user NAME [--password-stdin] [--insecure]
      every folder of an IMAP account: URL is imaps://USER@HOST[:993] or
      imap://USER@HOST[:143] (STARTTLS required). The password is asked for on the
      terminal, or read as one line from standard input with --password-stdin.
      --insecure accepts a self-signed or otherwise unverifiable certificate.

Both are resumable: run the same command again and only new messages are imported
(what was imported is recorded under <data_dir>/import/NAME/). The user must exist.
`;

const importCommand: CommandGroup = async (args, ctx) => {
  const [source, ...rest] = args;
  if (source === undefined) throw new CliError(`import: say what to import from\n\n${IMPORT_USAGE}`, 64);
  if (source === '-h' || source === '--help' || source === 'help') {
    ctx.io.stdout.write(IMPORT_USAGE);
    return 0;
  }
  if (source !== 'maildir' && source !== 'imap') throw new CliError(`import: unknown source "${source}" (maildir or imap)\n\n${IMPORT_USAGE}`, 64);
  let parsed;
  try {
    parsed = parseArgs({
      args: rest,
      allowPositionals: true,
      options: {
        user: { type: 'string', short: 'u' },
        'password-stdin': { type: 'boolean', default: false },
        insecure: { type: 'boolean', default: false },
        'no-keep-uids': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    throw new CliError(`import ${source}: ${(err as Error).message}\n\n${IMPORT_USAGE}`, 64);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    ctx.io.stdout.write(IMPORT_USAGE);
    return 0;
  }
  const what = source === 'maildir' ? 'PATH' : 'URL';
  if (positionals.length !== 1) throw new CliError(`import ${source}: give exactly one ${what}\n\n${IMPORT_USAGE}`, 64);
  if (!values.user) throw new CliError(`import ${source}: --user NAME is missing (the user whose mailbox receives the mail)`, 64);
  if (source === 'maildir' && (values['password-stdin'] || values.insecure)) throw new CliError('import maildir: --password-stdin and --insecure are for import imap', 64);
  if (source === 'imap' && values['no-keep-uids']) throw new CliError('import imap: --no-keep-uids is for import maildir (IMAP imports always get new UIDs)', 64);
  const config = ctx.config();
  const { io } = ctx;
  try {
    if (source === 'maildir') {
      const s = await importMaildir({ config, source: positionals[0]!, user: values.user, stderr: io.stderr, noKeepUids: values['no-keep-uids'] });
      const kept = s.keptUids.length > 0 ? `; UIDs kept in: ${s.keptUids.join(', ')}` : '';
      io.stdout.write(formatSummary(s, kept));
      return s.failed > 0 ? 1 : 0;
    }
    const password = await readImapPassword(ctx.io, values['password-stdin']);
    const s = await importImap({ config, url: positionals[0]!, password, user: values.user, insecure: values.insecure, stderr: io.stderr });
    const skipped = s.skippedFolders.length > 0 ? `; virtual folders not imported: ${s.skippedFolders.join(', ')}` : '';
    io.stdout.write(formatSummary(s, skipped));
    return s.failed > 0 ? 1 : 0;
  } catch (err) {
    if (err instanceof ImportError) throw new CliError(err.message, err.exitCode);
    throw err;
  }
};

export default importCommand;

async function readImapPassword(io: Parameters<CommandGroup>[1]['io'], fromStdin: boolean): Promise<string> {
  if (fromStdin) {
    const line = await readOneLine(io.stdin);
    if (line === null || line === '') throw new CliError('--password-stdin: standard input gave no password; give it as one line', 65);
    return line;
  }
  if (!io.stdin.isTTY || typeof io.stdin.setRawMode !== 'function') {
    throw new CliError('standard input is not a terminal, so the password cannot be asked for: use --password-stdin', 64);
  }
  const [pw] = await readHiddenLines(io, ['IMAP password: ']);
  if (!pw) throw new CliError('the password is empty', 65);
  return pw;
}
