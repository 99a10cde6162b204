/**
 * Retention on real repositories (issue 14): with a short interval
 * (`dcloud agent --retention-every 3s`) and an app whose rule keeps only the
 * newest automatic snapshot (`x-dcloud.snapshots.keep: { last: 1, ... 0 }`),
 * the snapshots moves made (pre-move, final) are forgotten on every node
 * that holds them, while what the user must decide about or was
 * told about survives everywhere: a manual snapshot, the divergent copy a
 * returning node's stale data became, and the snapshot the app's relocation
 * names. Every repository still passes `restic check`, read by plain restic.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LabHandle, waitFor } from './harness.ts'
import type { SnapshotView } from '../../proto/api.ts'
import { NOTES, StatefulKit, sh } from './stateful-kit.ts'

const lab = new LabHandle('tretn')
const kit = new StatefulKit(lab)
const { dcOk, app, write } = kit
const NODES = ['n1', 'n2', 'n3']
let dir: string
let manifest: string

interface ResticSnapshot { short_id: string, tags?: string[] }

/** The app's snapshots in one node's repository, by plain restic: id -> purpose (from the dcloud.purpose tag). */
async function repoOf (node: string): Promise<Map<string, string> | null> {
  const root = join(lab.lab.agentDataDir(node), 'snapshots')
  const r = await sh('restic', ['-r', join(root, 'repos', 'ret'), '--password-file', join(root, 'restic.pw'), '--no-cache', 'snapshots', '--json'])
  if (r.code !== 0) return null
  const out = new Map<string, string>()
  for (const s of JSON.parse(r.stdout) as ResticSnapshot[]) out.set(s.short_id, (s.tags ?? []).find(t => t.startsWith('dcloud.purpose='))?.slice('dcloud.purpose='.length) ?? 'unknown')
  return out
}

/**
 * Plain restic on a node's repository of the app, between the agent's own
 * passes: retention runs every 3 s here and holds the repository's lock
 * while it does, so a command refused for the lock is run again.
 */
async function resticBetweenPasses (root: string, args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  for (let i = 0; ; i++) {
    const r = await sh('restic', ['-r', join(root, 'repos', 'ret'), '--password-file', join(root, 'restic.pw'), '--no-cache', ...args])
    if (r.code === 0 || !/already locked/.test(r.stderr) || i >= 20) return r
    await new Promise(resolve => setTimeout(resolve, 500))
  }
}

describe('retention on every node', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dcloud-retention-'))
    manifest = join(dir, 'ret.yaml')
    const notes = await readFile(join(NOTES, 'compose.yaml'), 'utf8')
    await writeFile(manifest, notes.replace(/\n  id: notes\n/, '\n  id: ret\n') + '  snapshots:\n    every: "0"\n    replicas: 2\n    keep: { last: 1, hourly: 0, daily: 0, weekly: 0 }\n')
    await lab.up(3, ['--retention-every', '3s'])
    await waitFor(async () => (await lab.status('n1')).leader ?? undefined, 60_000, 'a leader')
    await dcOk('n1', ['app', 'install', manifest, '--name', 'ret'])
  }, 300_000)

  afterAll(async () => {
    await lab.down()
    await rm(dir, { recursive: true, force: true })
  }, 120_000)

  it('forgets what moves left behind, on every node; manual, divergent and listed snapshots survive everywhere', async () => {
    const notes = 'ret'
    await write('n1', 'ret-a', 300, notes)
    const manual = JSON.parse(await dcOk('n1', ['snapshot', 'create', notes, '--json'])) as SnapshotView
    // Two moves: each leaves a pre-move and a final snapshot, automatic ones the rule may forget. The
    // first move's final snapshot is named by the app's relocation only until the second move: then
    // nothing keeps it (not the newest automatic one, not the newest restorable, not listed).
    const finals: string[] = []
    for (let i = 0; i < 2; i++) {
      const at = (await app('n1', notes))?.node as string
      const to = NODES.find(n => n !== at) as string
      await dcOk('n1', ['app', 'move', notes, to])
      await waitFor(async () => (await app('n1', notes))?.node === to && (await app('n1', notes))?.state === 'running' ? true : undefined, 120_000, `${notes} on ${to}`, 500)
      finals.push((await app('n1', notes))?.relocation?.snapshot as string)
      await write(to, `ret-m${i}`, 300, notes)
    }
    expect(finals[0]).toBeTruthy()

    // The host dies and returns after the failover: its stale copy becomes a divergent snapshot.
    const host = (await app('n1', notes))?.node as string
    const other = NODES.find(n => n !== host) as string
    await dcOk(other, ['snapshot', 'create', notes])
    await lab.cmd('kill', host)
    await waitFor(async () => { const v = await app(other, notes); return v?.state === 'running' && v.node !== host ? true : undefined }, 120_000, `${notes} on a survivor`, 500)
    await lab.cmd('start', host)
    const { value: divergent } = await waitFor(async () => (await kit.snapshots(other, notes)).find(s => s.purpose === 'divergent'), 120_000, 'the divergent snapshot', 1000)
    const listed = (await app(other, notes))?.relocation?.snapshot as string
    expect(listed).toBeTruthy()

    // Retention runs every 3 s on each node; replication brings forgotten snapshots back until every copy has run it.
    const mustStay = [manual.id, divergent.id, listed]
    const { value: repos, ms } = await waitFor(async () => {
      const all = new Map<string, Map<string, string>>()
      for (const n of NODES) {
        const r = await repoOf(n)
        if (r === null) return undefined
        all.set(n, r)
      }
      for (const r of all.values()) {
        if (!mustStay.every(id => r.has(id)) || r.has(finals[0] as string)) return undefined
        // Automatic ones left: the newest (last: 1), the newest restorable, and the listed one at most.
        const auto = [...r.entries()].filter(([id, p]) => (p === 'pre-move' || p === 'final' || p === 'scheduled') && id !== listed)
        if (auto.length > 2) return undefined
      }
      return all
    }, 120_000, 'retention to converge on every node', 2000)
    process.stderr.write(`retention converged in ${ms} ms: ${[...repos.entries()].map(([n, r]) => `${n}: ${[...r.values()].join(',')}`).join('; ')}\n`)
    for (const [n, r] of repos) expect(r.has(finals[0] as string), `the first move's final snapshot ${finals[0] as string} on ${n}`).toBe(false)
    for (const [n, r] of repos) {
      for (const id of mustStay) expect(r.has(id), `${id} on ${n}`).toBe(true)
      const root = join(lab.lab.agentDataDir(n), 'snapshots')
      const check = await resticBetweenPasses(root, ['check'])
      expect(check.code, `restic check on ${n}: ${check.stderr}`).toBe(0)
      // What a prune would still remove (printed: restic repositories are pruned at most once a day, after a forget).
      const dry = await resticBetweenPasses(root, ['prune', '--dry-run'])
      expect(dry.code, dry.stderr).toBe(0)
      process.stderr.write(`${n} prune --dry-run: ${dry.stdout.split('\n').filter(l => /unused|remove|delete/i.test(l)).join(' | ')}\n`)
    }
  }, 600_000)
})
