/**
 * Where restic is missing, snapshots are tar repositories (tar-repo.ts): the
 * same cluster behaviour on real engines, with every agent started with a
 * restic that is not there. A snapshot replicates, a move under writes loses
 * no acknowledged record, a backup file restores under another name, and a
 * killed node's app comes back from its newest tar snapshot.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LabHandle, waitFor } from './harness.ts'
import type { SnapshotView } from '../../proto/api.ts'
import { readNotesInLab, startLabWriters, verifyNotes } from '../../scripts/lab/notes-client.ts'
import { NOTES, StatefulKit } from './stateful-kit.ts'

const lab = new LabHandle('ttar')
const kit = new StatefulKit(lab)

/** The format the config of a node's copy of the app's repository names. */
async function repoFormat (node: string, app: string): Promise<string> {
  const config = await readFile(join(lab.lab.agentDataDir(node), 'snapshots', 'repos', app, 'config'), 'utf8')
  return (JSON.parse(config) as { format: string }).format
}

describe('stateful apps without restic (tar repositories)', () => {
  beforeAll(async () => {
    await lab.up(3, ['--restic', '/nonexistent/restic'])
    await waitFor(async () => (await lab.status('n1')).leader ?? undefined, 60_000, 'a leader')
    await kit.dcOk('n1', ['app', 'install', NOTES, '--node', 'n1'])
  }, 240_000)

  afterAll(async () => {
    await lab.down()
  }, 120_000)

  it('snapshots into a tar repository and replicates it', async () => {
    const written = await kit.write('n3', 'a', 1500)
    const made = JSON.parse(await kit.dcOk('n1', ['snapshot', 'create', 'notes', '--json'])) as SnapshotView & { replicatedTo: string[] }
    expect(made.replicatedTo.length).toBeGreaterThanOrEqual(1)
    expect(await repoFormat('n1', 'notes')).toBe('dcloud-tar-repository')
    expect(await repoFormat(made.replicatedTo[0]!, 'notes')).toBe('dcloud-tar-repository')
    const listed = (await kit.snapshots('n2', 'notes')).find(s => s.id === made.id)
    expect(listed?.holders.length).toBeGreaterThanOrEqual(2)
    expect(written.length).toBeGreaterThan(5)
  }, 120_000)

  it('moves notes from n1 to n2 while a client writes: every acknowledged record is there', async () => {
    const w = startLabWriters(lab.name, 'n3', { app: 'notes' }, ['move'])
    await waitFor(async () => { w.assertRunning(); return w.ackCount() > 0 ? true : undefined }, 30_000, 'a first acknowledgement')
    await new Promise(resolve => setTimeout(resolve, 1000))
    const out = await kit.dcOk('n1', ['app', 'move', 'notes', 'n2'])
    expect(out).toMatch(/downtime \d+ ms/)
    await waitFor(async () => (await kit.app('n1', 'notes'))?.node === 'n2' ? true : undefined, 30_000, 'notes on n2')
    const before = w.ackCount()
    await waitFor(async () => w.ackCount() > before + 5 ? true : undefined, 30_000, 'writes on n2')
    await w.stop()
    kit.acked.push(...w.acknowledged())
    const v = verifyNotes(await readNotesInLab(lab.name, 'n3', { app: 'notes' }), kit.acked)
    expect(v.missing).toEqual([])
    expect(v.corrupt).toEqual([])
  }, 180_000)

  it('backs up to a file and restores it under another name on another node', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dcloud-backup-'))
    try {
      const file = join(dir, 'notes.dcloud-backup')
      await kit.dcOk('n1', ['backup', 'notes', '-o', file])
      const original = await readNotesInLab(lab.name, 'n3', { app: 'notes' })
      const out = await kit.dcOk('n2', ['restore', file, '--name', 'notes2', '--node', 'n3', '--yes'])
      expect(out).toMatch(/notes2 restored and running on n3/)
      expect(await readNotesInLab(lab.name, 'n1', { app: 'notes2' })).toBe(original)
      expect(await repoFormat('n2', 'notes2')).toBe('dcloud-tar-repository')
      await kit.dcOk('n1', ['app', 'rm', 'notes2'])
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  }, 240_000)

  it('kills the node hosting notes: it comes back on a survivor from its newest tar snapshot', async () => {
    expect((await kit.app('n1', 'notes'))?.node).toBe('n2')
    const saved = await kit.write('n3', 'kill', 1000)
    const snap = JSON.parse(await kit.dcOk('n1', ['snapshot', 'create', 'notes', '--json'])) as SnapshotView
    await lab.cmd('kill', 'n2')
    await waitFor(async () => {
      const a = await kit.app('n1', 'notes')
      return a?.state === 'running' && a.node !== 'n2' && a.relocation?.kind === 'failover' ? a : undefined
    }, 90_000, 'notes back on a survivor', 500)
    expect(await kit.dcOk('n1', ['app', 'ls'])).toContain(`from snapshot ${snap.id}`)
    const v = verifyNotes(await readNotesInLab(lab.name, 'n3', { app: 'notes' }), saved)
    expect(v.missing).toEqual([])
    expect(v.corrupt).toEqual([])
  }, 240_000)
})
