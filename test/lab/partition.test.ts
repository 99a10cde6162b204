/**
 * A partition, in a lab of its own: the node hosting notes is cut off from
 * the other two. It stops its copy by itself (fencing), the majority brings
 * notes up from its newest snapshot, and after the heal one copy runs and
 * the cut-off node's divergent records are kept in a listed snapshot.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { LabHandle, waitFor } from './harness.ts'
import { pinnedTo, readNotesInLab, startLabWriters, verifyNotes } from '../../scripts/lab/notes-client.ts'
import { NOTES, StatefulKit } from './stateful-kit.ts'

const lab = new LabHandle('tpart')
const kit = new StatefulKit(lab)
const { acked, dc, dcOk, app, snapshots, write, notesFromRestic, copies } = kit

describe('a partition with a stateful app', () => {
  beforeAll(async () => {
    await lab.up(3)
    await waitFor(async () => (await lab.status('n1')).leader ?? undefined, 60_000, 'a leader')
    await dcOk('n1', ['app', 'install', NOTES])
  }, 240_000)

  afterAll(async () => {
    await lab.down()
  }, 120_000)

  it('partitions the node hosting notes: it stops its copy, the majority runs notes, and after the heal its divergent records are kept in a listed snapshot', async () => {
    const host = (await app('n1', 'notes'))?.node
    expect(host).toBeDefined()
    const cut = host!
    const others = ['n1', 'n2', 'n3'].filter(n => n !== cut)
    const [a, b] = others as [string, string]
    await write(a, 'before', 1000)
    await dcOk(a, ['snapshot', 'create', 'notes'])
    // Records only the cut-off node will ever have.
    const divergent = await write(cut, 'cutoff', 1000)
    acked.splice(acked.length - divergent.length, divergent.length) // kept in a snapshot, not in the live copy
    // A writer on the cut-off side, pinned to its copy, through the partition: what it gets acknowledged there is the old copy's.
    const url = (await app(cut, 'notes'))!.url as string
    const minority = startLabWriters(lab.name, cut, pinnedTo(url, (await lab.lab.node(cut)).ip), ['minority'], { timeoutMs: 2000 })
    await waitFor(async () => { minority.assertRunning(); return minority.ackCount() > 0 ? true : undefined }, 30_000, 'the minority writer to get an acknowledgement')
    await lab.cmd('partition', cut, `${a},${b}`)
    // The cut-off node stops its stateful app by itself.
    await waitFor(async () => {
      const r = await lab.exec(cut, ['docker', 'ps', '--filter', 'label=dcloud.app=notes', '--format', '{{.State}}'])
      return r.stdout.trim() === '' ? true : undefined
    }, 30_000, 'the cut-off node to stop notes', 250)
    const { value } = await waitFor(async () => {
      const v = await app(a, 'notes')
      return v?.state === 'running' && v.node !== cut ? v : undefined
    }, 90_000, 'the majority to run notes', 500)
    process.stderr.write(`partition: notes runs on ${value.node ?? '?'}\n`)
    await minority.stop().catch(() => [])
    divergent.push(...minority.acknowledged())
    // By Docker's own times: the cut-off copy had finished before the majority's started, and wrote nothing after.
    const stale = (await copies('notes', [cut])).find(c => !c.running)
    const fresh = (await copies('notes', [value.node!])).find(c => c.running)
    expect(stale?.finishedAt, 'the cut-off copy finished').not.toBeNull()
    expect(fresh).toBeDefined()
    process.stderr.write(`partition: the cut-off copy finished ${fresh!.startedAt - stale!.finishedAt!} ms before the majority's started\n`)
    expect(stale!.finishedAt!).toBeLessThan(fresh!.startedAt)
    expect(minority.lastAckAt() ?? 0).toBeLessThan(fresh!.startedAt)
    await lab.cmd('heal')
    try {
      await waitFor(async () => {
        const list = await snapshots(a, 'notes')
        return list.some(s => s.purpose === 'divergent' && s.node === cut) ? true : undefined
      }, 180_000, "n1's divergent copy kept as a snapshot", 1000)
    } catch (err) {
      // What the cluster thought, for whoever reads the failure.
      for (const args of [['status'], ['app', 'why', 'notes'], ['snapshot', 'ls', 'notes']]) process.stderr.write(`dcloud ${args.join(' ')}:\n${JSON.stringify(await dc(a, args))}\n`)
      throw err
    }
    const kept = (await snapshots(a, 'notes')).filter(s => s.purpose === 'divergent' && s.node === cut).at(-1)!
    expect(kept.label).toMatch(new RegExp(`^divergent-${cut}-`))
    const text = await notesFromRestic(cut, 'notes', kept.id)
    expect(verifyNotes(text, divergent).missing).toEqual([])
    const listing = await dcOk(a, ['snapshot', 'ls', 'notes'])
    expect(listing).toContain('divergent copy kept')
    // One running copy.
    await waitFor(async () => {
      const s = JSON.parse(await dcOk(a, ['status', '--json'])) as { nodes: Array<{ name: string, apps: string[] }> }
      return s.nodes.filter(n => n.apps.includes('notes')).length === 1 ? true : undefined
    }, 60_000, 'one running copy of notes')
    const v = verifyNotes(await readNotesInLab(lab.name, a, { app: 'notes' }), acked)
    expect(v.missing).toEqual([])
  }, 420_000)
})
