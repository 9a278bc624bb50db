/**
 * What SMTP needs to know about a recipient address. Structurally identical to the result of
 * `RecipientResolver.resolve()` in src/users/recipients.ts, so that resolver can be passed in
 * as `(address) => resolver.resolve(address)` without smtp/ depending on users/ internals.
 */
export type RecipientResolution =
  | { kind: 'local'; user: string }
  | { kind: 'unknown-local' }
  | { kind: 'remote'; domain: string };

/** May answer synchronously or asynchronously; a thrown error means "try again later" (451). */
export type ResolveRecipient = (address: string) => RecipientResolution | Promise<RecipientResolution>;

export interface TlsMaterial {
  key: Buffer | string;
  cert: Buffer | string;
}
