/**
 * Apps and the elected scheduler on real engines: install on a one-node
 * cluster, spread onto joining nodes (which must fetch the image from a peer),
 * elect a new leader when the leader dies and refuse the old term, bring a dead
 * node's apps back on survivors, and restart every agent without redeploying.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { mkdtemp, readFile, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { LabHandle, viaFrontDoor, waitFor, type Run } from './harness.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import type { AppView, MetricsResponse } from '../../proto/api.ts'

const lab = new LabHandle('tapps')
const NODE_BIN = join(PROJECT_ROOT, 'node_modules', '.bin', 'node')
const HELLO = join(PROJECT_ROOT, 'apps', 'examples', 'hello')
const APPS = ['hello1', 'hello2', 'hello3', 'hello4', 'hello5', 'hello6']

async function apps (node: string): Promise<AppView[]> {
  const r = await lab.exec(node, ['dcloud', 'app', 'ls', '--json'])
  if (r.code !== 0) throw new Error(`app ls on ${node}: ${r.stderr}`)
  return JSON.parse(r.stdout) as AppView[]
}

function perNode (list: AppView[]): Record<string, number> {
  const count: Record<string, number> = {}
  for (const a of list) if (a.node !== null) count[a.node] = (count[a.node] ?? 0) + 1
  return count
}

/** An HTTP GET from inside a lab node, the way another machine on the LAN would ask. */
async function httpFrom (node: string, target: string[]): Promise<Run> {
  return await lab.exec(node, ['curl', '-sf', '--max-time', '3', ...target])
}

/** The cluster's root, written once: the domain does not change here. */
let caFile: string | undefined

/** Every app answers at its name through the front door of `from` (whichever node runs it). */
async function allAnswer (from: string, list: AppView[]): Promise<boolean> {
  caFile ??= await lab.caFile(from)
  const ca = caFile
  for (const a of list) {
    if (a.state !== 'running' || a.url === null) return false
    const r = await httpFrom(from, viaFrontDoor(a.url, '127.0.0.1', ca))
    if (r.code !== 0 || !r.stdout.includes('hello')) return false
  }
  return true
}

async function leaderOf (node: string): Promise<{ id: string, name: string, term: number }> {
  const s = await lab.status(node)
  const m: MetricsResponse = await lab.metrics(node)
  const leader = s.nodes.find(n => n.id === s.leader)
  if (s.leader === null || leader === undefined) throw new Error(`${node} knows no leader`)
  return { id: s.leader, name: leader.name, term: m.term }
}

