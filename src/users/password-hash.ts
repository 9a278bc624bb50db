/**
 * Password hashing in Dovecot's `{SCHEME}hash` notation.
 *
 * New hashes are `{ARGON2ID}` with Dovecot's parameters (m=64 MiB, t=3, p=1: Dovecot
 * verifies with libsodium, which only accepts one lane). For users migrated from Dovecot we
 * also verify `{ARGON2I}`, `{SHA512-CRYPT}`, `{SHA256-CRYPT}`, `{BLF-CRYPT}`, `{CRYPT}`
 * (when the hash is one of those crypt formats, which is also what a password without a
 * `{SCHEME}` prefix means in a passwd-file) and `{PLAIN}` (discouraged).
 *
 * Verification never throws: an unknown or malformed hash is "no match" plus a reason
 * (see `checkPassword` / `describeScheme`) that the caller can log. Neither the password
 * nor the hash ever goes into a reason string.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import * as argon2 from 'argon2';
import bcrypt from 'bcryptjs';

/** Schemes we can verify (canonical Dovecot names). */
export type SupportedScheme =
  | 'ARGON2ID'
  | 'ARGON2I'
  | 'SHA512-CRYPT'
  | 'SHA256-CRYPT'
  | 'BLF-CRYPT'
  | 'CRYPT'
  | 'PLAIN';

/** Dovecot's argon2id parameters (`doveadm pw -s ARGON2ID`). */
export const ARGON2ID_PARAMS = Object.freeze({
  memoryCost: 65536, // KiB
  timeCost: 3,
  parallelism: 1,
  hashLength: 32,
});

/**
 * Largest argon2 memory cost we agree to verify (KiB). A hash in the users file asking for
 * more is refused instead of letting every login allocate that much.
 */
const ARGON2_MAX_MEMORY_KIB = 1024 * 1024;

/**
 * Longest password we check or hash, in bytes. SHA-crypt hashes the password |P| times over
 * (quadratic work), so an unbounded IMAP literal would be a cheap way to burn CPU.
 */
export const MAX_PASSWORD_BYTES = 4096;

/** Scheme names Dovecot accepts as synonyms. */
const SCHEME_ALIASES: Record<string, SupportedScheme> = {
  ARGON2ID: 'ARGON2ID',
  ARGON2I: 'ARGON2I',
  'SHA512-CRYPT': 'SHA512-CRYPT',
  'SHA256-CRYPT': 'SHA256-CRYPT',
  'BLF-CRYPT': 'BLF-CRYPT',
  CRYPT: 'CRYPT',
  PLAIN: 'PLAIN',
  CLEARTEXT: 'PLAIN',
  CLEAR: 'PLAIN',
};

export interface SchemeDescription {
  /** The scheme as written (upper-cased), or 'CRYPT' when the hash had no `{SCHEME}` prefix. */
  scheme: string;
  /** True when verifyPassword can check this hash. */
  supported: boolean;
  /** Why it cannot be checked (only when !supported). */
  reason?: string;
}

export interface CheckResult {
  /** The password matches. */
  ok: boolean;
  scheme: string;
  /** Set when the hash could not be checked at all (unsupported or malformed). */
  reason?: string;
}

/** Splits `{SCHEME}rest`; no prefix means CRYPT (Dovecot's passwd-file default). */
function splitScheme(stored: string): { scheme: string; hash: string } {
  if (stored.startsWith('{')) {
    const end = stored.indexOf('}');
    if (end > 1) return { scheme: stored.slice(1, end).toUpperCase(), hash: stored.slice(end + 1) };
  }
  return { scheme: 'CRYPT', hash: stored };
}

type CryptKind = 'sha512' | 'sha256' | 'bcrypt';

function cryptKind(hash: string): CryptKind | null {
  if (hash.startsWith('$6$')) return 'sha512';
  if (hash.startsWith('$5$')) return 'sha256';
  if (/^\$2[aby]\$/.test(hash)) return 'bcrypt';
  return null;
}

function describeCryptFormat(hash: string): string {
  if (hash === '') return 'empty password field (no password set)';
  if (hash.startsWith('!') || hash.startsWith('*')) return 'account is locked (hash starts with ! or *)';
  if (hash.startsWith('$1$')) return 'MD5-crypt ($1$) hashes are not supported; reset the password';
  if (hash.startsWith('$y$')) return 'yescrypt ($y$) hashes are not supported; reset the password';
  if (hash.startsWith('$7$')) return 'scrypt ($7$) hashes are not supported; reset the password';
  if (/^[./0-9A-Za-z]{13}$/.test(hash)) return 'DES crypt hashes are not supported; reset the password';
  if (/\[(13|34)\]$/.test(hash)) return 'libpam-pwdfile "[13]"/"[34]" password formats are not supported';
  return 'not a supported crypt format (expected $6$, $5$ or $2a$/$2b$/$2y$)';
}

