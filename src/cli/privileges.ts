/**
 * Privilege drop for `onionpost start` under root: bind the listeners, make the data dir
 * belong to the configured user, then setgroups/setgid/setuid for good (a process that runs
 * as root never comes back after setuid to another uid).
 *
 * User and group names are looked up in /etc/passwd and /etc/group (Linux and the BSDs keep
 * them there), then with `id` / `getent` for users from other name services (LDAP, ...).
 */
import { spawnSync } from 'node:child_process';
import { lchownSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { CliError } from './command.js';

export interface Account {
  name: string;
  uid: number;
  gid: number;
}

function fromFile(file: string, name: string): string[] | null {
  try {
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      const fields = line.split(':');
      if (fields[0] === name) return fields;
    }
  } catch {
    // not readable: fall back to the tools
  }
  return null;
}

function run(cmd: string, args: string[]): string | null {
  const res = spawnSync(cmd, args, { encoding: 'utf8', timeout: 5000 });
  return res.status === 0 ? res.stdout.trim() : null;
}

/** Resolves `[daemon] user` (a name or a numeric uid). Throws CliError (exit 67) when unknown. */
export function lookupUser(user: string): Account {
  if (/^\d+$/.test(user)) {
    const uid = Number(user);
    const byUid = (() => {
      try {
        return readFileSync('/etc/passwd', 'utf8').split('\n').map((l) => l.split(':')).find((f) => f[2] === user) ?? null;
      } catch {
        return null;
      }
    })();
    return { name: byUid?.[0] ?? user, uid, gid: byUid ? Number(byUid[3]) : uid };
  }
  const fields = fromFile('/etc/passwd', user);
  if (fields && /^\d+$/.test(fields[2] ?? '') && /^\d+$/.test(fields[3] ?? '')) {
    return { name: user, uid: Number(fields[2]), gid: Number(fields[3]) };
  }
  const uid = run('id', ['-u', user]);
  const gid = run('id', ['-g', user]);
  if (uid && gid && /^\d+$/.test(uid) && /^\d+$/.test(gid)) return { name: user, uid: Number(uid), gid: Number(gid) };
  throw new CliError(`[daemon] user "${user}" does not exist on this system; create it (useradd --system ${user} / pw useradd ${user}) or fix the config`, 67);
}

/** Resolves `[daemon] group` (a name or a numeric gid). */
export function lookupGroup(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  const fields = fromFile('/etc/group', group);
  if (fields && /^\d+$/.test(fields[2] ?? '')) return Number(fields[2]);
  const line = run('getent', ['group', group]);
  const gid = line?.split(':')[2];
  if (gid && /^\d+$/.test(gid)) return Number(gid);
  throw new CliError(`[daemon] group "${group}" does not exist on this system; create it or fix the config`, 67);
}

/** The account the daemon should run as, or null when the config keeps the current user. */
export function configuredAccount(daemon: { user: string | null; group: string | null }): Account | null {
  if (!daemon.user) {
    if (daemon.group) throw new CliError('[daemon] group is set but [daemon] user is not: set both, or neither', 78);
    return null;
  }
  const account = lookupUser(daemon.user);
  return daemon.group ? { ...account, gid: lookupGroup(daemon.group) } : account;
}

/**
 * Makes `dir` and everything below it (not following symlinks, not crossing into other file
 * systems' mount points is not checked) owned by uid:gid. Returns the number of entries changed.
 */
export function chownTree(dir: string, uid: number, gid: number): number {
  let changed = 0;
  const visit = (p: string): void => {
    let st;
    try {
      st = lstatSync(p);
    } catch {
      return; // vanished
    }
    if (st.uid !== uid || st.gid !== gid) {
      lchownSync(p, uid, gid);
      changed++;
    }
    if (st.isDirectory()) for (const name of readdirSync(p)) visit(path.join(p, name));
  };
  visit(dir);
  return changed;
}

/**
 * Switches the process to `account` for good: supplementary groups from /etc/group (so that,
 * e.g., membership in debian-tor lets it read Tor's control cookie), then gid, then uid.
 */
export function dropPrivileges(account: Account): void {
  if (typeof process.setuid !== 'function' || typeof process.setgid !== 'function') {
    throw new CliError('this platform cannot switch users (no setuid); start onionpost as its user instead', 78);
  }
  try {
    // process.initgroups exists on POSIX Node but is missing from @types/node.
    const initgroups = (process as { initgroups?: (user: string, extraGroup: number) => void }).initgroups;
    if (typeof initgroups === 'function' && !/^\d+$/.test(account.name)) initgroups.call(process, account.name, account.gid);
    else process.setgroups?.([account.gid]);
    process.setgid(account.gid);
    process.setuid(account.uid);
  } catch (err) {
    throw new CliError(`cannot switch to user ${account.name} (uid ${account.uid}, gid ${account.gid}): ${(err as Error).message}`, 77);
  }
  if (process.getuid?.() !== account.uid || process.geteuid?.() !== account.uid || process.getgid?.() !== account.gid) {
    throw new CliError(`switching to user ${account.name} did not take effect; refusing to continue as root`, 77);
  }
}
