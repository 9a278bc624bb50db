/**
 * A text summary of a V8 .cpuprofile (`node --cpu-prof`): where the CPU time went, by
 * area (our modules by folder, each dependency, Node internals, GC) and the top functions
 * by self and by inclusive time.
 */
import { readFile } from 'node:fs/promises';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

/** Where a function lives: "src/smtp", "dep smtp-server", "node:fs", "(garbage collector)"... */
function areaOf(url: string, name: string): string {
  if (!url) return name.startsWith('(') ? name : '(native)';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return `dep ${rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]}`;
  }
  const dist = url.indexOf('/dist/');
  if (dist >= 0) {
    const parts = url.slice(dist + '/dist/'.length).split('/');
    return parts.slice(0, Math.min(parts.length - 1, 3)).join('/') || parts[0]!;
  }
  if (url.startsWith('node:')) return url.split('/')[0]!;
  return url;
}

function shortLocation(url: string, line: number): string {
  if (!url) return '';
  const nm = url.lastIndexOf('/node_modules/');
  const dist = url.indexOf('/dist/');
  const file = nm >= 0 ? url.slice(nm + '/node_modules/'.length) : dist >= 0 ? url.slice(dist + '/dist/'.length) : url.replace(/^file:\/\//, '');
  return `${file}:${line + 1}`;
}

export async function summarizeProfile(file: string, top = 20): Promise<string> {
  const profile = JSON.parse(await readFile(file, 'utf8')) as Profile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of profile.nodes) byId.set(n.id, n);
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

  // Self time per node from samples and time deltas (µs).
  const self = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) {
    const dt = deltas[i + 1] ?? 0; // the delta after a sample is how long it stood
    self.set(samples[i]!, (self.get(samples[i]!) ?? 0) + Math.max(0, dt));
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  let idle = 0;
  const area = new Map<string, number>();
  const fnSelf = new Map<string, number>();
  const fnTotal = new Map<string, number>();
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    const { functionName, url, lineNumber } = n.callFrame;
    if (functionName === '(idle)') {
      idle += us;
      continue;
    }
    const a = areaOf(url, functionName);
    area.set(a, (area.get(a) ?? 0) + us);
    const key = `${functionName || '(anonymous)'} ${shortLocation(url, lineNumber)}`.trim();
    fnSelf.set(key, (fnSelf.get(key) ?? 0) + us);
    // Inclusive: every distinct function on this stack gets the sample's time once.
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const f = byId.get(cur)!.callFrame;
      if (f.functionName === '(root)') break;
      const k = `${f.functionName || '(anonymous)'} ${shortLocation(f.url, f.lineNumber)}`.trim();
      if (seen.has(k)) continue;
      seen.add(k);
      fnTotal.set(k, (fnTotal.get(k) ?? 0) + us);
    }
  }
  const busy = total - idle;
  const ms = (us: number): string => `${(us / 1000).toFixed(0).padStart(7)} ms ${((us / busy) * 100).toFixed(1).padStart(5)}%`;
  const out: string[] = [];
  out.push(`profile: ${(total / 1e6).toFixed(1)} s, busy ${(busy / 1e6).toFixed(1)} s (idle ${(idle / 1e6).toFixed(1)} s); percentages of busy time`);
  out.push('by area (self time):');
  for (const [a, us] of [...area].sort((x, y) => y[1] - x[1]).slice(0, 16)) out.push(`  ${ms(us)}  ${a}`);
  out.push(`top ${top} functions by self time:`);
  for (const [k, us] of [...fnSelf].sort((x, y) => y[1] - x[1]).slice(0, top)) out.push(`  ${ms(us)}  ${k}`);
  out.push(`top ${top} of our functions (dist/src) by inclusive time:`);
  for (const [k, us] of [...fnTotal].filter(([k]) => / src\//.test(k)).sort((x, y) => y[1] - x[1]).slice(0, top)) out.push(`  ${ms(us)}  ${k}`);
  return out.join('\n');
}

// `node dist/bench/lib/smtp-profile.js FILE [TOP]` prints the summary of a saved profile.
if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: node dist/bench/lib/smtp-profile.js FILE.cpuprofile [TOP]');
    process.exit(2);
  }
  summarizeProfile(file, Number(process.argv[3] ?? 25)).then(
    (s) => console.log(s),
    (e: unknown) => {
      console.error(e);
      process.exit(1);
    },
  );
}
