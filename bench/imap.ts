/**
 * `npm run bench:imap`: the same IMAP workloads against onionpost (the real daemon, its own
 * process) and, when installed, Dovecot on loopback over a copy of the same Maildir.
 *
 *   npm run bench:imap -- [--messages 5000] [--connections 500] [--only onionpost|dovecot]
 *                         [--idle-samples 50] [--profile DIR] [--json FILE] [--keep]
 *
 * --profile DIR runs the onionpost daemon under `node --cpu-prof` (profiles in DIR, plus
 * phases.json); `node dist/bench/cpuprofile-summary.js DIR` then shows where each phase's
 * time went. Not part of `npm test`.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { shaCryptHash } from '../src/users/password-hash.js';
import { dovecotMissing, dovecotVersion, startDovecot, type Dovecot } from '../test/helpers/dovecot.js';
import { ImapClient } from './imap-client.js';
import { BODY_TERM, generateMessages, SUBJECT_TERM, TEXT_TERM, type BenchMessage } from './messages.js';
import { memoryOf, startOnionpost, type Onionpost } from './servers.js';

const USER = 'bench';
const FANOUT_WAIT_MS = 3000;
const PASSWORD = 'bench-password';

type ServerName = 'onionpost' | 'dovecot';

interface Metric {
  key: string;
  label: string;
  unit: string;
  /** Which way is better. */
  better: 'lower' | 'higher';
  target?: string;
  /** Whether onionpost meets the target, given both values. */
  meets?: (ours: number, theirs: number | undefined) => boolean;
  digits?: number;
}

const values = new Map<string, Partial<Record<ServerName, number>>>();
const notes: string[] = [];
const phases: Array<{ server: ServerName; phase: string; startUs: number; endUs: number }> = [];

function record(server: ServerName, key: string, value: number): void {
  const v = values.get(key) ?? {};
  v[server] = value;
  values.set(key, v);
}

const nowUs = (): number => Number(process.hrtime.bigint() / 1000n);
const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;

