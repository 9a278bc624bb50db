/**
 * The TLS certificate of all listeners: loaded from the configured files, or (when not
 * configured) generated once as a self-signed certificate for the primary domain.
 *
 * Decisions
 * - ECDSA P-256 by default: generated in milliseconds, supported by every TLS 1.2/1.3 stack our
 *   peers use (OpenSSL-based MTAs, Thunderbird/NSS, mutt/GnuTLS, Node). `algorithm: 'rsa-2048'`
 *   exists for very old clients without ECDSA support; it costs 0.1-1 s to generate.
 * - Validity 10 years: the certificate is self-signed, so clients either pin it or skip
 *   verification (onion transport is already end-to-end encrypted and authenticated by the
 *   address); a short lifetime would only break pinned exceptions in mail clients.
 * - subjectAltName DNS:<domain> and DNS:localhost (for local tools), CN=<domain>.
 * - Files are written atomically (temp file, fsync, link into place, directory fsync); the key
 *   with mode 0600. link() never replaces an existing file, so a concurrent or earlier
 *   generation is never clobbered. The key is written before the certificate; if we crash in
 *   between, the next start finds the key and issues a certificate for it.
 * - Loading never overwrites anything: a configured pair that is unreadable, invalid or
 *   mismatched is an error naming the file.
 * - No DH parameters: ECDHE key exchange needs none.
 */
import { X509Certificate, createPrivateKey, createPublicKey, randomBytes, webcrypto, type KeyObject } from 'node:crypto';
import { chmod, link, mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { domainToASCII } from 'node:url';
import type { Logger } from '../log/logger.js';
import { installReflectMetadataShim } from './reflect-metadata-shim.js';

export type CertificateAlgorithm = 'ecdsa-p256' | 'rsa-2048';

export interface EnsureCertificateOptions {
  certFile: string;
  keyFile: string;
  /** Primary domain (the onion name); goes into CN and subjectAltName. */
  domain: string;
  /** Generate a self-signed pair when both files are missing (false: missing files are an error). */
  generate: boolean;
  algorithm?: CertificateAlgorithm;
  validityDays?: number;
  /** Warnings (key readable by others, certificate expired or not for the domain). */
  logger?: Logger;
}

export interface CertificateMaterial {
  /** PEM private key. */
  key: Buffer;
  /** PEM certificate (chain). */
  cert: Buffer;
  generated: boolean;
}

export class CertificateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CertificateError';
  }
}

const DEFAULT_VALIDITY_DAYS = 3650;

export async function ensureCertificate(options: EnsureCertificateOptions): Promise<CertificateMaterial> {
  const { certFile, keyFile } = options;
  const [haveKey, haveCert] = await Promise.all([exists(keyFile, 'key'), exists(certFile, 'certificate')]);

  if (haveKey && haveCert) {
    return { ...(await loadPair(options)), generated: false };
  }
  if (!options.generate) {
    const missing = [!haveCert && `certificate file ${certFile}`, !haveKey && `key file ${keyFile}`].filter(Boolean).join(' and ');
    throw new CertificateError(`TLS ${missing} not found; fix tls.cert / tls.key in the config, or remove both to use a generated certificate`);
  }
  if (haveCert && !haveKey) {
    throw new CertificateError(
      `TLS certificate ${certFile} exists but its key file ${keyFile} is missing; restore the key, or remove the certificate to generate a new pair`,
    );
  }

  let keyPem: Buffer;
  let privateKey: KeyObject;
  if (haveKey) {
    // Recovery: the key was written but the certificate was not (interrupted generation).
    ({ pem: keyPem, key: privateKey } = await readPrivateKey(keyFile));
  } else {
    const generated = await generateKeyPair(options.algorithm ?? 'ecdsa-p256');
    keyPem = generated.pem;
    privateKey = generated.key;
    if (!(await writeFileNoClobber(keyFile, keyPem, 0o600))) {
      // Someone else generated a pair at the same time; use theirs.
      return ensureCertificate(options);
    }
  }
  const certPem = await selfSignedCertificate(privateKey, options.domain, options.validityDays ?? DEFAULT_VALIDITY_DAYS);
  if (!(await writeFileNoClobber(certFile, certPem, 0o644))) {
    return ensureCertificate(options);
  }
  return { key: keyPem, cert: certPem, generated: true };
}

