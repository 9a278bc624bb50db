/**
 * The Tor control-port client against a scripted fake control port (TCP and unix socket):
 * the exact command lines it sends, reply parsing, every authentication method, and the
 * errors an admin sees. The same client against a real tor is in daemon-tor.test.ts.
 */
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseControlAddress, quoteString, TorControlClient, TorControlError, type ControlAddress } from '../src/tor/control-client.js';
import { startLineServer } from './helpers/line-server.js';
import { freePort } from './helpers/ports.js';

type Handler = (line: string, sock: net.Socket, state: Record<string, unknown>) => string | null;

interface FakeTor {
  address: ControlAddress;
  received: string[];
  close(): Promise<void>;
}

const KEY = `ED25519-V3:${randomBytes(64).toString('base64')}`;
const SERVICE_ID = 'a'.repeat(56);

/** A control port that answers each line with handler(line) (null: no answer). */
async function fakeTor(where: { path?: string }, handler: Handler): Promise<FakeTor> {
  const received: string[] = [];
  const server = await startLineServer({
    path: where.path,
    encoding: 'latin1',
    connection: (sock) => {
      const state: Record<string, unknown> = {};
      return (line) => {
        received.push(line);
        if (line === 'QUIT') {
          sock.end('250 closing connection\r\n');
          return 'stop';
        }
        const reply = handler(line, sock, state);
        if (reply !== null) sock.write(reply);
      };
    },
  });
  const address: ControlAddress = where.path ? { kind: 'unix', path: where.path } : { kind: 'tcp', host: '127.0.0.1', port: server.port };
  return { address, received, close: server.close };
}

function protocolInfo(methods: string, cookieFile?: string): string {
  return (
    '250-PROTOCOLINFO 1\r\n' +
    `250-AUTH METHODS=${methods}${cookieFile ? ` COOKIEFILE=${quoteString(cookieFile)}` : ''}\r\n` +
    '250-VERSION Tor="0.4.9.11"\r\n' +
    '250 OK\r\n'
  );
}

/** The usual commands after authentication. */
function commands(line: string): string | null {
  if (line.startsWith('ADD_ONION NEW:ED25519-V3')) return `250-ServiceID=${SERVICE_ID}\r\n250-PrivateKey=${KEY}\r\n250 OK\r\n`;
  if (line.startsWith('ADD_ONION ED25519-V3:')) return `250-ServiceID=${SERVICE_ID}\r\n250 OK\r\n`;
  if (line.startsWith('DEL_ONION ')) return '250 OK\r\n';
  if (line === 'GETINFO version onions/current') {
    return `250-version=0.4.9.11\r\n250+onions/current=\r\n${SERVICE_ID}\r\n..dot-stuffed\r\n.\r\n250 OK\r\n`;
  }
  return '510 Unrecognized command\r\n';
}

