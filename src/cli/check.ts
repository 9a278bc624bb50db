/**
 * `onionpost check`: validates the config and what it points to, then prints the effective
 * settings as TOML, like `doveconf -n` / `smtpd -n`: by default the keys whose value differs
 * from the default, with `--all` every key. Passwords are never printed.
 *
 * Exit codes: 0 valid (warnings go to stderr), 2 errors (each names the key or file and the fix).
 */
import { X509Certificate } from 'node:crypto';
import { accessSync, constants, existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfigDetailed, type Value } from '../config/load.js';
import { KEYS } from '../config/schema.js';
import { ensureCertificate } from '../tls/certificate.js';
import { isOnionDomain, isValidV3OnionAddress } from '../tor/onion-address.js';
import { onionKeyDir, readOnionKey } from '../tor/onion-service.js';
import { parseAliases } from '../users/aliases.js';
import { UserDb } from '../users/user-db.js';
import { CliError, type CommandGroup } from './command.js';
import { configuredAccount } from './privileges.js';

export const CHECK_USAGE = `usage: onionpost check [--config FILE] [--all]

Validates the config file and the files it names, then prints the effective settings
that differ from the defaults (--all: every setting). Exit code 2 when something is wrong.
`;

const SECRET_KEYS = new Set(['tor.control_password']);

function toml(v: Value): string {
  if (Array.isArray(v)) return `[${v.map((x) => JSON.stringify(x)).join(', ')}]`;
  return typeof v === 'string' ? JSON.stringify(v) : String(v);
}

const check: CommandGroup = async (args, ctx) => {
  let all = false;
  try {
    const { values } = parseArgs({ args, options: { all: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true });
    if (values.help) {
      ctx.io.stdout.write(CHECK_USAGE);
      return 0;
    }
    all = values.all ?? false;
  } catch (err) {
    throw new CliError(`check: ${(err as Error).message}\n\n${CHECK_USAGE}`, 64);
  }
  const file = ctx.configFile();
  const { config, values } = loadConfigDetailed(file); // ConfigError: exit 2 with the key named
  const errors: string[] = [];
  const warnings: string[] = [];

  // Domain and onion.
  if (isOnionDomain(config.domain) && !isValidV3OnionAddress(config.domain)) {
    errors.push(`key "domain": ${config.domain} is not a valid v3 onion address (56 base32 characters, checksum); run \`onionpost init\``);
  } else if (!isOnionDomain(config.domain)) {
    warnings.push(`key "domain" is ${JSON.stringify(config.domain)}, not an onion address: run \`onionpost init\` to create the onion service`);
  }
  try {
    const key = await readOnionKey(onionKeyDir(config.dataDir));
    if (key && !config.localDomains.includes(key.hostname)) {
      warnings.push(`the onion key in ${onionKeyDir(config.dataDir)} is for ${key.hostname}, which is not "domain" or in "local_domains"`);
    }
    if (key && !config.tor.control) warnings.push(`the data dir has an onion key but [tor] control is empty: the daemon cannot publish it`);
  } catch (err) {
    errors.push((err as Error).message);
  }

  // Certificate.
  if (config.tls.configured) {
    try {
      await ensureCertificate({ certFile: config.tls.cert, keyFile: config.tls.key, domain: config.domain, generate: false });
      const cert = new X509Certificate(readFileSync(config.tls.cert));
      if (cert.checkHost(config.domain) === undefined) warnings.push(`TLS certificate ${config.tls.cert} is not issued for ${config.domain}`);
      if (new Date(cert.validTo).getTime() < Date.now()) warnings.push(`TLS certificate ${config.tls.cert} expired on ${cert.validTo}`);
    } catch (err) {
      errors.push(`keys "tls.cert"/"tls.key": ${(err as Error).message}`);
    }
  } else if (existsSync(config.tls.cert)) {
    try {
      const cert = new X509Certificate(readFileSync(config.tls.cert));
      if (cert.checkHost(config.domain) === undefined) {
        warnings.push(`the generated certificate ${config.tls.cert} is for another name; \`onionpost init\` issues a new one for ${config.domain}`);
      }
    } catch (err) {
      errors.push(`${config.tls.cert}: ${(err as Error).message} (delete it to have a new one generated)`);
    }
  }

  // Daemon user.
  try {
    const account = configuredAccount(config.daemon);
    const privileged = [config.smtp.inbound, config.submission.starttls, config.submission.tls, config.imap.plain, config.imap.tls].some((l) => l.port > 0 && l.port < 1024);
    if (privileged && !account) warnings.push('a listener uses a port below 1024: onionpost must start as root, and should then drop to [daemon] user; set it');
  } catch (err) {
    errors.push((err as Error).message);
  }

  // Files.
  const users = new UserDb(config.users.file, { localDomains: config.localDomains });
  for (const p of users.problems) warnings.push(`users: ${p}`);
  if (!existsSync(config.users.file)) warnings.push(`no users yet (${config.users.file}): add one with \`onionpost user add NAME\``);
  if (existsSync(config.users.aliases)) {
    try {
      const { problems } = parseAliases(readFileSync(config.users.aliases, 'utf8'), config.localDomains);
      for (const p of problems) warnings.push(`aliases: ${config.users.aliases}:${p.line}: ${p.message}`);
    } catch (err) {
      errors.push(`key "users.aliases": cannot read ${config.users.aliases}: ${(err as Error).message}`);
    }
  }
  if (existsSync(config.dataDir)) {
    try {
      accessSync(config.dataDir, constants.W_OK | constants.X_OK);
    } catch {
      warnings.push(`the data dir ${config.dataDir} is not writable by this user`);
    }
  } else warnings.push(`the data dir ${config.dataDir} does not exist yet (\`onionpost init\` or \`start\` creates it)`);
  if (config.tor.controlPassword && config.file) {
    const mode = statSync(config.file).mode & 0o777;
    if (mode & 0o004) warnings.push(`${config.file} holds the Tor control password and is readable by everyone: chmod 600 it`);
  }

  for (const w of warnings) ctx.io.stderr.write(`onionpost: warning: ${w}\n`);
  if (errors.length > 0) {
    for (const e of errors) ctx.io.stderr.write(`onionpost: error: ${e}\n`);
    throw new ConfigError(`${file ?? 'the embedded default config'}: ${errors.length} error${errors.length === 1 ? '' : 's'}`);
  }

  // The effective settings.
  const out: string[] = [`# onionpost check: ${file ? path.resolve(file) : 'embedded default config'} is valid`];
  out.push(all ? '# every setting, with its effective value' : '# settings that differ from the defaults (--all: every setting)');
  let section = '';
  for (const spec of KEYS) {
    const value = values.get(spec.key)!;
    if (!all && JSON.stringify(value) === JSON.stringify(spec.default)) continue;
    const dot = spec.key.indexOf('.');
    const sec = dot === -1 ? '' : spec.key.slice(0, dot);
    const name = dot === -1 ? spec.key : spec.key.slice(dot + 1);
    if (sec !== section) {
      out.push('', `[${sec}]`);
      section = sec;
    }
    out.push(`${name} = ${SECRET_KEYS.has(spec.key) && value !== '' ? '"********"' : toml(value)}`);
  }
  ctx.io.stdout.write(`${out.join('\n')}\n`);
  return 0;
};

export default check;
