import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as argon2 from 'argon2';
import {
  checkPassword,
  describeScheme,
  hashPassword,
  needsRehash,
  shaCrypt,
  shaCryptHash,
  shaCryptSync,
  verifyPassword,
} from '../src/users/password-hash.js';

// Published test vectors of the SHA-crypt specification (Drepper, "Unix crypt using SHA-256
// and SHA-512"): [setting, password, expected].
const SHA512_VECTORS: [string, string, string][] = [
  ['$6$saltstring', 'Hello world!',
    '$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1'],
  ['$6$rounds=10000$saltstringsaltstring', 'Hello world!',
    '$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.'],
  ['$6$rounds=5000$toolongsaltstring', 'This is just a test',
    '$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0'],
  ['$6$rounds=1400$anotherlongsaltstring',
    'a very much longer text to encrypt.  This one even stretches over morethan one line.',
    '$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1'],
  ['$6$rounds=77777$short', 'we have a short salt string but not a short password',
    '$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0'],
  ['$6$rounds=123456$asaltof16chars..', 'a short string',
    '$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoBK25fs2xXgMNrCzIMVcgEJAstJeonj1'],
  ['$6$rounds=10$roundstoolow', 'the minimum number is still observed',
    '$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.'],
];

const SHA256_VECTORS: [string, string, string][] = [
  ['$5$saltstring', 'Hello world!', '$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5'],
  ['$5$rounds=10000$saltstringsaltstring', 'Hello world!',
    '$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA'],
  ['$5$rounds=5000$toolongsaltstring', 'This is just a test',
    '$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5'],
  ['$5$rounds=1400$anotherlongsaltstring',
    'a very much longer text to encrypt.  This one even stretches over morethan one line.',
    '$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1'],
  ['$5$rounds=77777$short', 'we have a short salt string but not a short password',
    '$5$rounds=77777$short$JiO1O3ZpDAxGJeaDIuqCoEFysAe1mZNJRs3pw0KQRd/'],
  ['$5$rounds=123456$asaltof16chars..', 'a short string',
    '$5$rounds=123456$asaltof16chars..$gP3VQ/6X7UUEW3HkBn2w1/Ptq2jxPyzV/cZKmF/wJvD'],
  ['$5$rounds=10$roundstoolow', 'the minimum number is still observed',
    '$5$rounds=1000$roundstoolow$yfvwcWrQ8l/K0DAWyuPMDNHpIVlTQebY9l/gL972bIC'],
];

test('SHA512-CRYPT: published specification vectors', async () => {
  for (const [setting, pw, expected] of SHA512_VECTORS) {
    assert.equal(shaCryptSync(pw, setting), expected, setting);
    // Verifying against the full hash recomputes with its own salt and rounds.
    assert.equal(await verifyPassword(`{SHA512-CRYPT}${expected}`, pw), true, expected);
    assert.equal(await verifyPassword(`{SHA512-CRYPT}${expected}`, pw + 'x'), false, expected);
  }
});

test('SHA256-CRYPT: published specification vectors', async () => {
  for (const [setting, pw, expected] of SHA256_VECTORS) {
    assert.equal(await shaCrypt(pw, setting), expected, setting);
    assert.equal(await verifyPassword(`{SHA256-CRYPT}${expected}`, pw), true, expected);
    assert.equal(await verifyPassword(`{SHA256-CRYPT}${expected}`, 'wrong'), false, expected);
  }
});

test('SHA-crypt: fresh hashes round trip, with and without rounds=', async () => {
  for (const algo of ['sha256', 'sha512'] as const) {
    for (const rounds of [undefined, 1000, 6000]) {
      const h = shaCryptHash('päss wörd', algo, rounds);
      assert.equal(await verifyPassword(h, 'päss wörd'), true, h);
      assert.equal(await verifyPassword(h, 'pass word'), false, h);
    }
  }
});

test('ARGON2ID: Dovecot format and parameters, round trip', async () => {
  const h = await hashPassword('correct horse');
  assert.match(h, /^\{ARGON2ID\}\$argon2id\$v=19\$m=65536,t=3,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/);
  assert.equal(await verifyPassword(h, 'correct horse'), true);
  assert.equal(await verifyPassword(h, 'correct horsE'), false);
  assert.equal(await verifyPassword(h, ''), false);
  assert.notEqual(await hashPassword('correct horse'), h, 'salts are random');
  assert.equal(needsRehash(h), false);
  // The argon2 package's own encoding (m=..,p=..,t=..; Dovecot cannot parse it) still verifies.
  const pkg = await argon2.hash('x', { type: argon2.argon2id, memoryCost: 8192, timeCost: 2, parallelism: 1 });
  assert.match(pkg, /m=8192,p=1,t=2/);
  assert.equal(await verifyPassword(`{ARGON2ID}${pkg}`, 'x'), true);
  assert.equal(await verifyPassword(`{ARGON2ID}${pkg}`, 'y'), false);
  assert.equal(needsRehash('{SHA512-CRYPT}' + SHA512_VECTORS[0]![2]), true);
});