/** Tells what kind of hash this is and whether we can verify it, without verifying. */
export function describeScheme(stored: string): SchemeDescription {
  const { scheme, hash } = splitScheme(stored);
  const canonical = SCHEME_ALIASES[scheme];
  if (!canonical) {
    return {
      scheme,
      supported: false,
      reason: `password scheme {${scheme}} is not supported (supported: ARGON2ID, ARGON2I, SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT, CRYPT, PLAIN)`,
    };
  }
  const bad = (reason: string): SchemeDescription => ({ scheme, supported: false, reason });
  switch (canonical) {
    case 'ARGON2ID':
    case 'ARGON2I': {
      const want = canonical === 'ARGON2ID' ? '$argon2id$' : '$argon2i$';
      if (!hash.startsWith(want)) return bad(`{${scheme}} hash does not start with ${want}`);
      // Dovecot/libsodium write m,t,p in that order; other tools (the argon2 package) may not.
      const params = /^\$argon2i?d?\$(?:v=\d+\$)?([mtp]=\d+(?:,[mtp]=\d+){2})\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$/.exec(hash);
      if (!params) return bad(`{${scheme}} hash is malformed`);
      const mem = /(?:^|,)m=(\d+)/.exec(params[1]!);
      if (!mem) return bad(`{${scheme}} hash is malformed`);
      if (Number(mem[1]) > ARGON2_MAX_MEMORY_KIB) return bad(`{${scheme}} hash asks for more than 1 GiB of memory`);
      return { scheme, supported: true };
    }
    case 'SHA512-CRYPT':
      return cryptKind(hash) === 'sha512' ? { scheme, supported: true } : bad(`{${scheme}} hash does not start with $6$`);
    case 'SHA256-CRYPT':
      return cryptKind(hash) === 'sha256' ? { scheme, supported: true } : bad(`{${scheme}} hash does not start with $5$`);
    case 'BLF-CRYPT':
      return cryptKind(hash) === 'bcrypt'
        ? { scheme, supported: true }
        : bad(`{${scheme}} hash does not start with $2a$, $2b$ or $2y$`);
    case 'CRYPT':
      return cryptKind(hash) ? { scheme, supported: true } : bad(describeCryptFormat(hash));
    case 'PLAIN':
      return { scheme, supported: true };
  }
}

/** Constant-time equality of two strings of possibly different length. */
export function safeEqual(a: string | Buffer, b: string | Buffer): boolean {
  // Compare fixed-size digests: no early exit, no length leak.
  const da = createHash('sha256').update(a).digest();
  const db = createHash('sha256').update(b).digest();
  return timingSafeEqual(da, db) && Buffer.byteLength(a) === Buffer.byteLength(b);
}

/** Verifies and says why a hash could not be checked. Never throws. */
export async function checkPassword(stored: string, password: string | Buffer): Promise<CheckResult> {
  const desc = describeScheme(stored);
  if (!desc.supported) return { ok: false, scheme: desc.scheme, reason: desc.reason };
  const { hash } = splitScheme(stored);
  const canonical = SCHEME_ALIASES[desc.scheme]!;
  const pw = typeof password === 'string' ? Buffer.from(password, 'utf8') : password;
  if (pw.length > MAX_PASSWORD_BYTES) {
    return { ok: false, scheme: desc.scheme, reason: `password is longer than ${MAX_PASSWORD_BYTES} bytes` };
  }
  try {
    switch (canonical) {
      case 'ARGON2ID':
      case 'ARGON2I':
        // argon2's own verify recomputes and compares in constant time.
        return { ok: await argon2.verify(hash, pw), scheme: desc.scheme };
      case 'PLAIN':
        return { ok: safeEqual(hash, pw), scheme: desc.scheme };
      default: {
        const kind = cryptKind(hash)!;
        const computed = kind === 'bcrypt' ? await bcryptRecompute(hash, pw) : await shaCrypt(pw, hash);
        if (computed === null) return { ok: false, scheme: desc.scheme, reason: `{${desc.scheme}} hash is malformed` };
        return { ok: safeEqual(computed, hash), scheme: desc.scheme };
      }
    }
  } catch (err) {
    return {
      ok: false,
      scheme: desc.scheme,
      reason: `{${desc.scheme}} hash could not be checked: ${(err as Error).message ?? String(err)}`,
    };
  }
}

/** True when `password` matches the stored `{SCHEME}hash`. Never throws. */
export async function verifyPassword(stored: string, password: string | Buffer): Promise<boolean> {
  return (await checkPassword(stored, password)).ok;
}

