/**
 * The only module that loads @zone-eu/wildduck. It requires imap-core's entry file, the
 * IMAPConnection class (to replace the greeting, see imap-server.ts), the indexer, the
 * package's error reporter, some command modules (whose handlers search-command.ts and
 * commands.ts replace or wrap at run time; the files themselves are never modified), and two
 * libraries imap-core itself depends on (libmime for RFC 2047 words, iconv-lite for
 * charsets), resolved from the wildduck package so that they are exactly the copies imap-core
 * uses. Everything leaves this module typed.
 *
 * Never require the package root: its `main` starts the whole WildDuck server.
 */
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import type {
  ConnectionOptions,
  ImapCommandModule,
  GelfHandler,
  IconvLite,
  ImapConnection,
  ImapCoreServer,
  ImapCoreServerOptions,
  ImapHandlerModule,
  IndexerInstance,
  Libmime,
} from './imap-core-types.js';

// wild-config (loaded by wildduck's lib/errors.js) would otherwise read ./config/* relative
// to the working directory (our own config folder), parse argv and APPCONF_* variables, and
// may call process.exit(1). This must be set before the first require below.
process.env.DISABLE_WILD_CONFIG = 'true';

const require = createRequire(import.meta.url);

interface ImapCoreModule {
  IMAPServer: new (options: ImapCoreServerOptions) => ImapCoreServer;
  imapHandler: ImapHandlerModule;
}
interface ImapConnectionModule {
  IMAPConnection: new (server: ImapCoreServer, socket: Socket, options: ConnectionOptions) => ImapConnection;
}
interface ErrorsModule {
  setGelf(handler: GelfHandler): void;
}
type IndexerClass = new (options?: { logger?: unknown }) => IndexerInstance;

const core = require('@zone-eu/wildduck/imap-core/index.js') as ImapCoreModule;
const connectionModule = require('@zone-eu/wildduck/imap-core/lib/imap-connection.js') as ImapConnectionModule;
const IndexerCtor = require('@zone-eu/wildduck/imap-core/lib/indexer/indexer.js') as IndexerClass;
const errorsModule = require('@zone-eu/wildduck/lib/errors.js') as ErrorsModule;
const imapTools = require('@zone-eu/wildduck/imap-core/lib/imap-tools.js') as { formatInternalDate(date: Date): string };

/** The imap-core command modules onionpost replaces or wraps (see search-command.ts, commands.ts). */
export type ImapCoreCommandName =
  | 'search'
  | 'create'
  | 'rename'
  | 'delete'
  | 'select'
  | 'status'
  | 'append'
  | 'copy'
  | 'move'
  | 'subscribe'
  | 'unsubscribe'
  | 'store'
  | 'uid-store';

/**
 * imap-core's module object for one command (lib/commands/<name>.js). Its dispatcher holds
 * these same objects (Node's module cache), so a handler set here is the one it calls.
 */
export function imapCoreCommand(name: ImapCoreCommandName): ImapCommandModule {
  return require(`@zone-eu/wildduck/imap-core/lib/commands/${name}.js`) as ImapCommandModule;
}

const wildduckRequire = createRequire(require.resolve('@zone-eu/wildduck/package.json'));

export const IMAPServer = core.IMAPServer;
export const IMAPConnection = connectionModule.IMAPConnection;
export const imapHandler: ImapHandlerModule = core.imapHandler;
/** INTERNALDATE text as formatResponse writes it (before quoting). */
export const formatInternalDate = (date: Date): string => imapTools.formatInternalDate(date);
export const libmime = wildduckRequire('libmime') as Libmime;
export const iconv = wildduckRequire('iconv-lite') as IconvLite;

const indexer = new IndexerCtor({});
export function getIndexer(): IndexerInstance {
  return indexer;
}

export interface ErrorSink {
  debug(obj: object, msg?: string): void;
}

let errorSink: ErrorSink | null = null;

/**
 * wildduck's lib/errors.js reports every protocol error (bad tags, unknown commands,
 * handler errors) through a GELF handler, printing to stderr by default. Send them to our
 * logger at debug level instead, without the machine's host name it adds.
 */
export function routeImapCoreErrors(sink: ErrorSink): void {
  errorSink = sink;
}

errorsModule.setGelf({
  emit(_channel: string, message: Record<string, unknown>): void {
    if (!errorSink) return;
    const fields: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(message)) {
      if (key === 'host' || key === 'facility' || key === 'timestamp' || key === 'full_message') continue;
      fields[key.replace(/^_/, '')] = value;
    }
    errorSink.debug({ imapCore: fields }, String(message.short_message ?? 'imap-core error'));
  },
});
