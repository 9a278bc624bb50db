import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { UserDb, UserDbError } from '../src/users/user-db.js';
import { shaCryptHash } from '../src/users/password-hash.js';
import { sleep } from './helpers/wait-for.js';

function tmpDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'onionpost-users-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A pino logger that collects entries in memory. */
function memoryLogger(): { logger: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { logger, lines };
}


test('missing file: no users, no error; add creates it with mode 0600', async (t) => {
  const dir = tmpDir(t);
  const file = path.join(dir, 'sub', 'users.passwd');
  const db = new UserDb(file);
  assert.deepEqual(db.list(), []);
  assert.equal(db.get('alice'), undefined);
  assert.equal(await db.authenticate('alice', 'x'), null);
  const alice = await db.add('alice', 'secret one');
  assert.equal(alice.name, 'alice');
  assert.equal(alice.scheme, 'ARGON2ID');
  assert.equal(statSync(file).mode & 0o777, 0o600);
  assert.match(readFileSync(file, 'utf8'), /^alice:\{ARGON2ID\}\$argon2id\$v=19\$m=65536,t=3,p=1\$[^:]+::::::\n$/);
  assert.equal(existsSync(`${file}.lock`), false, 'lock released');
  assert.deepEqual(readdirSync(path.dirname(file)), ['users.passwd'], 'no temp files left');
});

test('authenticate: names, domains, wrong passwords, other schemes', async (t) => {
  const dir = tmpDir(t);
  const file = path.join(dir, 'users.passwd');
  writeFileSync(
    file,
    [
      '# migrated from Dovecot',
      `bob@example.onion:${shaCryptHash('bobpw', 'sha512')}:5000:5000::/home/bob::userdb_quota_rule=*:storage=1G`,
      'carol:{MD5}Xr4ilOzQ4PCOq3aQ0qbuaQ==',
      'broken line',
      '',
    ].join('\n'),
  );
  const { logger, lines } = memoryLogger();
  const db = new UserDb(file, logger, { localDomains: ['example.onion', 'alt.onion'] });
  await db.add('alice', 'alicepw');

  assert.equal((await db.authenticate('alice', 'alicepw'))?.name, 'alice');
  assert.equal((await db.authenticate('ALICE', 'alicepw'))?.name, 'alice', 'login names are case-insensitive');
  assert.equal((await db.authenticate('alice@example.onion', 'alicepw'))?.name, 'alice');
  assert.equal((await db.authenticate('alice@Alt.Onion', 'alicepw'))?.name, 'alice');
  assert.equal(await db.authenticate('alice@other.onion', 'alicepw'), null, 'foreign domain');
  assert.equal(await db.authenticate('alice', 'alicepW'), null);
  assert.equal(await db.authenticate('alice+tag', 'alicepw'), null, 'no plus tags in logins');
  assert.equal(await db.authenticate('nobody', 'alicepw'), null);
  assert.equal(await db.authenticate('alice', 'x'.repeat(5000)), null, 'over-long password');

  // A Dovecot entry written as name@domain answers to both forms.
  const bob = await db.authenticate('bob', 'bobpw');
  assert.equal(bob?.name, 'bob@example.onion');
  assert.equal(bob?.localPart, 'bob');
  assert.equal(bob?.domain, 'example.onion');
  assert.equal(bob?.home, '/home/bob');
  assert.deepEqual(bob?.extraFields, { userdb_quota_rule: '*:storage=1G' });
  assert.equal((await db.authenticate('bob@example.onion', 'bobpw'))?.name, 'bob@example.onion');
  assert.equal(db.get('bob')?.scheme, 'SHA512-CRYPT');

  // Unsupported scheme: refused, and the reason is logged (without the password).
  assert.equal(await db.authenticate('carol', 'secret'), null);
  const warn = lines.find((l) => l.msg === 'password of user cannot be checked');
  assert.equal(warn?.user, 'carol');
  assert.match(String(warn?.reason), /\{MD5\} is not supported/);
  assert.ok(!JSON.stringify(lines).includes('alicepw'), 'no password in the log');
  // The malformed line is reported as file:line.
  assert.deepEqual(db.problems, [`${file}:4: expected "user:password[:uid:gid:gecos:home:shell:extra_fields]"; line ignored`]);
  assert.ok(lines.some((l) => String(l.msg).startsWith(`${file}:4:`)));
  assert.deepEqual(db.list().map((u) => u.name), ['bob@example.onion', 'carol', 'alice']);
});

