/** Line-ending helpers: messages on disk may use bare LF (other software) or CRLF. */

const LF = 0x0a;
const CR = 0x0d;

/** Number of LF bytes not preceded by CR. */
export function countBareLf(data: Buffer): number {
  let count = 0;
  let at = data.indexOf(LF);
  while (at >= 0) {
    if (at === 0 || data[at - 1] !== CR) count++;
    at = data.indexOf(LF, at + 1);
  }
  return count;
}

/** Size of the data once every bare LF became CRLF. */
export function crlfSize(data: Buffer): number {
  return data.length + countBareLf(data);
}

/** Returns the data with every bare LF turned into CRLF (the same Buffer if there is none). */
export function toCrlf(data: Buffer): Buffer {
  const bare = countBareLf(data);
  if (bare === 0) return data;
  const out = Buffer.allocUnsafe(data.length + bare);
  let from = 0;
  let to = 0;
  let at = data.indexOf(LF);
  while (at >= 0) {
    if (at === 0 || data[at - 1] !== CR) {
      to += data.copy(out, to, from, at);
      out[to++] = CR;
      out[to++] = LF;
      from = at + 1;
    }
    at = data.indexOf(LF, at + 1);
  }
  to += data.copy(out, to, from);
  return out.subarray(0, to);
}
