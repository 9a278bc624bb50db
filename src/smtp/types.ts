/**
 * What SMTP needs to know about a recipient address. Structurally identical to the result of
 * `RecipientResolver.resolve()` in src/users/recipients.ts, so that resolver can be passed in
 * as `(address) => resolver.resolve(address)` without smtp/ depending on users/ internals.
 *
 * - local: exactly one local user.
 * - alias: one of our addresses that expands to several local users and/or remote addresses
 *   (forwarding); every local user gets a copy, every remote address goes to the queue.
 * - unknown-local: our domain, nobody of that name (550 5.1.1).
 * - remote: not one of our domains (relaying: policy decides).
 */
export type RecipientResolution =
  | { kind: 'local'; user: string }
  | { kind: 'alias'; users: string[]; remote: string[] }
  | { kind: 'unknown-local' }
  | { kind: 'remote'; domain: string };

/** May answer synchronously or asynchronously; a thrown error means "try again later" (451). */
export type ResolveRecipient = (address: string) => RecipientResolution | Promise<RecipientResolution>;

export interface TlsMaterial {
  key: Buffer | string;
  cert: Buffer | string;
}
