/** Expands the `store.maildir` template (Dovecot-style variables) into a user's Maildir root. */
import path from 'node:path';

export interface LocationVars {
  /** Full user name as in the user file (may be "name@domain"). */
  user: string;
  /** Home directory from the user file, if any. */
  home?: string;
}

export function expandMaildirTemplate(template: string, vars: LocationVars, dataDir: string): string {
  const at = vars.user.indexOf('@');
  const local = at === -1 ? vars.user : vars.user.slice(0, at);
  const domain = at === -1 ? '' : vars.user.slice(at + 1);
  const expanded = template.replace(/%(.)/g, (whole, ch: string) => {
    switch (ch) {
      case 'u':
        return vars.user;
      case 'n':
        return local;
      case 'd':
        return domain;
      case 'h':
        if (!vars.home) throw new Error(`store.maildir uses %h but user "${vars.user}" has no home directory in the user file`);
        return vars.home;
      case '%':
        return '%';
      default:
        throw new Error(`store.maildir: unknown variable ${whole} (known: %u %n %d %h %%)`);
    }
  });
  return path.resolve(dataDir, expanded);
}
