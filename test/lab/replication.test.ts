/**
 * The replicated desired state on real agents: who may change it, and that
 * what the cluster acknowledged survives the deaths of the nodes that hold
 * it. Changes are drains and undrains of a node (the cheapest change there
 * is: no containers move in a lab without apps); the state each node holds
 * is compared by the digest every agent reports in /v1/metrics.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { LabHandle, waitFor } from './harness.ts'
import { ApiCallError, apiRequest } from '../../agent/cli/client.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { COMPACT_AFTER } from '../../agent/cluster/desired-store.ts'
import type { MetricsResponse } from '../../proto/api.ts'

const lab = new LabHandle('trepl')
const NODES = ['n1', 'n2', 'n3']
const NODE_BIN = join(PROJECT_ROOT, 'node_modules', '.bin', 'node')
const ip = (node: string): string => `10.213.0.${10 + Number(node.slice(1))}`

async function leader (among = NODES): Promise<{ name: string, id: string, term: number }> {
  const { value } = await waitFor(async () => {
    const views = await Promise.all(among.map(async n => await lab.status(n)))
    const id = views[0]?.leader
    if (id == null || !views.every(v => v.leader === id)) return undefined
    const name = views[0]?.nodes.find(n => n.id === id)?.name
    if (name === undefined || !among.includes(name)) return undefined
    return { name, id, term: (await lab.metrics(name)).term }
  }, 20_000, `one leader among ${among.join(', ')}`)
  return value
}

/** Drains or undrains `nodeId` through `via`'s API; returns the committed revision. */
async function drain (via: string, nodeId: string, drained: boolean, timeoutMs = 20_000): Promise<number> {
  const r = await apiRequest<{ revision: number }>('POST', `/v1/nodes/${nodeId}/drain`, { drained }, { socketPath: lab.lab.agentSocket(via), describe: via }, timeoutMs)
  return r.revision
}

async function metrics (nodes = NODES): Promise<MetricsResponse[]> {
  return await Promise.all(nodes.map(async n => await lab.metrics(n)))
}

/** Waits until every node holds the same committed state, and returns it. */
async function converged (nodes = NODES, atLeast = 0): Promise<MetricsResponse['state']> {
  const { value } = await waitFor(async () => {
    const ms = await metrics(nodes)
    const first = ms[0]?.state
    return first !== undefined && first.revision >= atLeast && ms.every(m => m.state.digest === first.digest && m.state.revision === first.revision) ? first : undefined
  }, 30_000, `${nodes.join(', ')} to hold the same committed state`, 200)
  return value
}

