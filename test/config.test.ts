import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../src/config/load.js';
import { KEYS } from '../src/config/schema.js';
import { ROOT, runCli } from './helpers/cli.js';

describe('config', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-config-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const write = async (text: string): Promise<string> => {
    const file = path.join(dir, `c${Math.random().toString(36).slice(2)}.toml`);
    await writeFile(file, text);
    return file;
  };

  it('the example file documents every key with its default value', async () => {
    const example = path.join(ROOT, 'config', 'onionpost.example.toml');
    const text = await readFile(example, 'utf8');
    for (const spec of KEYS) {
      const name = spec.key.split('.').pop()!;
      assert.match(text, new RegExp(`^${name} = `, 'm'), `example lacks key ${spec.key}`);
    }
    const fromExample = loadConfig(example);
    const embedded = loadConfig(null, path.dirname(example));
    assert.deepEqual({ ...fromExample, file: null }, embedded);
  });

  it('embedded default: data in ./data, unprivileged ports, domain localhost', () => {
    const c = loadConfig(null, '/srv/x');
    assert.equal(c.dataDir, path.resolve('/srv/x/data'));
    assert.equal(c.domain, 'localhost');
    assert.deepEqual(c.localDomains, ['localhost']);
    assert.equal(c.smtp.inbound.port, 2525);
    assert.equal(c.imap.plain.port, 2143);
    assert.equal(c.users.file, path.resolve('/srv/x/data/users.passwd'));
    assert.equal(c.tls.configured, false);
    assert.equal(c.smtp.maxMessageSize, 25 * 1024 * 1024);
    assert.deepEqual(c.submission, {
      starttls: { host: '127.0.0.1', port: 2587 },
      tls: { host: '127.0.0.1', port: 2465 },
      allowPlaintextLoopback: true,
    });
    assert.deepEqual(c.relay, { openToOnion: false, onionRatePerMinute: 60, clearnet: false });
    assert.equal(c.users.aliases, path.resolve('/srv/x/data/aliases'));
    assert.equal(c.users.postmaster, null);
    assert.equal(c.queue.dir, path.resolve('/srv/x/data/queue'));
  });

  it('relative paths resolve against the config file folder; domains are lower-cased', async () => {
    const file = await write('data_dir = "d"\ndomain = "ABC.onion"\nlocal_domains = ["Extra.Example", "abc.onion"]\n[smtp]\nmax_message_size = "10M"\n');
    const c = loadConfig(file, '/elsewhere');
    assert.equal(c.dataDir, path.join(dir, 'd'));
    assert.equal(c.domain, 'abc.onion');
    assert.deepEqual(c.localDomains, ['abc.onion', 'extra.example']);
    assert.equal(c.smtp.maxMessageSize, 10 * 1024 * 1024);
  });

  const bad: Array<[string, RegExp]> = [
    ['[smtp]\nport = 70000\n', /key "smtp\.port": value 70000 is not allowed: expected an integer port/],
    ['[smtp]\nport = "25"\n', /key "smtp\.port": value "25"/],
    ['domain = "not a domain"\n', /key "domain": value "not a domain" is not allowed/],
    ['[log]\nlevel = "loud"\n', /key "log\.level".*expected one of "trace"/],
    ['[smtp]\nmax_message_size = "lots"\n', /key "smtp\.max_message_size"/],
    ['[smtp]\nprot = 25\n', /unknown key "smtp\.prot"/],
    ['[imap]\nport = 2525\n', /"smtp\.port" and "imap\.port" both use port 2525/],
    ['[tls]\ncert = "c.pem"\n', /"tls\.cert" and "tls\.key" go together/],
    ['domain = \n', /not valid TOML/],
    ['[submission]\nallow_plaintext_loopback = "yes"\n', /key "submission\.allow_plaintext_loopback": value "yes" is not allowed: expected true or false/],
    ['[submission]\nport = 2525\n', /"smtp\.port" and "submission\.port" both use port 2525/],
    ['[submission]\ntls_port = 2143\n', /"submission\.tls_port" and "imap\.port" both use port 2143/],
    ['[relay]\nonion_rate = 0\n', /key "relay\.onion_rate": value 0 is not allowed: expected an integer from 1/],
    ['[relay]\nclearnet = 1\n', /key "relay\.clearnet".*expected true or false/],
  ];
  for (const [text, re] of bad) {
    it(`rejects ${JSON.stringify(text)}`, async () => {
      const file = await write(text);
      assert.throws(() => loadConfig(file), (err: unknown) => err instanceof ConfigError && re.test(err.message));
    });
  }

  it('the CLI stops with exit code 2 and names the key', async () => {
    const file = await write('[imap]\nport = -1\n');
    const r = await runCli(['--config', file, 'start']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /config error: .*key "imap\.port": value -1 is not allowed/);
    const missing = await runCli(['start', '--config', path.join(dir, 'nope.toml')]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /cannot read config file .*nope\.toml: no such file/);
  });

  it('the CLI explains unknown commands and missing option values', async () => {
    const r = await runCli(['frobnicate']);
    assert.equal(r.code, 64);
    assert.match(r.stderr, /unknown command "frobnicate"/);
    const r2 = await runCli(['user', 'list', '--config']);
    assert.equal(r2.code, 64);
    assert.match(r2.stderr, /--config needs a file name/);
  });
});