describe('Tor control client (fake control port)', () => {
  let dir: string;
  const fakes: FakeTor[] = [];
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-torctl-'));
  });
  after(async () => {
    for (const f of fakes) await f.close();
    await rm(dir, { recursive: true, force: true });
  });
  const start = async (handler: Handler, unix = false): Promise<FakeTor> => {
    const f = await fakeTor(unix ? { path: path.join(dir, `c${fakes.length}.sock`) } : {}, handler);
    fakes.push(f);
    return f;
  };

  it('parses control addresses and rejects bad ones with a hint', () => {
    assert.deepEqual(parseControlAddress('127.0.0.1:9051'), { kind: 'tcp', host: '127.0.0.1', port: 9051 });
    assert.deepEqual(parseControlAddress('[::1]:9051'), { kind: 'tcp', host: '::1', port: 9051 });
    assert.deepEqual(parseControlAddress('9051'), { kind: 'tcp', host: '127.0.0.1', port: 9051 });
    assert.deepEqual(parseControlAddress('unix:/run/tor/control'), { kind: 'unix', path: '/run/tor/control' });
    assert.deepEqual(parseControlAddress('/run/tor/control'), { kind: 'unix', path: '/run/tor/control' });
    assert.throws(() => parseControlAddress('127.0.0.1:99999'), /port must be 1-65535/);
    assert.throws(() => parseControlAddress('unix:relative'), /absolute path/);
    assert.throws(() => parseControlAddress('tor please'), /HOST:PORT/);
  });

  it('NULL auth over a unix socket; ADD_ONION, GETINFO and DEL_ONION send and parse what the spec says', async () => {
    const tor = await start((line) => (line === 'PROTOCOLINFO 1' ? protocolInfo('NULL') : line === 'AUTHENTICATE' ? '250 OK\r\n' : commands(line)), true);
    const c = await TorControlClient.connect(tor.address);
    const created = await c.addOnion({ key: 'NEW', ports: [{ virtualPort: 25, target: '127.0.0.1:2525' }, { virtualPort: 143, target: '127.0.0.1:2143' }] });
    assert.deepEqual(created, { serviceId: SERVICE_ID, privateKey: KEY });
    const again = await c.addOnion({ key: KEY, ports: [{ virtualPort: 25, target: '127.0.0.1:2525' }] });
    assert.deepEqual(again, { serviceId: SERVICE_ID, privateKey: null });
    await c.addOnion({ key: KEY, ports: [{ virtualPort: 25, target: '127.0.0.1:2525' }], detach: true });
    const info = await c.getInfo('version', 'onions/current');
    assert.deepEqual(info, { version: '0.4.9.11', 'onions/current': `${SERVICE_ID}\n.dot-stuffed` });
    await c.delOnion(`${SERVICE_ID}.onion`);
    c.close();
    assert.deepEqual(tor.received.slice(0, 7), [
      'PROTOCOLINFO 1',
      'AUTHENTICATE',
      'ADD_ONION NEW:ED25519-V3 Port=25,127.0.0.1:2525 Port=143,127.0.0.1:2143',
      `ADD_ONION ${KEY} Port=25,127.0.0.1:2525`,
      `ADD_ONION ${KEY} Flags=Detach Port=25,127.0.0.1:2525`,
      'GETINFO version onions/current',
      `DEL_ONION ${SERVICE_ID}`,
    ]);
  });

  it('HASHEDPASSWORD: sends the password as a quoted string; a wrong one is an "auth" error that names the key to fix', async () => {
    const password = 'pa"ss\\word';
    const tor = await start((line) => {
      if (line === 'PROTOCOLINFO 1') return protocolInfo('HASHEDPASSWORD');
      if (line.startsWith('AUTHENTICATE ')) return line === `AUTHENTICATE "pa\\"ss\\\\word"` ? '250 OK\r\n' : '515 Authentication failed: Password did not match HashedControlPassword value from configuration\r\n';
      return commands(line);
    });
    const ok = await TorControlClient.connect(tor.address, { password });
    ok.close();
    await assert.rejects(TorControlClient.connect(tor.address, { password: 'wrong' }), (err: unknown) => {
      assert.ok(err instanceof TorControlError);
      assert.equal(err.kind, 'auth');
      assert.equal(err.status, 515);
      assert.match(err.message, /refused authentication with the control password: 515 .*check \[tor\] control_password/);
      return true;
    });
    await assert.rejects(TorControlClient.connect(tor.address, {}), (err: unknown) => {
      assert.ok(err instanceof TorControlError && err.kind === 'auth');
      assert.match(err.message, /asks for a control password: set \[tor\] control_password/);
      return true;
    });
  });

  it('SAFECOOKIE: proves knowledge of the cookie both ways; a fake that does not know it is refused', async () => {
    const cookie = randomBytes(32);
    const cookieFile = path.join(dir, 'control_auth_cookie');
    await writeFile(cookieFile, cookie);
    const serverNonce = randomBytes(32);
    const hmac = (key: string, clientNonce: Buffer): string =>
      createHmac('sha256', key).update(Buffer.concat([cookie, clientNonce, serverNonce])).digest('hex').toUpperCase();
    const honest = (cheat: boolean): Handler => (line, _sock, state) => {
      if (line === 'PROTOCOLINFO 1') return protocolInfo('COOKIE,SAFECOOKIE', cookieFile);
      const ch = /^AUTHCHALLENGE SAFECOOKIE ([0-9a-f]{64})$/i.exec(line);
      if (ch) {
        state.nonce = Buffer.from(ch[1]!, 'hex');
        const serverHash = cheat ? randomBytes(32).toString('hex') : hmac('Tor safe cookie authentication server-to-controller hash', state.nonce as Buffer);
        return `250 AUTHCHALLENGE SERVERHASH=${serverHash} SERVERNONCE=${serverNonce.toString('hex').toUpperCase()}\r\n`;
      }
      if (line.startsWith('AUTHENTICATE ')) {
        const expected = hmac('Tor safe cookie authentication controller-to-server hash', state.nonce as Buffer);
        return line.slice('AUTHENTICATE '.length).toUpperCase() === expected ? '250 OK\r\n' : '515 Authentication failed: Safe cookie response did not match expected value.\r\n';
      }
      return commands(line);
    };
    const tor = await start(honest(false));
    const c = await TorControlClient.connect(tor.address);
    c.close();
    assert.match(tor.received[1]!, /^AUTHCHALLENGE SAFECOOKIE [0-9a-f]{64}$/);

    const impostor = await start(honest(true));
    await assert.rejects(TorControlClient.connect(impostor.address), (err: unknown) => err instanceof TorControlError && err.kind === 'auth' && /does not know Tor's cookie/.test(err.message));
    assert.ok(!impostor.received.some((l) => l.startsWith('AUTHENTICATE')), 'no response is sent to a server that failed its proof');
  });

  it('COOKIE only: sends the cookie in hex; an unreadable cookie file says how to fix it', async () => {
    const cookie = randomBytes(32);
    const cookieFile = path.join(dir, 'cookie2');
    await writeFile(cookieFile, cookie);
    const tor = await start((line) => {
      if (line === 'PROTOCOLINFO 1') return protocolInfo('COOKIE', '/nonexistent/control_auth_cookie');
      if (line.startsWith('AUTHENTICATE ')) return line === `AUTHENTICATE ${cookie.toString('hex')}` ? '250 OK\r\n' : '515 Authentication failed\r\n';
      return commands(line);
    });
    // The configured file wins over the one Tor names.
    (await TorControlClient.connect(tor.address, { cookieFile })).close();
    await assert.rejects(TorControlClient.connect(tor.address), (err: unknown) => {
      assert.ok(err instanceof TorControlError && err.kind === 'auth');
      assert.match(err.message, /cannot read Tor's control cookie \/nonexistent\/control_auth_cookie.*no such file: is \[tor\] cookie_file right/);
      return true;
    });
  });

  it('errors: nothing listening (TCP and unix), a silent server (timeout), a refused ADD_ONION', async () => {
    const port = await freePort();
    await assert.rejects(TorControlClient.connect({ kind: 'tcp', host: '127.0.0.1', port }), (err: unknown) => {
      assert.ok(err instanceof TorControlError && err.kind === 'unreachable');
      assert.match(err.message, new RegExp(`no Tor control port at 127\\.0\\.0\\.1:${port} \\(ECONNREFUSED\\): is tor running with "ControlPort ${port}"`));
      return true;
    });
    await assert.rejects(TorControlClient.connect({ kind: 'unix', path: path.join(dir, 'none.sock') }), (err: unknown) => err instanceof TorControlError && err.kind === 'unreachable');

    const silent = await start(() => null);
    const t0 = Date.now();
    await assert.rejects(TorControlClient.connect(silent.address, {}, { timeoutMs: 300 }), (err: unknown) => err instanceof TorControlError && err.kind === 'timeout' && /did not answer PROTOCOLINFO/.test(err.message));
    assert.ok(Date.now() - t0 < 2000);

    const tor = await start((line) =>
      line === 'PROTOCOLINFO 1' ? protocolInfo('NULL') : line === 'AUTHENTICATE' ? '250 OK\r\n' : line.startsWith('ADD_ONION') ? '550 Onion address collision\r\n' : line.startsWith('GETINFO') ? null : commands(line),
    );
    const c = await TorControlClient.connect(tor.address);
    await assert.rejects(c.addOnion({ key: KEY, ports: [{ virtualPort: 25, target: '127.0.0.1:25' }] }), (err: unknown) => {
      assert.ok(err instanceof TorControlError && err.kind === 'refused' && err.status === 550);
      assert.match(err.message, /Tor refused ADD_ONION: 550 Onion address collision \(tor already hosts this onion/);
      return true;
    });
    await assert.rejects(c.addOnion({ key: 'ED25519-V3:short', ports: [{ virtualPort: 25, target: '127.0.0.1:25' }] }), /not an "ED25519-V3:<base64 of 64 bytes>" key/);
    // A connection that tor closes fails every pending and later command, and says so once.
    let closes = 0;
    c.on('close', () => closes++);
    const pending = c.getInfo('version');
    for (const s of [tor]) await s.close();
    await assert.rejects(pending, (err: unknown) => err instanceof TorControlError && err.kind === 'closed');
    await assert.rejects(c.getInfo('version'), (err: unknown) => err instanceof TorControlError && err.kind === 'closed');
    assert.equal(closes, 1);
    fakes.splice(fakes.indexOf(tor), 1);
  });
});
