/**
 * Where did the daemon's CPU time go, per benchmark phase?
 *
 *   node dist/bench/cpuprofile-summary.js DIR [--top 15] [--phase SUBSTRING] [--callers SUBSTRING]
 *
 * DIR holds the `.cpuprofile` files written by `node --cpu-prof` (bench:imap --profile DIR)
 * and the bench's phases.json. V8 stamps samples with the same monotonic clock as
 * process.hrtime, so each sample falls into the phase that was running at that moment.
 * For each phase: busy time, then functions by self time and by inclusive time; with
 * --callers, the call paths (3 frames up) that lead to functions matching SUBSTRING.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}
interface Phase {
  phase: string;
  startUs: number;
  endUs: number;
}

function where(f: CallFrame): string {
  const name = f.functionName || '(anonymous)';
  if (!f.url) return name;
  let file = f.url.replace(/^file:\/\//, '');
  const nm = file.lastIndexOf('/node_modules/');
  if (nm >= 0) file = file.slice(nm + 1);
  else {
    const i = file.search(/\/(dist\/)?(src|bench|test)\//);
    if (i >= 0) file = file.slice(i + 1);
  }
  return `${name} ${file}:${f.lineNumber + 1}`;
}

const IDLE = new Set(['(idle)', '(program)', '(garbage collector)', '(root)']);

function main(): void {
  const { values, positionals } = parseArgs({
    options: { top: { type: 'string', default: '15' }, phase: { type: 'string' }, callers: { type: 'string' } },
    allowPositionals: true,
  });
  const dir = positionals[0];
  if (!dir) throw new Error('usage: cpuprofile-summary DIR [--top N] [--phase SUBSTRING]');
  const top = Number(values.top);
  const phases = (JSON.parse(readFileSync(path.join(dir, 'phases.json'), 'utf8')) as Phase[]).filter(
    (p) => !values.phase || p.phase.includes(values.phase),
  );
  const self = new Map<string, Map<string, number>>();
  const incl = new Map<string, Map<string, number>>();
  const callers = new Map<string, Map<string, number>>();
  const busy = new Map<string, { busy: number; gc: number; wall: number }>();
  for (const p of phases) {
    callers.set(p.phase, new Map());
    self.set(p.phase, new Map());
    incl.set(p.phase, new Map());
    busy.set(p.phase, { busy: 0, gc: 0, wall: (p.endUs - p.startUs) / 1000 });
  }

  for (const file of readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'))) {
    const prof = JSON.parse(readFileSync(path.join(dir, file), 'utf8')) as Profile;
    const byId = new Map(prof.nodes.map((n) => [n.id, n]));
    const parent = new Map<number, number>();
    for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    let t = prof.startTime;
    for (let i = 0; i < prof.samples.length; i++) {
      const dt = prof.timeDeltas[i] ?? 0;
      t += dt;
      const ph = phases.find((p) => t >= p.startUs && t < p.endUs);
      if (!ph) continue;
      const node = byId.get(prof.samples[i]);
      if (!node) continue;
      const ms = (prof.timeDeltas[i + 1] ?? dt) / 1000;
      const name = node.callFrame.functionName;
      const b = busy.get(ph.phase)!;
      if (name === '(garbage collector)') b.gc += ms;
      if (name === '(idle)') continue;
      b.busy += ms;
      const s = self.get(ph.phase)!;
      const key = where(node.callFrame);
      s.set(key, (s.get(key) ?? 0) + ms);
      if (values.callers && key.includes(values.callers)) {
        const chain: string[] = [];
        for (let id = parent.get(node.id); id !== undefined && chain.length < 3; id = parent.get(id)) chain.push(where(byId.get(id)!.callFrame));
        const c = callers.get(ph.phase)!;
        const k = `${key}  <-  ${chain.join('  <-  ')}`;
        c.set(k, (c.get(k) ?? 0) + ms);
      }
      const seen = new Set<string>();
      for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
        const f = byId.get(id)!.callFrame;
        if (IDLE.has(f.functionName)) continue;
        const k = where(f);
        if (seen.has(k)) continue;
        seen.add(k);
        const m = incl.get(ph.phase)!;
        m.set(k, (m.get(k) ?? 0) + ms);
      }
    }
  }

  for (const p of phases) {
    const b = busy.get(p.phase)!;
    console.log(`\n=== ${p.phase}: wall ${b.wall.toFixed(0)} ms, daemon on CPU ${b.busy.toFixed(0)} ms (GC ${b.gc.toFixed(0)} ms)`);
    const list = (m: Map<string, number>): string[] =>
      [...m.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, top)
        .map(([k, v]) => `  ${v.toFixed(0).padStart(7)} ms ${((100 * v) / Math.max(1, b.busy)).toFixed(1).padStart(5)}%  ${k}`);
    console.log(' self:');
    console.log(list(self.get(p.phase)!).join('\n'));
    console.log(' inclusive:');
    console.log(list(incl.get(p.phase)!).join('\n'));
    if (values.callers) {
      console.log(` callers of "${values.callers}":`);
      console.log(list(callers.get(p.phase)!).join('\n'));
    }
  }
}

main();
