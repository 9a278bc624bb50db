/**
 * `onionpost client-config USER`: ready-to-paste settings for mutt/neomutt, Thunderbird and
 * mbsync, reaching this server's onion through the user's Tor SOCKS port.
 *
 * The ports are the onion's (143/993 IMAP, 587/465 submission), for the listeners that are
 * on. Without TLS when the server allows plain-text logins from loopback (every onion client
 * arrives from 127.0.0.1 and the onion circuit is encrypted end to end); otherwise the TLS
 * ports, with the certificate's fingerprint to compare with what the client shows.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { isOnionDomain } from '../tor/onion-address.js';
import { UserDb } from '../users/user-db.js';
import { CliError, type CommandGroup } from './command.js';

export const CLIENT_CONFIG_USAGE = `usage: onionpost client-config USER [--client mutt|thunderbird|mbsync] [--socks HOST:PORT]

Prints mail client settings for USER: mutt/neomutt, Thunderbird and mbsync (all three
unless --client). --socks is the Tor SOCKS port on the user's machine (default
127.0.0.1:9050; Tor Browser's is 127.0.0.1:9150).
`;

const CLIENTS = ['mutt', 'thunderbird', 'mbsync'] as const;
type Client = (typeof CLIENTS)[number];

const clientConfig: CommandGroup = async (args, ctx) => {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { client: { type: 'string' }, socks: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    throw new CliError(`client-config: ${(err as Error).message}\n\n${CLIENT_CONFIG_USAGE}`, 64);
  }
  if (parsed.values.help) {
    ctx.io.stdout.write(CLIENT_CONFIG_USAGE);
    return 0;
  }
  if (parsed.positionals.length !== 1) throw new CliError(`client-config: give one USER\n\n${CLIENT_CONFIG_USAGE}`, 64);
  const clients: readonly Client[] = parsed.values.client ? [parsed.values.client as Client] : CLIENTS;
  if (!CLIENTS.includes(clients[0]!)) throw new CliError(`client-config: --client must be one of ${CLIENTS.join(', ')}`, 64);
  const socks = parsed.values.socks ?? '127.0.0.1:9050';
  const sm = /^([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$/.exec(socks);
  if (!sm) throw new CliError(`client-config: --socks must be HOST:PORT, e.g. 127.0.0.1:9050`, 64);
  const [socksHost, socksPort] = [sm[1]!, sm[2]!];

  const config = ctx.config();
  const user = new UserDb(config.users.file, { localDomains: config.localDomains }).get(parsed.positionals[0]!);
  if (!user) throw new CliError(`no user "${parsed.positionals[0]}" in ${config.users.file}; add one with \`onionpost user add NAME\``, 67);
  const host = config.domain;
  if (!isOnionDomain(host)) {
    ctx.io.stderr.write(`onionpost: warning: the domain is ${host}, not an onion address; run \`onionpost init\` first for settings that work over Tor\n`);
  }
  const name = user.name;
  const address = `${name}@${host}`;
  const plain = config.submission.allowPlaintextLoopback;
  const imap = plain && config.imap.plain.port ? { port: 143, tls: false } : config.imap.tls.port ? { port: 993, tls: true } : { port: 143, tls: false };
  const smtp = plain && config.submission.starttls.port ? { port: 587, tls: false } : config.submission.tls.port ? { port: 465, tls: true } : { port: 587, tls: false };
  let fingerprint = '';
  try {
    fingerprint = new X509Certificate(readFileSync(config.tls.cert)).fingerprint256;
  } catch {
    fingerprint = '(no certificate yet: it is generated at the first start)';
  }

  const out: string[] = [];
  out.push(`# Mail settings for ${address}`);
  out.push(`# Server: ${host}, IMAP port ${imap.port}${imap.tls ? ' (TLS)' : ''}, submission port ${smtp.port}${smtp.tls ? ' (TLS)' : ''}, user name "${name}".`);
  out.push(`# Every connection goes through Tor (SOCKS ${socks}); the onion circuit is encrypted end to end.`);
  if (imap.tls || smtp.tls) out.push(`# TLS certificate (self-signed unless you configured one), SHA-256: ${fingerprint}`);

  if (clients.includes('mutt')) {
    const imapUrl = `${imap.tls ? 'imaps' : 'imap'}://${name}@${host}:${imap.port}/`;
    const smtpUrl = `${smtp.tls ? 'smtps' : 'smtp'}://${name}@${host}:${smtp.port}/`;
    out.push(
      '',
      '## mutt / neomutt: ~/.muttrc or ~/.config/neomutt/neomuttrc',
      `## Start it through Tor: TORSOCKS_TOR_ADDRESS=${socksHost.replace(/^\[|\]$/g, '')} TORSOCKS_TOR_PORT=${socksPort} torsocks neomutt`,
      `set from = "${address}"`,
      `set imap_user = "${name}"`,
      `set folder = "${imapUrl}"`,
      'set spoolfile = "+INBOX"',
      'set record = "+Sent"',
      'set postponed = "+Drafts"',
      'set trash = "+Trash"',
      `set smtp_url = "${smtpUrl}"`,
      'set imap_check_subscribed = yes',
      'set imap_keepalive = 300',
      'set mail_check = 60',
      ...(imap.tls || smtp.tls ? ['# The first connection shows the certificate: compare its SHA-256 fingerprint above, then accept it (a)lways.'] : ['set ssl_starttls = no', 'set ssl_force_tls = no']),
      '# Passwords: mutt asks once per session; or `set imap_pass` / `set smtp_pass` (keep the file private).',
    );
  }
  if (clients.includes('thunderbird')) {
    const sec = (tls: boolean): string => (tls ? 'SSL/TLS' : 'None');
    out.push(
      '',
      '## Thunderbird',
      `## 1. Settings > General > Network & Disk Space > Settings...: Manual proxy configuration,`,
      `##    SOCKS Host ${socksHost.replace(/^\[|\]$/g, '')} Port ${socksPort}, SOCKS v5, and tick "Proxy DNS when using SOCKS v5".`,
      `## 2. New account > Configure manually:`,
      `##    Incoming: IMAP, server ${host}, port ${imap.port}, connection security ${sec(imap.tls)}, authentication "Normal password", user name ${name}`,
      `##    Outgoing: SMTP, server ${host}, port ${smtp.port}, connection security ${sec(smtp.tls)}, authentication "Normal password", user name ${name}`,
      `##    Email address: ${address}`,
      ...(imap.tls || smtp.tls ? [`##    Accept the certificate once it matches SHA-256 ${fingerprint}.`] : []),
    );
  }
  if (clients.includes('mbsync')) {
    const h = socksHost.replace(/^\[|\]$/g, '');
    out.push(
      '',
      '## mbsync (isync): ~/.mbsyncrc; the Tunnel goes through Tor with socat (or run `torsocks mbsync -a` with Host/Port instead)',
      `IMAPAccount ${name}-onion`,
      `Tunnel "socat - SOCKS4A:${h}:${host}:${imap.port},socksport=${socksPort}"`,
      `User ${name}`,
      `PassCmd "pass show onionpost/${name}"`,
      `TLSType ${imap.tls ? 'IMAPS' : 'None'}`,
      ...(imap.tls ? [`# The server's certificate is self-signed: copy it from the server (${config.tls.cert}), then:`, `CertificateFile ~/.config/onionpost-${name}.pem`] : []),
      '',
      `IMAPStore ${name}-onion-remote`,
      `Account ${name}-onion`,
      '',
      `MaildirStore ${name}-onion-local`,
      `Path ~/Mail/${host}/`,
      `Inbox ~/Mail/${host}/INBOX`,
      'SubFolders Verbatim',
      '',
      `Channel ${name}-onion`,
      `Far :${name}-onion-remote:`,
      `Near :${name}-onion-local:`,
      'Patterns *',
      'Create Both',
      'Expunge Both',
      'SyncState *',
      '# (isync before 1.4: SSLType instead of TLSType, Master/Slave instead of Far/Near.)',
    );
  }
  ctx.io.stdout.write(`${out.join('\n')}\n`);
  return 0;
};

export default clientConfig;
