/**
 * `onionpost sendmail`: the sendmail(8) interface, as mutt and cron use it.
 *
 *     onionpost sendmail [options] [--] recipient...    < message
 *
 * Options: -t (recipients also from To/Cc/Bcc), -f ADDR / -r ADDR (envelope sender),
 * -F NAME (full name for a generated From), -i / -oi (a line with only "." does not end the
 * message), -v (say what happened), -bp (list the queue, like mailq), -q (retry the queue
 * now), -bm (the default); delivery status notifications as Postfix's sendmail takes them
 * (RFC 3461): -N never|success,failure,delay (for every recipient), -R full|hdrs, -V ENVID.
 * Accepted and ignored: -oem -oee -oep -oeq -oew -odb -odi -odq -om -o... -B TYPE -h N
 * -L TAG -X FILE -C FILE -U -m -n -G.
 *
 * Who may send, and as whom (authorisation)
 * - The message is written straight into the queue (`<data_dir>/queue`), like Postfix's
 *   postdrop: only accounts that can write the data dir can use it: the daemon's user, and
 *   root (which first switches to the data dir's owner). Everybody else gets exit 77 and is
 *   pointed to submission (port 587 with a password).
 * - The envelope sender must be one of our own addresses that leads to a user (a user, a
 *   +tag address, or an alias that includes a user): bounces come back there. It is -f when
 *   given; else the address in the From field when it is ours; else `<unix user>@<domain>`
 *   when the unix account's name is a mail user; else exit 64 (say -f).
 * - Like submission: every address in From (and Sender) must belong to the same user as the
 *   envelope sender (exit 77 otherwise).
 *
 * The message: line ends are made CRLF; Bcc (and Resent-Bcc) fields are removed; From (with -F), Date (UTC)
 * and Message-ID (`<random@primary domain>`) are added when missing; a Received field
 * (`by <domain> (onionpost sendmail)`, no user or uid) goes on top. Then one queue entry for
 * every recipient (our own domains included: the daemon delivers those into the store) is
 * written and fsync'd, and the daemon is woken up (delivery/wake.ts). When the daemon is not
 * running, the message waits in the queue until it starts.
 *
 * Exit codes (sysexits): 0 queued; 64 usage (bad option, no recipients, no sender);
 * 65 bad message (NUL bytes, too big); 67 unknown local user or unreachable recipient;
 * 73 cannot create the data dir; 75 temporary failure (the queue cannot be written; try
 * again); 77 not allowed (account, sender, From); 78 config error.
 */
import os from 'node:os';
import { ConfigError } from '../config/load.js';
import type { Config } from '../config/types.js';
import { parseNotify, type DsnRet, type NotifyValue } from '../delivery/dsn-params.js';
import { newQueueId, OutboundQueue, QueueError } from '../delivery/queue.js';
import { requestWake } from '../delivery/wake.js';
import { parseAddressList } from '../smtp/address-header.js';
import { BLIND_COPY_FIELDS, fieldsNamed, headerLength, newMessageId, parseHeader, withoutFields } from '../smtp/message.js';
import { RelayPolicy } from '../smtp/policy.js';
import { rfc5322Date } from '../smtp/received-header.js';
import { AliasDb } from '../users/aliases.js';
import { RecipientResolver } from '../users/recipients.js';
import { UserDb } from '../users/user-db.js';
import { CliError, type CliContext, type CommandGroup } from './command.js';
import { enterDataDir, printQueue } from './queue.js';
import { queryStatus } from './status-socket.js';

export const SENDMAIL_USAGE = `usage: onionpost sendmail [-t] [-i] [-f sender] [-F name] [-v] [--] [recipient ...] < message
       onionpost sendmail -bp      (list the queue)
       onionpost sendmail -q       (retry every waiting message now)

Queues the message on standard input for the recipients (and, with -t, those in its To, Cc
and Bcc fields; Bcc fields are removed). For mutt: set sendmail="onionpost sendmail -oem -oi"
Delivery reports (RFC 3461): -N never|success,failure,delay  -R full|hdrs  -V envelope-id
`;

export interface SendmailOptions {
  extract: boolean;
  ignoreDots: boolean;
  from: string | null;
  fullName: string | null;
  verbose: boolean;
  mode: 'send' | 'list' | 'flush';
  recipients: string[];
  /** -N: NOTIFY for every recipient. */
  notify: NotifyValue[] | null;
  /** -R: RET. */
  ret: DsnRet | null;
  /** -V: ENVID. */
  envid: string | null;
}

