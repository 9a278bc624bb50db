/**
 * Onion (v3) address helpers: checks and derivation, no network.
 *
 * A v3 address is base32(PUBKEY | CHECKSUM | VERSION) + ".onion", where PUBKEY is the
 * 32-byte ed25519 public key, VERSION is 0x03 and CHECKSUM is the first two bytes of
 * SHA3-256(".onion checksum" | PUBKEY | VERSION) (rend-spec-v3, section 6).
 */
import { createHash, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';
const VERSION = 0x03;

/** True when `domain` is an onion name (`x.onion` or `sub.x.onion`), case-insensitive. */
export function isOnionDomain(domain: string): boolean {
  const d = domain.toLowerCase().replace(/\.$/, '');
  return d.endsWith('.onion') && d.length > '.onion'.length;
}

function base32Encode(buf: Buffer): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of buf) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32[(value << (5 - bits)) & 31];
  return out;
}

function base32Decode(text: string): Buffer | null {
  const bytes: number[] = [];
  let bits = 0;
  let value = 0;
  for (const ch of text) {
    const v = BASE32.indexOf(ch);
    if (v < 0) return null;
    value = ((value << 5) | v) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bytes.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(bytes);
}

function checksum(pubkey: Buffer): Buffer {
  return createHash('sha3-256')
    .update(Buffer.from('.onion checksum'))
    .update(pubkey)
    .update(Buffer.from([VERSION]))
    .digest()
    .subarray(0, 2);
}

/** The v3 onion address (`<56 chars>.onion`) of a 32-byte ed25519 public key. */
export function onionAddressFromPublicKey(pubkey: Buffer): string {
  if (pubkey.length !== 32) throw new Error(`an ed25519 public key has 32 bytes, got ${pubkey.length}`);
  return `${base32Encode(Buffer.concat([pubkey, checksum(pubkey), Buffer.from([VERSION])]))}.onion`;
}

/** The raw 32-byte public key of an ed25519 KeyObject (public or private). */
export function ed25519RawPublicKey(key: KeyObject): Buffer {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  const jwk = pub.export({ format: 'jwk' });
  if (jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') throw new Error('not an ed25519 key');
  return Buffer.from(jwk.x, 'base64url');
}

/** A fresh, valid v3 onion address that nobody hosts (a new random key pair). */
export function randomOnionAddress(): string {
  const { publicKey } = generateKeyPairSync('ed25519');
  return onionAddressFromPublicKey(ed25519RawPublicKey(publicKey));
}

/**
 * True when `domain` is a syntactically valid v3 onion name (optionally with subdomain labels,
 * which Tor ignores): 56 base32 characters, version 3, correct checksum.
 * (Tor also rejects public keys with a torsion component; that is not checked here.)
 */
export function isValidV3OnionAddress(domain: string): boolean {
  const d = domain.toLowerCase().replace(/\.$/, '');
  if (!d.endsWith('.onion')) return false;
  const labels = d.slice(0, -'.onion'.length).split('.');
  const id = labels[labels.length - 1]!;
  if (id.length !== 56) return false;
  const raw = base32Decode(id);
  if (!raw || raw.length !== 35) return false;
  const pubkey = raw.subarray(0, 32);
  if (raw[34] !== VERSION) return false;
  return checksum(pubkey).equals(raw.subarray(32, 34));
}
