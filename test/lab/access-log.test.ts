/**
 * The front door's access log on a 3-node lab of its own (`tacc`): hello runs
 * on n2; clients in every node's namespace send requests through every
 * node's front door (curl --resolve, trusting only the cluster CA's root).
 * N requests give exactly N lines, with the method, host, path, status and
 * bytes curl saw and the client address curl used, logged by the front door
 * the client reached, whichever node forwarded to which. Then the delay
 * from a request's answer to its line being held by another node is measured
 * (each node's own store, `local=1`); `--follow` prints new requests once
 * each; killing n1's agent and restarting its Caddy between requests loses
 * none and counts none twice; and a node killed that long after requests
 * entered through it still has them shown by a survivor.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DCLOUD, LabHandle, dcloudOk, waitFor } from './harness.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { apiGet } from '../../agent/cli/client.ts'
import type { AppView } from '../../proto/api.ts'
import type { AccessView } from '../../proto/access.ts'

const lab = new LabHandle('tacc')
const HELLO = join(PROJECT_ROOT, 'apps', 'examples', 'hello')
const HOST = 'hello.dcloud.home.arpa'
const NODES = ['n1', 'n2', 'n3']
let dir: string
let ca: string
let ips: Record<string, string>

interface Sent { client: string, door: string, path: string, status: number, bytes: number, localIp: string, doneAt: number }

/** One request from `client`'s namespace to `door`'s front door; what curl saw, and the address it sent from. */
async function request (client: string, door: string, path: string): Promise<Sent> {
  const r = await lab.exec(client, ['curl', '-sS', '--max-time', '5', '-o', '/dev/null', '-w', '%{http_code} %{size_download} %{local_ip}', '--resolve', `${HOST}:443:${ips[door] ?? '?'}`, '--cacert', ca, `https://${HOST}${path}`])
  if (r.code !== 0) throw new Error(`curl from ${client} through ${door} failed (${r.code}): ${r.stderr}`)
  const [status, bytes, localIp] = r.stdout.trim().split(' ')
  return { client, door, path: path.replace(/\?.*$/, ''), status: Number(status), bytes: Number(bytes), localIp: localIp ?? '', doneAt: Date.now() }
}

async function access (node: string, since: number, local = false): Promise<AccessView> {
  return await apiGet<AccessView>(`/v1/apps/hello/access?since=${since}&limit=5000${local ? '&local=1' : ''}`, { socketPath: lab.lab.agentSocket(node), describe: node }, 40_000)
}

async function apps (): Promise<AppView[]> {
  return JSON.parse(await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'ls', '--json'])) as AppView[]
}

