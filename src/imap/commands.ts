/**
 * Small wrappers around some of imap-core's command handlers (onionpost code; imap-core
 * itself stays unmodified in node_modules: each wrapper calls the original handler, see
 * imapCoreCommand() in imap-core.ts for how they are reached).
 *
 * - Reasons for NO: imap-core answers a handler's "NO [CODE]" with the text "<COMMAND>
 *   completed", which tells a user nothing. Our handlers record the reason (the store's
 *   message, e.g. 'Character "." is not allowed in mailbox names' or the quota figures)
 *   with setNoReason(); the wrapper puts it into the tagged NO.
 * - CREATE / RENAME with a name that begins with the hierarchy separator: imap-core strips
 *   the "/" and would create "foo" for "/foo"; we refuse it.
 * - STORE in a mailbox opened with EXAMINE: imap-core answers OK and ignores it (while UID
 *   STORE, which reaches our handler, gets NO [READ-ONLY]); both now get NO [READ-ONLY].
 */
import type { CommandResponse, ImapCommandModule, ImapConnection, ImapSession } from './imap-core-types.js';
import { imapCoreCommand, type ImapCoreCommandName } from './imap-core.js';

const reasons = new WeakMap<ImapSession, string>();

/** Records why the handler now answering for `session` says NO (shown in the tagged reply). */
export function setNoReason(session: ImapSession, text: string): void {
  // one line, printable, bounded: it goes into a tagged response as TEXT
  const clean = text.replace(/[\x00-\x1f\x7f]+/g, ' ').trim().slice(0, 200);
  if (clean) reasons.set(session, clean);
}

type Handler = ImapCommandModule['handler'];
type ParsedCommand = Parameters<Handler>[0];
type Callback = Parameters<Handler>[1];

function withNoReason(original: Handler): Handler {
  return function (this: ImapConnection, command: ParsedCommand, callback: Callback): void {
    const session = this.session;
    if (session) reasons.delete(session);
    original.call(this, command, (err: Error | null, response?: CommandResponse) => {
      const reason = session ? reasons.get(session) : undefined;
      if (session) reasons.delete(session);
      if (!err && response && response.response === 'NO' && !response.message && reason) {
        callback(null, { ...response, message: reason });
        return;
      }
      callback(err, response);
    });
  };
}

/** The mailbox name arguments of CREATE / RENAME, as sent (imap-core trims "/" later). */
function refuseLeadingSeparator(original: Handler, args: number): Handler {
  return function (this: ImapConnection, command: ParsedCommand, callback: Callback): void {
    const attributes = (command.attributes ?? []) as Array<{ value?: unknown } | null | undefined>;
    for (let i = 0; i < args; i++) {
      const value = attributes[i]?.value;
      if (typeof value === 'string' && value.startsWith('/')) {
        callback(null, { response: 'NO', code: 'CANNOT', message: 'Mailbox name begins with the hierarchy separator "/"' });
        return;
      }
    }
    original.call(this, command, callback);
  };
}

function refuseReadOnlyStore(original: Handler): Handler {
  return function (this: ImapConnection, command: ParsedCommand, callback: Callback): void {
    if (this.selected && this.selected.readOnly) {
      callback(null, { response: 'NO', code: 'READ-ONLY', message: 'Mailbox is read-only (opened with EXAMINE)' });
      return;
    }
    original.call(this, command, callback);
  };
}

const WITH_REASONS: ImapCoreCommandName[] = [
  'create',
  'rename',
  'delete',
  'select',
  'status',
  'append',
  'copy',
  'move',
  'subscribe',
  'unsubscribe',
  'store',
  'uid-store',
];

let installed = false;

/** Installs the wrappers (process-wide, once). */
export function installCommandWrappers(): void {
  if (installed) return;
  installed = true;
  for (const name of WITH_REASONS) {
    const command = imapCoreCommand(name);
    command.handler = withNoReason(command.handler);
  }
  const create = imapCoreCommand('create');
  create.handler = refuseLeadingSeparator(create.handler, 1);
  const rename = imapCoreCommand('rename');
  rename.handler = refuseLeadingSeparator(rename.handler, 2);
  const store = imapCoreCommand('store');
  store.handler = refuseReadOnlyStore(store.handler);
}
