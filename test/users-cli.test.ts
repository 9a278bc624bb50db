/** `onionpost user ...` run as a user would: the real CLI in child processes. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BIN, runCli } from './helpers/cli.js';
import { UserDb } from '../src/users/user-db.js';

const DOMAIN = 'abcdefghij234567.onion';

interface Env {
  dir: string;
  config: string;
  usersFile: string;
  cli: (args: string[], input?: string) => ReturnType<typeof runCli>;
}

function setup(t: { after: (fn: () => void) => void }, extraToml = ''): Env {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'onionpost-usercli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const config = path.join(dir, 'onionpost.toml');
  writeFileSync(
    config,
    `data_dir = ${JSON.stringify(path.join(dir, 'data'))}\ndomain = "${DOMAIN}"\nlocal_domains = ["mail.example"]\n${extraToml}`,
  );
  const usersFile = path.join(dir, 'data', 'users.passwd');
  return { dir, config, usersFile, cli: (args, input) => runCli(['--config', config, 'user', ...args], { input, cwd: dir }) };
}

test('user add / list / passwd / del with --password-stdin', async (t) => {
  const env = setup(t);
  const daemonView = new UserDb(env.usersFile, undefined, { localDomains: [DOMAIN] }); // as the running daemon holds it
  assert.deepEqual(daemonView.list(), []);

  let r = await env.cli(['add', 'alice', '--password-stdin'], 'alice pw\n');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `added user alice: mail address alice@${DOMAIN}\n`);
  assert.equal(statSync(env.usersFile).mode & 0o777, 0o600);
  assert.match(readFileSync(env.usersFile, 'utf8'), /^alice:\{ARGON2ID\}\$argon2id\$v=19\$m=65536,t=3,p=1\$/);

  // The daemon's instance sees the new user without a restart (stat check, at most ~1 s).
  await new Promise((res) => setTimeout(res, 1100));
  assert.equal((await daemonView.authenticate('alice', 'alice pw'))?.name, 'alice');
  assert.equal((await daemonView.authenticate(`alice@${DOMAIN}`, 'alice pw'))?.name, 'alice');

  // CRLF from a Windows-ish pipe and a password with spaces and colons.
  r = await env.cli(['add', `bob@${DOMAIN}`, '--password-stdin'], 'b: o b\r\n');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `added user bob: mail address bob@${DOMAIN}\n`);

  r = await env.cli(['list']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'alice\nbob\n');

  r = await env.cli(['passwd', 'alice', '--password-stdin'], 'new pw\nignored second line\n');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'changed the password of alice\n');
  daemonView.reload();
  assert.equal(await daemonView.authenticate('alice', 'alice pw'), null);
  assert.equal((await daemonView.authenticate('alice', 'new pw'))?.name, 'alice');
  assert.equal((await daemonView.authenticate('bob', 'b: o b'))?.name, 'bob');

  r = await env.cli(['del', 'alice']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^removed user alice/);
  daemonView.reload();
  assert.equal(daemonView.get('alice'), undefined);
  r = await env.cli(['list']);
  assert.equal(r.stdout, 'bob\n');
});

test('errors: exit codes and messages', async (t) => {
  const env = setup(t);
  assert.equal((await env.cli(['add', 'alice', '--password-stdin'], 'pw\n')).code, 0);
  const cases: Array<{ args: string[]; input?: string; code: number; err: RegExp }> = [
    { args: ['add', 'alice', '--password-stdin'], input: 'x\n', code: 73, err: /user "alice" already exists/ },
    { args: ['passwd', 'nobody', '--password-stdin'], input: 'x\n', code: 67, err: /no user "nobody"/ },
    { args: ['del', 'nobody'], code: 67, err: /no user "nobody"/ },
    { args: ['add', 'Bob', '--password-stdin'], input: 'x\n', code: 65, err: /must be lower case/ },
    { args: ['add', 'bob+x', '--password-stdin'], input: 'x\n', code: 65, err: /must not contain "\+"/ },
    { args: ['add', 'bob@other.onion', '--password-stdin'], input: 'x\n', code: 65, err: /not in a local domain/ },
    { args: ['add', 'bob', '--password-stdin'], input: '', code: 65, err: /standard input was empty/ },
    { args: ['add', 'bob', '--password-stdin'], input: '\n', code: 65, err: /password is empty/ },
    { args: ['add', 'bob'], input: 'pw\n', code: 64, err: /not a terminal.*--password-stdin/ },
    { args: ['passwd', 'alice'], input: 'pw\n', code: 64, err: /--password-stdin/ },
    { args: [], code: 64, err: /subcommand is missing/ },
    { args: ['frobnicate'], code: 64, err: /unknown subcommand "frobnicate"/ },
    { args: ['add'], code: 64, err: /NAME is missing/ },
    { args: ['add', 'a', 'b'], code: 64, err: /only one NAME/ },
    { args: ['add', 'bob', '--force'], code: 64, err: /unknown option "--force"/ },
    { args: ['del', 'alice', '--password-stdin'], code: 64, err: /unknown option/ },
    { args: ['list', 'extra'], code: 64, err: /unexpected argument/ },
  ];
  for (const c of cases) {
    const r = await env.cli(c.args, c.input);
    assert.equal(r.code, c.code, `${c.args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, c.err, c.args.join(' '));
    assert.match(r.stderr, /^onionpost: /);
  }
  // Nothing of that changed the file.
  assert.deepEqual(new UserDb(env.usersFile).list().map((u) => u.name), ['alice']);
  // Help goes to stdout with status 0.
  const help = await env.cli(['--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /user add NAME|add NAME \[--password-stdin\]/);
});

test('users.file from the config; malformed lines are warnings, kept on rewrite', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'onionpost-usercli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const usersFile = path.join(dir, 'etc', 'dovecot-users');
  const env = setup(t, `[users]\nfile = ${JSON.stringify(usersFile)}\n`);
  const { mkdirSync } = await import('node:fs');
  mkdirSync(path.dirname(usersFile));
  const original = '# from dovecot\nzed@mail.example:{PLAIN}z:1000:1000::/home/zed::userdb_mail=maildir:~/Maildir\nnot a valid line\n';
  writeFileSync(usersFile, original);
  let r = await env.cli(['list']);
  assert.equal(r.code, 0);
  assert.equal(r.stdout, 'zed@mail.example\n');
  assert.match(r.stderr, new RegExp(`warning: ${usersFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:3: expected "user:password`));
  r = await env.cli(['add', 'amy', '--password-stdin'], 'pw\n');
  assert.equal(r.code, 0, r.stderr);
  r = await env.cli(['passwd', 'zed', '--password-stdin'], 'zz\n');
  assert.equal(r.code, 0, r.stderr);
  const text = readFileSync(usersFile, 'utf8');
  assert.match(text, /^# from dovecot\nzed@mail\.example:\{ARGON2ID\}[^:]+:1000:1000::\/home\/zed::userdb_mail=maildir:~\/Maildir\nnot a valid line\namy:\{ARGON2ID\}/);
});

test('concurrent `user add` from several processes: every user ends up in the file', async (t) => {
  const env = setup(t);
  const names = ['u1', 'u2', 'u3', 'u4', 'u5'];
  const results = await Promise.all(names.map((n) => env.cli(['add', n, '--password-stdin'], `${n}-pw\n`)));
  for (const r of results) assert.equal(r.code, 0, r.stderr);
  const db = new UserDb(env.usersFile);
  assert.deepEqual(db.list().map((u) => u.name).sort(), names);
  for (const n of names) assert.equal((await db.authenticate(n, `${n}-pw`))?.name, n);
});

test('--password-stdin does not wait for the writer to close the pipe', async (t) => {
  const env = setup(t);
  const child = spawn(process.execPath, [BIN, '--config', env.config, 'user', 'add', 'alice', '--password-stdin'], {
    cwd: env.dir,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  child.stdin.write('pw\n'); // and keep the pipe open
  const t0 = Date.now();
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => resolve(-1), 5000);
    child.on('exit', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  child.stdin.destroy();
  if (code === -1) child.kill();
  assert.equal(code, 0, `exited after ${Date.now() - t0} ms`);
});

// The no-echo prompt needs a real terminal: `script` (util-linux / BSD) gives us one.
const hasScript = spawnSync('script', ['--version'], { stdio: 'ignore' }).status === 0;

/** Runs the CLI on a pseudo-terminal, typing `keys` (one string per keystroke batch). */
function onTty(env: Env, args: string[], keys: string[]): Promise<{ code: number | null; output: string }> {
  const cmd = [process.execPath, BIN, '--config', env.config, 'user', ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qec', cmd, '/dev/null'], { cwd: env.dir, stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.on('error', reject);
    const timer = setTimeout(() => child.kill(), 15000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      child.stdin.destroy();
      resolve({ code, output });
    });
    // Type each batch once the prompt for it has appeared.
    let sent = 0;
    const pump = () => {
      const prompts = (output.match(/password: /gi) ?? []).length;
      while (sent < keys.length && sent < prompts) child.stdin.write(keys[sent++]!);
    };
    child.stdout.on('data', pump);
  });
}

