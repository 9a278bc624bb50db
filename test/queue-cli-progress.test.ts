/**
 * `onionpost queue list` and `queue flush` over a big queue: a progress line on standard
 * error when it is a terminal, nothing when it is not; standard output is the same either way.
 * The command runs in this process with standard error standing in for a terminal.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import queueCommand from '../src/cli/queue.js';
import type { CliContext } from '../src/cli/command.js';
import { loadConfig } from '../src/config/load.js';
import type { Config } from '../src/config/types.js';
import { OutboundQueue } from '../src/delivery/queue.js';
import { wakeDirOf } from '../src/delivery/wake.js';
import { randomOnionAddress } from '../src/tor/onion-address.js';

const ENTRIES = 300;

class Capture extends Writable {
  text = '';
  constructor(readonly isTTY: boolean) {
    super();
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    this.text += chunk.toString();
    done();
  }
}

describe('queue list / flush: progress on a terminal only', { timeout: 60_000 }, () => {
  let dir: string;
  let config: Config;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-queue-progress-'));
    const file = path.join(dir, 'onionpost.toml');
    await writeFile(file, `data_dir = "data"\ndomain = "${randomOnionAddress()}"\n[tor]\ncontrol = ""\n`);
    config = loadConfig(file);
    const queue = new OutboundQueue({ dir: config.queue.dir });
    const to = `bob@${randomOnionAddress()}`;
    const raw = Buffer.from('Subject: waiting\r\n\r\nx\r\n');
    for (let i = 0; i < ENTRIES; i += 30) {
      await Promise.all(Array.from({ length: Math.min(30, ENTRIES - i) }, () => queue.enqueue({ from: 'alice@ours.onion', recipients: [to], raw, notBefore: Date.now() + 3_600_000 })));
    }
  });
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function run(args: string[], tty: boolean): Promise<{ code: number; stdout: string; stderr: string }> {
    const stdout = new Capture(tty);
    const stderr = new Capture(tty);
    const ctx: CliContext = { io: { stdin: process.stdin, stdout, stderr }, config: () => config, configFile: () => null };
    const code = await queueCommand(args, ctx);
    return { code, stdout: stdout.text, stderr: stderr.text };
  }

  it('list: a progress line while the entries are read, cleared before the listing; nothing on a pipe', async () => {
    const onTty = await run(['list'], true);
    assert.equal(onTty.code, 0);
    assert.match(onTty.stderr, new RegExp(`\\r\\x1b\\[K\\[[#-]{24}\\] \\d+/${ENTRIES} reading the queue`));
    assert.ok(onTty.stderr.endsWith('\r\x1b[K'), 'the line is cleared at the end');
    assert.match(onTty.stdout, new RegExp(`in ${ENTRIES} messages, ${ENTRIES} recipients waiting\\n$`));

    const onPipe = await run(['list'], false);
    assert.equal(onPipe.stderr, '');
    const ids = (out: string): string[] => out.match(/^[0-9A-F]{16}(?= )/gm) ?? [];
    assert.equal(ids(onTty.stdout).length, ENTRIES);
    assert.deepEqual(ids(onPipe.stdout), ids(onTty.stdout), 'the same listing');
  });

  it('flush: counts what it retries with a progress line on a terminal; leaves one request for the daemon', async () => {
    const onTty = await run(['flush'], true);
    assert.equal(onTty.code, 0);
    assert.match(onTty.stderr, /reading the queue/);
    assert.ok(onTty.stderr.endsWith('\r\x1b[K'));
    assert.match(onTty.stdout, new RegExp(`^flush of every waiting message \\(${ENTRIES} messages, ${ENTRIES} recipients\\) requested; the daemon is not running`));

    const onPipe = await run(['flush'], false);
    assert.equal(onPipe.stderr, '');
    assert.equal(onPipe.stdout, onTty.stdout);
    const requests = (await readdir(wakeDirOf(config.queue.dir))).filter((n) => n.startsWith('flush-all.'));
    assert.equal(requests.length, 2);
  });
});
