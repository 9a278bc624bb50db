/** swaks, the SMTP test client: tests that use it are skipped where it is not installed. */
import { execFile } from 'node:child_process';
import type { TestContext } from 'node:test';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Whether swaks is installed; when not, the test is marked skipped (the caller returns). */
export async function swaksOrSkip(t: TestContext): Promise<boolean> {
  if (await run('sh', ['-c', 'command -v swaks']).catch(() => null)) return true;
  t.skip('swaks not installed (apt-get install swaks); CI has it');
  return false;
}
