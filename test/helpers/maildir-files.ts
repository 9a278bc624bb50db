/** The message files of a Maildir (its new/ and cur/), as tests look at them. */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

/** Paths of the message files: new/ then cur/, each in directory order; none where a folder is missing. */
export async function maildirFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const sub of ['new', 'cur']) {
    let names: string[] = [];
    try {
      names = await readdir(path.join(root, sub));
    } catch {
      continue;
    }
    for (const name of names) out.push(path.join(root, sub, name));
  }
  return out;
}

/** The messages with their file names, in the order of maildirFiles(). */
export async function maildirMessages(root: string): Promise<Array<{ name: string; data: Buffer }>> {
  const out: Array<{ name: string; data: Buffer }> = [];
  for (const file of await maildirFiles(root)) out.push({ name: path.basename(file), data: await readFile(file) });
  return out;
}

/** The messages, oldest first (by the "<seconds>.M<microseconds>" start of Maildir names, then by name). */
export async function maildirMessagesByAge(root: string): Promise<Buffer[]> {
  const key = (name: string): number => {
    const m = /^(\d+)\.M(\d+)/.exec(name);
    return m ? Number(m[1]) * 1e6 + Number(m[2]) : 0;
  };
  const messages = await maildirMessages(root);
  return messages.sort((a, b) => key(a.name) - key(b.name) || a.name.localeCompare(b.name)).map((m) => m.data);
}