/**
 * A new `{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$<salt>$<hash>` (Dovecot-compatible).
 *
 * We encode the string ourselves: the argon2 package (0.45) writes the parameters as
 * `m=..,p=..,t=..`, which libsodium (and so Dovecot) refuses to parse; libsodium wants
 * exactly `m=..,t=..,p=..`, base64 without padding.
 */
export async function hashPassword(password: string | Buffer): Promise<string> {
  const pw = typeof password === 'string' ? Buffer.from(password, 'utf8') : password;
  if (pw.length > MAX_PASSWORD_BYTES) throw new RangeError(`password is longer than ${MAX_PASSWORD_BYTES} bytes`);
  const salt = randomBytes(16);
  const raw = await argon2.hash(pw, { type: argon2.argon2id, ...ARGON2ID_PARAMS, salt, raw: true });
  const p = ARGON2ID_PARAMS;
  const b64 = (b: Buffer) => b.toString('base64').replace(/=+$/, '');
  return `{ARGON2ID}$argon2id$v=19$m=${p.memoryCost},t=${p.timeCost},p=${p.parallelism}$${b64(salt)}$${b64(raw)}`;
}

/** True when the stored hash is not our current default (a candidate for re-hashing). */
export function needsRehash(stored: string): boolean {
  const { scheme, hash } = splitScheme(stored);
  if (scheme !== 'ARGON2ID') return true;
  const p = ARGON2ID_PARAMS;
  return !hash.startsWith(`$argon2id$v=19$m=${p.memoryCost},t=${p.timeCost},p=${p.parallelism}$`);
}

// ---------------------------------------------------------------------------------------
// bcrypt ($2a$/$2b$/$2y$) through bcryptjs: recompute with the stored salt, then compare
// ourselves in constant time.

async function bcryptRecompute(hash: string, pw: Buffer): Promise<string | null> {
  if (!/^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/.test(hash)) return null;
  // bcryptjs takes a JS string and encodes it as UTF-8 itself.
  return bcrypt.hash(pw.toString('utf8'), hash.slice(0, 29));
}

// ---------------------------------------------------------------------------------------
// SHA-crypt ($5$ SHA-256, $6$ SHA-512), written from Ulrich Drepper's published
// specification ("Unix crypt using SHA-256 and SHA-512").

const ROUNDS_DEFAULT = 5000;
const ROUNDS_MIN = 1000;
const ROUNDS_MAX = 999_999_999;
const SALT_MAX = 16;
/** Rounds between yields to the event loop (keeps other sessions responsive). */
const ROUNDS_PER_SLICE = 2000;

const CRYPT_ALPHABET = './0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

interface ShaCryptSetting {
  algo: 'sha256' | 'sha512';
  id: '5' | '6';
  rounds: number;
  roundsCustom: boolean;
  salt: Buffer;
}

function parseShaSetting(setting: string): ShaCryptSetting | null {
  const m = /^\$([56])\$/.exec(setting);
  if (!m) return null;
  const id = m[1] as '5' | '6';
  let rest = setting.slice(3);
  let rounds = ROUNDS_DEFAULT;
  let roundsCustom = false;
  const r = /^rounds=(\d{1,10})\$/.exec(rest);
  if (r) {
    rounds = Math.min(ROUNDS_MAX, Math.max(ROUNDS_MIN, Number(r[1])));
    roundsCustom = true;
    rest = rest.slice(r[0].length);
  } else if (rest.startsWith('rounds=')) {
    return null;
  }
  const end = rest.indexOf('$');
  const saltStr = (end === -1 ? rest : rest.slice(0, end)).slice(0, SALT_MAX);
  return { algo: id === '6' ? 'sha512' : 'sha256', id, rounds, roundsCustom, salt: Buffer.from(saltStr, 'latin1') };
}

/** The sequence of `len` bytes made by repeating `digest`. */
function repeatTo(digest: Buffer, len: number): Buffer {
  const out = Buffer.alloc(len);
  for (let off = 0; off < len; off += digest.length) digest.copy(out, off, 0, Math.min(digest.length, len - off));
  return out;
}

/** Byte triples (most significant first) of the final encoding, per the specification. */
function encodingOrder(algo: 'sha256' | 'sha512'): { triples: [number, number, number][]; tail: number[] } {
  // The spec lists the groups explicitly; they follow a fixed stride through the digest.
  const n = algo === 'sha512' ? 63 : 30; // bytes covered by full groups
  const stride = algo === 'sha512' ? 22 : 21;
  const third = n / 3;
  const triples: [number, number, number][] = [];
  for (let i = 0; i < n / 3; i++) {
    const a = (i * stride) % n;
    triples.push([a, (a + third) % n, (a + 2 * third) % n]);
  }
  return { triples, tail: algo === 'sha512' ? [63] : [31, 30] };
}