/** Options that take a value (attached, `-fvalue`, or as the next argument). */
const WITH_VALUE = new Set(['f', 'r', 'F', 'B', 'N', 'R', 'V', 'h', 'L', 'X', 'C', 'O']);
/** Flags without a value that may be grouped (`-ti`). */
const FLAGS = new Set(['t', 'i', 'v', 'U', 'm', 'n', 'G', 'x']);

const usage = (message: string): CliError => new CliError(`sendmail: ${message}\n\n${SENDMAIL_USAGE}`, 64);

export function parseSendmailArgs(args: string[]): SendmailOptions {
  const o: SendmailOptions = { extract: false, ignoreDots: false, from: null, fullName: null, verbose: false, mode: 'send', recipients: [], notify: null, ret: null, envid: null };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--') {
      o.recipients.push(...args.slice(i + 1));
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      o.recipients.push(arg);
      continue;
    }
    const letter = arg[1]!;
    if (WITH_VALUE.has(letter)) {
      let value = arg.slice(2);
      if (value === '') {
        if (i + 1 >= args.length) throw usage(`option -${letter} needs a value`);
        value = args[++i]!;
      }
      if (letter === 'f' || letter === 'r') o.from = value;
      else if (letter === 'F') o.fullName = value;
      else if (letter === 'N') {
        o.notify = parseNotify(value);
        if (!o.notify) throw usage(`-N ${value}: give never, or a comma-separated list of success, failure, delay`);
      } else if (letter === 'R') {
        const ret = value.toUpperCase();
        if (ret !== 'FULL' && ret !== 'HDRS') throw usage(`-R ${value}: give full or hdrs`);
        o.ret = ret;
      } else if (letter === 'V') {
        // Taken as text (not xtext): any printable ASCII, at most 100 characters (RFC 3461 4.4).
        if (!/^[\x20-\x7e]{1,100}$/.test(value)) throw usage(`-V: the envelope id must be 1 to 100 printable ASCII characters`);
        o.envid = value;
      }
      continue;
    }
    if (letter === 'o') {
      // -oi, -oem, -odb, ...: only -oi means anything here.
      let opt = arg.slice(2);
      if (opt === '') {
        if (i + 1 >= args.length) throw usage('option -o needs a value');
        opt = args[++i]!;
      }
      if (opt === 'i') o.ignoreDots = true;
      continue;
    }
    if (letter === 'b') {
      const mode = arg.slice(2);
      if (mode === 'm' || mode === '') continue;
      if (mode === 'p') {
        o.mode = 'list';
        continue;
      }
      if (mode === 's') throw usage('-bs (SMTP on standard input) is not supported: use the submission port');
      if (mode === 'd' || mode === 'D') throw usage('-bd: run the daemon with `onionpost start`');
      if (mode === 'i') throw usage('-bi: aliases need no rebuilding (the aliases file is read when it changes)');
      throw usage(`-b${mode} is not supported`);
    }
    if (letter === 'q') {
      o.mode = 'flush';
      continue;
    }
    const group = arg.slice(1);
    if (![...group].every((c) => FLAGS.has(c))) throw usage(`unknown option ${arg}`);
    for (const c of group) {
      if (c === 't') o.extract = true;
      else if (c === 'i') o.ignoreDots = true;
      else if (c === 'v') o.verbose = true;
    }
  }
  return o;
}

/** `"Full Name" <addr>`, with an RFC 2047 encoded word when the name is not plain ASCII. */
export function formatFrom(address: string, fullName: string | null): string {
  const name = (fullName ?? '').replace(/[\r\n]+/g, ' ').trim();
  if (!name) return `<${address}>`;
  if (/^[\x20-\x7e]*$/.test(name)) return `"${name.replace(/(["\\])/g, '\\$1')}" <${address}>`;
  return `=?UTF-8?B?${Buffer.from(name, 'utf8').toString('base64')}?= <${address}>`;
}

/** Reads standard input; without -i a line with a single "." ends the message. */
async function readMessage(stdin: NodeJS.ReadableStream, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stdin as AsyncIterable<Buffer | string>) {
    const b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    size += b.length;
    if (size > limit + 65536) throw new CliError(`the message is larger than the limit of ${limit} bytes ([smtp] max_message_size)`, 65);
    chunks.push(b);
  }
  return Buffer.concat(chunks, size);
}

