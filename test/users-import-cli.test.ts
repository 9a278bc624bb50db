/** `onionpost user import PASSWD-FILE`: Dovecot users come over with their hashes. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import bcrypt from 'bcryptjs';
import { hashPassword } from '../src/users/password-hash.js';
import { UserDb } from '../src/users/user-db.js';
import { runCli } from './helpers/cli.js';

let dir: string;
let config: string;
let usersFile: string;

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-user-import-'));
  config = path.join(dir, 'onionpost.toml');
  usersFile = path.join(dir, 'users.passwd');
  await writeFile(config, `data_dir = ${JSON.stringify(path.join(dir, 'data'))}\ndomain = "example.onion"\n[users]\nfile = ${JSON.stringify(usersFile)}\n`);
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A {SHA512-CRYPT} hash from Dovecot's own doveadm when installed, else null. */
function doveadmSha512(password: string): string | null {
  const r = spawnSync('doveadm', ['pw', '-s', 'SHA512-CRYPT', '-p', password], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

test('imports hashes as they are, skips existing names and bad lines, --dry-run writes nothing', async () => {
  const add = await runCli(['--config', config, 'user', 'add', 'carol', '--password-stdin'], { input: 'carol-pw\n' });
  assert.equal(add.code, 0, add.stderr);
  const sha = doveadmSha512('alice-pw');
  const lines = [
    '# exported from Dovecot',
    sha ? `alice:${sha}:5000:5000::/home/vmail/alice::userdb_quota_rule=*:storage=1G` : '',
    `bob@example.onion:{BLF-CRYPT}${bcrypt.hashSync('bob-pw', 4)}::::::`,
    `dave:${await hashPassword('dave-pw')}::::::`,
    'carol:{PLAIN}other::::::',
    'eve:{NOPE}xyz::::::',
    'Bad Name:{PLAIN}x::::::',
  ].filter((l) => l !== '');
  const src = path.join(dir, 'dovecot-users');
  await writeFile(src, lines.join('\n') + '\n');
  const before = await readFile(usersFile, 'utf8');

  const dry = await runCli(['--config', config, 'user', 'import', src, '--dry-run']);
  assert.equal(dry.code, 0, dry.stderr);
  assert.match(dry.stdout, new RegExp(`dry run: would import ${sha ? 3 : 2} user`));
  assert.equal(await readFile(usersFile, 'utf8'), before, '--dry-run changes nothing');

  const r = await runCli(['--config', config, 'user', 'import', src]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`imported ${sha ? 3 : 2} user\\(s\\)`));
  assert.match(r.stderr, /user "carol" already exists; skipped/);
  assert.match(r.stderr, /"eve" skipped: password scheme \{NOPE\} is not supported/);
  assert.match(r.stderr, /user name "bad name" may only contain/);
  assert.doesNotMatch(r.stderr, /PLAIN\} password/, 'carol (skipped) is not reported as imported in clear');
  assert.doesNotMatch(r.stdout + r.stderr, /\$2[aby]\$|\$argon2|\$6\$/, 'no hash is printed');

  const db = new UserDb(usersFile, { localDomains: ['example.onion'] });
  assert.ok(await db.authenticate('bob@example.onion', 'bob-pw'), 'BLF-CRYPT user logs in');
  assert.ok(await db.authenticate('dave', 'dave-pw'), 'ARGON2ID user logs in');
  assert.ok(await db.authenticate('carol', 'carol-pw'), 'the existing carol keeps her password');
  assert.equal(await db.authenticate('carol', 'other'), null);
  if (sha) {
    assert.ok(await db.authenticate('alice', 'alice-pw'), 'SHA512-CRYPT (doveadm) user logs in');
    assert.equal(db.get('alice')!.extraFields['userdb_quota_rule'], '*:storage=1G', 'extra fields kept');
  }

  const again = await runCli(['--config', config, 'user', 'import', src]);
  assert.equal(again.code, 0);
  assert.match(again.stdout, /imported 0 user/);

  const missing = await runCli(['--config', config, 'user', 'import', path.join(dir, 'nope')]);
  assert.equal(missing.code, 66);
});
