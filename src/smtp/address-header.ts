/**
 * The addresses in an address header field (From, Sender, ...), RFC 5322 section 3.4:
 * mailbox lists with display names, quoted strings, comments, angle addresses, groups and
 * (obsolete) source routes. Only the addr-specs are returned; display names are dropped.
 * Encoded words (RFC 2047) only occur in display names and need no decoding here.
 */

/** Removes comments (nested, with quoted pairs) outside quoted strings; keeps the rest. */
function stripComments(value: string): string {
  let out = '';
  let depth = 0;
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const ch = value[i]!;
    if (ch === '\\' && i + 1 < value.length && (quoted || depth > 0)) {
      if (depth === 0) out += ch + value[i + 1]!;
      i++;
      continue;
    }
    if (depth > 0) {
      if (ch === '(') depth++;
      else if (ch === ')') depth--;
      continue;
    }
    if (ch === '"') quoted = !quoted;
    else if (ch === '(' && !quoted) {
      depth = 1;
      out += ' ';
      continue;
    }
    out += ch;
  }
  return out;
}

/**
 * Splits on `sep` characters outside quoted strings and angle brackets. Group syntax
 * (`name: a, b;`) is flattened: the display name and ':' go, ';' ends the group.
 */
function splitItems(value: string): string[] {
  const items: string[] = [];
  let cur = '';
  let quoted = false;
  let angle = false;
  for (let i = 0; i < value.length; i++) {
    const ch = value[i]!;
    if (ch === '\\' && quoted && i + 1 < value.length) {
      cur += ch + value[++i]!;
      continue;
    }
    if (ch === '"' && !angle) quoted = !quoted;
    else if (!quoted && ch === '<') angle = true;
    else if (!quoted && ch === '>') angle = false;
    else if (!quoted && !angle && (ch === ',' || ch === ';')) {
      items.push(cur);
      cur = '';
      continue;
    } else if (!quoted && !angle && ch === ':') {
      cur = ''; // a group's display name
      continue;
    }
    cur += ch;
  }
  items.push(cur);
  return items.map((s) => s.trim()).filter((s) => s !== '');
}

/**
 * The addr-specs of an address-list header value (unfolded or not). Items that are not an
 * address (no '@') are returned as they are, so the caller can refuse them.
 */
export function parseAddressList(value: string): string[] {
  const unfolded = value.replace(/\r?\n[ \t]/g, ' ');
  const out: string[] = [];
  for (const item of splitItems(stripComments(unfolded))) {
    let spec = item;
    const lt = findAngle(item);
    if (lt !== -1) {
      const gt = item.indexOf('>', lt);
      spec = item.slice(lt + 1, gt === -1 ? undefined : gt);
      // obsolete source route: <@a,@b:user@host>
      const route = /^\s*@[^:]*:/.exec(spec);
      if (route) spec = spec.slice(route[0].length);
    }
    spec = removeWhitespaceOutsideQuotes(spec);
    if (spec !== '') out.push(spec);
  }
  return out;
}

/** Index of the '<' that starts an angle address (outside quotes), or -1. */
function findAngle(item: string): number {
  let quoted = false;
  for (let i = 0; i < item.length; i++) {
    const ch = item[i]!;
    if (ch === '\\' && quoted) {
      i++;
      continue;
    }
    if (ch === '"') quoted = !quoted;
    else if (ch === '<' && !quoted) return i;
  }
  return -1;
}

function removeWhitespaceOutsideQuotes(s: string): string {
  let out = '';
  let quoted = false;
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    if (ch === '\\' && quoted && i + 1 < s.length) {
      out += ch + s[++i]!;
      continue;
    }
    if (ch === '"') quoted = !quoted;
    if (!quoted && /\s/.test(ch)) continue;
    out += ch;
  }
  return out;
}
