/** The validated, typed configuration. Produced only by config/load.ts. */
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
  };
  store: {
    type: 'maildir';
    /**
     * Maildir location template: %u user name, %n local part, %d domain, %h home directory
     * (from the user file), %% a percent sign. Relative results are resolved against dataDir.
     */
    maildir: string;
  };
  log: {
    level: LogLevel;
  };
}
