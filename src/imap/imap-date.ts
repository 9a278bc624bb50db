/** IMAP date formats (RFC 3501 date-time and date). */

const MONTHS = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];

/**
 * Parses an APPEND date-time such as `"2-Mar-2026 10:00:05 +0200"` (day may be space-padded)
 * into the instant it names, honouring the zone. Returns null if it is not one.
 */
export function parseImapDateTime(value: string): Date | null {
  const m = /^\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})\s*$/.exec(value);
  if (!m) return null;
  const month = MONTHS.indexOf(m[2].toLowerCase());
  const [day, year, hour, minute, second, zh, zm] = [m[1], m[3], m[4], m[5], m[6], m[8], m[9]].map(Number);
  if (month < 0 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60 || zm > 59) return null;
  const offsetMinutes = (m[7] === '-' ? -1 : 1) * (zh * 60 + zm);
  const utc = Date.UTC(year, month, day, hour, minute, second) - offsetMinutes * 60000;
  const date = new Date(utc);
  // reject dates like 31-Feb that Date.UTC silently rolls over
  if (new Date(Date.UTC(year, month, day)).getUTCDate() !== day) return null;
  return date;
}

/** Parses a SEARCH date (`2-Mar-2026`) into days since the epoch, or null. */
export function parseImapDay(value: string): number | null {
  const m = /^\s*(\d{1,2})-([A-Za-z]{3})-(\d{4})\s*$/.exec(value);
  if (!m) return null;
  const month = MONTHS.indexOf(m[2].toLowerCase());
  const day = Number(m[1]);
  if (month < 0 || day < 1) return null;
  const time = Date.UTC(Number(m[3]), month, day);
  // no 32-Jan or 30-Feb (Date.UTC would roll them over into the next month)
  if (new Date(time).getUTCDate() !== day) return null;
  return Math.floor(time / 86400000);
}

/** The UTC calendar day of an instant, in days since the epoch. */
export function utcDay(date: Date): number {
  return Math.floor(date.getTime() / 86400000);
}
