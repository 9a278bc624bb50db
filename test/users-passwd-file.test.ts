import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  appendLine,
  entryOf,
  newEntryLine,
  parseExtraFields,
  parsePasswd,
  serializePasswd,
  setEntryPassword,
  validateUserName,
  type PasswdEntryLine,
} from '../src/users/passwd-file.js';

const SAMPLE = [
  '# users of example.onion',
  '',
  'alice:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA:1000:1000::/home/alice::userdb_mail=maildir:~/Maildir quota_rule=*:storage=1G',
  '   # indented comment',
  'bob@example.onion:{SHA512-CRYPT}$6$x$y:::Bob Builder:/var/mail/bob:/bin/false:',
  'carol:{PLAIN}pw',
  'this line has no colon',
  'Dave:{BLF-CRYPT}$2y$05$abc',
  'eve+x:{PLAIN}x',
  'alice:{PLAIN}duplicate',
  '.hidden:{PLAIN}x',
  '\t  ',
  'frank:{PLAIN}x::::::\r',
].join('\n') + '\n';

function entries(text: string): PasswdEntryLine[] {
  return parsePasswd(text).doc.lines.filter((l): l is PasswdEntryLine => l.kind === 'entry');
}

test('parse: entries, fields, extra fields with colons', () => {
  const { doc, problems } = parsePasswd(SAMPLE);
  const es = doc.lines.filter((l): l is PasswdEntryLine => l.kind === 'entry');
  assert.deepEqual(es.map((e) => e.key), ['alice', 'bob@example.onion', 'carol', 'dave', 'frank']);
  const alice = entryOf(es[0]!);
  assert.equal(alice.uid, '1000');
  assert.equal(alice.home, '/home/alice');
  assert.equal(alice.extraFields, 'userdb_mail=maildir:~/Maildir quota_rule=*:storage=1G');
  assert.deepEqual(parseExtraFields(alice.extraFields), { userdb_mail: 'maildir:~/Maildir', quota_rule: '*:storage=1G' });
  const bob = entryOf(es[1]!);
  assert.equal(bob.gecos, 'Bob Builder');
  assert.equal(bob.shell, '/bin/false');
  assert.equal(bob.extraFields, '');
  const carol = entryOf(es[2]!);
  assert.equal(carol.password, '{PLAIN}pw');
  assert.equal(carol.uid, '');
  assert.equal(entryOf(es[4]!).password, '{PLAIN}x', 'CRLF stripped for parsing');

  // Problems name the line and say why; those lines are skipped.
  assert.deepEqual(problems.map((p) => p.line), [7, 9, 10, 11]);
  assert.match(problems[0]!.message, /expected "user:password/);
  assert.match(problems[1]!.message, /must not contain "\+"/);
  assert.match(problems[2]!.message, /duplicate user "alice" \(first defined on line 3\)/);
  assert.match(problems[3]!.message, /must not start with "\."/);
});

test('serialize: untouched text round-trips byte for byte', () => {
  const { doc } = parsePasswd(SAMPLE);
  assert.equal(serializePasswd(doc), SAMPLE);
  for (const text of ['', '\n', 'a:b', 'a:b\n\n', '# only\n', 'x:y\r\n# c\r\n']) {
    assert.equal(serializePasswd(parsePasswd(text).doc), text, JSON.stringify(text));
  }
});

test('rewrite: changing a password keeps every other field, comments and bad lines', () => {
  const { doc } = parsePasswd(SAMPLE);
  const alice = doc.lines.find((l): l is PasswdEntryLine => l.kind === 'entry' && l.key === 'alice')!;
  setEntryPassword(alice, '{PLAIN}new');
  appendLine(doc, newEntryLine('gina', '{PLAIN}g'));
  const out = serializePasswd(doc);
  const expected = SAMPLE.replace(
    'alice:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA:',
    'alice:{PLAIN}new:',
  ) + 'gina:{PLAIN}g::::::\n';
  assert.equal(out, expected);
  // And it parses back to the same entries plus the new one.
  assert.deepEqual(entries(out).map((e) => e.key), ['alice', 'bob@example.onion', 'carol', 'dave', 'frank', 'gina']);
  assert.equal(entryOf(entries(out)[0]!).extraFields, 'userdb_mail=maildir:~/Maildir quota_rule=*:storage=1G');
});

test('appending to a file without a final newline adds one between', () => {
  const { doc } = parsePasswd('a:{PLAIN}a');
  appendLine(doc, newEntryLine('b', '{PLAIN}b'));
  assert.equal(serializePasswd(doc), 'a:{PLAIN}a\nb:{PLAIN}b::::::\n');
});

test('fields cannot smuggle a ":" or a line into the file', () => {
  assert.throws(() => newEntryLine('a', 'x:y'));
  assert.throws(() => newEntryLine('a', 'x\ny'));
  const { doc } = parsePasswd('a:b\n');
  assert.throws(() => setEntryPassword(doc.lines[0] as PasswdEntryLine, 'p\rq'));
});

test('user names', () => {
  for (const ok of ['alice', 'a', 'bob.smith', 'x-y_z', '0day', 'a'.repeat(64), '_svc']) {
    assert.equal(validateUserName(ok), null, ok);
  }
  const bad: [string, RegExp][] = [
    ['', /empty/],
    ['a'.repeat(65), /longer than 64/],
    ['alice+tag', /"\+"/],
    ['Alice', /lower case/],
    ['.alice', /must not start/],
    ['-alice', /must not start/],
    ['..', /must not start/],
    ['al ice', /may only contain/],
    ['al/ice', /may only contain/],
    ['alice@example.onion', /must not contain "@"/],
    ['\u00e9l\u00e8ve', /may only contain/],
  ];
  for (const [name, re] of bad) assert.match(validateUserName(name) ?? '', re, JSON.stringify(name));
  // Dovecot files may say name@domain.
  assert.equal(validateUserName('alice@example.onion', { allowDomain: true }), null);
  assert.match(validateUserName('alice@bad_domain', { allowDomain: true }) ?? '', /invalid domain/);
  assert.match(validateUserName('a+b@example.onion', { allowDomain: true }) ?? '', /"\+"/);
  assert.match(validateUserName('x\u0001y') ?? '', /\\x01/, 'control characters are escaped in messages');
});
