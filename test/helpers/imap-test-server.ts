/** An IMAP server over a store for one user/password, listening on a free loopback port. */
import { pino } from 'pino';
import { createImapServer, type ImapServer } from '../../src/imap/imap-server.js';
import type { MailStore } from '../../src/store/types.js';

export interface OneUserImapOptions {
  user: string;
  password: string;
  tls?: { key: string | Buffer; cert: string | Buffer };
  host?: string;
}

export async function startOneUserImap(store: MailStore, options: OneUserImapOptions): Promise<ImapServer> {
  const { user, password } = options;
  const server = createImapServer({
    store,
    logger: pino({ level: 'silent' }),
    secure: false,
    ...(options.tls ? { tls: options.tls } : {}),
    authenticate: async (u, p) => (u === user && p === password ? { id: user, username: user } : null),
    closeTimeout: 100,
  });
  await server.listen(0, options.host ?? '127.0.0.1');
  return server;
}
