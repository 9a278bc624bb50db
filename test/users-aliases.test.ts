/** The aliases file (parser, reload, atomic edits) and alias resolution in RecipientResolver. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AliasDb, AliasDbError, parseAliases, serializeAliases, splitTargets } from '../src/users/aliases.js';
import { RecipientResolver } from '../src/users/recipients.js';
import { UserDb } from '../src/users/user-db.js';

const DOMAINS = ['abcdef.onion', 'mail.example'];

function tmp(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'onionpost-aliases-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function setup(t: { after: (fn: () => void) => void }, users: string[], aliases: string) {
  const dir = tmp(t);
  const usersFile = path.join(dir, 'users.passwd');
  writeFileSync(usersFile, users.map((u) => `${u}:{PLAIN}x\n`).join(''));
  const aliasFile = path.join(dir, 'aliases');
  writeFileSync(aliasFile, aliases);
  const userDb = new UserDb(usersFile, { localDomains: DOMAINS, checkIntervalMs: 0 });
  const aliasDb = new AliasDb(aliasFile, { localDomains: DOMAINS, checkIntervalMs: 0 });
  const resolver = new RecipientResolver({ localDomains: DOMAINS, userDb, aliases: aliasDb });
  return { dir, aliasFile, userDb, aliasDb, resolver };
}

const SAMPLE = [
  '# /etc/mail/aliases style',
  '',
  'MAILER-DAEMON: postmaster',
  'postmaster:    root',
  'root: alice',
  'info: alice, bob,',
  '      carol',
  '  # a comment inside the continuation',
  '\tdora@mail.example',
  'sales@mail.example: dora',
  'Sales: bob',
  'fwd: "Someone@Other.Onion"',
  'pipe: |/usr/bin/procmail, alice',
  'bad name: alice',
  'broken line without colon',
  '   orphan continuation',
  'info: duplicate',
  'empty:',
  '',
].join('\n');

test('parser: comments, continuation lines, quotes, unsupported targets, problems with line numbers', () => {
  const { doc, problems } = parseAliases(SAMPLE, DOMAINS);
  const entries = doc.lines.flatMap((l) => (l.kind === 'entry' ? [[l.key, l.targets] as const] : []));
  assert.deepEqual(entries, [
    ['mailer-daemon', ['postmaster']],
    ['postmaster', ['root']],
    ['root', ['alice']],
    ['info', ['alice', 'bob', 'carol', 'dora@mail.example']],
    ['sales@mail.example', ['dora']],
    ['sales', ['bob']],
    ['fwd', ['Someone@other.onion']],
    ['pipe', ['alice']],
    ['empty', []],
  ]);
  const msgs = problems.map((p) => `${p.line}: ${p.message}`);
  assert.ok(msgs.some((m) => /^13: alias "pipe": program target "\|\/usr\/bin\/procmail" is not supported/.test(m)), msgs.join('\n'));
  assert.ok(msgs.some((m) => /^14: alias name "bad name"/.test(m)), msgs.join('\n'));
  assert.ok(msgs.some((m) => /^16: continuation line without an entry/.test(m)), msgs.join('\n'));
  assert.ok(msgs.some((m) => /^15: expected "name: target, target"/.test(m)), msgs.join('\n'));
  assert.ok(msgs.some((m) => /^17: duplicate alias "info" \(first defined on line 6\)/.test(m)), msgs.join('\n'));
  assert.ok(msgs.some((m) => /^18: alias "empty" has no usable target/.test(m)), msgs.join('\n'));
  // Every byte round-trips.
  assert.equal(serializeAliases(doc), SAMPLE);
  assert.equal(serializeAliases(parseAliases('a: b\r\n  c\r\n# x').doc), 'a: b\r\n  c\r\n# x');
  // Keys in other domains are refused.
  assert.match(parseAliases('x@elsewhere.onion: alice\n', DOMAINS).problems[0]!.message, /not in one of our domains/);
  assert.deepEqual(splitTargets(' a , "b, c" ,<D@X.Onion>,, \\e'), ['a', 'b, c', 'D@x.onion', '\\e']);
});

test('resolution: aliases to aliases, several targets, remote targets, domain-qualified keys, plus-addressing', (t) => {
  const { resolver } = setup(t, ['alice', 'bob', 'carol', 'dora@mail.example'], SAMPLE);
  const local = (user: string) => ({ kind: 'local', user });
  assert.deepEqual(resolver.resolve('root@abcdef.onion'), local('alice'));
  assert.deepEqual(resolver.resolve('postmaster@abcdef.onion'), local('alice'), 'postmaster -> root -> alice');
  assert.deepEqual(resolver.resolve('mailer-daemon@mail.example'), local('alice'));
  assert.deepEqual(resolver.resolve('INFO@abcdef.onion'), { kind: 'alias', users: ['alice', 'bob', 'carol', 'dora@mail.example'], remote: [] });
  assert.deepEqual(resolver.resolve('info+news@abcdef.onion'), { kind: 'alias', users: ['alice', 'bob', 'carol', 'dora@mail.example'], remote: [] }, 'plus-addressing on an alias');
  assert.deepEqual(resolver.resolve('sales@mail.example'), local('dora@mail.example'), 'the domain-qualified key wins in its domain');
  assert.deepEqual(resolver.resolve('sales@abcdef.onion'), local('bob'), 'the bare key elsewhere');
  assert.deepEqual(resolver.resolve('fwd@abcdef.onion'), { kind: 'alias', users: [], remote: ['Someone@other.onion'] }, 'remote local part keeps its case');
  assert.deepEqual(resolver.resolve('pipe@abcdef.onion'), local('alice'), 'the unsupported target is skipped');
  assert.deepEqual(resolver.resolve('empty@abcdef.onion'), { kind: 'unknown-local' });
  assert.deepEqual(resolver.resolve('nobody@abcdef.onion'), { kind: 'unknown-local' });
});

test('resolution: loops are cut per branch, "\\user" bypasses aliases, depth limit, users before aliases', (t) => {
  const { resolver } = setup(
    t,
    ['alice', 'bob'],
    [
      'loop1: loop2',
      'loop2: loop1',
      'self: self, bob',
      'tri1: tri2',
      'tri2: tri3, alice',
      'tri3: tri1',
      'diamond: left, right',
      'left: bottom',
      'right: bottom',
      'bottom: alice',
      'keep: \\alice, alice@backup.onion',
      'ghost: \\nobody',
      'bob: alice',
      'd1: d2', 'd2: d3', 'd3: d4', 'd4: d5', 'd5: d6', 'd6: d7', 'd7: d8', 'd8: d9', 'd9: d10', 'd10: alice',
      'd2x: d3x', 'd3x: d4x', 'd4x: d5x', 'd5x: d6x', 'd6x: d7x', 'd7x: d8x', 'd8x: alice',
      '',
    ].join('\n'),
  );
  assert.deepEqual(resolver.resolve('loop1@abcdef.onion'), { kind: 'unknown-local' });
  assert.deepEqual(resolver.resolve('self@abcdef.onion'), { kind: 'local', user: 'bob' }, 'the looping branch is dropped, bob stays');
  assert.deepEqual(resolver.resolve('tri1@abcdef.onion'), { kind: 'local', user: 'alice' });
  assert.deepEqual(resolver.resolve('diamond@abcdef.onion'), { kind: 'local', user: 'alice' }, 'a diamond is not a loop; one copy');
  assert.deepEqual(resolver.resolve('keep@abcdef.onion'), { kind: 'alias', users: ['alice'], remote: ['alice@backup.onion'] });
  assert.deepEqual(resolver.resolve('ghost@abcdef.onion'), { kind: 'unknown-local' });
  assert.deepEqual(resolver.resolve('bob@abcdef.onion'), { kind: 'local', user: 'bob' }, 'a user shadows an alias of the same name');
  assert.deepEqual(resolver.resolve('d1@abcdef.onion'), { kind: 'unknown-local' }, 'more than 8 levels');
  assert.deepEqual(resolver.resolve('d2x@abcdef.onion'), { kind: 'local', user: 'alice' }, '8 levels still work');
});

test('root and postmaster reach somebody without any alias; an alias that leads nowhere falls back too', (t) => {
  const { resolver, dir } = setup(t, ['admin', 'alice'], 'root: nobody\n');
  assert.deepEqual(resolver.resolve('root@abcdef.onion'), { kind: 'local', user: 'admin' });
  assert.deepEqual(resolver.resolve('postmaster@mail.example'), { kind: 'local', user: 'admin' });
  assert.deepEqual(resolver.resolve('abuse@abcdef.onion'), { kind: 'unknown-local' });
  const withOption = new RecipientResolver({
    localDomains: DOMAINS,
    userDb: new UserDb(path.join(dir, 'users.passwd'), { localDomains: DOMAINS }),
    postmaster: 'alice',
  });
  assert.deepEqual(withOption.resolve('root@abcdef.onion'), { kind: 'local', user: 'alice' });
});

test('changes to the file are seen without a restart (stat check); a missing file means no aliases', async (t) => {
  const dir = tmp(t);
  const file = path.join(dir, 'aliases');
  const db = new AliasDb(file, { localDomains: DOMAINS, checkIntervalMs: 50 });
  assert.deepEqual(db.list(), []);
  writeFileSync(file, 'info: alice\n');
  await new Promise((r) => setTimeout(r, 80));
  assert.deepEqual(db.lookup('info', 'abcdef.onion'), ['alice']);
  writeFileSync(file, 'info: bob\n# longer now\n');
  // within the interval: still the old table (no stat per lookup)
  assert.deepEqual(db.lookup('info', 'abcdef.onion'), ['alice']);
  await new Promise((r) => setTimeout(r, 80));
  assert.deepEqual(db.lookup('info', 'abcdef.onion'), ['bob']);
  writeFileSync(file, 'info: carol\n# longer now\n');
  db.reload(); // SIGHUP
  assert.deepEqual(db.lookup('info', 'abcdef.onion'), ['carol']);
  rmSync(file);
  db.reload();
  assert.equal(db.lookup('info', 'abcdef.onion'), undefined);
});

test('add/remove: atomic rewrite keeping comments and other entries byte for byte; 0600; lock', async (t) => {
  const dir = tmp(t);
  const file = path.join(dir, 'aliases');
  const original = '# keep me\r\nroot: alice\r\n\ninfo: alice,\n   bob   # odd spacing kept\nlast: x';
  writeFileSync(file, original);
  const db = new AliasDb(file, { localDomains: DOMAINS });
  const added = await db.add('team', ['alice,bob', 'Carol@Other.Onion']);
  assert.deepEqual(added, { name: 'team', targets: ['alice', 'bob', 'Carol@other.onion'] });
  assert.equal(readFileSync(file, 'utf8'), original + '\nteam: alice, bob, Carol@other.onion\n');
  assert.equal(statSync(file).mode & 0o777, 0o600);

  // Adding to an existing entry rewrites only that entry (as one line).
  await db.add('info', ['dora']);
  assert.equal(readFileSync(file, 'utf8'), '# keep me\r\nroot: alice\r\n\ninfo: alice, bob   # odd spacing kept, dora\nlast: x\nteam: alice, bob, Carol@other.onion\n'.replace('alice, bob   # odd spacing kept, dora', 'alice, bob, dora'));
  assert.deepEqual(db.lookup('info', 'mail.example'), ['alice', 'bob', 'dora']);

  await db.remove('team', ['bob']);
  assert.deepEqual(db.get('team')?.targets, ['alice', 'Carol@other.onion']);
  await db.remove('team');
  assert.equal(db.get('team'), undefined);
  assert.equal(readFileSync(file, 'utf8'), '# keep me\r\nroot: alice\r\n\ninfo: alice, bob, dora\nlast: x\n');

  await assert.rejects(db.remove('nope'), (e: unknown) => e instanceof AliasDbError && e.code === 'unknown-alias');
  await assert.rejects(db.add('Bad Name', ['x']), (e: unknown) => e instanceof AliasDbError && e.code === 'invalid-name');
  await assert.rejects(db.add('x@elsewhere.onion', ['x']), (e: unknown) => e instanceof AliasDbError && e.code === 'invalid-name');
  await assert.rejects(db.add('ok', ['|/bin/sh']), (e: unknown) => e instanceof AliasDbError && e.code === 'invalid-target');
  await assert.rejects(db.add('ok', ['/var/mail/x']), (e: unknown) => e instanceof AliasDbError && e.code === 'invalid-target');

  // A lock held by a live process makes writers wait, then give up with 'locked'.
  writeFileSync(`${file}.lock`, `${process.ppid}\n`);
  const slow = new AliasDb(file, { localDomains: DOMAINS, lockTimeoutMs: 200 });
  await assert.rejects(slow.add('z', ['alice']), (e: unknown) => e instanceof AliasDbError && e.code === 'locked');
  rmSync(`${file}.lock`);
  // Parallel writers in one process do not lose each other's changes.
  await Promise.all(['p1', 'p2', 'p3', 'p4'].map((n) => db.add(n, ['alice'])));
  assert.deepEqual(new AliasDb(file).list().map((a) => a.name).slice(-4).sort(), ['p1', 'p2', 'p3', 'p4']);
  assert.ok(!existsSync(`${file}.lock`));
});