async function phase<T>(server: ServerName, name: string, fn: () => Promise<T>): Promise<T> {
  const startUs = nowUs();
  process.stderr.write(`  ${server}: ${name}...`);
  try {
    return await fn();
  } finally {
    const endUs = nowUs();
    phases.push({ server, phase: name, startUs, endUs });
    process.stderr.write(` ${((endUs - startUs) / 1e6).toFixed(1)} s\n`);
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

function existsIn(responses: Buffer[]): number {
  for (const r of responses) {
    const m = /^\* (\d+) EXISTS/.exec(r.toString('latin1'));
    if (m) return Number(m[1]);
  }
  return -1;
}

function searchCount(responses: Buffer[]): number {
  for (const r of responses) {
    const s = r.toString('latin1');
    if (s.startsWith('* SEARCH')) return s.trim().split(' ').length - 2;
  }
  return -1;
}

// --------------------------------------------------------------------------------------
// Workloads
// --------------------------------------------------------------------------------------

async function appendAll(server: ServerName, port: number, mailbox: string, msgs: BenchMessage[]): Promise<void> {
  const c = await ImapClient.login(port, USER, PASSWORD);
  try {
    if (mailbox !== 'INBOX') await c.run(`CREATE "${mailbox}"`, { allowNo: true });
    const bytes = msgs.reduce((n, m) => n + m.raw.length, 0);
    await phase(server, `APPEND ${msgs.length}`, async () => {
      const t0 = process.hrtime.bigint();
      for (const m of msgs) await c.append(mailbox, m.raw, m.flags);
      const t = ms(t0);
      record(server, 'append', msgs.length / (t / 1000));
      record(server, 'appendMB', bytes / 1e6 / (t / 1000));
    });
  } finally {
    await c.close();
  }
}

async function readWorkloads(server: ServerName, port: number, msgs: BenchMessage[]): Promise<void> {
  const n = msgs.length;
  const c = await ImapClient.login(port, USER, PASSWORD);
  try {
    await phase(server, 'SELECT', async () => {
      let t0 = process.hrtime.bigint();
      const first = await c.run('SELECT INBOX', { keep: true });
      record(server, 'selectFirst', ms(t0));
      const exists = existsIn(first.responses);
      if (exists !== n) throw new Error(`${server}: SELECT INBOX says ${exists} EXISTS, expected ${n}`);
      const times: number[] = [];
      for (let i = 0; i < 5; i++) {
        await c.run('UNSELECT').catch(() => c.run('CLOSE'));
        t0 = process.hrtime.bigint();
        await c.run('SELECT INBOX');
        times.push(ms(t0));
      }
      record(server, 'select', median(times));
    });

    const meta = 'UID FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE INTERNALDATE RFC822.SIZE)';
    await phase(server, 'FETCH metadata', async () => {
      const times: number[] = [];
      for (let i = 0; i < 4; i++) {
        const t0 = process.hrtime.bigint();
        const r = await c.run(meta);
        times.push(ms(t0));
        if (r.count < n) throw new Error(`${server}: metadata FETCH returned ${r.count} responses, expected ${n}`);
      }
      record(server, 'fetchMetaFirst', times[0]);
      record(server, 'fetchMeta', median(times.slice(1)));
    });

    await phase(server, 'FETCH BODY[]', async () => {
      let best = 0;
      for (let i = 0; i < 2; i++) {
        const t0 = process.hrtime.bigint();
        const r = await c.run('UID FETCH 1:* (BODY.PEEK[])');
        const t = ms(t0);
        if (r.count < n) throw new Error(`${server}: BODY[] FETCH returned ${r.count} responses, expected ${n}`);
        best = Math.max(best, r.bytes / 1e6 / (t / 1000));
      }
      record(server, 'bodyMBs', best);
    });

    const expected = {
      SUBJECT: msgs.filter((m) => m.subjectHit).length,
      BODY: msgs.filter((m) => m.bodyHit).length,
      TEXT: msgs.filter((m) => m.textHit).length,
    };
    for (const [key, term] of [
      ['SUBJECT', SUBJECT_TERM],
      ['BODY', BODY_TERM],
      ['TEXT', TEXT_TERM],
    ] as const) {
      await phase(server, `SEARCH ${key}`, async () => {
        const times: number[] = [];
        let found = -1;
        for (let i = 0; i < 3; i++) {
          const t0 = process.hrtime.bigint();
          const r = await c.run(`UID SEARCH ${key} "${term}"`, { keep: true });
          times.push(ms(t0));
          found = searchCount(r.responses);
        }
        record(server, `search${key}`, median(times));
        record(server, `search${key}Hits`, found);
        if (found !== expected[key]) notes.push(`${server}: SEARCH ${key} "${term}" found ${found} messages; ${expected[key]} contain it`);
      });
    }
  } finally {
    await c.close();
  }
}

const smallMessage = (i: number): Buffer =>
  Buffer.from(`From: probe@example.onion\r\nTo: bench@localhost\r\nSubject: probe ${i}\r\nMessage-ID: <probe.${i}.${Date.now()}@example.onion>\r\n\r\nprobe\r\n`);

function nextExists(c: ImapClient, timeoutMs: number): Promise<bigint> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      c.onUntagged = null;
      reject(new Error(`no EXISTS within ${timeoutMs} ms`));
    }, timeoutMs);
    c.onUntagged = (r) => {
      if (r.length < 40 && / EXISTS\r?\n$/.test(r.toString('latin1'))) {
        const t = process.hrtime.bigint();
        clearTimeout(timer);
        c.onUntagged = null;
        resolve(t);
      }
    };
  });
}

