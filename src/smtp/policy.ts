/**
 * Relay policy: may a recipient outside our domains be accepted, and from whom?
 *
 * - Port 25 (anyone): only our domains, unless `relay.open_to_onion` is on; then also any
 *   valid v3 `*.onion` domain, rate-limited by one global token bucket (`relay.onion_rate`
 *   messages per minute; every client arrives from 127.0.0.1, so there is nothing per-client
 *   to limit by). Such mail goes to the outbound queue.
 * - Submission (authenticated users): any valid v3 `*.onion` domain; other ("clearnet")
 *   domains only with `relay.clearnet` on, since they can only be reached through a Tor
 *   exit, and most exits refuse port 25.
 * - `.onion` names that are not valid v3 addresses (typos: the checksum catches them, and
 *   v2 names, which Tor no longer serves) are refused at once (550 5.1.2) instead of being
 *   queued and bounced days later.
 * - Remote targets of our aliases (forwarding, configured by the administrator) follow the
 *   same destination rules, without the rate limit.
 */
import { isValidV3OnionAddress } from '../tor/onion-address.js';

export type RelayVerdict =
  | { ok: true }
  | { ok: false; code: number; enhanced: string; message: string };

export interface RelayPolicyOptions {
  /** Port 25 accepts mail for any valid *.onion domain from anyone (rate-limited). */
  openToOnion: boolean;
  /** Messages per minute for open_to_onion relaying (global). */
  onionRatePerMinute: number;
  /** Authenticated users (and aliases) may send to non-onion domains. */
  clearnet: boolean;
  /** Clock, for tests. */
  now?: () => number;
}

/** A token bucket: `ratePerMinute` tokens per minute, bursts up to one minute's worth. */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly ratePerMinute: number,
    private readonly now: () => number = Date.now,
  ) {
    this.tokens = Math.max(1, ratePerMinute);
    this.last = now();
  }

  take(): boolean {
    const t = this.now();
    const capacity = Math.max(1, this.ratePerMinute);
    this.tokens = Math.min(capacity, this.tokens + ((t - this.last) * this.ratePerMinute) / 60_000);
    this.last = t;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

export function isOnion(domain: string): boolean {
  return domain.toLowerCase().replace(/\.$/, '').endsWith('.onion');
}

export class RelayPolicy {
  readonly openToOnion: boolean;
  readonly clearnet: boolean;
  private readonly bucket: TokenBucket;

  constructor(options: RelayPolicyOptions) {
    this.openToOnion = options.openToOnion;
    this.clearnet = options.clearnet;
    this.bucket = new TokenBucket(options.onionRatePerMinute, options.now);
  }

  /** Whether the destination itself can be reached from here (no rate limit, no sender check). */
  destination(address: string, domain: string): RelayVerdict {
    if (isOnion(domain)) {
      if (isValidV3OnionAddress(domain)) return { ok: true };
      return { ok: false, code: 550, enhanced: '5.1.2', message: `<${address}>: ${domain} is not a valid onion address (v3, 56 characters, checksum)` };
    }
    if (this.clearnet) return { ok: true };
    return {
      ok: false,
      code: 550,
      enhanced: '5.7.1',
      message: `<${address}>: relaying to clearnet (non-onion) domains is disabled on this server (relay.clearnet = false); only .onion addresses can be reached`,
    };
  }

  /** An authenticated user's recipient outside our domains. */
  submission(address: string, domain: string): RelayVerdict {
    return this.destination(address, domain);
  }

  /**
   * A recipient outside our domains on port 25. `firstInTransaction`: take a token from
   * the bucket (one per message, at its first relayed recipient).
   */
  inbound(address: string, domain: string, firstInTransaction: boolean): RelayVerdict {
    if (!this.openToOnion || !isOnion(domain)) return { ok: false, code: 550, enhanced: '5.7.1', message: 'Relaying denied' };
    const dest = this.destination(address, domain);
    if (!dest.ok) return dest;
    if (firstInTransaction && !this.bucket.take()) {
      return { ok: false, code: 450, enhanced: '4.7.1', message: 'Relay rate limit reached, try again later' };
    }
    return { ok: true };
  }
}
