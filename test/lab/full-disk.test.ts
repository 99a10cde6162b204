/**
 * A full disk on real engines (issue 12, item 5): each lab node keeps its
 * Docker and agent data on a disk of its own, and `dcloud lab fill` fills one.
 *
 * - A snapshot on a full node fails with a clear error, leaves the
 *   repository as it was (restic check passes, the earlier snapshot restores
 *   with plain restic), and the app keeps running, untouched; after
 *   `lab unfill` the next snapshot succeeds.
 * - A replica pull into a full node fails cleanly (no temp or partial file
 *   in its repository, which still passes restic check): the snapshot goes
 *   to another peer instead, and to this one once it has room.
 * - A move onto a full node is refused before the app stops, with the
 *   reason in `dcloud app why`; a move onto a node with room for the
 *   snapshots but not for the restored data is refused before the stop too;
 *   both complete once the disk has room, with every acknowledged record.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readdir, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { LabHandle, dcloud, waitFor } from './harness.ts'
import type { SnapshotView } from '../../proto/api.ts'
import { readNotesInLab, startLabWriters, verifyNotes, type LabWriters } from '../../scripts/lab/notes-client.ts'
import { NOTES, StatefulKit, sh, type Run } from './stateful-kit.ts'
import type { DiskView } from '../../scripts/lab/lab.ts'

const lab = new LabHandle('tdisk')
const kit = new StatefulKit(lab)
const { acked, dc, dcOk, app, snapshots, write, notesFromRestic } = kit
const MiB = 1024 * 1024

/** `dcloud lab fill|unfill` as a user runs it, its report as JSON. */
async function disk (verb: 'fill' | 'unfill', node: string, leave?: number): Promise<DiskView> {
  const out = await lab.cmd(verb, node, ...(leave !== undefined ? ['--leave', String(leave)] : []), '--json')
  return JSON.parse(out) as DiskView
}

/** Plain restic on a node's copy of the app's repository (no dcloud, no lock: the disk may be full). */
async function restic (node: string, args: string[]): Promise<Run> {
  const root = join(lab.lab.agentDataDir(node), 'snapshots')
  return await sh('restic', ['-r', join(root, 'repos', 'notes'), '--password-file', join(root, 'restic.pw'), '--no-cache', '--no-lock', ...args])
}

/** Every file of a node's copy of the repository, with its size: what a failed operation must not change. */
async function repoFiles (node: string): Promise<string[]> {
  const root = join(lab.lab.agentDataDir(node), 'snapshots', 'repos', 'notes')
  const out: string[] = []
  const walk = async (dir: string, rel: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      if (e.isDirectory()) await walk(join(dir, e.name), `${rel}${e.name}/`)
      else out.push(`${rel}${e.name} ${(await stat(join(dir, e.name))).size}`)
    }
  }
  await walk(root, '')
  return out.sort()
}

/** Bytes of the source's copy of the repository that the target's copy lacks: what a pull would need. */
async function lacking (source: string, target: string): Promise<number> {
  const there = new Set(await repoFiles(target).catch(() => [] as string[]))
  return (await repoFiles(source)).filter(f => !there.has(f)).reduce((n, f) => n + Number(f.split(' ').at(-1)), 0)
}

/** The node that leads now: not one to fill when a test needs the cluster to commit (it persists every change first). */
async function leader (): Promise<string> {
  const s = await lab.status('n1')
  return s.nodes.find(n => n.id === s.leader)?.name ?? ''
}

/** The notes container on a node: id, start time, and whether it runs unpaused. */
async function container (node: string): Promise<{ id: string, startedAt: string, running: boolean, paused: boolean } | null> {
  const ps = await lab.exec(node, ['docker', 'ps', '-aq', '--filter', 'label=dcloud.app=notes'])
  const id = ps.stdout.trim().split('\n')[0] ?? ''
  if (id === '') return null
  const r = await lab.exec(node, ['docker', 'inspect', '--format', '{{.State.StartedAt}} {{.State.Running}} {{.State.Paused}}', id])
  const [startedAt = '', running, paused] = r.stdout.trim().split(' ')
  return { id, startedAt, running: running === 'true', paused: paused === 'true' }
}

/**
 * Once the target has room again, the waiting move completes: notes runs
 * there, the writer goes on being acknowledged, and every acknowledged record
 * is in the log. Returns what `dcloud app move` printed.
 */
async function moveCompletesAfterUnfill (target: string, moving: Promise<Run>, w: LabWriters): Promise<string> {
  await disk('unfill', target)
  const moved = await moving
  expect(moved.code, moved.stderr).toBe(0)
  await waitFor(async () => { w.assertRunning(); return (await app('n1', 'notes'))?.node === target ? true : undefined }, 30_000, `notes on ${target}`)
  const n = w.ackCount()
  await waitFor(async () => w.ackCount() > n + 3 ? true : undefined, 30_000, `writes on ${target}`)
  await w.stop()
  acked.push(...w.acknowledged())
  const v = verifyNotes(await readNotesInLab(lab.name, 'n3', { app: 'notes' }), acked)
  expect(v.missing).toEqual([])
  expect(v.corrupt).toEqual([])
  return moved.stdout
}

