/** Durations in the config ("90s", "5m", "4h", "5d", "1h30m", "500ms") and in CLI output. */

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000 };
const PART = /(\d+)(ms|s|m|h|d|w)/g;
const WHOLE = /^(\d+(ms|s|m|h|d|w))+$/;

/** Milliseconds, or null when `text` is not a duration such as "5m", "4h", "1h30m". */
export function parseDuration(text: string): number | null {
  const t = text.trim().toLowerCase();
  if (!WHOLE.test(t)) return null;
  let ms = 0;
  for (const m of t.matchAll(PART)) ms += Number(m[1]) * UNITS[m[2]!]!;
  return Number.isSafeInteger(ms) ? ms : null;
}

/** "3d 4h", "2h 5m", "4m 10s", "12s", "350ms": the two largest units. */
export function formatDuration(ms: number): string {
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (d > 0) return h > 0 ? `${d}d ${h}h` : `${d}d`;
  if (h > 0) return m > 0 ? `${h}h ${m}m` : `${h}h`;
  if (m > 0) return sec > 0 ? `${m}m ${sec}s` : `${m}m`;
  return `${sec}s`;
}