describe('apps and the elected scheduler in the lab', () => {
  beforeAll(async () => {
    await lab.up(1)
  })

  afterAll(async () => {
    await lab.down()
  })

  it('a one-node cluster elects itself and installs six apps', async () => {
    await waitFor(async () => (await lab.status('n1')).leader !== null ? true : undefined, 15_000, 'n1 to lead')
    for (const name of APPS) {
      const r = await lab.exec('n1', ['dcloud', 'app', 'install', HELLO, '--name', name])
      expect(r.code, r.stderr).toBe(0)
      expect(r.stdout).toMatch(new RegExp(`${name} is running on n1: https://${name}\\.dcloud\\.home\\.arpa/`))
      expect(r.stderr).toMatch(/accepted/) // progress goes to stderr
    }
    const list = await apps('n1')
    expect(list.map(a => a.name).sort()).toEqual(APPS)
    expect(perNode(list)).toEqual({ n1: 6 })
    expect(await allAnswer('n1', list)).toBe(true)
  })

  it('says why an app for another architecture runs nowhere', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dcloud-arm-'))
    const text = (await readFile(join(HELLO, 'compose.yaml'), 'utf8')).replace(/architectures: \[\]/, 'architectures: [arm64]')
    await writeFile(join(dir, 'compose.yaml'), text)
    const r = await lab.exec('n1', ['dcloud', 'app', 'install', dir, '--name', 'armonly'])
    expect(r.code).toBe(69)
    expect(r.stderr).toMatch(/armonly cannot run/)
    expect(r.stderr).toMatch(/n1: arch amd64 not in \[arm64\]/)
    const why = await lab.exec('n1', ['dcloud', 'app', 'why', 'armonly'])
    expect(why.stdout).toMatch(/not placed/)
    expect((await lab.exec('n1', ['dcloud', 'app', 'rm', 'armonly'])).code).toBe(0)
  })

  it('spreads the apps onto two joining nodes, which fetch the image from a peer', async () => {
    // The new nodes start without the test image (`--no-images`) and no registry is reachable.
    for (const n of ['n2', 'n3']) expect((await lab.cmd('add', '--no-images')).trim()).toBe(n)
    const { value: spread, ms } = await waitFor(async () => {
      const list = await apps('n1')
      const counts = Object.values(perNode(list))
      const balanced = counts.length === 3 && Math.max(...counts) - Math.min(...counts) <= 1
      return balanced && await allAnswer('n2', list) ? list : undefined
    }, 120_000, 'the six apps to spread over three nodes and answer', 500)
    process.stderr.write(`apps spread over 3 nodes in ${(ms / 1000).toFixed(1)} s: ${JSON.stringify(perNode(spread))}\n`)
    // n2 can only have it from n1; n3 from n1 or n2 (which got it from n1): peer to peer either way.
    const ids = Object.fromEntries((await lab.status('n1')).nodes.map(x => [x.name, x.id]))
    for (const [n, sources] of [['n2', [ids.n1]], ['n3', [ids.n1, ids.n2]]] as const) {
      const has = await lab.exec(n, ['docker', 'image', 'inspect', 'dcloud/busybox:lab'])
      expect(has.code, `${n} has the image now`).toBe(0)
      const log = await readFile(join(lab.lab.nodeDir(n), 'agent.log'), 'utf8')
      const from = /image fetched from a peer ref=dcloud\/busybox:lab from=(\S+)/.exec(log)?.[1]
      expect(sources, `${n} fetched the image from a peer`).toContain(from)
      expect(spread.some(a => a.node === n)).toBe(true)
    }
  })

  it('elects a new leader when the leader dies, refuses the old term, and brings its apps back', async () => {
    const before = await leaderOf('n1')
    const survivors = ['n1', 'n2', 'n3'].filter(n => n !== before.name)
    const victimApps = (await apps(survivors[0] as string)).filter(a => a.node === before.name).map(a => a.name)
    const killedAt = performance.now()
    await lab.cmd('kill', before.name)
    const { value: after } = await waitFor(async () => {
      const l = await leaderOf(survivors[0] as string).catch(() => undefined)
      return l !== undefined && l.id !== before.id && l.term > before.term ? l : undefined
    }, 30_000, 'a new leader', 100)
    process.stderr.write(`new leader ${after.name} (term ${after.term}) ${((performance.now() - killedAt) / 1000).toFixed(2)} s after killing ${before.name}\n`)
    expect(survivors).toContain(after.name)

    // A deposed leader's operation, stamped with the old term, is refused.
    const target = survivors.find(n => n !== after.name) as string
    const targetId = (await lab.status(target)).self
    const ip = `10.213.0.${10 + Number(target.slice(1))}`
    const stale = await lab.exec(target, [NODE_BIN, join(PROJECT_ROOT, 'test', 'lab', 'rogue-leader.ts'), join(lab.lab.stateDir, 'cluster.key'), String(before.term), APPS[0] as string, `/ip4/${ip}/tcp/7370/p2p/${targetId}`])
    expect(stale.code, stale.stderr).toBe(0)
    expect(JSON.parse(stale.stdout).results[targetId]).toMatchObject({ op: { ok: false, code: 'stale_term' }, append: { ok: true, value: { ok: false } } })
    expect((await lab.metrics(target)).ops.opsRefused).toBeGreaterThanOrEqual(1)

    // The dead leader's apps answer again on the survivors.
    await waitFor(async () => {
      const list = await apps(after.name)
      const moved = list.filter(a => victimApps.includes(a.name))
      return moved.every(a => survivors.includes(a.node ?? '')) && await allAnswer(after.name, list) ? true : undefined
    }, 60_000, 'the dead leader\'s apps to answer on survivors', 500)
    await lab.cmd('start', before.name)
    await waitFor(async () => (await lab.view(after.name))[before.name] === 'alive' ? true : undefined, 30_000, `${before.name} back`)
  })

  it('brings both apps of a killed node back on the survivors', async () => {
    const { value: leader } = await waitFor(async () => await leaderOf('n1').catch(() => undefined), 30_000, 'n1 to know the leader')
    // Wait for the cluster to settle (the restarted node may receive apps again).
    const { value: list } = await waitFor(async () => {
      const l = await apps(leader.name)
      const c = perNode(l)
      const victim = Object.entries(c).find(([n, k]) => n !== leader.name && k >= 2)
      return victim !== undefined && l.every(a => a.state === 'running') ? l : undefined
    }, 90_000, 'a non-leader node running two apps', 500)
    const victim = Object.entries(perNode(list)).find(([n, k]) => n !== leader.name && k >= 2)?.[0] as string
    const victimApps = list.filter(a => a.node === victim).map(a => a.name)
    expect(victimApps.length).toBeGreaterThanOrEqual(2)
    const killedAt = performance.now()
    await lab.cmd('kill', victim)
    await waitFor(async () => {
      const l = await apps(leader.name)
      const moved = l.filter(a => victimApps.includes(a.name))
      return moved.every(a => a.node !== victim && a.state === 'running') && await allAnswer(leader.name, moved) ? true : undefined
    }, 60_000, `${victim}'s apps to answer on survivors`, 200)
    process.stderr.write(`${victim}'s ${victimApps.length} apps answered on survivors ${((performance.now() - killedAt) / 1000).toFixed(2)} s after the kill\n`)
    await lab.cmd('start', victim)
  })

  it('restarting every agent redeploys nothing', async () => {
    const nodes = ['n1', 'n2', 'n3']
    // Let the cluster settle first: balanced, all running, and no placement changing for 5 s.
    let last = ''
    let since = performance.now()
    await waitFor(async () => {
      const list = await apps('n1')
      const counts = Object.values(perNode(list))
      const key = list.map(a => `${a.name}@${a.node ?? '-'}:${a.state}`).sort().join(' ')
      if (key !== last) { last = key; since = performance.now() }
      const settled = list.length === APPS.length && list.every(a => a.state === 'running') && counts.length === 3 && Math.max(...counts) - Math.min(...counts) <= 1
      return settled && performance.now() - since > 5000 ? true : undefined
    }, 90_000, 'a balanced, settled cluster', 500)
    const containers = async (): Promise<string> => {
      const out: string[] = []
      for (const n of nodes) {
        const r = await lab.exec(n, ['docker', 'ps', '--filter', 'label=dcloud.app', '--format', '{{.ID}} {{.Names}} {{.CreatedAt}}'])
        out.push(...r.stdout.trim().split('\n').filter(l => l !== '').map(l => `${n} ${l}`))
      }
      return out.sort().join('\n')
    }
    const before = await containers()
    for (const n of nodes) await lab.cmd('start', n, '--agent-only')
    await waitFor(async () => {
      const views = await Promise.all(nodes.map(async n => await lab.view(n)))
      return views.every(v => nodes.every(n => v[n] === 'alive')) && (await lab.status('n1')).leader !== null ? true : undefined
    }, 30_000, 'cluster back with a leader')
    await new Promise(resolve => setTimeout(resolve, 5000)) // several reconcile rounds
    expect(await containers()).toBe(before)
    const list = await apps('n2')
    expect(list.map(a => a.name).sort()).toEqual(APPS)
    expect(list.every(a => a.state === 'running')).toBe(true)
  })
})
