/** The validated, typed configuration. Produced only by config/load.ts. */
import type { ControlAddress } from './tor-address.js';

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

export interface ListenerConfig {
  /** Address to bind. */
  host: string;
  /** TCP port; 0 disables the listener. */
  port: number;
}

export interface Config {
  /** Absolute path of the config file, or null for the embedded default. */
  file: string | null;
  /** Absolute path of the data directory. */
  dataDir: string;
  /** Primary mail domain (the onion name in production). Lower case. */
  domain: string;
  /** Every domain we accept mail for: the primary domain first, then the extra ones. Lower case. */
  localDomains: string[];

  smtp: {
    inbound: ListenerConfig;
    /** Largest message accepted, bytes (advertised as SIZE). */
    maxMessageSize: number;
    /** Largest number of recipients per message. */
    maxRecipients: number;
  };
  submission: {
    /** Port 587 role: STARTTLS required before AUTH (except plain text on loopback, see below). */
    starttls: ListenerConfig;
    /** Port 465 role: implicit TLS. */
    tls: ListenerConfig;
    /** AUTH without TLS from 127.0.0.0/8 and ::1 (where every onion client comes from). */
    allowPlaintextLoopback: boolean;
  };
  relay: {
    /** Port 25 accepts mail for any valid *.onion domain from anyone and queues it. */
    openToOnion: boolean;
    /** Rate of open_to_onion relaying, messages per minute (one global bucket). */
    onionRatePerMinute: number;
    /** Authenticated users may send to non-onion domains. */
    clearnet: boolean;
  };
  imap: {
    /** Plain port (STARTTLS offered). */
    plain: ListenerConfig;
    /** Implicit TLS port. */
    tls: ListenerConfig;
  };
  tls: {
    /** Absolute paths; generated (self-signed for `domain`) when not configured. */
    cert: string;
    key: string;
    /** True when cert/key came from the config file (never overwritten then). */
    configured: boolean;
  };
  users: {
    /** Dovecot passwd-file compatible user database, absolute path. */
    file: string;
    /** aliases(5) file, absolute path. */
    aliases: string;
    /** User (or local address) for postmaster@ and root@ without a user or alias of that name; null: the first user. */
    postmaster: string | null;
  };
  queue: {
    /** Outbound queue spool directory, absolute path (<data_dir>/queue). */
    dir: string;
    /** Waits between attempts, ms: the n-th retry waits retry[n-1]; the last one repeats. */
    retry: number[];
    /** After this long in the queue (ms), a message that still fails temporarily is bounced. */
    maxAge: number;
    /** A "delayed" DSN to the sender once a message has waited this long (ms); null: never. */
    delayWarning: number | null;
    /** Destination domains delivered to in parallel. */
    concurrency: number;
  };
  delivery: {
    /** STARTTLS to the next hop: use when offered (no certificate check), insist, or never. */
    starttls: 'opportunistic' | 'required' | 'none';
    /** Longest wait for a connection through Tor (SOCKS CONNECT, rendezvous), ms. */
    connectTimeout: number;
    /**
     * Connect without Tor (tests, clearnet-only hosts): MX and A/AAAA records from `tor.dns`
     * (never the system resolver), plain TCP to port 25. Loud in the log.
     */
    direct: boolean;
  };
  store: {
    type: 'maildir';
    /**
     * Maildir location template: %u user name, %n local part, %d domain, %h home directory
     * (from the user file), %% a percent sign. Relative results are resolved against dataDir.
     */
    maildir: string;
  };
  quota: {
    /**
     * Storage limit per user in bytes; 0: unlimited. A user's own limit comes from the users
     * file (`userdb_quota_rule=*:storage=512M`, as Dovecot writes it).
     */
    default: number;
  };
  log: {
    level: LogLevel;
    /** auto: readable lines when stderr is a terminal, else JSON; json; pretty. */
    format: 'auto' | 'json' | 'pretty';
  };
  tor: {
    /** Tor's control port (onion service at init and at each start); null: never use it. */
    control: ControlAddress | null;
    /** HashedControlPassword's password; empty: cookie or no authentication. */
    controlPassword: string;
    /** Cookie file to read instead of the one Tor names (absolute); null: Tor's. */
    cookieFile: string | null;
    /** Tor's SocksPort: every outbound SMTP connection goes through it. */
    socks: { host: string; port: number };
    /** Tor's DNSPort, "ip:port", for MX queries of clearnet domains only (direct mode: also A/AAAA); null: none. */
    dns: string | null;
  };
  daemon: {
    /** When started as root: switch to this user (name or uid) after binding; null: stay. */
    user: string | null;
    /** Group (name or gid); null: the user's primary group. */
    group: string | null;
  };
}
