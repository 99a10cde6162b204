/**
 * Stateful apps on real engines and real restic repositories, with the notes
 * app under a checksummed write workload: a planned move loses no
 * acknowledged record and reports its downtime; a killed node's app comes
 * back from its newest snapshot, named; a backup file
 * restores under another name on another node; a hostile file is refused;
 * plain restic reads what the cluster made.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { existsSync } from 'node:fs'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LabHandle, waitFor } from './harness.ts'
import type { SnapshotView } from '../../proto/api.ts'
import { readNotesInLab, startLabWriters, verifyNotes } from '../../scripts/lab/notes-client.ts'
import { NOTES, StatefulKit, sh } from './stateful-kit.ts'
import { encodeEntry, endOfArchive } from '../../agent/snapshots/tar.ts'

const lab = new LabHandle('tstate')
const kit = new StatefulKit(lab)
const { acked, dc, dcOk, app, snapshots, write, notesFromRestic } = kit

describe('stateful apps', () => {
  beforeAll(async () => {
    await lab.up(3)
    await waitFor(async () => (await lab.status('n1')).leader ?? undefined, 60_000, 'a leader')
    await dcOk('n1', ['app', 'install', NOTES, '--node', 'n1'])
  }, 240_000)

  afterAll(async () => {
    await lab.down()
  }, 120_000)

  it('snapshots on demand, replicates to a peer, and plain restic lists and restores it', async () => {
    const written = await write('n3', 'a', 2000)
    expect(written.length).toBeGreaterThan(5)
    const made = JSON.parse(await dcOk('n1', ['snapshot', 'create', 'notes', '--json'])) as SnapshotView & { replicatedTo: string[] }
    expect(made.replicatedTo.length).toBeGreaterThanOrEqual(1)
    const listed = await snapshots('n2', 'notes')
    const mine = listed.find(s => s.id === made.id)
    expect(mine?.holders.length).toBeGreaterThanOrEqual(2)
    // A replica, read with restic alone: the cluster's key-derived password file is all it needs.
    const replica = made.replicatedTo[0]!
    const root = join(lab.lab.agentDataDir(replica), 'snapshots')
    const ls = await sh('restic', ['-r', join(root, 'repos', 'notes'), '--password-file', join(root, 'restic.pw'), '--no-cache', 'snapshots', '--json'])
    expect(ls.code).toBe(0)
    expect((JSON.parse(ls.stdout) as Array<{ short_id: string }>).map(s => s.short_id)).toContain(made.id)
    const text = await notesFromRestic(replica, 'notes', made.id)
    const v = verifyNotes(text, written)
    expect(v.missing).toEqual([])
    expect(v.corrupt).toEqual([])
  }, 120_000)

  it('moves notes from n1 to n2 while a client writes: every acknowledged record is there, downtime printed', async () => {
    const w = startLabWriters(lab.name, 'n3', { app: 'notes' }, ['move'])
    await waitFor(async () => { w.assertRunning(); return w.ackCount() > 0 ? true : undefined }, 30_000, 'a first acknowledgement')
    await new Promise(resolve => setTimeout(resolve, 1000))
    const out = await dcOk('n1', ['app', 'move', 'notes', 'n2'])
    process.stderr.write(out)
    expect(out).toMatch(/downtime \d+ ms/)
    await waitFor(async () => (await app('n1', 'notes'))?.node === 'n2' ? true : undefined, 30_000, 'notes on n2')
    // Keep writing on the new copy for a moment.
    const before = w.ackCount()
    await waitFor(async () => w.ackCount() > before + 5 ? true : undefined, 30_000, 'writes on n2')
    const summaries = await w.stop()
    acked.push(...w.acknowledged())
    process.stderr.write(`move: ${JSON.stringify(summaries)}\n`)
    const v = verifyNotes(await readNotesInLab(lab.name, 'n3', { app: 'notes' }), acked)
    expect(v.missing).toEqual([])
    expect(v.corrupt).toEqual([])
    const a = await app('n1', 'notes')
    expect(a?.relocation?.kind).toBe('move')
    expect(a?.relocation?.downtimeMs).toBeGreaterThan(0)
  }, 180_000)

  it('rolls notes back to a snapshot while a client writes: the snapshot is its data again, what was written since is kept in a snapshot, one copy runs', async () => {
    const host = (await app('n3', 'notes'))?.node as string
    await write('n3', 'pre-rollback', 300)
    const s1 = JSON.parse(await dcOk('n3', ['snapshot', 'create', 'notes', '--json'])) as SnapshotView
    const inS1 = await notesFromRestic(host, 'notes', s1.id)
    // Records after the snapshot, and a writer going on through the rollback.
    const w = startLabWriters(lab.name, 'n3', { app: 'notes' }, ['rollback'])
    await waitFor(async () => { w.assertRunning(); return w.ackCount() > 5 ? true : undefined }, 60_000, 'records after the snapshot')
    const back = JSON.parse(await dcOk('n3', ['snapshot', 'restore', 'notes', s1.id, '--yes', '--json'])) as SnapshotView
    expect(back.id).toBe(s1.id)
    await waitFor(async () => (await app('n3', 'notes'))?.state === 'running' ? true : undefined, 60_000, 'notes running after the rollback', 500)
    const before = w.ackCount()
    await waitFor(async () => w.ackCount() > before + 5 ? true : undefined, 60_000, 'writes after the rollback')
    await w.stop()
    const live = await readNotesInLab(lab.name, 'n3', { app: 'notes' })
    // The snapshot is its data: the live log starts with it, byte for byte.
    expect(live.startsWith(inS1)).toBe(true)
    // Nothing acknowledged is lost: what the rollback replaced is in the snapshot it took first (purpose final, after s1).
    const kept = (await snapshots('n3', 'notes')).filter(s => s.purpose === 'final' && s.time > s1.time).sort((a, b) => b.time - a.time)[0]
    expect(kept, 'the snapshot of the data the rollback replaced').toBeDefined()
    const keptText = await notesFromRestic(kept!.holders[0] as string, 'notes', kept!.id)
    const everything = [...acked, ...w.acknowledged()]
    const notLive = verifyNotes(live, everything)
    expect(verifyNotes(keptText, notLive.missing).missing).toEqual([])
    expect(notLive.corrupt).toEqual([])
    // From here on the live copy is what must hold: the snapshot's records and those written since.
    const gone = new Set(notLive.missing.map(r => r.line))
    const present = everything.filter(r => !gone.has(r.line))
    acked.splice(0, acked.length, ...present)
    process.stderr.write(`rollback: ${everything.length} acknowledged, ${present.length} in the live copy, ${everything.length - present.length} kept in snapshot ${kept!.id}\n`)
    expect((await kit.copies('notes', ['n1', 'n2', 'n3'])).filter(c => c.running).length).toBe(1)
    expect((await app('n3', 'notes'))?.relocation?.kind).toBe('rollback')
  }, 240_000)

  it('backs up to a file and restores it under another name on another node, with the same records; a hostile file is refused', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dcloud-backup-'))
    try {
      const file = join(dir, 'notes.dcloud-backup')
      // Streamed from the agent to the CLI, with progress on stderr; nothing stays on the node.
      const b = await dc('n1', ['backup', 'notes', '-o', file])
      expect(b.code, b.stderr).toBe(0)
      expect(b.stderr).toMatch(/notes: downloading: .* \(100%\) in [\d.]+ s/)
      expect(await readdir(join(lab.lab.agentDataDir('n1'), 'backups'))).toEqual([])
      // Onto an existing file: refused with its reason, by the CLI before asking the agent.
      const again = await dc('n1', ['backup', 'notes', '-o', file])
      expect(again.code).toBe(73)
      expect(again.stderr).toMatch(/already exists; refusing to replace it/)
      const original = await readNotesInLab(lab.name, 'n3', { app: 'notes' })
      // Its data in a directory of the node's own (a disk mounted there, say). A per-app domain is gone: refused with the reason.
      const dataDir = join(dir, 'disk')
      const withDomain = await dc('n2', ['restore', file, '--name', 'notes2', '--domain', 'notes.home.example', '--yes'])
      expect(withDomain.code).toBe(64)
      expect(withDomain.stderr).toMatch(/--domain is gone: an app answers at NAME\.DOMAIN/)
      // The directory is a host path the app writes to: a permission, refused unless granted.
      const ungranted = await dc('n2', ['restore', file, '--name', 'notes2', '--node', 'n3', '--data-dir', dataDir, '--yes'])
      expect(ungranted.code).toBe(64)
      expect(ungranted.stderr).toContain(`path:${dataDir}:rw`)
      const restored = await dc('n2', ['restore', file, '--name', 'notes2', '--node', 'n3', '--data-dir', dataDir, '--grant', `path:${dataDir}:rw`, '--yes'])
      expect(restored.code, restored.stderr).toBe(0)
      expect(restored.stderr).toMatch(/notes2: uploading: .* \(100%\) in [\d.]+ s/)
      const out = restored.stdout
      expect(out).toMatch(/notes2 restored and running on n3/)
      expect(out).toContain(`data in ${dataDir} on n3`)
      const copy = await readNotesInLab(lab.name, 'n1', { app: 'notes2' })
      expect(copy).toBe(original)
      expect(await readFile(join(dataDir, 'dcloud-notes2-data', '_data', 'notes.log'), 'utf8')).toBe(original)
      const view = await app('n1', 'notes2')
      expect(view?.hostPath).toBe(dataDir)
      expect(view?.url).toBe('https://notes2.dcloud.home.arpa/')
      // Snapshots read the data where it is: a new record is in the next snapshot.
      const more = await write('n3', 'd2', 500, 'notes2')
      const snap = JSON.parse(await dcOk('n3', ['snapshot', 'create', 'notes2', '--json'])) as SnapshotView
      const fromRestic = await notesFromRestic('n3', 'notes2', snap.id)
      expect(verifyNotes(fromRestic, more).missing).toEqual([])
      expect(fromRestic.startsWith(original)).toBe(true)
      // A system directory is refused before anything is written.
      const sys = await dc('n2', ['restore', file, '--name', 'notes3', '--data-dir', '/etc/dcloud-x', '--grant', 'all', '--yes'])
      expect(sys.code).not.toBe(0)
      expect(sys.stderr).toMatch(/system directory/)
      expect(sys.stderr).not.toMatch(/internal/)
      expect(existsSync('/etc/dcloud-x')).toBe(false)

      // A tar whose first entry is ours but whose next one climbs out of the target.
      const meta = JSON.parse((await sh('tar', ['-xOf', file, 'dcloud-backup.json'])).stdout) as Record<string, unknown>
      const body = Buffer.from(JSON.stringify(meta))
      const evil = Buffer.from('owned\n')
      const hostile = Buffer.concat([
        encodeEntry({ path: 'dcloud-backup.json', type: 'file', mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 0 }), body, Buffer.alloc((512 - body.length % 512) % 512),
        encodeEntry({ path: 'volumes/data/../../../../escaped', type: 'file', mode: 0o644, uid: 0, gid: 0, size: evil.length, mtime: 0 }), evil, Buffer.alloc(512 - evil.length),
        endOfArchive()
      ])
      const bad = join(dir, 'hostile.tar')
      await writeFile(bad, hostile)
      const before = await readdir(dir)
      const r = await dc('n2', ['restore', bad, '--name', 'evil', '--yes'])
      expect(r.code).not.toBe(0)
      expect(r.stderr).toMatch(/\.\.|outside|not allowed|refus/i)
      expect(await readdir(dir)).toEqual(before)
      expect(existsSync('/escaped')).toBe(false)
      expect((await app('n1', 'evil'))).toBeUndefined()
      await dcOk('n1', ['app', 'rm', 'notes2'])
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  }, 240_000)

  it('kills the node hosting notes: it answers on a survivor with every record up to its newest snapshot, and names it', async () => {
    const host = (await app('n1', 'notes'))?.node
    expect(host).toBe('n2')
    const saved = await write('n3', 'kill-a', 1500)
    const snap = JSON.parse(await dcOk('n1', ['snapshot', 'create', 'notes', '--json'])) as SnapshotView
    const unsaved = await write('n3', 'kill-b', 1000) // after the snapshot: lost with n2 (kept in its divergent snapshot)
    acked.splice(acked.length - unsaved.length, unsaved.length)
    await lab.cmd('kill', 'n2')
    const { ms } = await waitFor(async () => {
      const a = await app('n1', 'notes')
      return a?.state === 'running' && a.node !== 'n2' && a.relocation?.kind === 'failover' ? a : undefined
    }, 90_000, 'notes back on a survivor', 500)
    process.stderr.write(`failover: notes answers again ${Math.round(ms)} ms after n2 was killed\n`)
    const ls = await dcOk('n1', ['app', 'ls'])
    expect(ls).toContain(`from snapshot ${snap.id}`)
    const v = verifyNotes(await readNotesInLab(lab.name, 'n3', { app: 'notes' }), saved)
    expect(v.missing).toEqual([])
    expect(v.corrupt).toEqual([])
    // n2 comes back: its stale copy is retired (kept as a snapshot), never started.
    await lab.cmd('start', 'n2')
    await waitFor(async () => (await snapshots('n1', 'notes')).some(s => s.purpose === 'divergent' && s.node === 'n2') ? true : undefined, 120_000, 'the stale copy of n2 kept as a snapshot', 1000)
    const running = (JSON.parse(await dcOk('n1', ['status', '--json'])) as { nodes: Array<{ name: string, apps: string[] }> }).nodes.filter(n => n.apps.includes('notes'))
    expect(running.map(n => n.name)).toHaveLength(1)
  }, 300_000)
})