describe('a full disk', () => {
  let first: SnapshotView & { replicatedTo: string[] }
  let holder = ''
  let other = ''

  beforeAll(async () => {
    await lab.up(3)
    await waitFor(async () => (await lab.status('n1')).leader ?? undefined, 60_000, 'a leader')
    await dcOk('n1', ['app', 'install', NOTES, '--node', 'n1'])
    await write('n3', 'a', 1000)
    first = JSON.parse(await dcOk('n1', ['snapshot', 'create', 'notes', '--json'])) as SnapshotView & { replicatedTo: string[] }
    holder = first.replicatedTo[0] ?? ''
    other = ['n2', 'n3'].find(n => n !== holder) ?? ''
    expect(holder).toMatch(/^n[23]$/)
  }, 240_000)

  afterAll(async () => {
    await lab.down()
  }, 120_000)

  it('lab fill leaves each node its own disk: one node full, the others untouched; unfill gives it back', async () => {
    const before = await lab.lab.disk('n2')
    expect(before.mounted).toBe(true)
    expect(before.bytes).toBeGreaterThan(3.5 * 1024 * MiB)
    const half = await disk('fill', 'n2', 100 * MiB)
    expect(Math.abs(half.free - 100 * MiB)).toBeLessThan(MiB)
    const full = await disk('fill', 'n2')
    expect(full.free).toBe(0)
    // Every write of the node fails now, root's too.
    const w = await lab.exec('n2', ['dd', 'if=/dev/zero', `of=${join(lab.lab.agentDataDir('n2'), 'probe')}`, 'bs=4096', 'count=1', 'conv=fsync'])
    expect(w.code).not.toBe(0)
    expect(w.stderr).toMatch(/No space left on device/)
    expect((await lab.lab.disk('n1')).free).toBeGreaterThan(3 * 1024 * MiB)
    const back = await disk('unfill', 'n2')
    expect(back.filler).toBe(0)
    expect(back.free).toBeGreaterThan(before.free - 16 * MiB)
  }, 60_000)

  it('a snapshot on a full node fails with a clear error; the repository and the app are as they were; after unfill the next one succeeds', async () => {
    const saved = [...acked]
    const c0 = await container('n1')
    expect(c0?.running).toBe(true)
    const files = await repoFiles('n1')
    await disk('fill', 'n1')
    // Asked from another node: the error crosses the cluster to the CLI.
    const started = performance.now()
    const r = await dc('n2', ['snapshot', 'create', 'notes'])
    const ms = Math.round(performance.now() - started)
    process.stderr.write(`full disk: snapshot create failed in ${ms} ms, exit ${r.code}: ${r.stderr.trim()}\n`)
    // 507 from the API (the node's disk-full error crossed the cluster as such), exit 74 (EX_IOERR), with its advice.
    expect(r.code).toBe(74)
    expect(r.stderr).toMatch(/no space left on the disk/i)
    expect(r.stderr).toMatch(/free space there and retry/)
    expect(r.stderr).not.toMatch(/internal error/i)
    // Nothing of the attempt is left in the repository; what is there still checks and restores.
    expect(await repoFiles('n1')).toEqual(files)
    const listed = await restic('n1', ['snapshots', '--json'])
    expect(listed.code, listed.stderr).toBe(0)
    expect((JSON.parse(listed.stdout) as Array<{ short_id: string }>).map(s => s.short_id)).toContain(first.id)
    const check = await restic('n1', ['check'])
    expect(check.code, check.stdout + check.stderr).toBe(0)
    // The app was paused for the attempt and runs again, the same container.
    const c1 = await container('n1')
    expect(c1).toEqual(c0)
    expect((await app('n2', 'notes'))?.state).toBe('running')

    await disk('unfill', 'n1')
    const more = await write('n3', 'b', 500)
    const next = JSON.parse(await dcOk('n2', ['snapshot', 'create', 'notes', '--json'])) as SnapshotView & { replicatedTo: string[] }
    expect(next.replicatedTo.length).toBe(1)
    const v = verifyNotes(await notesFromRestic('n1', 'notes', next.id), [...saved, ...more])
    expect(v.missing).toEqual([])
    expect(v.corrupt).toEqual([])
    expect(verifyNotes(await notesFromRestic('n1', 'notes', first.id), saved).missing).toEqual([])
    expect(await container('n1')).toEqual(c0)
  }, 180_000)

  it('a replica pull into a full node fails cleanly: no temp file, its repository checks; the snapshot goes elsewhere, and there once it has room', async () => {
    const files = await repoFiles(holder)
    await disk('fill', holder)
    const log = join(lab.lab.nodeDir('n1'), 'agent.log')
    const logBefore = (await readFile(log, 'utf8')).length
    await write('n3', 'c', 500)
    const snap = JSON.parse(await dcOk('n1', ['snapshot', 'create', 'notes', '--json'])) as SnapshotView & { replicatedTo: string[] }
    expect(snap.replicatedTo).toEqual([other])
    const said = (await readFile(log, 'utf8')).slice(logBefore)
    expect(said).toMatch(new RegExp(`could not take a replica.*no space.*${holder}|could not take a replica.*${holder}.*no space`))
    expect(await repoFiles(holder)).toEqual(files)
    const check = await restic(holder, ['check'])
    expect(check.code, check.stdout + check.stderr).toBe(0)
    expect((await snapshots('n1', 'notes')).find(s => s.id === snap.id)?.holders.sort()).toEqual(['n1', other].sort())

    // With room again it takes the next one (and what it missed); now the other peer is the full one.
    await disk('unfill', holder)
    await disk('fill', other)
    await write('n3', 'd', 500)
    const after = JSON.parse(await dcOk('n1', ['snapshot', 'create', 'notes', '--json'])) as SnapshotView & { replicatedTo: string[] }
    expect(after.replicatedTo).toEqual([holder])
    await disk('unfill', other)
    const held = await restic(holder, ['snapshots', '--json'])
    const ids = (JSON.parse(held.stdout) as Array<{ short_id: string }>).map(s => s.short_id)
    expect(ids).toEqual(expect.arrayContaining([snap.id, after.id]))
    const v = verifyNotes(await notesFromRestic(holder, 'notes', after.id), acked)
    expect(v.missing).toEqual([])
  }, 180_000)

  it('a move onto a full node is refused before the app stops, says why, and completes once the disk has room', async () => {
    const lead = await leader()
    const target = [holder, other].find(n => n !== lead) ?? ''
    const c0 = await container('n1')
    await disk('fill', target)
    const w = startLabWriters(lab.name, 'n3', { app: 'notes' }, ['move'])
    await waitFor(async () => { w.assertRunning(); return w.ackCount() > 0 ? true : undefined }, 30_000, 'a first acknowledgement')
    const moving = dcloud(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'move', 'notes', target])
    const { value: why } = await waitFor(async () => {
      const r = await dc('n1', ['app', 'why', 'notes'])
      return /space/i.test(r.stdout) ? r.stdout : undefined
    }, 90_000, 'app why to give the full disk as the reason', 500)
    process.stderr.write(`move onto a full disk, app why:\n${why}`)
    expect(why).toMatch(new RegExp(`${target}`))
    // Nothing stopped: the same container kept running and answering.
    expect(await container('n1')).toEqual(c0)
    const acks = w.ackCount()
    await waitFor(async () => w.ackCount() > acks + 3 ? true : undefined, 30_000, 'writes while the move waits')
    expect((await app('n1', 'notes'))?.node).toBe('n1')

    process.stderr.write(await moveCompletesAfterUnfill(target, moving, w))
  }, 240_000)

  it('a move onto a node with room for the snapshots but not for the data is refused before the stop; no copy is deleted', async () => {
    const source = (await app('n1', 'notes'))?.node ?? ''
    const lead = await leader()
    const target = ['n1', 'n2', 'n3'].find(n => n !== source && n !== lead) ?? ''
    // 80 MiB of random data in the volume: a pull needs about that, and a restore as much again.
    const ps = await lab.exec(source, ['docker', 'ps', '-q', '--filter', 'label=dcloud.app=notes'])
    const blob = await lab.exec(source, ['docker', 'exec', ps.stdout.trim(), 'sh', '-c', 'head -c 83886080 /dev/urandom > /data/blob && sync'])
    expect(blob.code, blob.stderr).toBe(0)
    await write('n3', 'e', 300)
    // Room for the pull (the blob, what the target lacks of the rest, and the 64 MiB the puller keeps
    // spare), not for a restore of the 80 MiB beside it.
    const pull = await lacking(source, target) + 80 * MiB
    const room = await disk('fill', target, pull + 64 * MiB + 8 * MiB)
    process.stderr.write(`target ${target}: ${room.free} bytes free, a pull needs ${pull}\n`)
    const c0 = await container(source)
    const w = startLabWriters(lab.name, 'n3', { app: 'notes' }, ['big'])
    await waitFor(async () => { w.assertRunning(); return w.ackCount() > 0 ? true : undefined }, 30_000, 'a first acknowledgement')
    const moving = dcloud(['lab', '--lab', lab.name, 'exec', source, '--', 'dcloud', 'app', 'move', 'notes', target])
    const { value: why } = await waitFor(async () => {
      const r = await dc(source, ['app', 'why', 'notes'])
      return /space|room/i.test(r.stdout) ? r.stdout : undefined
    }, 120_000, 'app why to say the target has no room', 500)
    process.stderr.write(`move onto a disk too small for the data, app why:\n${why}`)
    expect(await container(source)).toEqual(c0)
    expect((await app(source, 'notes'))?.node).toBe(source)
    // The volumes on the source are there, whole.
    const vols = await lab.exec(source, ['docker', 'volume', 'ls', '-q', '--filter', 'name=dcloud-notes-'])
    expect(vols.stdout).toMatch(/dcloud-notes-data/)

    await moveCompletesAfterUnfill(target, moving, w)
  }, 240_000)
})