test('authenticate: unknown users cost about as much as known ones', async (t) => {
  const dir = tmpDir(t);
  const db = new UserDb(path.join(dir, 'users.passwd'));
  await db.add('alice', 'alicepw');
  await db.authenticate('warmup', 'x'); // computes the dummy hash once
  const time = async (name: string) => {
    const samples: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = process.hrtime.bigint();
      await db.authenticate(name, 'wrong');
      samples.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    return samples.sort((a, b) => a - b)[1]!;
  };
  const known = await time('alice');
  const unknown = await time('nobody');
  t.diagnostic(`wrong password: known user ${known.toFixed(1)} ms, unknown user ${unknown.toFixed(1)} ms`);
  assert.ok(unknown > known * 0.5 && unknown < known * 2, `known ${known} ms vs unknown ${unknown} ms`);
});

test('add / setPassword / remove; errors carry codes', async (t) => {
  const dir = tmpDir(t);
  const file = path.join(dir, 'users.passwd');
  writeFileSync(file, '# keep me\nzed:{PLAIN}z:1:2:gecos:/home/zed:/bin/sh:userdb_mail=maildir:~/M\n');
  const db = new UserDb(file, undefined, { localDomains: ['example.onion'] });
  await db.add('alice', 'one');
  await assert.rejects(db.add('alice', 'two'), (e: unknown) => e instanceof UserDbError && e.code === 'exists');
  await assert.rejects(db.add('Bob', 'x'), (e: unknown) => e instanceof UserDbError && e.code === 'invalid-name');
  await assert.rejects(db.add('bob+x', 'x'), (e: unknown) => e instanceof UserDbError && e.code === 'invalid-name');
  await assert.rejects(db.add('bob@example.onion', 'x'), (e: unknown) => e instanceof UserDbError && e.code === 'invalid-name');
  await assert.rejects(db.add('bob', ''), (e: unknown) => e instanceof UserDbError && e.code === 'invalid-password');
  await assert.rejects(db.add('bob', 'a\nb'), (e: unknown) => e instanceof UserDbError && e.code === 'invalid-password');
  await assert.rejects(db.setPassword('nobody', 'x'), (e: unknown) => e instanceof UserDbError && e.code === 'unknown-user');
  await assert.rejects(db.remove('nobody'), (e: unknown) => e instanceof UserDbError && e.code === 'unknown-user');

  // setPassword on a migrated entry replaces the hash only.
  await db.setPassword('zed@example.onion', 'newzed');
  const text = readFileSync(file, 'utf8');
  assert.match(text, /^# keep me\nzed:\{ARGON2ID\}[^:]+:1:2:gecos:\/home\/zed:\/bin\/sh:userdb_mail=maildir:~\/M\nalice:/);
  assert.equal((await db.authenticate('zed', 'newzed'))?.name, 'zed');
  assert.equal(await db.authenticate('zed', 'z'), null);

  await db.remove('alice');
  assert.equal(db.get('alice'), undefined);
  assert.doesNotMatch(readFileSync(file, 'utf8'), /alice/);
  assert.match(readFileSync(file, 'utf8'), /^# keep me\n/);
});

test('a second instance sees changes: within ~1 s by itself, at once after reload()', async (t) => {
  const dir = tmpDir(t);
  const file = path.join(dir, 'users.passwd');
  const writer = new UserDb(file);
  const reader = new UserDb(file); // default check interval: 1 s
  const eager = new UserDb(file, undefined, { checkIntervalMs: 0 });
  assert.deepEqual(reader.list(), []);
  assert.deepEqual(eager.list(), []);

  await writer.add('alice', 'pw');
  assert.equal(eager.get('alice')?.name, 'alice', 'checkIntervalMs 0: seen at once');
  assert.equal(reader.get('alice'), undefined, 'still the cached view within the interval');
  await sleep(1100);
  assert.equal(reader.get('alice')?.name, 'alice', 'seen after the interval');

  await writer.remove('alice');
  reader.reload();
  assert.equal(reader.get('alice'), undefined, 'reload() re-reads at once');

  // An edit in place by an editor (same inode) is noticed too.
  writeFileSync(file, 'bob:{PLAIN}b\n');
  const future = new Date(Date.now() + 5000);
  utimesSync(file, future, future);
  assert.equal(eager.get('bob')?.name, 'bob');
  assert.equal((await eager.authenticate('bob', 'b'))?.name, 'bob');

  // The file disappears: no users. It comes back: users again.
  renameSync(file, `${file}.away`);
  assert.deepEqual(eager.list(), []);
  renameSync(`${file}.away`, file);
  assert.equal(eager.get('bob')?.name, 'bob');
});

test('a read error keeps the last good users', async (t) => {
  const dir = tmpDir(t);
  const file = path.join(dir, 'users.passwd');
  writeFileSync(file, 'bob:{PLAIN}b\n');
  const { logger, lines } = memoryLogger();
  const db = new UserDb(file, logger, { checkIntervalMs: 0 });
  assert.equal(db.get('bob')?.name, 'bob');
  rmSync(file);
  mkdirSync(file); // now a directory: reading it fails with EISDIR
  assert.equal(db.get('bob')?.name, 'bob');
  assert.ok(lines.some((l) => l.level === 50 && /cannot read the users file/.test(String(l.msg))));
});

test('two instances adding at the same time: both users end up in the file', async (t) => {
  const dir = tmpDir(t);
  const file = path.join(dir, 'users.passwd');
  const names = Array.from({ length: 6 }, (_, i) => `user${i}`);
  await Promise.all(names.map((n, i) => new UserDb(file, undefined, { checkIntervalMs: 0 }).add(n, `pw${i}`)));
  const db = new UserDb(file, undefined, { checkIntervalMs: 0 });
  assert.deepEqual(db.list().map((u) => u.name).sort(), names);
  // And one instance racing itself.
  await Promise.all(['a1', 'a2', 'a3'].map((n) => db.add(n, 'x')));
  assert.equal(new UserDb(file).list().length, 9);
});

test('lock: a live holder makes writers wait and then fail; a dead holder is removed', async (t) => {
  const dir = tmpDir(t);
  const file = path.join(dir, 'users.passwd');
  const lock = `${file}.lock`;
  // Held by a live process (this one, as another writer would be).
  writeFileSync(lock, `${process.pid}\n`);
  const db = new UserDb(file, undefined, { lockTimeoutMs: 300 });
  const t0 = Date.now();
  await assert.rejects(db.add('alice', 'x'), (e: unknown) => {
    assert.ok(e instanceof UserDbError && e.code === 'locked', String(e));
    assert.match((e as Error).message, new RegExp(`held by process ${process.pid}`));
    return true;
  });
  assert.ok(Date.now() - t0 >= 250, 'waited for the lock');
  // Released while waiting: the writer proceeds.
  const pending = new UserDb(file, undefined, { lockTimeoutMs: 5000 }).add('alice', 'x');
  await sleep(150);
  rmSync(lock);
  await pending;

  // Held by a process that is gone: taken over.
  const child = spawn(process.execPath, ['-e', '0']);
  const deadPid = child.pid!;
  await new Promise((r) => child.on('exit', r));
  writeFileSync(lock, `${deadPid}\n`);
  const old = new Date(Date.now() - 5000);
  utimesSync(lock, old, old);
  await new UserDb(file, undefined, { lockTimeoutMs: 2000 }).add('bob', 'y');
  assert.deepEqual(new UserDb(file).list().map((u) => u.name), ['alice', 'bob']);
  assert.equal(existsSync(lock), false);
});

test('password checks are rationed: with one slot, parallel logins run one after another', async (t) => {
  const dir = tmpDir(t);
  const db = new UserDb(path.join(dir, 'users.passwd'), undefined, { maxConcurrentVerifications: 1 });
  await db.add('alice', 'pw');
  await db.authenticate('alice', 'pw');
  const t0 = performance.now();
  await db.authenticate('alice', 'pw');
  const single = performance.now() - t0;
  const t1 = performance.now();
  const results = await Promise.all([
    db.authenticate('alice', 'pw'),
    db.authenticate('alice', 'wrong'),
    db.authenticate('nobody', 'pw'),
  ]);
  const three = performance.now() - t1;
  t.diagnostic(`one check ${single.toFixed(0)} ms, three with one slot ${three.toFixed(0)} ms`);
  assert.deepEqual(results.map((u) => u?.name ?? null), ['alice', null, null]);
  assert.ok(three > single * 2.2, `three checks took ${three} ms, one took ${single} ms`);
});

test('a symlinked users file stays a symlink', async (t) => {
  const dir = tmpDir(t);
  const real = path.join(dir, 'real-users');
  const link = path.join(dir, 'users.passwd');
  writeFileSync(real, 'zed:{PLAIN}z\n');
  symlinkSync('real-users', link);
  const db = new UserDb(link);
  await db.add('alice', 'pw');
  assert.ok(lstatSync(link).isSymbolicLink());
  assert.match(readFileSync(real, 'utf8'), /^zed:\{PLAIN\}z\nalice:/);
  assert.deepEqual(new UserDb(link).list().map((u) => u.name), ['zed', 'alice']);
});

const isRoot = process.getuid?.() === 0;
test('run as root, writes keep the file owned by the daemon user', { skip: isRoot ? false : 'needs root (chown)' }, async (t) => {
  const dir = tmpDir(t);
  const data = path.join(dir, 'data');
  mkdirSync(data);
  chownSync(data, 65534, 65534); // the daemon's user owns the data dir
  const file = path.join(data, 'users.passwd');
  await new UserDb(file).add('alice', 'pw');
  assert.deepEqual([statSync(file).uid, statSync(file).gid], [65534, 65534], 'new file: owner of the directory');
  chownSync(file, 65533, 65532); // an existing file keeps its owner
  await new UserDb(file).setPassword('alice', 'pw2');
  assert.deepEqual([statSync(file).uid, statSync(file).gid], [65533, 65532]);
  assert.equal(statSync(file).mode & 0o777, 0o600);
});
