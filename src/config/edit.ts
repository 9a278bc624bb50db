/**
 * Targeted edits of a config file's text that keep its comments and layout: set one key,
 * in its section, replacing the line that has it or adding one. Used by `onionpost init`.
 * Values are written as TOML (strings quoted and escaped). The result is parsed again to make
 * sure the edit did what it should.
 */
import { parse as parseToml } from 'smol-toml';

export type TomlValue = string | number | boolean | string[];

function tomlValue(v: TomlValue): string {
  if (Array.isArray(v)) return `[${v.map((x) => tomlValue(x)).join(', ')}]`;
  if (typeof v === 'string') return JSON.stringify(v); // JSON string escapes are valid TOML basic-string escapes
  return String(v);
}

const SECTION_RE = /^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$/;

/** Returns `text` with `key` (dotted: "domain", "tor.control") set to `value`. */
export function setConfigKey(text: string, key: string, value: TomlValue): string {
  const dot = key.lastIndexOf('.');
  const section = dot === -1 ? '' : key.slice(0, dot);
  const name = dot === -1 ? key : key.slice(dot + 1);
  const newline = text.includes('\r\n') ? '\r\n' : '\n';
  const lines = text.split(/\r?\n/);
  const keyRe = new RegExp(`^\\s*${name.replace(/[-.]/g, '\\$&')}\\s*=`);
  const line = `${name} = ${tomlValue(value)}`;

  let current = '';
  let sectionStart = section === '' ? 0 : -1; // index of the first line of the section's body
  let lastKeyLine = -1; // last key line in the section
  let firstHeader = -1;
  let done = false;
  for (let i = 0; i < lines.length; i++) {
    const header = SECTION_RE.exec(lines[i]!);
    if (header) {
      if (firstHeader === -1) firstHeader = i;
      current = header[1]!;
      if (current === section) sectionStart = i + 1;
      continue;
    }
    if (current !== section) continue;
    if (keyRe.test(lines[i]!)) {
      lines[i] = line;
      done = true;
      break;
    }
    if (/^\s*[A-Za-z0-9_-]+\s*=/.test(lines[i]!)) lastKeyLine = i;
  }
  if (!done) {
    if (sectionStart === -1) {
      while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
      lines.push('', `[${section}]`, line, '');
    } else if (lastKeyLine !== -1) {
      lines.splice(lastKeyLine + 1, 0, line);
    } else if (section === '') {
      // No top-level key yet: before the first section, else at the end.
      lines.splice(firstHeader === -1 ? lines.length : firstHeader, 0, line, ...(firstHeader === -1 ? [] : ['']));
    } else {
      lines.splice(sectionStart, 0, line);
    }
  }
  const result = lines.join(newline);
  // The edit must have produced exactly this value.
  const doc = parseToml(result) as Record<string, unknown>;
  let node: unknown = doc;
  for (const part of section === '' ? [] : section.split('.')) node = (node as Record<string, unknown> | undefined)?.[part];
  const got = (node as Record<string, unknown> | undefined)?.[name];
  if (JSON.stringify(got) !== JSON.stringify(value)) {
    throw new Error(`could not set ${key} in the config text (got ${JSON.stringify(got)})`);
  }
  return result;
}
