/**
 * Never two copies of a stateful app, proved by the times Docker itself
 * records (the lab has one clock) and by a writer pinned to the old copy:
 * - only the agent of the node dies (SIGKILL; dockerd and the link stay up):
 *   the watchdog kills the copy when the lease lapses, before the majority
 *   starts another;
 * - the node's link fails one way (it hears the others; they stop hearing
 *   it): its lease, held only while a quorum echoes its beats, lapses
 *   before the majority starts another copy;
 * - the whole node dies and comes back after the failover: its dockerd does
 *   not start the stale copy (restart policy `no`), the agent retires it;
 * - only dockerd restarts: no copy starts elsewhere meanwhile, and the app
 *   comes back where its data is, with every acknowledged record.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { LabHandle, waitFor } from './harness.ts'
import { pinnedTo, readNotesInLab, startLabWriters, verifyNotes } from '../../scripts/lab/notes-client.ts'
import { NOTES, StatefulKit, type Copy } from './stateful-kit.ts'

const lab = new LabHandle('tfence')
const kit = new StatefulKit(lab)
const { acked, dcOk, app, write } = kit
const NODES = ['n1', 'n2', 'n3']

const copies = async (nodes = NODES): Promise<Copy[]> => await kit.copies('notes', nodes)

async function runningOn (via: string): Promise<string> {
  const { value } = await waitFor(async () => {
    const v = await app(via, 'notes')
    return v?.state === 'running' && v.node !== null ? v.node : undefined
  }, 120_000, 'notes to run', 500)
  return value
}

describe('fencing: never two copies of a stateful app', () => {
  beforeAll(async () => {
    await lab.up(3)
    await waitFor(async () => (await lab.status('n1')).leader ?? undefined, 60_000, 'a leader')
    await dcOk('n1', ['app', 'install', NOTES])
  }, 300_000)

  afterAll(async () => {
    await lab.down()
  }, 120_000)

  it('its containers carry the restart policy `no` and the fence label: only the agent starts them', async () => {
    const host = await runningOn('n1')
    const r = await lab.exec(host, ['docker', 'inspect', '--format', '{{.HostConfig.RestartPolicy.Name}} {{index .Config.Labels "dcloud.fence"}}', `dcloud-notes-web`])
    expect(r.stdout.trim()).toBe('no 1')
  })

  it('only the agent dies: the watchdog kills the copy before the majority starts another, and no write is acknowledged by it after', async () => {
    const host = await runningOn('n1')
    const other = NODES.find(n => n !== host) as string
    await write(other, 'before-agent-kill', 500)
    await dcOk(other, ['snapshot', 'create', 'notes'])
    const old = (await app(other, 'notes'))!
    expect(old.node).toBe(host)
    // A writer pinned to the old copy's node's front door (it serves its own copy while that runs): whatever acknowledges there is the old copy.
    const pinned = startLabWriters(lab.name, other, pinnedTo(old.url as string, (await lab.lab.node(host)).ip), ['pinned'], { timeoutMs: 2000 })
    await waitFor(async () => { pinned.assertRunning(); return pinned.ackCount() > 0 ? true : undefined }, 30_000, 'the pinned writer to get an acknowledgement')

    const agentPid = (await lab.lab.node(host)).agentPid as number
    const killedAt = Date.now()
    process.kill(agentPid, 'SIGKILL')
    const survivor = NODES.find(n => n !== host) as string
    const { value: moved } = await waitFor(async () => {
      const v = await app(survivor, 'notes')
      return v?.state === 'running' && v.node !== null && v.node !== host ? v.node : undefined
    }, 120_000, 'notes to run on a survivor', 500)
    // Its records after the snapshot are not in the new copy (a failover restores the newest
    // snapshot); they are kept in the divergent snapshot the returning node's copy becomes.
    await pinned.stop().catch(() => [])

    const all = await copies()
    const stale = all.find(c => c.node === host)
    const fresh = all.find(c => c.node === moved && c.running)
    expect(stale, `notes' container on ${host}`).toBeDefined()
    expect(fresh, `notes' container on ${moved}`).toBeDefined()
    expect(stale!.running).toBe(false)
    expect(stale!.finishedAt).not.toBeNull()
    const killToFence = stale!.finishedAt! - killedAt
    const margin = fresh!.startedAt - stale!.finishedAt!
    process.stderr.write(`agent killed: the watchdog stopped notes on ${host} ${killToFence} ms after the kill; the copy on ${moved} started ${margin} ms after that\n`)
    // The lease is 2.5 s; the watchdog looks every 200 ms.
    expect(killToFence).toBeLessThan(4000)
    expect(margin).toBeGreaterThan(0)
    const lastOldAck = pinned.lastAckAt()
    expect(lastOldAck).not.toBeNull()
    expect(lastOldAck!).toBeLessThan(fresh!.startedAt)

    // The agent comes back: its stale copy is retired (kept as a snapshot), never started again.
    await lab.cmd('start', host, '--agent-only')
    await waitFor(async () => {
      const now = await copies()
      return now.filter(c => c.running).length === 1 && !now.some(c => c.node === host && c.running) ? true : undefined
    }, 60_000, 'one running copy after the agent returned', 500)
    const again = (await copies()).find(c => c.node === host && c.id === stale!.id)
    if (again !== undefined) expect(again.startedAt).toBe(stale!.startedAt)
  }, 300_000)

  it('a link that fails one way (the node hears the others, they do not hear it): its lease lapses before the majority starts another copy', async () => {
    const host = await runningOn('n1')
    const others = NODES.filter(n => n !== host)
    const other = others[0] as string
    await write(other, 'before-one-way', 300)
    await dcOk(other, ['snapshot', 'create', 'notes'])
    const old = (await app(other, 'notes'))!
    const before = (await copies([host])).find(c => c.running)!
    const pinned = startLabWriters(lab.name, host, pinnedTo(old.url as string, (await lab.lab.node(host)).ip), ['oneway'], { timeoutMs: 2000 })
    await waitFor(async () => { pinned.assertRunning(); return pinned.ackCount() > 0 ? true : undefined }, 30_000, 'the pinned writer to get an acknowledgement')

    const cutAt = Date.now()
    await lab.cmd('partition', '--one-way', host, others.join(','))
    try {
      const { value: moved } = await waitFor(async () => {
        const v = await app(other, 'notes')
        return v?.state === 'running' && v.node !== null && v.node !== host ? v.node : undefined
      }, 120_000, 'notes to run on the majority side', 500)
      await pinned.stop().catch(() => [])
      const stale = (await copies([host])).find(c => c.id === before.id)
      const fresh = (await copies([moved])).find(c => c.running)!
      expect(stale, `notes' old container on ${host}`).toBeDefined()
      expect(stale!.running, 'the cut-off copy still runs').toBe(false)
      const margin = fresh.startedAt - (stale!.finishedAt as number)
      const stoppedAfter = (stale!.finishedAt as number) - cutAt
      process.stderr.write(`one-way cut: the copy on ${host} stopped ${stoppedAfter} ms after the cut; the copy on ${moved} started ${margin} ms after that\n`)
      expect(margin).toBeGreaterThan(0)
      // The lease ends 3.5 s after the last beat the others got, the watchdog kills within 0.2 s: the copy
      // stops before the others even declare the node dead (4 s). Without the echo rule it ran until the
      // node's own TCP gave up hearing them: 7.0 s, 0.6 s before the new copy started.
      expect(stoppedAfter).toBeLessThan(5000)
      const lastOldAck = pinned.lastAckAt()
      expect(lastOldAck).not.toBeNull()
      expect(lastOldAck!).toBeLessThan(fresh.startedAt)
    } finally {
      await lab.cmd('heal')
    }
    await waitFor(async () => (await copies()).filter(c => c.running).length === 1 ? true : undefined, 90_000, 'one running copy after the heal', 500)
  }, 300_000)

  it('the whole node dies and returns after the failover: its dockerd does not start the stale copy', async () => {
    const host = await runningOn('n1')
    const other = NODES.find(n => n !== host) as string
    await write(other, 'before-node-kill', 500)
    await dcOk(other, ['snapshot', 'create', 'notes'])
    const before = (await copies([host])).find(c => c.running)!
    const killedAt = Date.now()
    await lab.cmd('kill', host)
    const { value: moved } = await waitFor(async () => {
      const v = await app(other, 'notes')
      return v?.state === 'running' && v.node !== null && v.node !== host ? v.node : undefined
    }, 120_000, 'notes to run on a survivor', 500)
    const fresh = (await copies([moved])).find(c => c.running)!
    expect(fresh.startedAt).toBeGreaterThan(killedAt)

    await lab.cmd('start', host)
    // Watch the returning node until its stale copy is retired: dockerd never starts it.
    const until = Date.now() + 20_000
    while (Date.now() < until) {
      const stale = (await copies([host])).find(c => c.id === before.id)
      if (stale === undefined) break // retired: kept as a snapshot, its container gone
      expect(stale.running, 'the stale copy is never started again').toBe(false)
      expect(stale.startedAt).toBe(before.startedAt)
      await new Promise(resolve => setTimeout(resolve, 250))
    }
    await waitFor(async () => (await copies()).filter(c => c.running).length === 1 ? true : undefined, 60_000, 'one running copy', 500)
  }, 300_000)

  it('only dockerd restarts: nothing starts elsewhere meanwhile, and notes comes back where its data is, with every record', async () => {
    const host = await runningOn('n1')
    const other = NODES.find(n => n !== host) as string
    await write(other, 'before-dockerd-restart', 500)
    const elsewhereBefore = (await copies(NODES.filter(n => n !== host))).map(c => `${c.node}/${c.id}/${c.startedAt}`)
    await lab.lab.restartDockerd(host, { downMs: 8000 })
    await waitFor(async () => {
      const v = await app(other, 'notes')
      return v?.state === 'running' && v.node === host ? true : undefined
    }, 120_000, `notes to run again on ${host}`, 500)
    // No copy started on another node while the engine was away (well past the 6 s a failover waits).
    const elsewhereAfter = (await copies(NODES.filter(n => n !== host))).filter(c => c.running || !elsewhereBefore.includes(`${c.node}/${c.id}/${c.startedAt}`))
    expect(elsewhereAfter).toEqual([])
    const text = await readNotesInLab(lab.name, other, { app: 'notes' })
    expect(verifyNotes(text, acked).missing).toEqual([])
  }, 300_000)
})