describe('the replicated desired state in the lab', () => {
  beforeAll(async () => {
    await lab.up(3)
    await leader()
  })

  // The rogue peer's tests come last: a peer holding the key that publishes a
  // status is a member (and a voter) from then on, as a node that joins is.

  afterAll(async () => {
    await lab.down()
  })

  it('a follower away during many changes catches up (from a snapshot once the log is compacted)', async () => {
    const l = await leader()
    const away = NODES.find(n => n !== l.name) as string
    const awayId = (await lab.status(away)).self
    await lab.cmd('kill', away)
    const present = NODES.filter(n => n !== away)
    let revision = 0
    // More changes than the log keeps: the returning node needs the leader's snapshot.
    for (let i = 0; i < COMPACT_AFTER + 6; i++) revision = await drain(l.name, awayId, i % 2 === 0)
    const state = await converged(present, revision)
    expect(state.revision).toBe(revision)
    await lab.cmd('start', away)
    const caught = await converged(NODES, revision)
    expect(caught.digest).toBe(state.digest)
    const m = await lab.metrics(l.name)
    expect(m.replication?.snapshotsSent).toBeGreaterThanOrEqual(1)
    // Undrain it again: the last change was a drain.
    await drain(l.name, awayId, false)
  })

  it('the leader killed between a log append and its commit: every node ends with the same state, nothing acknowledged lost', async () => {
    const first = await leader()
    const followers = NODES.filter(n => n !== first.name)
    const ids = Object.fromEntries(await Promise.all(NODES.map(async n => [n, (await lab.status(n)).self] as const)))
    // Acknowledged before the fault.
    const acked = await drain(first.name, ids[followers[0] as string] as string, true)
    await converged(NODES, acked)

    // Freeze both followers: the leader can append but never commit.
    const pids = await Promise.all(followers.map(async n => (await lab.lab.node(n)).agentPid as number))
    for (const pid of pids) process.kill(pid, 'SIGSTOP')
    let unacked: unknown
    try {
      await drain(first.name, ids[followers[1] as string] as string, true, 30_000)
    } catch (err) {
      unacked = err
    }
    const m = await lab.metrics(first.name)
    expect(m.state.lastIndex, 'the change is in the leader\'s log').toBeGreaterThan(m.state.commitIndex)
    await lab.cmd('kill', first.name)
    for (const pid of pids) process.kill(pid, 'SIGCONT')
    expect(unacked, 'a change that was never committed is not acknowledged').toBeInstanceOf(ApiCallError)
    expect((unacked as ApiCallError).code).toMatch(/unavailable|no_leader/)

    // The survivors elect a leader and go on; a change there is acknowledged too.
    const second = await leader(followers)
    expect(second.term).toBeGreaterThan(first.term)
    const acked2 = await drain(second.name, ids[first.name] as string, true)

    // The old leader comes back: its uncommitted tail gives way to the committed log.
    await lab.cmd('start', first.name)
    const final = await converged(NODES, acked2)
    expect(final.revision).toBeGreaterThanOrEqual(acked2)
    // Both acknowledged drains are in the committed state every node holds.
    // Read through each node's status, whose node list fills from gossip: the returning node lists its peers a beat after it starts.
    for (const n of NODES) {
      const want = [followers[0] as string, first.name]
      const { value: drained } = await waitFor(async () => {
        const d = (await lab.status(n)).nodes.filter(x => x.drained).map(x => x.name)
        return want.every(w => d.includes(w)) ? d : undefined
      }, 15_000, `${n} to list ${want.join(' and ')} as drained`, 250)
      expect(drained, `drained nodes as ${n} sees them`).toEqual(expect.arrayContaining(want))
    }
    const kept = (await lab.status(first.name)).nodes.find(x => x.name === followers[1])?.drained === true
    console.log(`leader ${first.name} killed with an uncommitted entry; ${second.name} leads term ${second.term}; the unacknowledged change was ${kept ? 'kept (a follower had received it)' : 'dropped'}`)
  })

  it('a peer holding the cluster key can neither command a node nor rewrite the desired state', async () => {
    const { term } = await leader()
    await converged()
    const before = await metrics()
    const targets = await Promise.all(NODES.map(async n => `/ip4/${ip(n)}/tcp/7370/p2p/${(await lab.status(n)).self}`))
    for (const t of [term, term + 1]) {
      const r = await lab.exec('n3', [NODE_BIN, join(PROJECT_ROOT, 'test', 'lab', 'rogue-leader.ts'), '--announce', join(lab.lab.stateDir, 'cluster.key'), String(t), 'hello', ...targets])
      expect(r.code, r.stderr).toBe(0)
      const report = JSON.parse(r.stdout) as { results: Record<string, { op: { ok: boolean, code?: string }, append: { ok: boolean, value?: { ok: boolean, reason: string } }, outOfOrder: { ok: boolean, code?: string, message?: string } }>, announcedTo: number }
      expect(Object.keys(report.results)).toHaveLength(3)
      for (const [peer, res] of Object.entries(report.results)) {
        expect(res.op, `operation at term ${t} on ${peer}`).toMatchObject({ ok: false, code: 'not_leader' })
        expect(res.append.ok).toBe(true) // the call went through...
        expect(res.append.value, `append at term ${t} on ${peer}`).toMatchObject({ ok: false }) // ...and was refused
        expect(res.append.value?.reason).toMatch(/leader|term/)
        expect(res.outOfOrder, `out-of-order append on ${peer}`).toMatchObject({ ok: false, code: 'bad_request' })
        expect(res.outOfOrder.message).toMatch(/without gaps/)
      }
      expect(report.announcedTo).toBeGreaterThanOrEqual(1)
    }
    // Give an agent that would have pulled the announced state the time to do so.
    await new Promise(resolve => setTimeout(resolve, 1500))
    const after = await metrics()
    for (const [i, m] of after.entries()) {
      const b = before[i] as MetricsResponse
      expect(m.term, `${NODES[i]}'s term`).toBe(b.term)
      expect(m.state.digest, `${NODES[i]}'s state`).toBe(b.state.digest)
      expect(m.state.revision).toBe(b.state.revision)
      expect(m.ops.opsRefused - b.ops.opsRefused).toBe(2)
      expect((m.replication?.refused.not_leader ?? 0) - (b.replication?.refused.not_leader ?? 0)).toBe(2)
      expect((m.replication?.refused.bad_request ?? 0) - (b.replication?.refused.bad_request ?? 0)).toBe(2)
    }
  })
})
