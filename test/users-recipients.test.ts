import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RecipientResolver, type AliasLookup } from '../src/users/recipients.js';
import { UserDb } from '../src/users/user-db.js';

const DOMAINS = ['abcdef.onion', 'mail.example'];

function setup(t: { after: (fn: () => void) => void }, lines: string[]): UserDb {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'onionpost-rcpt-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'users.passwd');
  writeFileSync(file, lines.map((l) => `${l}\n`).join(''));
  return new UserDb(file, undefined, { localDomains: DOMAINS, checkIntervalMs: 0 });
}

test('local users: case, plus tags, every local domain', (t) => {
  const db = setup(t, ['admin:{PLAIN}x', 'alice:{PLAIN}x', 'bob.smith:{PLAIN}x']);
  const r = new RecipientResolver({ localDomains: DOMAINS, userDb: db });
  const local = (user: string) => ({ kind: 'local', user });
  assert.deepEqual(r.resolve('alice@abcdef.onion'), local('alice'));
  assert.deepEqual(r.resolve('ALICE@ABCDEF.ONION'), local('alice'));
  assert.deepEqual(r.resolve('Alice+Lists@abcdef.onion'), local('alice'));
  assert.deepEqual(r.resolve('alice+a+b@mail.example'), local('alice'));
  assert.deepEqual(r.resolve('alice@abcdef.onion.'), local('alice'), 'trailing dot');
  assert.deepEqual(r.resolve('<alice@abcdef.onion>'), local('alice'));
  assert.deepEqual(r.resolve('"alice"@abcdef.onion'), local('alice'));
  assert.deepEqual(r.resolve('bob.smith@mail.example'), local('bob.smith'));
  assert.deepEqual(r.resolve('alice'), local('alice'), 'no domain: the primary domain');
  assert.deepEqual(r.resolve('carol@abcdef.onion'), { kind: 'unknown-local' });
  assert.deepEqual(r.resolve('+tag@abcdef.onion'), { kind: 'unknown-local' });
  assert.deepEqual(r.resolve('alice-x@abcdef.onion'), { kind: 'unknown-local' });
  assert.deepEqual(r.resolve(''), { kind: 'unknown-local' });
  assert.deepEqual(r.resolve('<>'), { kind: 'unknown-local' });
});

test('remote domains', (t) => {
  const db = setup(t, ['alice:{PLAIN}x']);
  const r = new RecipientResolver({ localDomains: DOMAINS, userDb: db });
  assert.deepEqual(r.resolve('alice@Other.Onion'), { kind: 'remote', domain: 'other.onion' });
  assert.deepEqual(r.resolve('bob@sub.abcdef.onion'), { kind: 'remote', domain: 'sub.abcdef.onion' });
  assert.deepEqual(r.resolve('postmaster@elsewhere.onion'), { kind: 'remote', domain: 'elsewhere.onion' });
  assert.equal(r.isLocalDomain('MAIL.EXAMPLE'), true);
  assert.equal(r.isLocalDomain('example'), false);
});

test('Dovecot-style name@domain entries belong to their domain only', (t) => {
  const db = setup(t, ['dora@mail.example:{PLAIN}x', 'eric:{PLAIN}x']);
  const r = new RecipientResolver({ localDomains: DOMAINS, userDb: db });
  assert.deepEqual(r.resolve('dora@mail.example'), { kind: 'local', user: 'dora@mail.example' });
  assert.deepEqual(r.resolve('Dora+x@MAIL.example'), { kind: 'local', user: 'dora@mail.example' });
  assert.deepEqual(r.resolve('dora@abcdef.onion'), { kind: 'unknown-local' });
  assert.deepEqual(r.resolve('eric@mail.example'), { kind: 'local', user: 'eric' });
});