async function idleLatency(server: ServerName, port: number, samples: number): Promise<void> {
  const watcher = await ImapClient.login(port, USER, PASSWORD);
  const writer = await ImapClient.login(port, USER, PASSWORD);
  try {
    await watcher.run('SELECT INBOX');
    const done = await watcher.idle();
    await phase(server, `IDLE latency x${samples}`, async () => {
      const fromSend: number[] = [];
      const fromOk: number[] = [];
      for (let i = 0; i < samples; i++) {
        const seen = nextExists(watcher, 10_000);
        const t0 = process.hrtime.bigint();
        await writer.append('INBOX', smallMessage(i));
        const tOk = process.hrtime.bigint();
        const t1 = await seen;
        fromSend.push(Number(t1 - t0) / 1e6);
        fromOk.push(Math.max(0, Number(t1 - tOk) / 1e6));
        await new Promise((r) => setTimeout(r, 10));
      }
      record(server, 'idleP50', percentile(fromSend, 50));
      record(server, 'idleP95', percentile(fromSend, 95));
      record(server, 'idleAfterOkP50', percentile(fromOk, 50));
    });
    await done();
  } finally {
    await watcher.close();
    await writer.close();
  }
}

/**
 * `connections` sessions SELECT INBOX and IDLE; memory per session; then one APPEND on
 * another connection and the time until every session has seen EXISTS.
 */
async function manyIdle(server: ServerName, port: number, connections: number, memory: () => { rss: number; pss: number | null }): Promise<void> {
  const writer = await ImapClient.login(port, USER, PASSWORD);
  const sessions: ImapClient[] = [];
  try {
    await writer.run('SELECT INBOX');
    await new Promise((r) => setTimeout(r, 500));
    const before = memory();
    await phase(server, `open ${connections} IDLE sessions`, async () => {
      const t0 = process.hrtime.bigint();
      const batch = 25;
      for (let i = 0; i < connections; i += batch) {
        await Promise.all(
          Array.from({ length: Math.min(batch, connections - i) }, async () => {
            const c = await ImapClient.login(port, USER, PASSWORD);
            sessions.push(c);
            await c.run('SELECT INBOX');
            await c.idle();
          }),
        );
      }
      record(server, 'idleOpen', ms(t0) / 1000);
    });
    await new Promise((r) => setTimeout(r, 2000));
    const after = memory();
    // onionpost: growth of the daemon; Dovecot: its imap processes (one per session; the
    // writer's own process is in `before`).
    record(server, 'memPerConn', (after.rss - before.rss) / connections / 1024);
    if (after.pss !== null && before.pss !== null) record(server, 'pssPerConn', (after.pss - before.pss) / connections / 1024);

    await phase(server, `fan-out to ${connections}`, async () => {
      // Sessions not told within FANOUT_WAIT_MS count as missed (Dovecot falls back to
      // polling every 30 s when it runs out of inotify instances).
      const seen = sessions.map((c) => nextExists(c, FANOUT_WAIT_MS).catch(() => null));
      const t0 = process.hrtime.bigint();
      await writer.append('INBOX', smallMessage(999_999));
      const times = (await Promise.all(seen)).filter((t): t is bigint => t !== null).map((t) => Number(t - t0) / 1e6);
      record(server, 'fanoutNotified', times.length);
      record(server, 'fanoutLast', times.length === connections ? Math.max(...times) : Infinity);
      if (times.length < connections) {
        const inotify = readFirstLine('/proc/sys/fs/inotify/max_user_instances');
        notes.push(
          `${server}: only ${times.length} of ${connections} IDLE sessions saw EXISTS within ${FANOUT_WAIT_MS / 1000} s of the APPEND` +
            (server === 'dovecot' && inotify ? ` (fs.inotify.max_user_instances = ${inotify} per uid; Dovecot's other sessions poll every 30 s)` : ''),
        );
      }
      if (times.length > 0) record(server, 'fanoutP50', percentile(times, 50));
    });
  } finally {
    for (const s of sessions) s.destroy();
    await writer.close();
  }
}

// --------------------------------------------------------------------------------------
// Report
// --------------------------------------------------------------------------------------

