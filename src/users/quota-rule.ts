/**
 * Per-user storage quota from a passwd-file entry's extra fields, as Dovecot writes them:
 * `userdb_quota_rule=*:storage=512M` (or `quota_rule=...`). Only the default rule (`*`, or
 * Dovecot's `?`) sets the user's limit; mailbox-specific rules (`Trash:storage=+100M`) are
 * not supported and ignored. Dovecot's units: `storage=N` is in kilobytes unless a unit
 * follows (B, K, M, G, T; 1024-based), `bytes=N` in bytes; 0 means unlimited.
 */

const UNITS: Record<string, number> = { B: 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/**
 * The storage limit a quota rule sets, in bytes: null for unlimited, undefined when the rule
 * does not set one (another mailbox's rule, or no storage/bytes limit). Throws on a
 * malformed rule.
 */
export function parseQuotaRule(rule: string): number | null | undefined {
  const colon = rule.indexOf(':');
  if (colon <= 0) throw new Error(`quota rule "${rule}": expected <mailbox>:<limits>, e.g. *:storage=1G`);
  const mailbox = rule.slice(0, colon);
  if (mailbox !== '*' && mailbox !== '?') return undefined;
  let limit: number | null | undefined;
  for (const part of rule.slice(colon + 1).split(':')) {
    const m = /^(storage|bytes|messages)=(\d+)([A-Za-z%]?)$/.exec(part.trim());
    if (!m) throw new Error(`quota rule "${rule}": cannot read "${part}" (expected storage=<size>, e.g. storage=512M)`);
    if (m[1] === 'messages') continue;
    const unit = m[3].toUpperCase();
    const multiplier = unit === '' ? (m[1] === 'storage' ? 1024 : 1) : UNITS[unit];
    if (multiplier === undefined) throw new Error(`quota rule "${rule}": unknown unit "${m[3]}" (B, K, M, G or T)`);
    const bytes = Number(m[2]) * multiplier;
    if (!Number.isSafeInteger(bytes)) throw new Error(`quota rule "${rule}": limit too large`);
    limit = bytes === 0 ? null : bytes;
  }
  return limit;
}

/**
 * The quota a user's extra fields set: bytes, null for unlimited, undefined when they set
 * none (the configured default applies). A malformed rule is reported through `onInvalid`
 * and then also counts as "none".
 */
export function userQuotaBytes(extraFields: Readonly<Record<string, string>>, onInvalid?: (message: string) => void): number | null | undefined {
  const rule = extraFields['userdb_quota_rule'] ?? extraFields['quota_rule'];
  if (rule === undefined) return undefined;
  try {
    return parseQuotaRule(rule);
  } catch (err) {
    onInvalid?.((err as Error).message);
    return undefined;
  }
}
