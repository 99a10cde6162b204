/**
 * Moves interrupted by a death, on real engines: the leader, the target or
 * the source is killed while notes moves between the two other nodes, under
 * a client's writes. The move is a journal in the replicated state
 * (scheduler/procedure.ts): the next leader resumes it, or it recovers. Each
 * case ends with exactly one copy running (judged by Docker's own start and
 * finish times on every node) and every acknowledged record in that copy, or
 * kept in a snapshot of the copy that was cut off.
 *
 * The app carries 200 MB of data besides its log, so the copy and the sync
 * last seconds: the kills land inside the move, and the test checks they did.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { LabHandle, waitFor } from './harness.ts'
import { apiGet } from '../../agent/cli/client.ts'
import type { AppView } from '../../proto/api.ts'
import { readNotesInLab, startLabWriters, verifyNotes, type NotesRecord } from '../../scripts/lab/notes-client.ts'
import { NOTES, StatefulKit, type Copy } from './stateful-kit.ts'

const lab = new LabHandle('tintr')
const kit = new StatefulKit(lab)
const { dcOk, snapshots, notesFromRestic, copies } = kit
const NODES = ['n1', 'n2', 'n3']

async function appVia (node: string, name: string): Promise<AppView | undefined> {
  return (await apiGet<AppView[]>('/v1/apps', { socketPath: lab.lab.agentSocket(node), describe: node }, 3000)).find(a => a.name === name)
}

async function leaderName (among = NODES): Promise<string> {
  const { value } = await waitFor(async () => {
    const s = await lab.status(among[0] as string)
    const l = s.nodes.find(n => n.id === s.leader)?.name
    return l !== undefined && among.includes(l) ? l : undefined
  }, 60_000, 'a leader')
  return value
}

/** No two copies ran at once: every pair of containers on two nodes ran at disjoint times, by their Docker. */
function overlapsOf (all: Copy[]): string[] {
  const out: string[] = []
  const now = Date.now()
  for (const a of all) {
    for (const b of all) {
      if (a.node >= b.node || a.startedAt <= 0 || b.startedAt <= 0) continue
      const aEnd = a.finishedAt ?? (a.running ? now : a.startedAt)
      const bEnd = b.finishedAt ?? (b.running ? now : b.startedAt)
      if (a.startedAt < bEnd && b.startedAt < aEnd) out.push(`${a.node} ${a.id} and ${b.node} ${b.id}`)
    }
  }
  return out
}

/**
 * Moves the app `name` from `from` to `to` with a client writing from
 * `client`, kills `victim` once the move's journal has `atStep` steps done,
 * and returns what the client had acknowledged and the step reached.
 */
async function moveAndKill (name: string, from: string, to: string, victim: string, atStep: number, client: string): Promise<{ acked: NotesRecord[], step: number }> {
  const w = startLabWriters(lab.name, client, { app: name }, [`kill-${victim}`])
  await waitFor(async () => { w.assertRunning(); return w.ackCount() > 3 ? true : undefined }, 30_000, 'first acknowledgements')
  const watcher = NODES.find(n => n !== victim) as string
  await dcOk(watcher, ['app', 'move', name, to, '--no-wait'])
  const { value: step } = await waitFor(async () => {
    const o = (await appVia(watcher, name))?.operation
    return o !== undefined && o.done >= atStep ? o.done : undefined
  }, 60_000, `the move to reach step ${atStep}`, 50)
  await lab.cmd('kill', victim)
  process.stderr.write(`${name}: moving from ${from} to ${to}, killed ${victim} with ${step} steps of the move done\n`)
  // Writes go on through the interruption, to whichever copy answers.
  await new Promise(resolve => setTimeout(resolve, 3000))
  await waitFor(async () => {
    const a = await appVia(watcher, name)
    return a?.operation === undefined && a?.state === 'running' ? true : undefined
  }, 120_000, 'the move to end and notes to run', 500)
  const before = w.ackCount()
  await waitFor(async () => w.ackCount() > before + 3 ? true : undefined, 60_000, 'writes after the interruption')
  await w.stop()
  return { acked: w.acknowledged(), step }
}