async function exists(file: string, what: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new CertificateError(`cannot access TLS ${what} file ${file}: ${(err as Error).message}`);
  }
}

async function readPrivateKey(keyFile: string): Promise<{ pem: Buffer; key: KeyObject }> {
  let pem: Buffer;
  try {
    pem = await readFile(keyFile);
  } catch (err) {
    throw new CertificateError(`cannot read TLS key file ${keyFile}: ${(err as Error).message}`);
  }
  try {
    return { pem, key: createPrivateKey(pem) };
  } catch (err) {
    throw new CertificateError(`TLS key file ${keyFile} does not hold a valid (unencrypted PEM) private key: ${(err as Error).message}`);
  }
}

async function loadPair(options: EnsureCertificateOptions): Promise<{ key: Buffer; cert: Buffer }> {
  const { certFile, keyFile, logger } = options;
  const { pem: keyPem, key } = await readPrivateKey(keyFile);
  let certPem: Buffer;
  try {
    certPem = await readFile(certFile);
  } catch (err) {
    throw new CertificateError(`cannot read TLS certificate file ${certFile}: ${(err as Error).message}`);
  }
  let cert: X509Certificate;
  try {
    // The first certificate of the file is the leaf; a chain may follow it.
    cert = new X509Certificate(certPem);
  } catch (err) {
    throw new CertificateError(`TLS certificate file ${certFile} does not hold a valid PEM certificate: ${(err as Error).message}`);
  }
  if (!cert.checkPrivateKey(key)) {
    throw new CertificateError(`TLS certificate ${certFile} does not match the private key ${keyFile}`);
  }
  if (logger) {
    try {
      const mode = (await stat(keyFile)).mode;
      if (mode & 0o077) logger.warn({ file: keyFile, mode: (mode & 0o777).toString(8) }, 'TLS key file is readable by other users; chmod 600 it');
    } catch {
      // stat worked a moment ago; nothing useful to add
    }
    if (new Date(cert.validTo).getTime() < Date.now()) {
      logger.warn({ file: certFile, validTo: cert.validTo }, 'TLS certificate has expired');
    }
    const ascii = domainToASCII(options.domain) || options.domain;
    if (!cert.checkHost(ascii)) {
      logger.warn({ file: certFile, domain: options.domain }, 'TLS certificate is not issued for the primary domain');
    }
  }
  return { key: keyPem, cert: certPem };
}

// ---------------------------------------------------------------------------------------
// generation

type Algorithms = { import: webcrypto.RsaHashedImportParams | webcrypto.EcKeyImportParams; sign: webcrypto.Algorithm | webcrypto.EcdsaParams };

function algorithmsFor(key: KeyObject): Algorithms {
  if (key.asymmetricKeyType === 'ec') {
    const curve = { prime256v1: 'P-256', secp384r1: 'P-384', secp521r1: 'P-521' }[key.asymmetricKeyDetails?.namedCurve ?? ''];
    if (!curve) throw new CertificateError(`unsupported EC curve ${key.asymmetricKeyDetails?.namedCurve ?? '?'} in the TLS key`);
    const hash = curve === 'P-256' ? 'SHA-256' : curve === 'P-384' ? 'SHA-384' : 'SHA-512';
    return {
      import: { name: 'ECDSA', namedCurve: curve },
      sign: { name: 'ECDSA', hash },
    };
  }
  if (key.asymmetricKeyType === 'rsa') {
    return {
      import: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
      sign: { name: 'RSASSA-PKCS1-v1_5' },
    };
  }
  throw new CertificateError(`unsupported TLS key type ${key.asymmetricKeyType ?? '?'} (use an EC or RSA key)`);
}

