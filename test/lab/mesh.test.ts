/**
 * The agent mesh on real engines: three namespaced nodes, each with its own
 * dockerd and agent, finding each other by mDNS with nothing but the shared key.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile, spawn } from 'node:child_process'
import { readFile, writeFile, mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DCLOUD, LabHandle, dcloud, waitFor } from './harness.ts'
import { leftovers, loopDevicesUnder } from '../../scripts/lab/lab.ts'
import { newClusterKey } from '../../agent/mesh/cluster-key.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { DEFAULT_HEARTBEAT_MS, DEFAULT_LIVENESS } from '../../scheduler/liveness.ts'

const lab = new LabHandle('tmesh')
const NODES = ['n1', 'n2', 'n3']
const allAlive = (view: Record<string, string>): boolean => NODES.every(n => view[n] === 'alive')

describe('agent mesh in the lab', () => {
  beforeAll(async () => {
    // The API listens beyond loopback here so the token check can be seen from another node.
    await lab.up(3, ['--api', '0.0.0.0:7371'])
  })

  afterAll(async () => {
    await lab.down()
  })

  it('three nodes with nothing but the shared key list each other as alive within seconds', async () => {
    for (const node of NODES) {
      await waitFor(async () => allAlive(await lab.view(node)) ? true : undefined, 10_000, `${node} to see all three alive`)
      const m = await lab.metrics(node)
      expect(m.listeningAt).not.toBeNull()
      const heard = Object.values(m.firstHeardAt)
      expect(heard).toHaveLength(2)
      // Full membership, measured by the agent's own clock from its first listening address.
      expect(Math.max(...heard) - (m.listeningAt as number)).toBeLessThan(5000)
    }
  })

  it('dcloud status and --json work inside lab exec', async () => {
    const table = await lab.exec('n2', ['dcloud', 'status'])
    expect(table.code).toBe(0)
    expect(table.stdout).toMatch(/NAME\s+ID\s+STATE\s+CPU/)
    expect(table.stdout.split('\n').filter(l => /\bn[123]\b.*\balive\b/.test(l))).toHaveLength(3)
    expect(table.stdout).toMatch(/^\* n2 /m)

    const json = await lab.exec('n2', ['dcloud', 'status', '--json'])
    expect(json.code).toBe(0)
    const status = JSON.parse(json.stdout)
    // Three nodes elect one scheduler; every node names the same one.
    const { value: leader } = await waitFor(async () => (await lab.status('n1')).leader ?? undefined, 10_000, 'a leader')
    expect(status.nodes.map((n: { id: string }) => n.id)).toContain(leader)
    for (const n of NODES) expect((await lab.status(n)).leader).toBe(leader)
    expect(status.self).toBe(status.nodes.find((n: { name: string }) => n.name === 'n2').id)
    for (const node of status.nodes) {
      expect(Object.keys(node)).toEqual(expect.arrayContaining(['id', 'name', 'state', 'cpu', 'memTotal', 'memFree', 'diskFree', 'arch', 'apps']))
      expect(node.memTotal).toBeGreaterThan(0)
      expect(node.diskFree).toBeGreaterThan(0)
      expect(node.arch).toBe('amd64')
    }
  })

  it('gossips the managed containers a node runs', async () => {
    const run = await lab.exec('n2', ['docker', 'run', '-d', '--label', 'dcloud.app=demo', 'dcloud/busybox:lab', 'sleep', '600'])
    expect(run.code, run.stderr).toBe(0)
    const { ms } = await waitFor(async () => {
      const n2 = (await lab.status('n1')).nodes.find(n => n.name === 'n2')
      return n2?.apps.includes('demo') === true ? true : undefined
    }, 15_000, 'n1 to see app demo on n2')
    expect(ms).toBeLessThan(15_000)
    const rm = await lab.exec('n2', ['docker', 'rm', '-f', run.stdout.trim()])
    expect(rm.code).toBe(0)
  })

  it('asks for the token on every TCP request: from another machine, and on loopback too', async () => {
    const n1 = await lab.status('n1')
    // On the node itself, over loopback, without a credential: refused like any other address.
    const local = await lab.exec('n1', ['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', 'http://127.0.0.1:7371/v1/status'])
    expect(local.stdout).toBe('401')
    // `lab exec` points DCLOUD_API at the node's own agent; `env` points it at n1's, over the lab network.
    const remote = (token?: string): string[] => ['env', 'DCLOUD_API=http://10.213.0.11:7371', ...(token !== undefined ? [`DCLOUD_TOKEN=${token}`] : []), 'dcloud', 'status', '--json']
    const anonymous = await lab.exec('n2', remote())
    expect(anonymous.code).toBe(77)
    expect(anonymous.stderr).toMatch(/a credential is required/)
    const wrong = await lab.exec('n2', remote('nope'))
    expect(wrong.code).toBe(77)
    expect(wrong.stderr).toMatch(/credential is not valid/)
    const token = (await readFile(join(lab.lab.agentDataDir('n1'), 'api.token'), 'utf8')).trim()
    const ok = await lab.exec('n2', remote(token))
    expect(ok.code, ok.stderr).toBe(0)
    expect(JSON.parse(ok.stdout).self).toBe(n1.self)
    const refused = (await lab.metrics('n1')).api.refused
    expect(refused.unauthorized).toBeGreaterThanOrEqual(2)
    expect(refused.forbidden).toBe(1)
  })

  it('keeps a node with another key out, and shows its connection attempts failing', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dcloud-otherkey-'))
    const otherKey = join(dir, 'other.key')
    await writeFile(otherKey, newClusterKey(), { mode: 0o600 })
    const added = (await lab.cmd('add', '--key-file', otherKey)).trim()
    expect(added).toBe('n4')
    const stranger = (await lab.status('n4')).self
    // mDNS finds the others; every dial fails in the private-network handshake.
    const { value: failures } = await waitFor(async () => {
      const m = await lab.metrics('n4')
      return m.dialFailures >= 2 ? m : undefined
    }, 20_000, 'n4 to fail dialling the others')
    expect(failures.lastDialError).not.toBeNull()
    expect(failures.connections).toBe(0)
    for (const node of NODES) {
      const s = await lab.status(node)
      expect(s.nodes.map(n => n.id)).not.toContain(stranger)
      expect(s.nodes).toHaveLength(3)
    }
    expect((await lab.status('n4')).nodes.map(n => n.name)).toEqual(['n4'])
    await lab.cmd('kill', 'n4')
  })

  it('survives a peer that holds the key and publishes garbage, oversized, wrong-version and forged status', async () => {
    const before = await Promise.all(['n1', 'n2'].map(async n => await lab.metrics(n)))
    const victim = (await lab.status('n1')).self
    const peers = await Promise.all(['n1', 'n2'].map(async (n, i) => `/ip4/10.213.0.1${i + 1}/tcp/7370/p2p/${(await lab.status(n)).self}`))
    const rogue = await lab.exec('n3', [join(PROJECT_ROOT, 'node_modules', '.bin', 'node'), join(PROJECT_ROOT, 'test', 'lab', 'rogue-peer.ts'), lab.lab.stateDir + '/cluster.key', victim, ...peers])
    expect(rogue.code, rogue.stderr).toBe(0)
    const report = JSON.parse(rogue.stdout) as { sent: Record<string, number> }
    for (const kind of ['garbage', 'oversized', 'version', 'forged', 'malformed']) expect(report.sent[kind], kind).toBe(2)

    for (const [i, node] of ['n1', 'n2'].entries()) {
      const { value: after } = await waitFor(async () => {
        const m = await lab.metrics(node)
        return m.statusDropped.version > before[i]!.statusDropped.version ? m : undefined
      }, 10_000, `${node} to count the drops`)
      const d = (k: keyof typeof after.statusDropped): number => after.statusDropped[k] - before[i]!.statusDropped[k]
      expect(d('malformed')).toBe(2) // garbage bytes and a bad field
      expect(d('oversized')).toBe(1)
      expect(d('version')).toBe(1)
      expect(d('forged')).toBe(1)
      // The impostor did not replace the victim's entry, and the agent still runs and answers.
      const view = await lab.status(node)
      expect(view.nodes.some(n => n.name === 'impostor' || n.name === 'rogue')).toBe(false)
      expect(allAlive(Object.fromEntries(view.nodes.map(n => [n.name, n.state])))).toBe(true)
    }
  })

  it('marks a killed node dead within the documented window, and alive again with the same id after restart', async () => {
    const n3 = (await lab.status('n3')).self
    const disk = await lab.lab.disk('n3')
    expect(disk.mounted).toBe(true)
    const window = DEFAULT_LIVENESS.deadAfterIntervals * DEFAULT_HEARTBEAT_MS
    const killedAt = performance.now()
    await lab.cmd('kill', 'n3')
    // A dead machine keeps its disk: still mounted, on the same loop device.
    expect((await lab.lab.disk('n3')).device).toBe(disk.device)
    expect((await lab.lab.disk('n3')).mounted).toBe(true)
    for (const node of ['n1', 'n2']) {
      await waitFor(async () => (await lab.view(node)).n3 === 'dead' ? true : undefined, 15_000, `${node} to declare n3 dead`, 50)
    }
    const detectedMs = performance.now() - killedAt
    // The window counts from n3's last heartbeat, which is at most one interval before the kill.
    expect(detectedMs).toBeLessThan(window + 1000 + 500)
    expect(detectedMs).toBeGreaterThan(window - DEFAULT_HEARTBEAT_MS - 100)

    await lab.cmd('start', 'n3')
    for (const node of ['n1', 'n2']) {
      await waitFor(async () => (await lab.view(node)).n3 === 'alive' ? true : undefined, 15_000, `${node} to see n3 alive again`)
    }
    expect((await lab.status('n3')).self).toBe(n3)
    expect((await lab.status('n1')).nodes.find(n => n.name === 'n3')?.id).toBe(n3)
    expect((await lab.lab.disk('n3')).device).toBe(disk.device)
  })

  it('a partition cuts the groups apart, and healing rejoins them', async () => {
    await lab.cmd('partition', 'n1', 'n2,n3')
    await waitFor(async () => {
      const [v1, v2] = [await lab.view('n1'), await lab.view('n2')]
      return v1.n2 === 'dead' && v1.n3 === 'dead' && v2.n1 === 'dead' && v2.n3 === 'alive' ? true : undefined
    }, 15_000, 'both sides to see the partition')
    await lab.cmd('heal')
    const { ms } = await waitFor(async () => {
      const views = await Promise.all(NODES.map(async n => await lab.view(n)))
      return views.every(allAlive) ? true : undefined
    }, 20_000, 'all nodes alive after heal')
    expect(ms).toBeLessThan(20_000)
  })

  it('lab down leaves nothing running, mounted or attached, also after a killed `lab up`', async () => {
    const state = await lab.lab.state()
    const pids = state.nodes.flatMap(n => [n.agentPid, n.dockerdPid]).filter((p): p is number => p !== null)
    // Each node's Docker and agent data live on a disk of its own, each on its own loop device.
    const disks = await Promise.all(state.nodes.map(async n => await lab.lab.disk(n.name)))
    expect(disks.filter(d => d.mounted && d.device !== null)).toHaveLength(state.nodes.length)
    expect(new Set(disks.map(d => d.device)).size).toBe(state.nodes.length)
    expect(loopDevicesUnder(lab.lab.stateDir)).toHaveLength(state.nodes.length)
    await lab.down()
    expect(leftovers(lab.lab)).toEqual([])
    const nothingOf = async (): Promise<void> => {
      const losetup = await new Promise<string>((resolve) => { execFile('losetup', ['-a'], (_e, out) => { resolve(String(out)) }) })
      expect(losetup).not.toContain(lab.lab.stateDir)
      const mounts = await readFile('/proc/mounts', 'utf8')
      expect(mounts).not.toContain(lab.lab.stateDir)
      expect(mounts).not.toContain(lab.lab.runDir)
    }
    await nothingOf()
    const { isRunning } = await import('../../scripts/lab/lab.ts')
    expect(pids.filter(isRunning)).toEqual([])
    const ns = await new Promise<string>((resolve) => { execFile('ip', ['netns', 'list'], (_e, out) => { resolve(String(out)) }) })
    expect(ns).not.toMatch(/dcl-tmesh-/)
    const again = await dcloud(['lab', '--lab', 'tmesh', 'ls'])
    expect(again.code).toBe(69)

    // `lab up` killed once its disks are attached and mounted (our own child, by its pid): down clears it all.
    const up = spawn(DCLOUD, ['lab', '--lab', 'tmesh', 'up', '--nodes', '2'], { stdio: 'ignore' })
    const exited = new Promise(resolve => { up.on('close', resolve) })
    await waitFor(async () => loopDevicesUnder(lab.lab.stateDir).length === 2 && (await lab.lab.disk('n2')).mounted ? true : undefined, 60_000, 'the killed run\'s disks', 20)
    up.kill('SIGKILL')
    await exited
    expect(leftovers(lab.lab).length).toBeGreaterThan(0)
    await lab.down()
    expect(leftovers(lab.lab)).toEqual([])
    await nothingOf()
    // afterAll's down must find nothing to do and still succeed.
    await lab.up(1)
  })
})