test('postmaster always resolves while there are users', (t) => {
  const db = setup(t, ['# admin first', 'admin:{PLAIN}x', 'alice:{PLAIN}x', 'zoe@mail.example:{PLAIN}x']);
  const first = new RecipientResolver({ localDomains: DOMAINS, userDb: db });
  assert.deepEqual(first.resolve('postmaster@abcdef.onion'), { kind: 'local', user: 'admin' }, 'first user in the file');
  assert.deepEqual(first.resolve('PostMaster@mail.example'), { kind: 'local', user: 'admin' });
  assert.deepEqual(first.resolve('Postmaster'), { kind: 'local', user: 'admin' }, 'RCPT TO:<Postmaster>');
  assert.deepEqual(first.resolve('postmaster+bounces@abcdef.onion'), { kind: 'local', user: 'admin' });

  const configured = new RecipientResolver({ localDomains: DOMAINS, userDb: db, postmaster: 'alice' });
  assert.deepEqual(configured.resolve('postmaster@abcdef.onion'), { kind: 'local', user: 'alice' });
  const byAddress = new RecipientResolver({ localDomains: DOMAINS, userDb: db, postmaster: 'zoe@mail.example' });
  assert.deepEqual(byAddress.resolve('postmaster@mail.example'), { kind: 'local', user: 'zoe@mail.example' });
  // A configured postmaster that is not a user: fall back to the first user.
  const missing = new RecipientResolver({ localDomains: DOMAINS, userDb: db, postmaster: 'ghost' });
  assert.deepEqual(missing.resolve('postmaster@abcdef.onion'), { kind: 'local', user: 'admin' });
});

test('postmaster: a real user of that name wins; no users at all means unknown', (t) => {
  const db = setup(t, ['alice:{PLAIN}x', 'postmaster:{PLAIN}x']);
  const r = new RecipientResolver({ localDomains: DOMAINS, userDb: db, postmaster: 'alice' });
  assert.deepEqual(r.resolve('postmaster@abcdef.onion'), { kind: 'local', user: 'postmaster' });
  const empty = setup(t, []);
  const r2 = new RecipientResolver({ localDomains: DOMAINS, userDb: empty });
  assert.deepEqual(r2.resolve('postmaster@abcdef.onion'), { kind: 'unknown-local' });
});

test('postmaster only in a domain-qualified file: the user of that domain first', (t) => {
  const db = setup(t, ['zoe@mail.example:{PLAIN}x', 'yan@abcdef.onion:{PLAIN}x']);
  const r = new RecipientResolver({ localDomains: DOMAINS, userDb: db });
  assert.deepEqual(r.resolve('postmaster@abcdef.onion'), { kind: 'local', user: 'yan@abcdef.onion' });
  assert.deepEqual(r.resolve('postmaster@mail.example'), { kind: 'local', user: 'zoe@mail.example' });
});

test('new users are seen by the resolver without a restart', async (t) => {
  const db = setup(t, []);
  const r = new RecipientResolver({ localDomains: DOMAINS, userDb: db });
  assert.deepEqual(r.resolve('newbie@abcdef.onion'), { kind: 'unknown-local' });
  await new UserDb(db.file).add('newbie', 'pw');
  assert.deepEqual(r.resolve('newbie@abcdef.onion'), { kind: 'local', user: 'newbie' });
});

test('an alias table plugs in before the postmaster fallback', (t) => {
  const db = setup(t, ['admin:{PLAIN}x', 'alice:{PLAIN}x']);
  const table: Record<string, string> = {
    info: 'alice',
    'abuse': 'postmaster',
    postmaster: 'alice',
    loop1: 'loop2',
    loop2: 'loop1',
    fwd: 'someone@other.onion',
    dangling: 'nobody',
  };
  const aliases: AliasLookup = { lookup: (local) => table[local] };
  const r = new RecipientResolver({ localDomains: DOMAINS, userDb: db, aliases });
  assert.deepEqual(r.resolve('Info+x@abcdef.onion'), { kind: 'local', user: 'alice' });
  assert.deepEqual(r.resolve('postmaster@abcdef.onion'), { kind: 'local', user: 'alice' });
  assert.deepEqual(r.resolve('abuse@abcdef.onion'), { kind: 'local', user: 'alice' });
  // Forwarding: the address is ours, its target is a remote address (queued, not refused).
  assert.deepEqual(r.resolve('fwd@abcdef.onion'), { kind: 'alias', users: [], remote: ['someone@other.onion'] });
  assert.deepEqual(r.resolve('loop1@abcdef.onion'), { kind: 'unknown-local' });
  assert.deepEqual(r.resolve('dangling@abcdef.onion'), { kind: 'unknown-local' });
  assert.deepEqual(r.resolve('alice@abcdef.onion'), { kind: 'local', user: 'alice' }, 'users before aliases');
});