function cutAtDot(raw: Buffer): Buffer {
  const text = raw.toString('latin1');
  const m = /(^|\n)\.\r?\n|(^|\n)\.$/.exec(text);
  return m ? raw.subarray(0, m.index + (m[1] ?? m[2] ?? '').length) : raw;
}

/** CRLF line ends; lone CRs stay. */
function toCrlf(raw: Buffer): Buffer {
  return Buffer.from(raw.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
}

function bareAddress(text: string): string {
  const t = text.trim();
  const m = /^<(.*)>$/.exec(t);
  return (m ? m[1]! : t).trim();
}

async function daemonRuns(config: Config): Promise<boolean> {
  return (await queryStatus(config.dataDir, 1500)).kind === 'ok';
}

const sendmail: CommandGroup = async (args, ctx) => {
  if (args.includes('--help') && !args.slice(0, args.indexOf('--help')).includes('--')) {
    ctx.io.stdout.write(SENDMAIL_USAGE);
    return 0;
  }
  const opts = parseSendmailArgs(args);
  let config: Config;
  try {
    config = ctx.config();
  } catch (err) {
    if (err instanceof ConfigError) throw new CliError(`config error: ${err.message}`, 78);
    throw err;
  }
  if (opts.mode === 'list') return printQueue(ctx, false);
  if (opts.mode === 'flush') {
    const { default: queue } = await import('./queue.js');
    return queue(['flush'], ctx);
  }
  return send(opts, config, ctx);
};

async function send(opts: SendmailOptions, config: Config, ctx: CliContext): Promise<number> {
  // Who runs us, before enterDataDir may switch a root process to the data dir's owner.
  let unixName = '';
  try {
    unixName = os.userInfo().username;
  } catch {
    unixName = '';
  }
  enterDataDir(config, true);

  let raw = await readMessage(ctx.io.stdin, config.smtp.maxMessageSize);
  if (!opts.ignoreDots) raw = cutAtDot(raw);
  if (raw.includes(0)) throw new CliError('the message contains NUL bytes', 65);
  raw = toCrlf(raw);
  if (raw.length > config.smtp.maxMessageSize) throw new CliError(`the message is larger than the limit of ${config.smtp.maxMessageSize} bytes ([smtp] max_message_size)`, 65);

  // Header and body. A message that does not start with a header field gets an empty header.
  const startsWithField = /^[!-9;-~]+[ \t]*:/.test(raw.subarray(0, 1000).toString('latin1'));
  const hlen = startsWithField ? headerLength(raw) : 0;
  // latin1: byte for byte (the header may hold UTF-8 or legacy 8-bit text; it is not recoded).
  let header = raw.subarray(0, hlen).toString('latin1');
  const body = raw.subarray(hlen);
  if (header !== '' && !header.endsWith('\r\n\r\n')) {
    // A message that is only a header (no empty line): end the header properly.
    header = header.endsWith('\r\n') ? `${header}\r\n` : `${header}\r\n\r\n`;
  }
  const fields = parseHeader(Buffer.from(header, 'latin1'));

  const users = new UserDb(config.users.file, { localDomains: config.localDomains });
  const aliases = new AliasDb(config.users.aliases, { localDomains: config.localDomains });
  const resolver = new RecipientResolver({
    localDomains: config.localDomains,
    userDb: users,
    aliases,
    postmaster: config.users.postmaster ?? undefined,
  });
  const relay = new RelayPolicy({ openToOnion: false, onionRatePerMinute: 1, clearnet: config.relay.clearnet });
  const qualify = (address: string): string => (address.includes('@') ? address : `${address}@${config.domain}`);
  const usersOf = (address: string): string[] => {
    const r = resolver.resolve(address);
    return r.kind === 'local' ? [r.user] : r.kind === 'alias' ? r.users : [];
  };

  // The envelope sender.
  const fromAddresses = fieldsNamed(fields, 'From').flatMap((f) => parseAddressList(f.value));
  let sender: string;
  if (opts.from !== null) {
    sender = bareAddress(opts.from);
    if (sender === '') throw new CliError('the null sender (-f "<>") is reserved for bounces', 77);
    sender = qualify(sender);
  } else if (fromAddresses.length === 1 && usersOf(fromAddresses[0]!).length > 0) {
    sender = fromAddresses[0]!;
  } else if (unixName && usersOf(`${unixName}@${config.domain}`).length > 0) {
    sender = `${unixName}@${config.domain}`;
  } else {
    throw new CliError(
      `cannot tell who sends this message: give the sender with -f ADDRESS (one of our addresses), or a From field with one` +
        (unixName ? ` (the unix account "${unixName}" is not a mail user or alias)` : ''),
      64,
    );
  }
  const owners = usersOf(sender);
  if (owners.length === 0) {
    throw new CliError(`sender <${sender}> is not allowed: it must be one of our own addresses that leads to a user (${config.localDomains.join(', ')})`, 77);
  }
  for (const f of [...fieldsNamed(fields, 'From'), ...fieldsNamed(fields, 'Sender')]) {
    for (const a of parseAddressList(f.value)) {
      if (!usersOf(a).some((u) => owners.includes(u))) {
        throw new CliError(`the ${f.name} field names <${a}>, which does not belong to the sender <${sender}> (user ${owners.join(', ')})`, 77);
      }
    }
  }

  // Recipients: the arguments, plus with -t the To, Cc and Bcc fields.
  const wanted: string[] = [];
  for (const arg of opts.recipients) {
    for (const a of arg.includes(',') || arg.includes('<') ? parseAddressList(arg) : [bareAddress(arg)]) if (a) wanted.push(a);
  }
  if (opts.extract) {
    for (const name of ['To', 'Cc', 'Bcc']) for (const f of fieldsNamed(fields, name)) wanted.push(...parseAddressList(f.value));
  }
  const recipients: string[] = [];
  for (const w of wanted) {
    const address = qualify(w);
    if (/[\s<>\x00-\x1f\x7f]/.test(address) || address.startsWith('@') || address.endsWith('@')) throw new CliError(`invalid recipient address "${w}"`, 64);
    const r = resolver.resolve(address);
    if (r.kind === 'unknown-local') throw new CliError(`<${address}>: no such user here`, 67);
    if (r.kind === 'remote') {
      const verdict = relay.submission(address, r.domain);
      if (!verdict.ok) throw new CliError(verdict.message, 67);
    }
    if (!recipients.some((x) => x.toLowerCase() === address.toLowerCase())) recipients.push(address);
  }
  if (recipients.length === 0) throw usage(opts.extract ? 'no recipients: none given and none in To, Cc or Bcc' : 'no recipients given (or use -t)');

  // The header we send.
  let add = '';
  if (fieldsNamed(fields, 'From').length === 0) add += `From: ${formatFrom(sender, opts.fullName)}\r\n`;
  if (fieldsNamed(fields, 'Date').length === 0) add += `Date: ${rfc5322Date(new Date())}\r\n`;
  if (fieldsNamed(fields, 'Message-ID').length === 0) add += `Message-ID: ${newMessageId(config.domain)}\r\n`;
  const id = newQueueId();
  const received = `Received: by ${config.domain} (onionpost sendmail) id ${id};\r\n\t${rfc5322Date(new Date())}\r\n`;
  const kept = header === '' ? Buffer.from('\r\n') : withoutFields(Buffer.from(header, 'latin1'), BLIND_COPY_FIELDS);
  const message = Buffer.concat([Buffer.from(received + add, 'utf8'), kept, body]);

  const queue = new OutboundQueue({ dir: config.queue.dir });
  try {
    await queue.enqueue({
      id,
      from: sender,
      recipients: recipients.map((address) => ({ address, ...(opts.notify ? { notify: opts.notify } : {}) })),
      raw: message,
      origin: 'local',
      ...(opts.ret ? { ret: opts.ret } : {}),
      ...(opts.envid !== null ? { envid: opts.envid } : {}),
    });
  } catch (err) {
    if (err instanceof QueueError && err.code === 'invalid') throw new CliError(err.message, 64);
    throw new CliError(`cannot queue the message: ${(err as Error).message}; try again`, 75);
  }
  try {
    await requestWake(config.queue.dir, id);
  } catch {
    // The daemon's periodic comparison of the queue directory finds the entry anyway.
  }
  const running = await daemonRuns(config);
  if (opts.verbose) ctx.io.stderr.write(`onionpost: queued as ${id} for ${recipients.length} recipient${recipients.length === 1 ? '' : 's'}\n`);
  if (!running) ctx.io.stderr.write(`onionpost: queued as ${id}; the daemon is not running: it is delivered when \`onionpost start\` runs\n`);
  return 0;
}

export default sendmail;
