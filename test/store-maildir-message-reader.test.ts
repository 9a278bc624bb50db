/**
 * The Maildir message reader (synchronous reads within a budget, asynchronous otherwise) and
 * read arenas: bytes are exact whichever way a file is read, a file bigger than its recorded
 * size is read to its end, a vanished file fails with ENOENT (the folder then rescans), and
 * what is read into an arena stays intact until the arena is reset. Also readMessage through
 * the store, into an arena, while other software renames the file.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ReadArena } from '../src/store/read-arena.js';
import { MaildirStore } from '../src/store/maildir/maildir-store.js';
import { readMessageFile, withCrlf } from '../src/store/maildir/message-reader.js';

function bytes(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 131 + seed * 7) & 0xff;
  return b;
}

describe('Maildir message reader', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'onionpost-reader-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads files of every size byte-exactly, also when bigger than expected or empty', async () => {
    const sizes = [0, 1, 100, 4095, 4096, 70_000, 1024 * 1024, 1024 * 1024 + 1, 3 * 1024 * 1024 + 7];
    for (const [i, size] of sizes.entries()) {
      const file = path.join(dir, `f${i}`);
      const data = bytes(size, i);
      await writeFile(file, data);
      assert.ok((await readMessageFile(file, size)).equals(data), `size ${size}`);
      // recorded size too small: read on to the end
      assert.ok((await readMessageFile(file, Math.floor(size / 3))).equals(data), `size ${size}, expected a third`);
      // recorded size bigger (bare LFs counted): the file as it is
      assert.ok((await readMessageFile(file, size + 10)).equals(data), `size ${size}, expected more`);
    }
  });

  it('many reads in one go (past the per-turn budget) all come back exact', async () => {
    const files = await Promise.all(
      Array.from({ length: 400 }, async (_, i) => {
        const file = path.join(dir, `many${i}`);
        const data = bytes(1000 + ((i * 977) % 30_000), i);
        await writeFile(file, data);
        return { file, data };
      }),
    );
    const read = await Promise.all(files.map((f) => readMessageFile(f.file, f.data.length)));
    read.forEach((b, i) => assert.ok(b.equals(files[i].data), `file ${i}`));
  });

  it('a missing file fails with ENOENT', async () => {
    await assert.rejects(readMessageFile(path.join(dir, 'nope'), 10), (err: NodeJS.ErrnoException) => err.code === 'ENOENT');
    await assert.rejects(readMessageFile(path.join(dir, 'nope'), 5 * 1024 * 1024), (err: NodeJS.ErrnoException) => err.code === 'ENOENT');
  });

  it('reads into an arena while it has room, and those bytes stay until it is reset', async () => {
    const arena = ReadArena.acquire(64 * 1024);
    const files = await Promise.all(
      [10_000, 20_000, 30_000, 40_000].map(async (size, i) => {
        const file = path.join(dir, `arena${i}`);
        const data = bytes(size, 50 + i);
        await writeFile(file, data);
        return { file, data };
      }),
    );
    const read: Buffer[] = [];
    for (const f of files) read.push(await readMessageFile(f.file, f.data.length, arena));
    read.forEach((b, i) => assert.ok(b.equals(files[i].data), `file ${i}`));
    // the first three share the arena's memory, the fourth did not fit
    assert.equal(read[0].buffer, read[1].buffer);
    assert.equal(read[1].buffer, read[2].buffer);
    assert.notEqual(read[3].buffer, read[0].buffer);
    arena.reset();
    const again = await readMessageFile(files[3].file, files[3].data.length, arena);
    assert.ok(again.equals(files[3].data));
    assert.equal(again.buffer, read[0].buffer);
    arena.release();
  });

  it('withCrlf: CRLF files as they are, bare LFs turned into CRLF', () => {
    const crlf = Buffer.from('A: b\r\n\r\nbody\r\n');
    assert.equal(withCrlf(crlf, crlf.length), crlf);
    const lf = Buffer.from('A: b\n\nbody\n');
    assert.equal(withCrlf(lf, lf.length + 3).toString(), 'A: b\r\n\r\nbody\r\n');
    // a recorded size that wrongly claims no bare LF is caught by the first line
    assert.equal(withCrlf(lf, lf.length).toString(), 'A: b\r\n\r\nbody\r\n');
    const mixed = Buffer.from('A: b\r\n\r\nline\nline\r\n');
    assert.equal(withCrlf(mixed, mixed.length + 1).toString(), 'A: b\r\n\r\nline\r\nline\r\n');
  });

  it('readMessage into an arena, with the file renamed by other software in between', async () => {
    const store = new MaildirStore({ maildirFor: (u) => path.join(dir, 'mail', u) });
    try {
      await store.ensureUser('u');
      const msgs = Array.from({ length: 20 }, (_, i) => Buffer.from(`Subject: m${i}\r\n\r\n${'x'.repeat(100 + i * 1000)}\r\n`));
      for (const m of msgs) await store.append('u', 'INBOX', m);
      const box = await store.openMailbox('u', 'INBOX');
      assert.ok(box);
      const uids = box.uids;
      // another program sets a flag on every message (renames its file) behind our back
      const cur = path.join(dir, 'mail', 'u', 'cur');
      for (const name of await readdir(cur)) await rename(path.join(cur, name), path.join(cur, name.replace(/:2,.*$/, ':2,S')));
      const arena = ReadArena.acquire(1024 * 1024);
      const read = await Promise.all(uids.map((uid) => store.readMessage(box.id, uid, arena)));
      read.forEach((b, i) => assert.ok(b && b.equals(msgs[i]), `message ${i}`));
      arena.release();
    } finally {
      await store.close();
    }
  });
});