const METRICS: Metric[] = [
  { key: 'append', label: 'APPEND (1 connection)', unit: 'msg/s', better: 'higher', digits: 0 },
  { key: 'appendMB', label: 'APPEND throughput', unit: 'MB/s', better: 'higher', digits: 1 },
  { key: 'selectFirst', label: 'SELECT INBOX, first after start', unit: 'ms', better: 'lower', digits: 1 },
  { key: 'select', label: 'SELECT INBOX (median of 5)', unit: 'ms', better: 'lower', digits: 2 },
  { key: 'fetchMetaFirst', label: 'UID FETCH 1:* metadata, first', unit: 'ms', better: 'lower', digits: 0 },
  { key: 'fetchMeta', label: 'UID FETCH 1:* metadata (median of 3)', unit: 'ms', better: 'lower', digits: 0, target: '>= Dovecot', meets: (o, d) => d === undefined || o <= d },
  { key: 'bodyMBs', label: 'UID FETCH 1:* BODY.PEEK[] (best of 2)', unit: 'MB/s', better: 'higher', digits: 0, target: '>= Dovecot', meets: (o, d) => d === undefined || o >= d },
  { key: 'searchSUBJECT', label: `SEARCH SUBJECT (median of 3)`, unit: 'ms', better: 'lower', digits: 1 },
  { key: 'searchBODY', label: `SEARCH BODY (median of 3)`, unit: 'ms', better: 'lower', digits: 0, target: '<= Dovecot', meets: (o, d) => d === undefined || o <= d },
  { key: 'searchTEXT', label: `SEARCH TEXT (median of 3)`, unit: 'ms', better: 'lower', digits: 0 },
  { key: 'idleP50', label: 'IDLE: APPEND sent -> EXISTS, p50', unit: 'ms', better: 'lower', digits: 1, target: '< 20 ms', meets: (o) => o < 20 },
  { key: 'idleP95', label: 'IDLE: APPEND sent -> EXISTS, p95', unit: 'ms', better: 'lower', digits: 1 },
  { key: 'idleAfterOkP50', label: 'IDLE: APPEND OK -> EXISTS, p50', unit: 'ms', better: 'lower', digits: 1 },
  { key: 'idleOpen', label: 'open N IDLE sessions (login+SELECT+IDLE)', unit: 's', better: 'lower', digits: 2 },
  { key: 'memPerConn', label: 'memory per IDLE session (RSS)', unit: 'KiB', better: 'lower', digits: 0, target: '< 1/5 Dovecot', meets: (o, d) => d === undefined || o < d / 5 },
  { key: 'pssPerConn', label: 'memory per IDLE session (PSS)', unit: 'KiB', better: 'lower', digits: 0 },
  { key: 'fanoutLast', label: 'fan-out: APPEND -> last of N EXISTS', unit: 'ms', better: 'lower', digits: 0, target: '< 500 ms', meets: (o) => o < 500 },
  { key: 'fanoutP50', label: 'fan-out: APPEND -> EXISTS, p50 (of those notified)', unit: 'ms', better: 'lower', digits: 0 },
  { key: 'fanoutNotified', label: 'fan-out: sessions notified within 3 s', unit: 'count', better: 'higher', digits: 0 },
];