test('ARGON2I and ARGON2ID hashes made by Dovecot (doveadm pw) verify', async () => {
  // Generated with `doveadm pw -s ARGON2I -p secret` / `-s ARGON2ID` (Dovecot 2.3.19).
  const a2i = '{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$6f0Xlip3LHubvupvS1/LUQ$U/rwbJXJ6kIRhQAJfAjy7YxuCgREBBmXZTMJgmeXPFw';
  const a2id = '{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$lNp1yK8qLhQiWsCCafZ/5A$LpS9WgZHhY3dSC9twSfYya5lgbJdg2OHo5aIbQBjvOA';
  assert.equal(await verifyPassword(a2i, 'secret'), true);
  assert.equal(await verifyPassword(a2i, 'Secret'), false);
  assert.equal(await verifyPassword(a2id, 'secret'), true);
  assert.equal(await verifyPassword(a2id, 'secreT'), false);
  // A scheme/hash mismatch is refused with a reason.
  const r = await checkPassword(a2i.replace('{ARGON2I}', '{ARGON2ID}'), 'secret');
  assert.equal(r.ok, false);
  assert.match(r.reason ?? '', /does not start with \$argon2id\$/);
});

test('BLF-CRYPT: $2y$ (Dovecot), $2a$ and $2b$ hashes', async () => {
  // `doveadm pw -s BLF-CRYPT -p secret` output.
  const y = '{BLF-CRYPT}$2y$05$JpiG/CQDPURnBDSUH.K/0Ohf3HUHc6/lMR5uj239bisP4qJW5Oid6';
  assert.equal(await verifyPassword(y, 'secret'), true);
  assert.equal(await verifyPassword(y, 'secret2'), false);
  // OpenBSD's classic vector: "U*U" with salt CCCCCCCCCCCCCCCCCCCCC.
  const a = '$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW';
  assert.equal(await verifyPassword(`{BLF-CRYPT}${a}`, 'U*U'), true);
  assert.equal(await verifyPassword(`{CRYPT}${a}`, 'U*U'), true);
  assert.equal(await verifyPassword(`{BLF-CRYPT}${a.replace('$2a$', '$2b$')}`, 'U*U'), true);
  assert.equal(await verifyPassword(`{BLF-CRYPT}${a}`, 'U*V'), false);
});

test('CRYPT and no prefix: SHA-crypt and bcrypt formats; others refused with a reason', async () => {
  const [, pw, h6] = SHA512_VECTORS[0]!;
  const [, , h5] = SHA256_VECTORS[0]!;
  assert.equal(await verifyPassword(`{CRYPT}${h6}`, pw), true);
  assert.equal(await verifyPassword(h6, pw), true, 'no {SCHEME} prefix means CRYPT');
  assert.equal(await verifyPassword(`{crypt}${h5}`, pw), true, 'scheme names are case-insensitive');
  for (const [stored, reason] of [
    ['{CRYPT}$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0', /MD5-crypt/],
    ['$y$j9T$abc$def', /yescrypt/],
    ['{CRYPT}abJnggxhB/yWI', /DES/],
    ['!$6$saltstring$xyz', /locked/],
    ['', /no password/],
    ['{MD5}Xr4ilOzQ4PCOq3aQ0qbuaQ==', /\{MD5\} is not supported/],
    ['{SHA512-CRYPT}$5$saltstring$x', /does not start with \$6\$/],
    ['{ARGON2ID}$argon2id$v=19$m=4194304,t=3,p=1$c2FsdHNhbHQ$aGFzaGhhc2g', /1 GiB/],
    ['{ARGON2ID}$argon2id$garbage', /malformed/],
  ] as const) {
    const r = await checkPassword(stored, 'whatever');
    assert.equal(r.ok, false, stored);
    assert.match(r.reason ?? '', reason, stored);
    assert.equal(describeScheme(stored).supported, false, stored);
  }
  // Malformed hashes of a supported family: false plus reason, no throw.
  const bad = await checkPassword('{BLF-CRYPT}$2y$05$short', 'x');
  assert.equal(bad.ok, false);
  assert.ok(bad.reason);
  assert.equal(await verifyPassword('{SHA512-CRYPT}$6$rounds=xyz$salt$h', 'x'), false);
});

test('PLAIN (and its CLEARTEXT alias): verify only', async () => {
  assert.equal(await verifyPassword('{PLAIN}s3cret: with colon', 's3cret: with colon'), true);
  assert.equal(await verifyPassword('{PLAIN}s3cret', 's3cre'), false);
  assert.equal(await verifyPassword('{PLAIN}s3cret', 's3cret '), false);
  assert.equal(await verifyPassword('{CLEARTEXT}x', 'x'), true);
  assert.equal(await verifyPassword('{PLAIN}', ''), true);
  assert.deepEqual(describeScheme('{PLAIN}x'), { scheme: 'PLAIN', supported: true });
});

test('shaCrypt yields to the event loop during long runs', async () => {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 0);
  try {
    await shaCrypt('pw', '$6$rounds=200000$abc');
  } finally {
    clearInterval(timer);
  }
  assert.ok(ticks > 0, 'timers ran while hashing');
});
