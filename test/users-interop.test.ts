/**
 * Interop with Dovecot's own password code: `doveadm pw` hashes verify here, and our hashes
 * verify in `doveadm pw -t`. Skipped (with the reason) where doveadm is not installed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { hashPassword, shaCryptHash, verifyPassword } from '../src/users/password-hash.js';

const probe = spawnSync('doveadm', ['pw', '-l'], { encoding: 'utf8' });
const skip = probe.error || probe.status !== 0 ? 'doveadm not found (install dovecot-core to run the Dovecot interop tests)' : false;

function doveadm(args: string[]): { status: number | null; out: string } {
  const r = spawnSync('doveadm', args, { encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}`.trim() };
}

/** `doveadm pw -t HASH -p PASSWORD`: 0 and "(verified)" on a match. */
function dovecotVerifies(hash: string, password: string): boolean {
  const r = doveadm(['pw', '-t', hash, '-p', password]);
  return r.status === 0 && r.out.includes('(verified)');
}

test('hashes made by doveadm pw verify with our code', { skip }, async () => {
  for (const scheme of ['ARGON2ID', 'ARGON2I', 'SHA512-CRYPT', 'SHA256-CRYPT', 'BLF-CRYPT']) {
    const r = doveadm(['pw', '-s', scheme, '-p', 'secret']);
    assert.equal(r.status, 0, r.out);
    assert.ok(r.out.startsWith(`{${scheme}}`), r.out);
    assert.equal(await verifyPassword(r.out, 'secret'), true, r.out);
    assert.equal(await verifyPassword(r.out, 'secret!'), false, r.out);
  }
  // Non-default SHA-crypt rounds (-r) too.
  const rounds = doveadm(['pw', '-s', 'SHA512-CRYPT', '-r', '7000', '-p', 'secret']);
  assert.match(rounds.out, /^\{SHA512-CRYPT\}\$6\$rounds=7000\$/);
  assert.equal(await verifyPassword(rounds.out, 'secret'), true);
});

test('our hashes verify with doveadm pw -t', { skip }, async () => {
  const ours = [
    await hashPassword('secret'),
    shaCryptHash('secret', 'sha512'),
    shaCryptHash('secret', 'sha512', 12345),
    shaCryptHash('secret', 'sha256'),
  ];
  for (const h of ours) {
    assert.equal(dovecotVerifies(h, 'secret'), true, `doveadm rejects ${h}`);
    assert.equal(dovecotVerifies(h, 'Secret'), false, `doveadm accepts a wrong password for ${h}`);
  }
  // Non-ASCII passwords are the same UTF-8 bytes on both sides.
  const h = await hashPassword('пароль ü');
  assert.equal(dovecotVerifies(h, 'пароль ü'), true);
});
