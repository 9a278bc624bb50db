/**
 * One daemon per data dir: `<data_dir>/onionpost.pid` holds the pid of the running daemon.
 * A file left by a dead process is taken over; a live one refuses the start.
 */
import { closeSync, fsyncSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { CliError } from './command.js';
import { processAlive } from './process-alive.js';

export class PidFile {
  private constructor(readonly file: string) {}

  /** Creates `file` with our pid, or throws CliError if a live process holds it. */
  static acquire(file: string, what: string): PidFile {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const fd = openSync(file, 'wx', 0o644);
        try {
          writeSync(fd, `${process.pid}\n`);
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
        return new PidFile(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw new CliError(`cannot create ${file}: ${(err as Error).message}`, 73);
        }
      }
      let pid = NaN;
      try {
        pid = Number.parseInt(readFileSync(file, 'utf8').trim(), 10);
      } catch {
        /* vanished meanwhile: retry */
      }
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid)) {
        throw new CliError(`another onionpost (pid ${pid}) is already running on ${what} (${file}); stop it first`, 75);
      }
      try {
        unlinkSync(file); // stale: its process is gone
      } catch {
        /* someone else removed it */
      }
    }
    throw new CliError(`cannot take ${file}: it keeps reappearing; is another onionpost starting right now?`, 75);
  }

  release(): void {
    try {
      if (readFileSync(this.file, 'utf8').trim() === String(process.pid)) unlinkSync(this.file);
    } catch {
      /* already gone */
    }
  }
}
