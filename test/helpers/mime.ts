/**
 * Just enough MIME for tests that check delivery status notifications: header fields
 * (unfolded), one level of multipart, and the "field: value" blocks of message/delivery-status.
 */

export interface MimePart {
  /** Header fields in order, names lower-cased, values unfolded. */
  headers: Array<[string, string]>;
  header(name: string): string | undefined;
  /** The body as text (latin1, byte for byte). */
  body: string;
}

export function parsePart(text: string): MimePart {
  const sep = /\r?\n\r?\n/.exec(text);
  const head = sep ? text.slice(0, sep.index) : text;
  const body = sep ? text.slice(sep.index + sep[0].length) : '';
  const headers: Array<[string, string]> = [];
  for (const line of head.split(/\r?\n/)) {
    if (/^[ \t]/.test(line) && headers.length > 0) {
      headers[headers.length - 1]![1] += ` ${line.trim()}`;
      continue;
    }
    const colon = line.indexOf(':');
    if (colon > 0) headers.push([line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()]);
  }
  return { headers, body, header: (name) => headers.find(([n]) => n === name.toLowerCase())?.[1] };
}

/** A parameter of a structured header value (`boundary="x"`). */
export function param(value: string | undefined, name: string): string | undefined {
  const m = new RegExp(`(?:^|;)\\s*${name}\\s*=\\s*(?:"([^"]*)"|([^;\\s]+))`, 'i').exec(value ?? '');
  return m ? (m[1] ?? m[2]) : undefined;
}

/** The parts of a multipart entity; throws when the structure is broken. */
export function multipartParts(part: MimePart): MimePart[] {
  const boundary = param(part.header('content-type'), 'boundary');
  if (!boundary) throw new Error(`not a multipart entity: ${part.header('content-type')}`);
  const delimiter = `--${boundary}`;
  const body = part.body;
  const close = body.indexOf(`\r\n${delimiter}--`);
  if (close < 0) throw new Error('multipart without its closing delimiter');
  const first = body.startsWith(delimiter) ? 0 : body.indexOf(`\r\n${delimiter}\r\n`);
  if (first < 0) throw new Error('multipart without a first delimiter');
  const inner = body.slice(body.startsWith(delimiter) ? 0 : first + 2, close);
  return inner
    .split(`${delimiter}\r\n`)
    .slice(1)
    .map((chunk) => parsePart(chunk.replace(/\r\n$/, '')));
}

/** message/delivery-status: the per-message block, then one block per recipient. */
export function deliveryStatusBlocks(body: string): Array<Record<string, string>> {
  return body
    .trim()
    .split(/\r?\n\r?\n/)
    .map((block) => {
      const fields: Record<string, string> = {};
      let last = '';
      for (const line of block.split(/\r?\n/)) {
        if (/^[ \t]/.test(line) && last) {
          fields[last] += ` ${line.trim()}`;
          continue;
        }
        const colon = line.indexOf(':');
        if (colon > 0) {
          last = line.slice(0, colon).trim().toLowerCase();
          fields[last] = line.slice(colon + 1).trim();
        }
      }
      return fields;
    });
}

/** Parses a DSN and checks its RFC 3464 structure; returns the pieces. */
export function parseDsn(raw: Buffer | string): {
  top: MimePart;
  human: MimePart;
  status: MimePart;
  /** The third part: the original header (text/rfc822-headers) or message (message/rfc822). */
  headers: MimePart;
  returned: 'headers' | 'message';
  perMessage: Record<string, string>;
  recipients: Array<Record<string, string>>;
} {
  const top = parsePart(typeof raw === 'string' ? raw : raw.toString('latin1'));
  const ct = top.header('content-type') ?? '';
  if (!/^multipart\/report\s*;/i.test(ct) || param(ct, 'report-type')?.toLowerCase() !== 'delivery-status') {
    throw new Error(`not a DSN: Content-Type ${ct}`);
  }
  const parts = multipartParts(top);
  if (parts.length !== 3) throw new Error(`a DSN has 3 parts here, got ${parts.length}`);
  const [human, status, headers] = parts as [MimePart, MimePart, MimePart];
  if (!/^text\/plain/i.test(human.header('content-type') ?? '')) throw new Error('first part is not text/plain');
  if (!/^message\/delivery-status/i.test(status.header('content-type') ?? '')) throw new Error('second part is not message/delivery-status');
  const third = headers.header('content-type') ?? '';
  if (!/^(text\/rfc822-headers|message\/rfc822)\s*(;|$)/i.test(third)) throw new Error(`third part is not text/rfc822-headers or message/rfc822: ${third}`);
  const [perMessage, ...recipients] = deliveryStatusBlocks(status.body);
  return { top, human, status, headers, returned: /^message/i.test(third) ? 'message' : 'headers', perMessage: perMessage ?? {}, recipients };
}