async function generateKeyPair(algorithm: CertificateAlgorithm): Promise<{ pem: Buffer; key: KeyObject }> {
  const params: webcrypto.EcKeyGenParams | webcrypto.RsaHashedKeyGenParams =
    algorithm === 'rsa-2048'
      ? { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' }
      : { name: 'ECDSA', namedCurve: 'P-256' };
  const pair = (await webcrypto.subtle.generateKey(params, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', pair.privateKey));
  const key = createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' });
  return { pem: Buffer.from(key.export({ type: 'pkcs8', format: 'pem' })), key };
}

async function selfSignedCertificate(privateKey: KeyObject, domain: string, validityDays: number): Promise<Buffer> {
  installReflectMetadataShim();
  const x509 = await import('@peculiar/x509');
  const crypto = webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0];
  x509.cryptoProvider.set(crypto);

  const algs = algorithmsFor(privateKey);
  const pkcs8 = privateKey.export({ type: 'pkcs8', format: 'der' });
  const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  const keys = {
    privateKey: await webcrypto.subtle.importKey('pkcs8', pkcs8, algs.import, false, ['sign']),
    publicKey: await webcrypto.subtle.importKey('spki', spki, algs.import, true, ['verify']),
  };

  const name = domainToASCII(domain.toLowerCase()) || domain.toLowerCase();
  if (!/^[a-z0-9.-]+$/.test(name)) {
    throw new CertificateError(`cannot issue a certificate for the domain ${JSON.stringify(domain)}`);
  }
  const dnsNames = name === 'localhost' ? [name] : [name, 'localhost'];
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x01; // positive and without a leading zero byte
  // Whole days (UTC midnight, minus one day for skewed clocks): no exact creation time.
  const day = 24 * 60 * 60 * 1000;
  const notBefore = new Date(Math.floor(Date.now() / day) * day - day);
  const notAfter = new Date(notBefore.getTime() + (validityDays + 1) * day);
  const usage = x509.KeyUsageFlags.digitalSignature | (privateKey.asymmetricKeyType === 'rsa' ? x509.KeyUsageFlags.keyEncipherment : 0);

  type CreateParams = Parameters<typeof x509.X509CertificateGenerator.createSelfSigned>[0];
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial.toString('hex'),
    // CN is limited to 64 characters (a v3 onion name has 62).
    name: name.length <= 64 ? `CN=${name}` : 'O=onionpost',
    notBefore,
    notAfter,
    signingAlgorithm: algs.sign,
    keys: keys as unknown as CreateParams['keys'],
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(usage, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(dnsNames.map((value) => ({ type: 'dns' as const, value }))),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey as unknown as CreateParams['keys']['publicKey'], false, crypto),
    ],
  });
  return Buffer.from(cert.toString('pem') + '\n');
}

/**
 * Writes `data` to `file` atomically unless `file` already exists (then returns false).
 * Temp file in the same directory, fsync, link() into place (fails instead of replacing),
 * directory fsync.
 */
async function writeFileNoClobber(file: string, data: Buffer, mode: number): Promise<boolean> {
  const dir = path.dirname(file);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await chmod(tmp, mode); // the umask may have taken bits away from a certificate; never adds to the key
    try {
      await link(tmp, file);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') return false;
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'ENOSYS' && code !== 'EOPNOTSUPP') throw err;
      // File systems without hard links: check-then-rename (a race is harmless for us, the
      // daemon holds an instance lock while it does this).
      if (await exists(file, 'output')) return false;
      await rename(tmp, file);
    }
    await syncDir(dir);
    return true;
  } catch (err) {
    if (err instanceof CertificateError) throw err;
    throw new CertificateError(`cannot write ${file}: ${(err as Error).message}`);
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}

async function syncDir(dir: string): Promise<void> {
  const dh = await open(dir, 'r');
  try {
    await dh.sync();
  } catch (err) {
    // Some file systems cannot fsync a directory; the data itself is synced already.
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'EISDIR' && code !== 'EPERM') throw err;
  } finally {
    await dh.close();
  }
}