describe('the access log on a 3-node lab', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dcloud-tacc-'))
    await lab.up(3)
    ips = Object.fromEntries((await lab.lab.state()).nodes.map(n => [n.name, n.ip]))
    await waitFor(async () => (await Promise.all(NODES.map(async n => (await lab.status(n)).leader))).every(l => l !== null) ? true : undefined, 60_000, 'a leader')
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'install', HELLO, '--node', 'n2'])
    await waitFor(async () => (await apps()).find(a => a.name === 'hello' && a.state === 'running' && a.node === 'n2'), 90_000, 'hello running on n2')
    ca = join(dir, 'root.pem')
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n3', '--', 'dcloud', 'domain', 'ca', '-o', ca])
    // Every front door routes hello (n2 locally, the others to n2) before anything is counted.
    for (const door of NODES) await waitFor(async () => (await request('n1', door, '/')).status === 200 ? true : undefined, 30_000, `hello through ${door}`)
  }, 300_000)

  afterAll(async () => {
    await lab.down()
    await rm(dir, { recursive: true, force: true })
  }, 120_000)

  it('gives exactly one line per request, logged where the client came in, with what the client saw', async () => {
    const since = Date.now()
    const sent: Sent[] = []
    // Every client namespace through every front door: n1 and n3 forward to n2, which must not log them again.
    for (let round = 0; round < 2; round++) {
      for (const client of NODES) {
        for (const door of NODES) sent.push(await request(client, door, round === 0 && door === 'n2' ? '/' : `/acc/${round}/${client}-${door}?token=secret`))
      }
    }
    const N = sent.length
    expect(N).toBe(18)
    expect(sent.filter(s => s.status === 200).length).toBe(3)
    const { value: view, ms } = await waitFor(async () => { const v = await access('n1', since); return v.lines.length >= N ? v : undefined }, 15_000, `${N} lines`)
    console.log(`access log: ${N} requests shown merged from n1 ${ms.toFixed(0)} ms after the last answer`)
    // Exactly N: and still N a moment later (nothing logged twice by a forwarding hop, late).
    await new Promise(resolve => setTimeout(resolve, 1500))
    for (const node of NODES) expect((await access(node, since)).lines, `merged from ${node}`).toHaveLength(N)
    const byKey = new Map(view.lines.map(l => [`${l.path} ${l.client} ${l.nodeName ?? ''}`, l]))
    for (const s of sent) {
      expect(s.localIp).toBe(ips[s.client])
      const l = byKey.get(`${s.path} ${s.localIp} ${s.door}`)
      expect(l, `${s.client} -> ${s.door} ${s.path}`).toBeDefined()
      expect(l).toMatchObject({ method: 'GET', host: HOST, path: s.path, status: s.status, bytes: s.bytes, client: s.localIp, nodeName: s.door, user: null })
      expect(l?.ts).toBeGreaterThanOrEqual(since - 1000)
      expect(l?.ts).toBeLessThanOrEqual(s.doneAt + 1000)
      expect(l?.durationMs).toBeGreaterThan(0)
    }
    // Each origin's lines are held by it and by both others (2 replicas on 3 nodes).
    for (const node of NODES) {
      const { value } = await waitFor(async () => { const v = await access(node, since, true); return v.lines.length === N ? v : undefined }, 10_000, `${node} to hold all ${N} lines`)
      expect(new Set(value.lines.map(l => l.id)).size).toBe(N)
    }
    // The summary, through the CLI.
    const summary = JSON.parse(await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n3', '--', 'dcloud', 'app', 'access', 'hello', '--since', '10m', '--summary', '--json'])) as AccessView
    expect(summary.summary?.lines).toBeGreaterThanOrEqual(N)
    expect(summary.summary?.visitorsPerDay.at(-1)?.visitors).toBe(3)
    expect(summary.summary?.topAddresses.map(a => a.address).sort()).toEqual(NODES.map(n => ips[n]).sort())
    const text = await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n2', '--', 'dcloud', 'app', 'access', 'hello', '--since', '10m'])
    expect(text.split('\n')[0]).toMatch(/^TIME\s+NODE\s+CLIENT\s+USER\s+METHOD\s+HOST\s+PATH\s+STATUS\s+BYTES\s+MS/)
    expect(text).toContain('/acc/1/n3-n1')
    expect(text).not.toContain('token=secret')
    // No node counted a forwarded request as its own.
    for (const node of NODES) expect((await lab.metrics(node)).accessLog?.invalid, node).toBe(0)
    expect((await lab.metrics('n2')).accessLog?.forwarded).toBeGreaterThanOrEqual(6)
  }, 180_000)

  it('follows new requests as they come (--follow --json), each once', async () => {
    const follower = spawn(DCLOUD, ['app', 'access', 'hello', '--since', '5s', '--follow', '--json'], { env: { ...process.env, DCLOUD_API: `unix:${lab.lab.agentSocket('n2')}` }, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    follower.stdout.on('data', (d: Buffer) => { out += d.toString() })
    try {
      await new Promise(resolve => setTimeout(resolve, 2000))
      const sent = [await request('n1', 'n3', '/follow/0'), await request('n3', 'n1', '/follow/1'), await request('n2', 'n2', '/follow/2')]
      const followed = async (): Promise<Array<{ path: string, client: string, nodeName: string }>> => out.split('\n').filter(l => l.includes('"/follow/')).map(l => JSON.parse(l) as { path: string, client: string, nodeName: string })
      await waitFor(async () => (await followed()).length >= 3 ? true : undefined, 15_000, 'the follower to print 3 lines')
      await new Promise(resolve => setTimeout(resolve, 2500))
      expect((await followed()).map(l => `${l.path} ${l.client} ${l.nodeName}`)).toEqual(sent.map(s => `${s.path} ${s.localIp} ${s.door}`))
    } finally {
      if (follower.pid !== undefined) process.kill(follower.pid, 'SIGTERM')
    }
  }, 60_000)

  let bound = 0

  it('holds a line on another node within a bounded delay of its answer (measured)', async () => {
    const delays: number[] = []
    for (let i = 0; i < 12; i++) {
      const door = NODES[i % 3] as string
      const s = await request(NODES[(i + 1) % 3] as string, door, `/delay/${i}`)
      // From Caddy's own time for the request (its answer) to the moment another node is seen holding the line.
      const others = NODES.filter(n => n !== door)
      const { value } = await waitFor(async () => {
        for (const n of others) {
          const l = (await access(n, s.doneAt - 10_000, true)).lines.find(x => x.path === s.path)
          if (l !== undefined) return Date.now() - l.ts
        }
        return undefined
      }, 10_000, `/delay/${i} replicated`, 20)
      delays.push(value)
    }
    delays.sort((a, b) => a - b)
    bound = delays.at(-1) ?? 0
    console.log(`access log replication: from the answer to another node holding the line, median ${delays[6]?.toFixed(0)} ms, max ${bound.toFixed(0)} ms (12 requests)`)
    expect(bound).toBeLessThan(3000)
  }, 120_000)

  it('loses no line and counts none twice when the agent is killed, or Caddy restarted, between requests', async () => {
    const since = Date.now()
    const sent: Sent[] = []
    for (let i = 0; i < 3; i++) sent.push(await request('n3', 'n1', `/restart/before-${i}`))
    // The agent dies at once (SIGKILL: its cursor is up to 2 s behind what it had read); Caddy keeps serving meanwhile.
    const pid = (await lab.lab.state()).nodes.find(n => n.name === 'n1')?.agentPid
    expect(pid).toBeGreaterThan(0)
    process.kill(pid as number, 'SIGKILL')
    await waitFor(async () => { try { process.kill(pid as number, 0); return undefined } catch { return true } }, 10_000, 'n1\'s agent to die')
    for (let i = 0; i < 3; i++) sent.push(await request('n3', 'n1', `/restart/agent-down-${i}`))
    await lab.cmd('start', 'n1', '--agent-only')
    // Caddy killed and started: the agent loads its configuration again, and Caddy appends to the same file.
    await lab.cmd('caddy', 'n1', '--kill')
    await lab.cmd('caddy', 'n1', '--start')
    await waitFor(async () => (await lab.exec('n3', ['curl', '-s', '-o', '/dev/null', '--max-time', '2', '--resolve', `${HOST}:443:${ips.n1 ?? '?'}`, '--cacert', ca, `https://${HOST}/restart/probe`])).code === 0 ? true : undefined, 20_000, 'n1 serving again')
    for (let i = 0; i < 3; i++) sent.push(await request('n3', 'n1', `/restart/after-${i}`))
    // Each once, and as n1's (n2, which n1 forwarded them to, counts none of them, even while n1's agent is dead).
    const wanted = sent.map(s => `${s.path}@n1`).sort()
    const restartLines = async (node: string): Promise<string[]> => (await access(node, since)).lines.filter(l => l.path.startsWith('/restart/') && l.path !== '/restart/probe').map(l => `${l.path}@${l.nodeName ?? '?'}`).sort()
    await waitFor(async () => (await restartLines('n2')).length >= wanted.length ? true : undefined, 20_000, 'the lines of n1 around its restarts')
    await new Promise(resolve => setTimeout(resolve, 1500))
    for (const node of NODES) expect(await restartLines(node), node).toEqual(wanted)
  }, 180_000)

  it('shows the lines of a node killed shortly after requests entered through it, from a survivor', async () => {
    const since = Date.now()
    const sent: Sent[] = []
    for (let i = 0; i < 6; i++) sent.push(await request(i % 2 === 0 ? 'n1' : 'n2', 'n3', `/killed/${i}`))
    // Killed once the measured bound has passed since the last answer (curl's return is after Caddy's answer, so at least that).
    const wait = Math.max(0, (sent.at(-1)?.doneAt ?? 0) + bound - Date.now())
    await new Promise(resolve => setTimeout(resolve, wait))
    const killedAt = Date.now()
    await lab.cmd('kill', 'n3')
    for (const survivor of ['n1', 'n2']) {
      const v = await access(survivor, since)
      const lines = v.lines.filter(l => l.path.startsWith('/killed/'))
      expect(lines.map(l => l.path).sort(), survivor).toEqual(sent.map(s => s.path).sort())
      for (const l of lines) expect(l.nodeName).toBe('n3')
      if (survivor === 'n1') console.log(`n3 killed (lab kill begun) ${killedAt - Math.max(...lines.map(l => l.ts))} ms after Caddy answered its last request; its ${lines.length} lines shown by the survivors`)
    }
    const cli = JSON.parse(await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'access', 'hello', '--since', '5m', '--json'])) as AccessView
    expect(cli.lines.filter(l => l.path.startsWith('/killed/'))).toHaveLength(6)
  }, 120_000)
})