function fmt(v: number | undefined, digits = 1): string {
  if (v === undefined || Number.isNaN(v)) return '-';
  if (v === Infinity) return `> ${FANOUT_WAIT_MS.toLocaleString('en-US')}`;
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function table(connections: number): string {
  const rows: string[][] = [['workload', 'unit', 'onionpost', 'Dovecot', 'onionpost vs Dovecot', 'target']];
  for (const m of METRICS) {
    const v = values.get(m.key);
    if (!v) continue;
    const o = v.onionpost;
    const d = v.dovecot;
    let ratio = '-';
    if (o !== undefined && d !== undefined && o > 0 && d > 0 && Number.isFinite(o) && Number.isFinite(d)) {
      const r = m.better === 'higher' ? o / d : d / o;
      ratio = r >= 1 ? `${r.toFixed(r >= 10 ? 0 : 1)}x better` : `${(1 / r).toFixed(1 / r >= 10 ? 0 : 1)}x worse`;
    }
    let target = m.target ?? '';
    if (m.meets && o !== undefined && (d !== undefined || !m.target?.includes('Dovecot'))) target += m.meets(o, d) ? '  met' : '  MISSED';
    const label = m.label.replace(' N ', ` ${connections} `);
    rows.push([label, m.unit, fmt(o, m.digits), fmt(d, m.digits), ratio, target]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  const line = (r: string[]): string => `| ${r.map((c, i) => (i >= 2 && i <= 3 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join(' | ')} |`;
  return [line(rows[0]), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.slice(1).map(line)].join('\n');
}

// --------------------------------------------------------------------------------------
// Main
// --------------------------------------------------------------------------------------

function readFirstLine(file: string): string | null {
  try {
    return readFileSync(file, 'utf8').split('\n')[0].trim();
  } catch {
    return null;
  }
}

function fdLimit(): number {
  const r = spawnSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' });
  const v = r.stdout.trim();
  return v === 'unlimited' ? Infinity : Number(v) || 0;
}

async function main(): Promise<void> {
  const { values: opt } = parseArgs({
    options: {
      messages: { type: 'string', default: '5000' },
      connections: { type: 'string', default: '500' },
      only: { type: 'string' },
      'idle-samples': { type: 'string', default: '50' },
      profile: { type: 'string' },
      json: { type: 'string' },
      keep: { type: 'boolean', default: false },
    },
    strict: true,
  });
  const n = Number(opt.messages);
  const connections = Number(opt.connections);
  const samples = Number(opt['idle-samples']);
  if (!(n > 0) || !(connections > 0) || !(samples > 0)) throw new Error('--messages, --connections and --idle-samples take positive numbers');
  if (opt.only && opt.only !== 'onionpost' && opt.only !== 'dovecot') throw new Error('--only takes onionpost or dovecot');
  const runOnionpost = opt.only !== 'dovecot';
  const dovecotWhy = opt.only === 'onionpost' ? 'not asked for (--only onionpost)' : dovecotMissing();
  const runDovecot = dovecotWhy === null;

  const needFds = connections + 64;
  const limit = fdLimit();
  if (limit < needFds) {
    throw new Error(
      `the open-file limit is ${limit}, and ${connections} connections need about ${needFds} in this process (and as many in the server): ` +
        `raise it (ulimit -n ${needFds * 2}) or pass --connections ${Math.max(1, limit - 64)}`,
    );
  }

  const tmp = await mkdtemp(path.join(os.tmpdir(), 'onionpost-bench-'));
  const profDir = opt.profile ? path.resolve(opt.profile) : undefined;
  if (profDir) await mkdir(profDir, { recursive: true });
  let op: Onionpost | null = null;
  let dv: Dovecot | null = null;
  const cleanup = async (): Promise<void> => {
    await op?.stop();
    await dv?.cleanup();
    if (!opt.keep) await rm(tmp, { recursive: true, force: true });
  };
  process.once('SIGINT', () => void cleanup().finally(() => process.exit(130)));
  try {
    process.stderr.write(`bench:imap: generating ${n} messages...`);
    const msgs = generateMessages(n);
    const total = msgs.reduce((s, m) => s + m.raw.length, 0);
    process.stderr.write(` ${(total / 1e6).toFixed(1)} MB (${Math.round(total / n / 1024)} KiB average)\n`);
    const usersFile = path.join(tmp, 'users.passwd');
    // A cheap hash: logins are not what is measured, and 500 Argon2 logins would take minutes.
    await writeFile(usersFile, `${USER}:${shaCryptHash(PASSWORD, 'sha512', 1000)}::::::\n`, { mode: 0o600 });
    const opDir = path.join(tmp, 'onionpost');
    const opMaildir = path.join(opDir, 'data', 'mail', USER);
    const dvMailRoot = path.join(tmp, 'dovecot-mail');

    if (runOnionpost || runDovecot) {
      // The data set is always written by onionpost (Dovecot gets a copy).
      op = await startOnionpost(opDir, usersFile, { cpuProfDir: profDir });
      if (runOnionpost) {
        await appendAll('onionpost', op.imapPort, 'INBOX', msgs);
      } else {
        const c = await ImapClient.login(op.imapPort, USER, PASSWORD);
        for (const m of msgs) await c.append('INBOX', m.raw, m.flags);
        await c.close();
      }
      await op.stop();
      op = null;
      if (runDovecot) await cp(opMaildir, path.join(dvMailRoot, USER), { recursive: true, preserveTimestamps: true });
    }

    if (runOnionpost) {
      process.stderr.write('onionpost (restarted: first SELECT/FETCH are after a start)\n');
      op = await startOnionpost(opDir, usersFile, { cpuProfDir: profDir });
      await readWorkloads('onionpost', op.imapPort, msgs);
      await idleLatency('onionpost', op.imapPort, samples);
      await op.stop();
      // A fresh process for the memory measurement (heap left from BODY[] would blur it).
      op = await startOnionpost(opDir, usersFile, { cpuProfDir: profDir });
      const pid = op.pid;
      await manyIdle('onionpost', op.imapPort, connections, () => memoryOf([pid]));
      const code = await op.stop();
      op = null;
      if (code !== 0) notes.push(`onionpost exited with code ${code}`);
    }

    if (runDovecot) {
      process.stderr.write(`Dovecot ${dovecotVersion()} (over a copy of onionpost's Maildir)\n`);
      dv = await startDovecot({ mailRoot: dvMailRoot, usersFile, maxConnections: connections + 20 });
      const d = dv;
      await appendAll('dovecot', d.port, 'Appended', msgs);
      await readWorkloads('dovecot', d.port, msgs);
      await idleLatency('dovecot', d.port, samples);
      await manyIdle('dovecot', d.port, connections, () => memoryOf(d.imapPids()));
      const problems = new Map<string, number>();
      for (const line of d.problems()) {
        // "Nov 26 20:38:50 imap(bench)<2712><DQdb7jNh...>: Warning: ..." -> "imap: Warning: ..."
        const kind = line.replace(/^\w{3} +\d+ [\d:]+ /, '').replace(/^(\w[\w-]*)(\([^)]*\))?(<[^>]*>)*:/, '$1:');
        problems.set(kind, (problems.get(kind) ?? 0) + 1);
      }
      for (const [kind, count] of problems) notes.push(`Dovecot logged${count > 1 ? ` ${count} times` : ''}: ${kind}`);
      await d.cleanup();
      dv = null;
    } else {
      notes.push(`Dovecot not measured: ${dovecotWhy}`);
    }

    const cpus = os.cpus();
    console.log(
      `\nIMAP benchmark: ${n} messages (${(total / 1e6).toFixed(1)} MB), ${connections} IDLE connections, ${samples} IDLE samples; ` +
        `node ${process.version}, ${cpus.length} x ${cpus[0]?.model ?? '?'}, ${os.platform()} ${os.release()}` +
        (runDovecot ? `; Dovecot ${dovecotVersion()}` : ''),
    );
    console.log(table(connections));
    console.log(
      '\nAPPEND: one connection, synchronizing literals, INBOX (onionpost) / a new folder (Dovecot). IDLE: one APPEND on a second ' +
        'connection per sample. Memory: onionpost = RSS/PSS growth of the daemon process; Dovecot = RSS/PSS of its imap processes ' +
        '(PSS splits shared pages among processes). Logins use {SHA512-CRYPT} rounds=1000 for both.',
    );
    for (const note of notes) console.log(`note: ${note}`);
    if (opt.json) await writeFile(opt.json, JSON.stringify({ messages: n, connections, samples, values: Object.fromEntries(values), notes }, null, 2));
    if (profDir) {
      await writeFile(path.join(profDir, 'phases.json'), JSON.stringify(phases.filter((p) => p.server === 'onionpost'), null, 2));
      console.log(`\nCPU profiles of the daemon and phases.json are in ${profDir}; summarise with: node dist/bench/cpuprofile-summary.js ${profDir}`);
    }
  } finally {
    await cleanup();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`\nbench:imap failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