describe('moves interrupted by a death', () => {
  beforeAll(async () => {
    await lab.up(3)
    await leaderName()
  }, 240_000)

  afterAll(async () => {
    await lab.down()
  }, 120_000)

  /**
   * A notes named `name` with 200 MB, on a node that is not the leader, every
   * node alive; returns the two nodes of the move: `from` (where it runs) and
   * `to`, and the leader, which is neither. A loaded machine's elections can
   * move the lead meanwhile: it is read again once the app runs, and the app
   * installed again elsewhere (under a new name) if the lead went to it.
   */
  async function prepare (name: string): Promise<{ name: string, from: string, to: string, leader: string }> {
    for (let attempt = 1; ; attempt++) {
      await waitFor(async () => {
        const views = await Promise.all(NODES.map(async n => await lab.view(n)))
        return views.every(v => Object.values(v).filter(s => s === 'alive').length === NODES.length) ? true : undefined
      }, 120_000, 'every node alive to every other', 500)
      const app = attempt === 1 ? name : `${name}${attempt}`
      const first = await leaderName()
      const home = NODES.find(n => n !== first) as string
      await installOn(app, home)
      const leader = await leaderName()
      if (leader !== home) return { name: app, from: home, to: NODES.find(n => n !== home && n !== leader) as string, leader }
      if (attempt === 3) throw new Error(`the lead went to where ${app} runs three times; this case needs them apart`)
      process.stderr.write(`${app}: the lead moved to ${home}, where it runs; installing it again elsewhere\n`)
    }
  }

  async function installOn (name: string, node: string): Promise<void> {
    await dcOk(node, ['app', 'install', NOTES, '--name', name, '--node', node])
    await waitFor(async () => (await appVia(node, name))?.state === 'running' ? true : undefined, 60_000, `${name} running`, 500)
    // 200 MB besides the log: a copy and a sync that take seconds.
    const id = (await lab.exec(node, ['docker', 'ps', '-q', '--filter', `label=dcloud.app=${name}`])).stdout.trim().split('\n')[0] as string
    const dd = await lab.exec(node, ['docker', 'exec', id, 'dd', 'if=/dev/urandom', 'of=/data/ballast', 'bs=1M', 'count=200'])
    expect(dd.code, dd.stderr).toBe(0)
    await dcOk(node, ['snapshot', 'create', name])
  }

  it('the leader killed mid-move: the next leader resumes the journal; one copy, nothing lost', async () => {
    const { name, from, to, leader } = await prepare('notes-l')
    const { acked, step } = await moveAndKill(name, from, to, leader, 1, to)
    expect(step, 'killed inside the move').toBeLessThan(8)
    const a = await appVia(from, name)
    expect(a?.node).toBe(to)
    expect(a?.relocation?.kind).toBe('move')
    const all = await copies(name, [from, to])
    expect(all.filter(c => c.running).map(c => c.node)).toEqual([to])
    expect(overlapsOf(all)).toEqual([])
    const v = verifyNotes(await readNotesInLab(lab.name, to, { app: name }), acked)
    expect(v.missing).toEqual([])
    expect(v.corrupt).toEqual([])
    await lab.cmd('start', leader)
  }, 600_000)

  it('the target killed mid-move: the app stays (or starts again) on the source; back, the target takes it; one copy, nothing lost', async () => {
    const { name, from, to, leader } = await prepare('notes-t')
    const { acked, step } = await moveAndKill(name, from, to, to, 1, leader)
    expect(step).toBeLessThan(8)
    expect((await appVia(leader, name))?.node).toBe(from)
    const during = await copies(name, [from])
    expect(during.filter(c => c.running).map(c => c.node)).toEqual([from])
    expect(verifyNotes(await readNotesInLab(lab.name, leader, { app: name }), acked).missing).toEqual([])
    // Back, the target is where the user pinned the app: the move is planned again and completes.
    await lab.cmd('start', to)
    await waitFor(async () => {
      const a = await appVia(leader, name)
      return a?.node === to && a.state === 'running' && a.operation === undefined ? true : undefined
    }, 180_000, `${name} moved to ${to} once it is back`, 1000)
    const after = await copies(name, NODES)
    expect(after.filter(c => c.running).map(c => c.node)).toEqual([to])
    expect(overlapsOf(after)).toEqual([])
    expect(verifyNotes(await readNotesInLab(lab.name, leader, { app: name }), acked).missing).toEqual([])
  }, 600_000)

  it('the source killed mid-move: the app comes back from a snapshot; what only the source had is kept in a snapshot when it returns', async () => {
    const { name, from, to, leader } = await prepare('notes-s')
    const { acked, step } = await moveAndKill(name, from, to, from, 1, leader)
    expect(step).toBeLessThan(8)
    const live = await readNotesInLab(lab.name, leader, { app: name })
    const notLive = verifyNotes(live, acked).missing
    await lab.cmd('start', from)
    // Back, the source's copy is an older generation: retired, its data kept as a divergent snapshot.
    const { value: kept } = await waitFor(async () => {
      const s = (await snapshots(leader, name)).filter(x => x.purpose === 'divergent')
      return s.length > 0 ? s : undefined
    }, 120_000, 'the cut-off copy kept as a snapshot', 1000)
    const keptText = await notesFromRestic(kept[0]?.holders[0] as string, name, kept[0]?.id as string)
    expect(verifyNotes(keptText, notLive).missing, 'acknowledged records neither live nor kept').toEqual([])
    process.stderr.write(`source killed at step ${step}: ${acked.length} acknowledged, ${notLive.length} only on the source, kept in ${kept[0]?.id ?? '?'}\n`)
    const all = await copies(name, NODES)
    expect(all.filter(c => c.running)).toHaveLength(1)
    expect(overlapsOf(all)).toEqual([])
  }, 600_000)
})
