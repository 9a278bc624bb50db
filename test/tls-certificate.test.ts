import assert from 'node:assert/strict';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { CertificateError, ensureCertificate } from '../src/tls/certificate.js';

const DOMAIN = 'mv2gugvcecgbi4sbp6ckoa2faqv5tcwqmpo367phqorka2d4tbz6xv4l.onion';

/** Completes a real TLS handshake against the pair, verifying with the certificate as CA. */
async function handshake(key: Buffer, cert: Buffer, servername: string): Promise<tls.TLSSocket> {
  const server = tls.createServer({ key, cert }, (s) => s.end());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  try {
    return await new Promise<tls.TLSSocket>((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', port, servername, ca: [cert], rejectUnauthorized: true }, () => {
        socket.end();
        resolve(socket);
      });
      socket.once('error', reject);
    });
  } finally {
    server.close();
  }
}

describe('TLS certificate', () => {
  let dir: string;
  let n = 0;
  const files = () => {
    n++;
    return { certFile: path.join(dir, `c${n}`, 'cert.pem'), keyFile: path.join(dir, `c${n}`, 'key.pem') };
  };
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-tls-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('generates an ECDSA P-256 self-signed certificate for the domain and localhost, key 0600, in milliseconds', async () => {
    const f = files();
    const started = performance.now();
    const r = await ensureCertificate({ ...f, domain: DOMAIN, generate: true });
    const elapsed = performance.now() - started;
    assert.equal(r.generated, true);
    assert.ok(elapsed < 2000, `took ${elapsed} ms`);
    assert.deepEqual(await readFile(f.keyFile), r.key);
    assert.deepEqual(await readFile(f.certFile), r.cert);
    assert.equal((await stat(f.keyFile)).mode & 0o777, 0o600);
    assert.deepEqual(await readdir(path.dirname(f.keyFile)).then((l) => l.sort()), ['cert.pem', 'key.pem'], 'no temp files left');

    const cert = new X509Certificate(r.cert);
    const key = createPrivateKey(r.key);
    assert.equal(key.asymmetricKeyType, 'ec');
    assert.equal(key.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    assert.ok(cert.checkPrivateKey(key));
    assert.equal(cert.subject, `CN=${DOMAIN}`);
    assert.equal(cert.subjectAltName, `DNS:${DOMAIN}, DNS:localhost`);
    assert.equal(cert.ca, false);
    assert.ok(cert.verify(cert.publicKey), 'self-signed');
    const years = (new Date(cert.validTo).getTime() - Date.now()) / (365.25 * 24 * 3600 * 1000);
    assert.ok(years > 9.9 && years < 10.1, `validity ${years} years`);
    assert.ok(new Date(cert.validFrom).getTime() <= Date.now());

    // Real handshakes, verified with the certificate as the only trust anchor.
    assert.equal((await handshake(r.key, r.cert, DOMAIN)).authorized, true);
    assert.equal((await handshake(r.key, r.cert, 'localhost')).authorized, true);
    await assert.rejects(handshake(r.key, r.cert, 'other.onion'), /altnames|Hostname\/IP does not match/i);
  });

  it('loads existing files unchanged the second time (generated: false)', async () => {
    const f = files();
    const first = await ensureCertificate({ ...f, domain: DOMAIN, generate: true });
    const second = await ensureCertificate({ ...f, domain: DOMAIN, generate: true });
    assert.equal(second.generated, false);
    assert.ok(second.key.equals(first.key) && second.cert.equals(first.cert));
    const third = await ensureCertificate({ ...f, domain: DOMAIN, generate: false });
    assert.ok(third.cert.equals(first.cert));
  });

  it('RSA-2048 on request', async () => {
    const f = files();
    const r = await ensureCertificate({ ...f, domain: 'localhost', generate: true, algorithm: 'rsa-2048' });
    const key = createPrivateKey(r.key);
    assert.equal(key.asymmetricKeyType, 'rsa');
    assert.equal(key.asymmetricKeyDetails?.modulusLength, 2048);
    assert.equal(new X509Certificate(r.cert).subjectAltName, 'DNS:localhost');
    assert.equal((await handshake(r.key, r.cert, 'localhost')).authorized, true);
  });

  it('missing files without generate: error naming the files', async () => {
    const f = files();
    await assert.rejects(ensureCertificate({ ...f, domain: DOMAIN, generate: false }), (err: Error) => {
      assert.ok(err instanceof CertificateError);
      assert.ok(err.message.includes(f.certFile) && err.message.includes(f.keyFile), err.message);
      return true;
    });
  });

  it('unreadable or invalid files: error naming the file; nothing is overwritten', async () => {
    const f = files();
    await ensureCertificate({ ...f, domain: DOMAIN, generate: true });
    const goodKey = await readFile(f.keyFile);

    await writeFile(f.certFile, 'not a certificate\n');
    await assert.rejects(ensureCertificate({ ...f, domain: DOMAIN, generate: true }), (err: Error) => {
      assert.ok(err instanceof CertificateError);
      assert.match(err.message, /does not hold a valid PEM certificate/);
      assert.ok(err.message.includes(f.certFile), err.message);
      return true;
    });
    assert.equal(await readFile(f.certFile, 'utf8'), 'not a certificate\n', 'left alone');

    await writeFile(f.keyFile, '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n');
    await assert.rejects(ensureCertificate({ ...f, domain: DOMAIN, generate: true }), (err: Error) => {
      assert.ok(err.message.includes(f.keyFile) && /private key/.test(err.message), err.message);
      return true;
    });
    await writeFile(f.keyFile, goodKey);

    // A directory where the certificate should be: unreadable.
    await unlink(f.certFile);
    await import('node:fs/promises').then((fs) => fs.mkdir(f.certFile));
    await assert.rejects(ensureCertificate({ ...f, domain: DOMAIN, generate: true }), (err: Error) => {
      assert.ok(err instanceof CertificateError);
      assert.ok(err.message.includes(f.certFile), err.message);
      return true;
    });
  });

  it('key and certificate that do not belong together are refused', async () => {
    const a = files();
    const b = files();
    await ensureCertificate({ ...a, domain: DOMAIN, generate: true });
    await ensureCertificate({ ...b, domain: DOMAIN, generate: true });
    await assert.rejects(ensureCertificate({ certFile: a.certFile, keyFile: b.keyFile, domain: DOMAIN, generate: true }), (err: Error) => {
      assert.match(err.message, /does not match the private key/);
      assert.ok(err.message.includes(a.certFile) && err.message.includes(b.keyFile));
      return true;
    });
  });

  it('a certificate without its key is an error (never replaced); a key without its certificate gets a new certificate', async () => {
    const f = files();
    const r = await ensureCertificate({ ...f, domain: DOMAIN, generate: true });
    await unlink(f.keyFile);
    await assert.rejects(ensureCertificate({ ...f, domain: DOMAIN, generate: true }), (err: Error) => {
      assert.ok(err.message.includes(f.keyFile) && /missing/.test(err.message), err.message);
      return true;
    });
    assert.ok((await readFile(f.certFile)).equals(r.cert), 'certificate untouched');

    // Interrupted generation: the key made it to disk, the certificate did not.
    await writeFile(f.keyFile, r.key, { mode: 0o600 });
    await unlink(f.certFile);
    const again = await ensureCertificate({ ...f, domain: DOMAIN, generate: true });
    assert.equal(again.generated, true);
    assert.ok(again.key.equals(r.key), 'existing key kept');
    assert.ok(new X509Certificate(again.cert).checkPrivateKey(createPrivateKey(r.key)));
    assert.equal((await handshake(again.key, again.cert, DOMAIN)).authorized, true);
  });

  it('concurrent generation for the same files ends with one matching pair', async () => {
    const f = files();
    const results = await Promise.all([1, 2, 3, 4].map(() => ensureCertificate({ ...f, domain: DOMAIN, generate: true })));
    const onDisk = { key: await readFile(f.keyFile), cert: await readFile(f.certFile) };
    assert.ok(new X509Certificate(onDisk.cert).checkPrivateKey(createPrivateKey(onDisk.key)));
    for (const r of results) {
      assert.ok(r.key.equals(onDisk.key) && r.cert.equals(onDisk.cert), 'every caller got the pair on disk');
    }
    assert.equal(results.filter((r) => r.generated).length >= 1, true);
  });
});
