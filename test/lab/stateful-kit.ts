/**
 * What the stateful lab tests share: the dcloud CLI in a lab node, the app
 * and snapshot listings as JSON, a notes writer whose acknowledged records
 * are remembered, and reading a snapshot with plain restic (no dcloud), as a
 * user would.
 */
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { waitFor, type LabHandle } from './harness.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import type { AppView, SnapshotView } from '../../proto/api.ts'
import { startLabWriters, type NotesRecord } from '../../scripts/lab/notes-client.ts'

export const NOTES = join(PROJECT_ROOT, 'apps', 'examples', 'notes')

export interface Run { code: number, stdout: string, stderr: string }

export async function sh (cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return await new Promise((resolve) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, maxBuffer: 64 * 1024 * 1024, timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout: String(stdout), stderr: String(stderr) })
    })
  })
}

/** One container of an app on one node, with the times its Docker recorded (the lab has one clock). */
export interface Copy { node: string, id: string, running: boolean, startedAt: number, finishedAt: number | null, generation: number }

export class StatefulKit {
  readonly lab: LabHandle
  /** Every record acknowledged by notes (the app named `notes`) so far: what it must hold from now on. */
  readonly acked: NotesRecord[] = []

  constructor (lab: LabHandle) {
    this.lab = lab
  }

  // Arrow properties, so a test can take them apart: `const { dc, dcOk } = kit`.
  dc = async (node: string, args: string[]): Promise<Run> => await this.lab.exec(node, ['dcloud', ...args])

  dcOk = async (node: string, args: string[]): Promise<string> => {
    const r = await this.dc(node, args)
    if (r.code !== 0) throw new Error(`dcloud ${args.join(' ')} on ${node} exited ${r.code}\n${r.stderr}\n${r.stdout}`)
    return r.stdout
  }

  app = async (node: string, name: string): Promise<AppView | undefined> =>
    (JSON.parse(await this.dcOk(node, ['app', 'ls', '--json'])) as AppView[]).find(a => a.name === name)

  snapshots = async (node: string, name: string): Promise<SnapshotView[]> =>
    JSON.parse(await this.dcOk(node, ['snapshot', 'ls', name, '--json'])) as SnapshotView[]

  /**
   * Writes to `target` from `node` for `ms`, then until more than 5 records
   * were acknowledged (a snapshot's pause can hold writes on a loaded
   * machine: wait for records, not for time). Records of notes are added to
   * `acked`; another app's are its own.
   */
  write = async (node: string, client: string, ms: number, target = 'notes'): Promise<NotesRecord[]> => {
    const w = startLabWriters(this.lab.name, node, { app: target }, [client])
    await waitFor(async () => { w.assertRunning(); return w.ackCount() > 0 ? true : undefined }, 30_000, `${client} to get a first acknowledgement`)
    await new Promise(resolve => setTimeout(resolve, ms))
    await waitFor(async () => w.ackCount() > 5 ? true : undefined, 60_000, `${client} to get more than 5 acknowledgements`)
    await w.stop()
    if (target === 'notes') this.acked.push(...w.acknowledged())
    return w.acknowledged()
  }

  /** Every container of `appName` on `nodes` (running or not), as each node's Docker tells it. */
  copies = async (appName: string, nodes: string[]): Promise<Copy[]> => {
    const out: Copy[] = []
    for (const node of nodes) {
      const ids = (await this.lab.exec(node, ['docker', 'ps', '-aq', '--filter', `label=dcloud.app=${appName}`])).stdout.split('\n').filter(Boolean)
      if (ids.length === 0) continue
      const r = await this.lab.exec(node, ['docker', 'inspect', ...ids])
      if (r.code !== 0) continue // removed meanwhile
      for (const c of JSON.parse(r.stdout) as Array<{ Id: string, State: { Running: boolean, StartedAt: string, FinishedAt: string }, Config: { Labels: Record<string, string> } }>) {
        const finished = Date.parse(c.State.FinishedAt)
        out.push({
          node,
          id: c.Id.slice(0, 12),
          running: c.State.Running,
          startedAt: Date.parse(c.State.StartedAt),
          // Docker says 0001-01-01 for a container that has not finished.
          finishedAt: finished > 0 ? finished : null,
          generation: Number(c.Config.Labels['dcloud.generation'] ?? 1)
        })
      }
    }
    return out
  }

  /** The notes log of `appName` as plain restic restores it from a node's copy of the repository. */
  notesFromRestic = async (node: string, appName: string, snapshot: string): Promise<string> => {
    const root = join(this.lab.lab.agentDataDir(node), 'snapshots')
    const out = await mkdtemp(join(tmpdir(), 'dcloud-restic-'))
    try {
      const r = await sh('restic', ['-r', join(root, 'repos', appName), '--password-file', join(root, 'restic.pw'), '--no-cache', 'restore', snapshot, '--target', out])
      if (r.code !== 0) throw new Error(`restic restore: ${r.stderr}`)
      return await readFile(join(out, `dcloud-${appName}-data`, '_data', 'notes.log'), 'utf8')
    } finally {
      await rm(out, { recursive: true, force: true })
    }
  }
}
