/** Running the system tools flash and bundle are made of (mtools, xz, tar, npm). */
import { execFile } from 'node:child_process'
import { UserError, EXIT } from '../util/errors.ts'

export interface RunResult { code: number, stdout: string, stderr: string }

export interface RunOptions {
  env?: NodeJS.ProcessEnv
  cwd?: string
  timeoutMs?: number
}

export async function tryRun (cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return await new Promise((resolve) => {
    execFile(cmd, args, { env: opts.env, cwd: opts.cwd, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string }) | null
      const code = e === null ? 0 : typeof e.code === 'number' ? e.code : 127
      resolve({ code, stdout: String(stdout), stderr: e !== null && e.code === 'ENOENT' ? `${cmd}: command not found` : String(stderr) })
    })
  })
}

/** Runs a tool; a missing tool says which Debian package has it. */
export async function run (cmd: string, args: string[], opts: RunOptions & { package?: string } = {}): Promise<string> {
  const r = await tryRun(cmd, args, opts)
  if (r.code === 127 && opts.package !== undefined) {
    throw new UserError(`${cmd} is not installed`, { exitCode: EXIT.unavailable, hint: `install it: apt-get install ${opts.package}` })
  }
  if (r.code !== 0) throw new UserError(`${cmd} ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`, { exitCode: EXIT.osError })
  return r.stdout
}
