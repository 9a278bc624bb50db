/** setConfigKey: targeted edits of a config file that keep comments and layout. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parse } from 'smol-toml';
import { setConfigKey } from '../src/config/edit.js';

const BASE = '# top comment\ndata_dir = "data"\n\n[smtp]\n# port comment\nport = 2525\n\n[log]\nlevel = "info"\n';

describe('config edit', () => {
  it('replaces a key in its own section only, keeping every comment', () => {
    const text = setConfigKey(`${BASE}\n[imap]\nport = 2143\n`, 'smtp.port', 25);
    assert.match(text, /# port comment\nport = 25\n/);
    assert.match(text, /\[imap\]\nport = 2143\n/);
    assert.match(text, /^# top comment\n/);
  });

  it('adds a missing key after the last key of its section, a missing section at the end, a top-level key before the first section', () => {
    let text = setConfigKey(BASE, 'smtp.host', '127.0.0.1');
    assert.match(text, /port = 2525\nhost = "127\.0\.0\.1"\n/);
    text = setConfigKey(text, 'tor.control', 'unix:/run/tor/control');
    assert.match(text, /\n\[tor\]\ncontrol = "unix:\/run\/tor\/control"\n$/);
    text = setConfigKey(text, 'domain', 'abc.onion');
    assert.match(text, /^# top comment\ndata_dir = "data"\ndomain = "abc\.onion"\n/);
    const doc = parse(text) as Record<string, Record<string, unknown>>;
    assert.equal(doc.domain as unknown, 'abc.onion');
    assert.equal(doc.smtp!.host, '127.0.0.1');
    assert.equal(doc.tor!.control, 'unix:/run/tor/control');
  });

  it('escapes strings (a password with quotes, backslashes, #) so they read back exactly', () => {
    const password = 'p"a\\s#s\u00e9\t';
    const text = setConfigKey(BASE, 'tor.control_password', password);
    assert.equal((parse(text) as Record<string, Record<string, unknown>>).tor!.control_password, password);
    assert.equal((parse(setConfigKey(text, 'tor.control_password', 'x')) as Record<string, Record<string, unknown>>).tor!.control_password, 'x');
  });

  it('a key with the same name in another section is not touched', () => {
    const text = setConfigKey('[imap]\nport = 1\n[smtp]\nhost = "x"\n', 'smtp.port', 2);
    assert.match(text, /^\[imap\]\nport = 1\n\[smtp\]\nhost = "x"\nport = 2\n/);
  });
});