test('prompt on a terminal: asked twice, not echoed, line editing', { skip: hasScript ? false : '`script` not installed: no pseudo-terminal to test the prompt on' }, async (t) => {
  const env = setup(t);
  // "p", an arrow key (ignored), "x", backspace, "w1" -> "pw1"
  let r = await onTty(env, ['add', 'carol'], ['p\x1b[Dx\x7fw1\r', 'pw1\r']);
  assert.equal(r.code, 0, r.output);
  assert.match(r.output, /Password: /);
  assert.match(r.output, /Retype password: /);
  assert.match(r.output, /added user carol/);
  assert.doesNotMatch(r.output, /pw1/, 'the password is not echoed');
  assert.equal((await new UserDb(env.usersFile).authenticate('carol', 'pw1'))?.name, 'carol');

  r = await onTty(env, ['passwd', 'carol'], ['one\r', 'two\r']);
  assert.equal(r.code, 65, r.output);
  assert.match(r.output, /passwords do not match/);
  r = await onTty(env, ['passwd', 'carol'], ['abc\x03']);
  assert.equal(r.code, 130, r.output);
  assert.match(r.output, /interrupted/);
  r = await onTty(env, ['passwd', 'carol'], ['\r', '\r']);
  assert.equal(r.code, 65, r.output);
  assert.match(r.output, /password is empty/);
  assert.equal((await new UserDb(env.usersFile).authenticate('carol', 'pw1'))?.name, 'carol', 'unchanged');
});
