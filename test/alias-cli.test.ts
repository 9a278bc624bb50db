/** `onionpost alias ...` run as a user would: the real CLI in child processes. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCli } from './helpers/cli.js';
import { AliasDb } from '../src/users/aliases.js';

const DOMAIN = 'abcdefghij234567.onion';

function setup(t: { after: (fn: () => void) => void }) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'onionpost-aliascli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const config = path.join(dir, 'onionpost.toml');
  writeFileSync(config, `data_dir = "data"\ndomain = "${DOMAIN}"\nlocal_domains = ["mail.example"]\n`);
  mkdirSync(path.join(dir, 'data'));
  writeFileSync(path.join(dir, 'data', 'users.passwd'), 'alice:{PLAIN}x::::::\nbob:{PLAIN}x::::::\n');
  return {
    dir,
    file: path.join(dir, 'data', 'aliases'),
    cli: (args: string[]) => runCli(['--config', config, 'alias', ...args], { cwd: dir }),
  };
}

test('alias add / list / del; a running daemon view sees the change', async (t) => {
  const env = setup(t);
  const daemonView = new AliasDb(env.file, { localDomains: [DOMAIN, 'mail.example'] });
  assert.deepEqual(daemonView.list(), []);

  let r = await env.cli(['add', 'team', 'alice,bob', 'carol@example.onion']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(
    r.stdout,
    `alias team: alice, bob, carol@example.onion\n  team@${DOMAIN} -> alice, bob, carol@example.onion\n  (remote targets are forwarded through the outbound queue)\n`,
  );
  r = await env.cli(['add', 'postmaster', 'root']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`postmaster@${DOMAIN} -> alice\\n`), 'root falls back to the first user');
  r = await env.cli(['add', 'info@mail.example', 'nobody']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /warning: info@mail\.example leads to no user yet/);

  r = await env.cli(['list']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'team: alice, bob, carol@example.onion\npostmaster: root\ninfo@mail.example: nobody\n');
  await new Promise((res) => setTimeout(res, 1100));
  assert.deepEqual(daemonView.lookup('team', DOMAIN), ['alice', 'bob', 'carol@example.onion']);

  r = await env.cli(['del', 'team', 'carol@example.onion']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'removed carol@example.onion from alias team\n');
  r = await env.cli(['del', 'info@mail.example']);
  assert.equal(r.stdout, 'removed alias info@mail.example\n');
  assert.equal(readFileSync(env.file, 'utf8'), 'team: alice, bob\npostmaster: root\n');
});

test('alias errors: usage 64, bad name/target 65, unknown alias 67, a user name 73', async (t) => {
  const env = setup(t);
  writeFileSync(env.file, '# my aliases\nbroken line\n');
  const cases: Array<[string[], number, RegExp]> = [
    [[], 64, /a subcommand is missing/],
    [['add', 'x'], 64, /at least one TARGET/],
    [['frob'], 64, /unknown subcommand "frob"/],
    [['add', 'Bad Name', 'alice'], 65, /alias name "bad name"/],
    [['add', 'x@elsewhere.onion', 'alice'], 65, /not in one of our domains/],
    [['add', 'x', '|/bin/sh'], 65, /program target .* not supported/],
    [['del', 'nope'], 67, /no alias "nope"/],
    [['add', 'alice', 'bob'], 73, /"alice" is a user/],
  ];
  for (const [args, code, re] of cases) {
    const r = await env.cli(args);
    assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re, args.join(' '));
  }
  const list = await env.cli(['list']);
  assert.match(list.stderr, /warning: .*aliases:2: expected "name: target, target"/);
  assert.equal(readFileSync(env.file, 'utf8'), '# my aliases\nbroken line\n', 'failed commands change nothing');
  const help = await env.cli(['--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /usage: onionpost alias/);
});
