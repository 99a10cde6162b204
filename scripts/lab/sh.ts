/** Running the system tools the lab is made of (ip, nsenter, nft, umount, docker). */
import { execFile } from 'node:child_process'
import { UserError, EXIT } from '../../agent/util/errors.ts'

export interface RunResult { code: number, stdout: string, stderr: string }

export async function tryRun (cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv, timeoutMs?: number } = {}): Promise<RunResult> {
  return await new Promise((resolve) => {
    execFile(cmd, args, { env: opts.env, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 127
      resolve({ code, stdout: String(stdout), stderr: String(stderr) })
    })
  })
}

export async function run (cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv, timeoutMs?: number } = {}): Promise<string> {
  const r = await tryRun(cmd, args, opts)
  if (r.code !== 0) throw new UserError(`${cmd} ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`, { exitCode: EXIT.osError })
  return r.stdout
}