const ORDER = { sha256: encodingOrder('sha256'), sha512: encodingOrder('sha512') };

function encode24(b2: number, b1: number, b0: number, chars: number): string {
  let w = (b2 << 16) | (b1 << 8) | b0;
  let s = '';
  for (let i = 0; i < chars; i++) {
    s += CRYPT_ALPHABET[w & 0x3f];
    w >>>= 6;
  }
  return s;
}

function encodeDigest(algo: 'sha256' | 'sha512', d: Buffer): string {
  const { triples, tail } = ORDER[algo];
  let s = '';
  for (const [a, b, c] of triples) s += encode24(d[a]!, d[b]!, d[c]!, 4);
  if (algo === 'sha512') s += encode24(0, 0, d[tail[0]!]!, 2);
  else s += encode24(0, d[tail[0]!]!, d[tail[1]!]!, 3);
  return s;
}

function* shaCryptSteps(password: Buffer, s: ShaCryptSetting): Generator<void, string, void> {
  const { algo, salt, rounds } = s;
  const H = () => createHash(algo);
  const len = algo === 'sha512' ? 64 : 32;
  const P = password;

  // Digest B = H(P S P).
  const B = H().update(P).update(salt).update(P).digest();
  // Digest A = H(P S, B repeated to |P| bytes, then per bit of |P|: B if 1 else P).
  const a = H().update(P).update(salt);
  let cnt = P.length;
  for (; cnt > len; cnt -= len) a.update(B);
  a.update(B.subarray(0, cnt));
  for (cnt = P.length; cnt > 0; cnt >>= 1) a.update(cnt & 1 ? B : P);
  let A = a.digest();

  // Sequence P: H(P repeated |P| times), stretched to |P| bytes.
  const dp = H();
  for (let i = 0; i < P.length; i++) dp.update(P);
  const Pseq = repeatTo(dp.digest(), P.length);
  // Sequence S: H(S repeated 16 + A[0] times), stretched to |S| bytes.
  const ds = H();
  for (let i = 0; i < 16 + A[0]!; i++) ds.update(salt);
  const Sseq = repeatTo(ds.digest(), salt.length);

  for (let i = 0; i < rounds; i++) {
    const c = H();
    c.update(i & 1 ? Pseq : A);
    if (i % 3 !== 0) c.update(Sseq);
    if (i % 7 !== 0) c.update(Pseq);
    c.update(i & 1 ? A : Pseq);
    A = c.digest();
    if ((i + 1) % ROUNDS_PER_SLICE === 0) yield;
  }

  const head = `$${s.id}$${s.roundsCustom ? `rounds=${rounds}$` : ''}${salt.toString('latin1')}$`;
  return head + encodeDigest(algo, A);
}

/** The steps of a SHA-crypt run (see shaCryptSteps), or null when `setting` is not a SHA-crypt one. */
function startShaCrypt(password: string | Buffer, setting: string): Generator<void, string, void> | null {
  const s = parseShaSetting(setting);
  if (!s) return null;
  return shaCryptSteps(typeof password === 'string' ? Buffer.from(password, 'utf8') : password, s);
}

/**
 * crypt(3) for `$5$`/`$6$` settings (`$6$[rounds=N$]salt[$...]`): returns the full hash
 * string, or null when the setting is not a SHA-crypt one. Blocks for the whole run.
 */
export function shaCryptSync(password: string | Buffer, setting: string): string | null {
  const it = startShaCrypt(password, setting);
  if (!it) return null;
  for (;;) {
    const r = it.next();
    if (r.done) return r.value;
  }
}

/** Like shaCryptSync, but yields to the event loop every few thousand rounds. */
export async function shaCrypt(password: string | Buffer, setting: string): Promise<string | null> {
  const it = startShaCrypt(password, setting);
  if (!it) return null;
  for (;;) {
    const r = it.next();
    if (r.done) return r.value;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** A new SHA-crypt hash with a random 16-character salt (tests and interop only). */
export function shaCryptHash(password: string | Buffer, algo: 'sha256' | 'sha512', rounds?: number): string {
  const bytes = randomBytes(SALT_MAX);
  let salt = '';
  for (const b of bytes) salt += CRYPT_ALPHABET[b & 0x3f];
  const id = algo === 'sha512' ? '6' : '5';
  const setting = `$${id}$${rounds === undefined ? '' : `rounds=${rounds}$`}${salt}`;
  const out = shaCryptSync(password, setting)!;
  return `{${algo === 'sha512' ? 'SHA512' : 'SHA256'}-CRYPT}${out}`;
}
