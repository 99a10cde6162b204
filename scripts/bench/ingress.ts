/**
 * npm run bench:ingress: what the front door costs, on a 2-node lab (`bing`).
 * Writes its section of docs/benchmarks.md and the raw results to
 * docs/bench/ingress.json. Not a test: the numbers are reported, never
 * asserted; a product failure is recorded in the report, not thrown.
 *
 *   1. wrk against apps/examples/page1k (1024 bytes, busybox httpd) running
 *      on n2, three ways, the same client (wrk in n2's namespace) and the same
 *      threads, connections and duration each: direct to the container's
 *      address on the app's Docker network; through n2's own Caddy; through
 *      n1's Caddy (which forwards to n2's). Two loads: one connection (the
 *      latency a request gains, without queueing) and eight (throughput).
 *      The ways are interleaved, two rounds, so a burst of the machine's
 *      other work lands on all of them;
 *   2. a route change: `dcloud app move` of the stateless page between the
 *      nodes, while a LAN client polls every node's front door every 20 ms;
 *   3. a reach change: `dcloud app expose page1k internet`, then `lan`, while
 *      a public client polls every node's front door every 20 ms.
 *
 * wrk has no --resolve, and the front door picks its certificate by SNI (an
 * address in the URL gets none: the handshake fails), so wrk asks for
 * https://page1k.DOMAIN/ and the name is resolved by a hosts file bind-mounted
 * over /etc/hosts in a mount namespace of its own (`unshare -m`), for that
 * one wrk process: SNI, Host and the certificate are what a browser would use,
 * and nothing else on the machine sees the file.
 *
 * This file is also the pollers' probe, `ingress.ts probe`, run in a lab
 * client's namespace through `dcloud lab client`.
 */
import { spawnSync } from 'node:child_process'
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { cpus, loadavg, release, tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { LabHandle, waitFor } from '../../test/lab/harness.ts'
import { ProbeProcess, stopWhenAsked } from './probe-process.ts'
import { frontDoorFetch } from '../lab/notes-client.ts'
import { run } from '../lab/sh.ts'
import { writeBenchSection, median, fmtMs, problemLines } from './report.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { apiGet, apiRequest } from '../../agent/cli/client.ts'
import type { AppView, StatusResponse } from '../../proto/api.ts'

const SELF = fileURLToPath(import.meta.url)
const NODE_BIN = join(PROJECT_ROOT, 'node_modules', '.bin', 'node')
const PAGE = join(PROJECT_ROOT, 'apps', 'examples', 'page1k')
const APP = 'page1k'
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

// ---- the probe, run in a lab client ----------------------------------------

/**
 * `ingress.ts probe --host HOST --ca FILE --at IP,IP... [--every MS]`: asks
 * each front door at IP for https://HOST/ every MS (default 20) without
 * waiting for the previous answer (2 s timeout), trusting only the cluster's
 * root, and prints one JSON line per answer: {"ip","s","at","status","from"}
 * (ms since the epoch; `from`: the container the page names, or null). Stops
 * when stdin closes.
 */
async function probeMain (argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { host: { type: 'string' }, ca: { type: 'string' }, at: { type: 'string' }, every: { type: 'string', default: '20' } } })
  if (values.host === undefined || values.ca === undefined || values.at === undefined) throw new Error('usage: ingress.ts probe --host HOST --ca FILE --at IP,IP... [--every MS]')
  const host = values.host
  const fetchVia = frontDoorFetch(() => host, await readFile(values.ca, 'utf8'))
  const every = Number(values.every)
  let running = true
  const inflight = new Set<Promise<void>>()
  const loops = values.at.split(',').map(async ip => {
    while (running) {
      const s = Date.now()
      const p = fetchVia(`https://${ip}/`, { signal: AbortSignal.timeout(2000) })
        .then(async r => { const body = await r.text(); return { status: r.status, from: /^page1k from (\S+)/.exec(body)?.[1] ?? null } })
        .catch(() => ({ status: 0, from: null }))
        .then(r => { process.stdout.write(`${JSON.stringify({ ip, s, at: Date.now(), ...r })}\n`) })
      inflight.add(p)
      void p.finally(() => inflight.delete(p))
      await sleep(Math.max(1, every - (Date.now() - s)))
    }
  })
  stopWhenAsked(async () => {
    running = false
    await Promise.all([...loops, ...inflight])
  })
}

interface Answer { ip: string, s: number, at: number, status: number, from: string | null }

/** The host's side of a probe running in a lab client. */
class Poller {
  private readonly proc: ProbeProcess<Answer>

  constructor (lab: string, kind: 'lan' | 'public', host: string, ca: string, ips: string[]) {
    const args = ['lab', '--lab', lab, 'client', ...(kind === 'public' ? ['--public'] : []), '--', NODE_BIN, SELF, 'probe', '--host', host, '--ca', ca, '--at', ips.join(',')]
    this.proc = new ProbeProcess(args, m => m as unknown as Answer)
  }

  /** The first answer from `ip` sent after `after` that `ok` accepts. */
  async first (ip: string, after: number, ok: (a: Answer) => boolean, timeoutMs: number, what: string): Promise<Answer> {
    return (await waitFor(async () => {
      this.proc.check()
      return this.proc.lines.find(a => a.ip === ip && a.s > after && ok(a))
    }, timeoutMs, what, 10)).value
  }

  between (ip: string, from: number, to: number): Answer[] {
    return this.proc.lines.filter(a => a.ip === ip && a.s >= from && a.s <= to)
  }

  async stop (): Promise<void> { await this.proc.stop() }
}

// ---- wrk -------------------------------------------------------------------

/** wrk's own summary as one JSON line (its `done` hook): latencies in µs. */
const WRK_LUA = `done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"durationUs":%d,"bytes":%d,"p50Us":%d,"p90Us":%d,"p99Us":%d,"maxUs":%d,"meanUs":%.1f,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
`

interface WrkResult { requests: number, durationUs: number, bytes: number, p50Us: number, p90Us: number, p99Us: number, maxUs: number, meanUs: number, errors: Record<string, number> }
interface Load { name: string, threads: number, connections: number, seconds: number }
const LOADS: Load[] = [
  { name: '1 connection', threads: 1, connections: 1, seconds: 5 },
  { name: '8 connections', threads: 2, connections: 8, seconds: 10 }
]
const ROUNDS = 3
type Way = 'direct' | 'local' | 'remote'
const WAYS: Way[] = ['direct', 'local', 'remote']

// ---- the benchmark ---------------------------------------------------------

const log = (s: string): void => { process.stderr.write(`bench:ingress: ${s}\n`) }
const lab = new LabHandle('bing')
const problems: string[] = []

async function apps (node: string): Promise<AppView[]> {
  return await apiGet<AppView[]>('/v1/apps', { socketPath: lab.lab.agentSocket(node), describe: node }, 5000)
}

function docker (node: string, ...args: string[]): Promise<string> {
  return run('docker', ['-H', `unix://${lab.lab.dockerSocket(node)}`, ...args], { timeoutMs: 60_000 })
}

/** The page's web container on `node`: its hostname (what the page names), address and start. */
async function container (node: string): Promise<{ hostname: string, ip: string, startedAt: number }> {
  const out = await docker(node, 'inspect', `dcloud-${APP}-web`, '--format', '{{.Config.Hostname}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}{{.State.StartedAt}}')
  const f = out.trim().split(/\s+/)
  return { hostname: f[0] ?? '', ip: f[1] ?? '', startedAt: Date.parse(f[2] ?? '') }
}

/** This node's front door loads since `since` (agent.log), with the route they gave the page: "+MS page1k->n1". */
async function loads (node: string, since: number): Promise<string[]> {
  const text = await readFile(join(lab.lab.nodeDir(node), 'agent.log'), 'utf8').catch(() => '')
  const out: string[] = []
  for (const line of text.split('\n')) {
    const at = Date.parse(line.slice(0, 24))
    const route = new RegExp(`\\[agent:frontdoor\\] front door configuration loaded .*routes=.*?\\b(${APP}(?:->|:)\\S+)`).exec(line)?.[1]
    if (Number.isFinite(at) && at >= since && route !== undefined) out.push(`+${at - since} ms ${route}`)
  }
  return out
}

async function running (node: string): Promise<AppView> {
  return (await waitFor(async () => (await apps('n1')).find(a => a.name === APP && a.state === 'running' && a.node === node), 90_000, `${APP} running on ${node}`, 50)).value
}

async function main (): Promise<void> {
  const started = Date.now()
  const dir = await mkdtemp(join(tmpdir(), 'dcloud-bing-'))
  const lua = join(dir, 'summary.lua')
  await writeFile(lua, WRK_LUA)
  const others = new Set<string>()
  const otherLabs = async (): Promise<void> => {
    const out = await run('ip', ['netns', 'list']).catch(() => '')
    for (const m of out.matchAll(/^dcl-([a-z0-9]+)-hub\b/gm)) if (m[1] !== lab.name) others.add(m[1] as string)
  }
  await otherLabs()
  const loadBefore = loadavg()
  const wrk: Array<{ round: number, load: string, way: Way, result: WrkResult | null, error?: string }> = []
  const moves: Array<Record<string, unknown>> = []
  const reach: Array<Record<string, unknown>> = []
  let ips: Record<string, string> = {}
  let host = ''
  try {
    log('lab up, 2 nodes')
    await lab.up(2)
    ips = Object.fromEntries((await lab.lab.state()).nodes.map(n => [n.name, n.ip]))
    await waitFor(async () => (await lab.status('n1')).leader ?? undefined, 60_000, 'a leader')
    await lab.cmd('exec', 'n1', '--', 'dcloud', 'app', 'install', PAGE, '--node', 'n2', '--yes')
    const view = await running('n2')
    host = new URL(view.url ?? '').hostname
    const c = await container('n2')
    const ca = await lab.caFile('n1')
    const hosts: Record<Way, string> = { direct: join(dir, 'hosts-direct'), local: join(dir, 'hosts-n2'), remote: join(dir, 'hosts-n1') }
    await writeFile(hosts.direct, '127.0.0.1 localhost\n')
    await writeFile(hosts.local, `127.0.0.1 localhost\n${ips.n2 ?? '?'} ${host}\n`)
    await writeFile(hosts.remote, `127.0.0.1 localhost\n${ips.n1 ?? '?'} ${host}\n`)
    const urls: Record<Way, string> = { direct: `http://${c.ip}:8080/`, local: `https://${host}/`, remote: `https://${host}/` }
    // The same wrapper for every way: wrk in n2's namespace, in a mount namespace of its own with the way's hosts file.
    const inNs = (way: Way, cmd: string[]): string[] => ['unshare', '-m', 'sh', '-c', 'mount --bind "$1" /etc/hosts && shift && exec "$@"', 'sh', hosts[way], ...cmd]

    // Each way serves the 1024 bytes, the name resolving as wrk will see it (curl checks the certificate too).
    for (const way of WAYS) {
      const r = await lab.exec('n2', inNs(way, ['curl', '-sS', '--max-time', '5', '--cacert', ca, '-o', '/dev/null', '-w', '%{http_code} %{size_download}', urls[way]]))
      if (r.stdout.trim() !== '200 1024') problems.push(`${way}: curl ${urls[way]} answered \`${r.stdout.trim()}\` ${r.stderr.trim()}, not 200 with 1024 bytes`)
    }

    for (let round = 1; round <= ROUNDS; round++) {
      for (const load of LOADS) {
        for (const way of WAYS) {
          const r = await lab.exec('n2', inNs(way, ['wrk', '-t', String(load.threads), '-c', String(load.connections), '-d', `${load.seconds}s`, '--latency', '-s', lua, urls[way]]))
          const line = r.stdout.split('\n').find(l => l.startsWith('{"requests"'))
          if (r.code !== 0 || line === undefined) {
            wrk.push({ round, load: load.name, way, result: null, error: `wrk exited ${r.code}: ${(r.stderr.trim() || r.stdout.trim()).slice(-300)}` })
            problems.push(`round ${round}, ${load.name}, ${way}: wrk exited ${r.code}: ${(r.stderr.trim() || r.stdout.trim()).slice(-300)}`)
            continue
          }
          const result = JSON.parse(line) as WrkResult
          wrk.push({ round, load: load.name, way, result })
          log(`round ${round}, ${load.name}, ${way}: ${(result.requests / (result.durationUs / 1e6)).toFixed(0)} req/s, p50 ${(result.p50Us / 1000).toFixed(2)} ms, p99 ${(result.p99Us / 1000).toFixed(2)} ms`)
        }
      }
    }

    // ---- route changes: the page moves while a LAN client polls every front door
    const nodeIds = Object.fromEntries((await lab.status('n1')).nodes.map(n => [n.name, n.id]))
    const lanPoll = new Poller(lab.name, 'lan', host, ca, [ips.n1 ?? '', ips.n2 ?? ''])
    try {
      for (const [from, to] of [['n2', 'n1'], ['n1', 'n2']] as const) {
        const old = await container(from)
        for (const n of ['n1', 'n2']) await lanPoll.first(ips[n] ?? '', Date.now(), a => a.from === old.hostname, 30_000, `${n} serving the copy on ${from}`)
        const t0 = Date.now()
        await apiRequest('POST', `/v1/apps/${APP}/move`, { node: nodeIds[to] }, { socketPath: lab.lab.agentSocket('n1'), describe: 'n1' }, 30_000)
        const accepted = Date.now()
        await running(to)
        const fresh = await container(to)
        const served: Record<string, number> = {}
        for (const n of ['n1', 'n2']) served[n] = (await lanPoll.first(ips[n] ?? '', t0, a => a.from === fresh.hostname, 30_000, `${n} serving the copy on ${to}`)).at
        // Docker's own time of the old copy's end: the container may be removed by then.
        const stoppedAt = (await waitFor(async () => {
          const out = await docker(from, 'events', '--since', (t0 / 1000).toFixed(3), '--until', (Date.now() / 1000).toFixed(3), '--filter', `label=dcloud.app=${APP}`, '--filter', 'event=die', '--format', '{{.TimeNano}}')
          const ns = out.trim().split('\n')[0]
          return ns !== undefined && ns !== '' ? Number(BigInt(ns) / 1_000_000n) : undefined
        }, 30_000, `the copy on ${from} stopped`, 200)).value
        await sleep(1000)
        const end = Date.now()
        const perNode = Object.fromEntries(['n1', 'n2'].map(n => {
          const all = lanPoll.between(ips[n] ?? '', t0, end)
          const bad = all.filter(a => a.status !== 200)
          const lastOld = all.filter(a => a.from === old.hostname).map(a => a.at).reduce((m, x) => Math.max(m, x), 0)
          return [n, { newCopyServedMs: (served[n] as number) - t0, afterNewStartedMs: (served[n] as number) - fresh.startedAt, afterOldStoppedMs: Number.isFinite(stoppedAt) ? (served[n] as number) - stoppedAt : null, lastOldAnswerMs: lastOld > 0 ? lastOld - t0 : null, requests: all.length, failed: bad.length, failedStatuses: [...new Set(bad.map(a => a.status))] }]
        }))
        const frontDoorLoads = Object.fromEntries(await Promise.all(['n1', 'n2'].map(async n => [n, await loads(n, t0)] as const)))
        const m = { at: new Date(t0).toISOString(), frontDoorLoads, from, to, acceptedMs: accepted - t0, newStartedMs: fresh.startedAt - t0, oldStoppedMs: Number.isFinite(stoppedAt) ? stoppedAt - t0 : null, everyNodeMs: Math.max(...Object.values(served)) - t0, nodes: perNode }
        moves.push(m)
        log(`move ${from} → ${to}: ${JSON.stringify(m)}`)
      }
    } catch (err) {
      problems.push(`route change: ${err instanceof Error ? err.message : String(err)}`)
    } finally { await lanPoll.stop() }

    // ---- reach changes: a public client polls every front door
    const pubPoll = new Poller(lab.name, 'public', host, ca, [ips.n1 ?? '', ips.n2 ?? ''])
    try {
      for (const [to, want] of [['internet', 200], ['lan', 403]] as const) {
        for (const n of ['n1', 'n2']) await pubPoll.first(ips[n] ?? '', Date.now(), a => a.status === (want === 200 ? 403 : 200), 30_000, `${n} answering the public client as before`)
        const t0 = Date.now()
        await apiRequest('POST', `/v1/apps/${APP}/expose`, { reach: to }, { socketPath: lab.lab.agentSocket('n1'), describe: 'n1' }, 30_000)
        const committed = Date.now()
        const served: Record<string, number> = {}
        for (const n of ['n1', 'n2']) served[n] = (await pubPoll.first(ips[n] ?? '', t0, a => a.status === want, 30_000, `${n} answering ${want} to the public client`)).at - t0
        await sleep(500)
        const stray = ['n1', 'n2'].flatMap(n => pubPoll.between(ips[n] ?? '', t0 + (served[n] as number), Date.now()).filter(a => a.status !== want && a.at > t0 + (served[n] as number)).map(a => `${n}: ${a.status}`))
        const r = { to, want, committedMs: committed - t0, nodes: served, everyNodeMs: Math.max(...Object.values(served)), afterward: stray }
        reach.push(r)
        log(`expose ${to}: ${JSON.stringify(r)}`)
      }
    } catch (err) {
      problems.push(`reach change: ${err instanceof Error ? err.message : String(err)}`)
    } finally { await pubPoll.stop() }
    await otherLabs()
  } catch (err) {
    problems.push(`setup: ${err instanceof Error ? err.message : String(err)}`)
    log(`failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`)
  } finally {
    log('lab down')
    await lab.down().catch((err: Error) => { problems.push(`lab down: ${err.message}`) })
    await rm(dir, { recursive: true, force: true })
  }
  await report({ started, loadBefore, wrk, moves, reach, others: [...others], host })
}

// ---- the report ------------------------------------------------------------

interface Results {
  started: number
  loadBefore: number[]
  wrk: Array<{ round: number, load: string, way: Way, result: WrkResult | null }>
  moves: Array<Record<string, unknown>>
  reach: Array<Record<string, unknown>>
  others: string[]
  host: string
}

async function report (r: Results): Promise<void> {
  const sh = async (cmd: string, args: string[]): Promise<string> => (await run(cmd, args).catch(() => '?')).trim().split('\n')[0] ?? '?'
  const commit = await sh('git', ['-C', PROJECT_ROOT, 'rev-parse', '--short', 'HEAD'])
  const machine = {
    cores: cpus().length,
    cpu: cpus()[0]?.model ?? '?',
    kernel: release(),
    node: process.versions.node,
    caddy: await sh('caddy', ['version']),
    // `wrk --version` prints its version with the usage, and exits 1.
    wrk: /wrk \S+/.exec(`${spawnSync('wrk', ['--version'], { encoding: 'utf8' }).stdout ?? ''}`)?.[0] ?? '?',
    loadAverageBefore: r.loadBefore.map(x => Number(x.toFixed(2))),
    loadAverageAfter: loadavg().map(x => Number(x.toFixed(2))),
    shared: true,
    otherLabsRunning: r.others
  }
  const rps = (w: WrkResult): number => w.requests / (w.durationUs / 1e6)
  const of = (load: string, way: Way): WrkResult[] => r.wrk.filter(x => x.load === load && x.way === way && x.result !== null).map(x => x.result as WrkResult)
  const summary = Object.fromEntries(LOADS.map(l => [l.name, Object.fromEntries(WAYS.map(w => {
    const xs = of(l.name, w)
    return [w, xs.length === 0 ? null : { rps: median(xs.map(rps)), p50Ms: median(xs.map(x => x.p50Us)) / 1000, p99Ms: median(xs.map(x => x.p99Us)) / 1000, errors: xs.reduce((s, x) => s + Object.values(x.errors).reduce((a, b) => a + b, 0), 0), bytesPerRequest: median(xs.map(x => x.bytes / Math.max(1, x.requests))) }]
  }))]))
  const result = { commit, measuredAt: new Date().toISOString(), machine, host: r.host, loads: LOADS, rounds: ROUNDS, summary, runs: r.wrk, moves: r.moves, reach: r.reach, problems }
  await mkdir(join(PROJECT_ROOT, 'docs', 'bench'), { recursive: true })
  await writeFile(join(PROJECT_ROOT, 'docs', 'bench', 'ingress.json'), JSON.stringify(result, null, 2) + '\n')

  const ms = (x: number | null | undefined, d = 2): string => x == null || !Number.isFinite(x) ? 'n/a' : `${x.toFixed(d)} ms`
  const met = (ok: boolean | null): string => ok === null ? 'not measured' : ok ? 'met' : 'missed'
  const label: Record<Way, string> = { direct: 'direct to the container (http, its address on the app\'s network)', local: 'through n2\'s Caddy, on the node running it (https)', remote: 'through n1\'s Caddy, forwarded to n2\'s (https)' }
  const rows = LOADS.flatMap(l => WAYS.map(w => {
    const s = summary[l.name]?.[w]
    const d = summary[l.name]?.direct
    const over = s != null && d != null && w !== 'direct' ? `+${ms(s.p50Ms - d.p50Ms)} p50, ${((s.rps / d.rps) * 100).toFixed(0)} % of direct's req/s` : ''
    return `| ${l.name} | ${label[w]} | ${s != null ? s.rps.toFixed(0) : 'n/a'} | ${ms(s?.p50Ms)} | ${ms(s?.p99Ms)} | ${s != null ? s.errors : 'n/a'} | ${over} |`
  }))
  const over = (load: string, w: Way): number | null => { const s = summary[load]?.[w]; const d = summary[load]?.direct; return s != null && d != null ? s.p50Ms - d.p50Ms : null }
  const ratio = (load: string): number | null => { const s = summary[load]?.remote; const d = summary[load]?.direct; return s != null && d != null ? s.rps / d.rps : null }
  const [one, eight] = LOADS.map(l => l.name) as [string, string]
  const check = (x: number | null, limit: number, lower = true): string => `${met(x === null ? null : lower ? x < limit : x >= limit)}`
  const moveLines = r.moves.map(m => {
    const nodes = m.nodes as Record<string, { newCopyServedMs: number, afterOldStoppedMs: number | null, failed: number, requests: number, failedStatuses: number[] }>
    return `- \`app move\` ${String(m.from)} → ${String(m.to)}: accepted after ${fmtMs(m.acceptedMs as number)}, the new copy started at +${fmtMs(m.newStartedMs as number)}, the old one stopped at +${m.oldStoppedMs != null ? fmtMs(m.oldStoppedMs as number) : '?'}; ` +
      Object.entries(nodes).map(([n, v]) => `${n}'s front door served the new copy from +${fmtMs(v.newCopyServedMs)} (${v.afterOldStoppedMs !== null ? `${v.afterOldStoppedMs >= 0 ? `${fmtMs(v.afterOldStoppedMs)} after` : `${fmtMs(-v.afterOldStoppedMs)} before`} the old copy stopped` : '?'}), ${v.failed} of ${v.requests} polls failed${v.failed > 0 ? ` (${v.failedStatuses.join(', ')})` : ''}`).join('; ') +
      `. Configurations the front doors loaded (agent logs): ${Object.entries(m.frontDoorLoads as Record<string, string[]>).map(([n, l]) => `${n} ${l.length > 0 ? l.join(', ') : 'none'}`).join('; ')}.`
  })
  const lag = r.moves.flatMap(m => Object.values(m.nodes as Record<string, { afterOldStoppedMs: number | null }>).map(v => Math.max(0, v.afterOldStoppedMs ?? NaN)))
  const failedPolls = r.moves.reduce((s, m) => s + Object.values(m.nodes as Record<string, { failed: number }>).reduce((a, v) => a + v.failed, 0), 0)
  const reachLines = r.reach.map(x => `- \`app expose ${String(x.to)}\`: committed ${fmtMs(x.committedMs as number)} after the call; the public client got ${String(x.want)} from ${Object.entries(x.nodes as Record<string, number>).map(([n, v]) => `${n} after ${fmtMs(v)}`).join(', ')}${(x.afterward as string[]).length > 0 ? `; afterwards still: ${(x.afterward as string[]).join(', ')}` : ''}.`)
  const reachMax = r.reach.map(x => x.everyNodeMs as number)
  const body = [
    `Measured at commit ${commit} (${result.measuredAt.slice(0, 10)}) by \`npm run bench:ingress\`; raw results in [bench/ingress.json](bench/ingress.json). ${machine.cores} cores (${machine.cpu}), Linux ${machine.kernel}, Node ${machine.node}, Debian's Caddy ${machine.caddy.split(' ')[0]}, ${machine.wrk}.`,
    '',
    `**The machine was shared**: its ${machine.cores} cores also ran other engineers' work${r.others.length > 0 ? ` (lab${r.others.length > 1 ? 's' : ''} ${r.others.join(', ')} during this run)` : ''}; load average ${machine.loadAverageBefore.join(', ')} before, ${machine.loadAverageAfter.join(', ')} after. wrk, both Caddys, the container and the other work compete for the same cores, so these figures are noisy, the p99s most of all; read them as an order of magnitude, and run the bench again on a quiet machine before drawing a line.`,
    '',
    `A 2-node lab; apps/examples/page1k (a page of 1024 bytes, busybox httpd) runs on n2. wrk runs in n2's namespace for all three ways, the same threads, connections and duration each; the ways are interleaved, ${ROUNDS} rounds, medians shown (every run in the JSON). ${LOADS.map(l => `${l.name}: \`wrk -t${l.threads} -c${l.connections} -d${l.seconds}s --latency\``).join('; ')}.`,
    '',
    '| load | way | req/s | p50 | p99 | errors | against direct |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...rows,
    '',
    '| target | result | |',
    '| --- | --- | --- |',
    `| p50 added through the local Caddy < 0.5 ms | ${ms(over(one, 'local'))} at 1 connection, ${ms(over(eight, 'local'))} at 8 | ${check(over(one, 'local'), 0.5)} at 1, ${check(over(eight, 'local'), 0.5)} at 8 |`,
    `| p50 added through another node's Caddy < 1.5 ms | ${ms(over(one, 'remote'))} at 1 connection, ${ms(over(eight, 'remote'))} at 8 | ${check(over(one, 'remote'), 1.5)} at 1, ${check(over(eight, 'remote'), 1.5)} at 8 |`,
    `| req/s through another node ≥ 70 % of direct | ${ratio(eight) !== null ? `${((ratio(eight) as number) * 100).toFixed(0)} %` : 'n/a'} at 8 connections, ${ratio(one) !== null ? `${((ratio(one) as number) * 100).toFixed(0)} %` : 'n/a'} at 1 | ${check(ratio(eight), 0.7, false)} at 8, ${check(ratio(one), 0.7, false)} at 1 |`,
    `| a route change (stateless \`app move\`) in effect on every node < 1 s | longest from the old copy's stop to a node serving the new copy: ${lag.length > 0 ? fmtMs(Math.max(...lag)) : 'n/a'}; failed polls during the moves: ${failedPolls} | ${met(lag.length > 0 ? Math.max(...lag) < 1000 && failedPolls === 0 : null)} |`,
    `| a reach change (\`app expose\`) in effect on every node < 1 s | ${reachMax.length > 0 ? reachMax.map(x => fmtMs(x)).join(', ') : 'n/a'} after the call | ${met(reachMax.length > 0 ? Math.max(...reachMax) < 1000 : null)} |`,
    '',
    ...moveLines,
    ...reachLines,
    '',
    'How it is measured. The direct way asks the container\'s address on the app\'s Docker network over plain HTTP, reachable only from the node running it; the front door\'s ways are HTTPS to https://page1k.DOMAIN/ with the cluster CA\'s certificate, so their overhead includes TLS (on kept-alive connections: wrk reuses its connections to Caddy). busybox httpd closes the connection after every response, so every request, direct or through Caddy, opens a new TCP connection to the container (and a fork in httpd); an app that keeps connections alive would show a smaller direct figure. All lab nodes share the machine\'s cores: through another node, both Caddys\' work (two TLS sessions, two proxies) lands on the same cores as wrk and the container, which on two machines it would not, so the cross-node throughput here is a lower bound. A poll that failed is a 502 (the front door\'s upstream refused) or 0 (no answer in 2 s). wrk has no `--resolve` and an address in the URL gets no certificate from the front door (it picks one by SNI), so wrk asks for the name, resolved by a hosts file bind-mounted over /etc/hosts in a mount namespace of its own (`unshare -m`); the direct way runs under the same wrapper. The route and reach changes are timed from the API call (what `dcloud app move` and `dcloud app expose` send) by a probe in a lab client (the LAN one for moves, the public one, 203.0.113.10, for reach) asking every node\'s front door every 20 ms, not waiting for the previous answer, over kept-alive HTTPS trusting only the cluster\'s root; a time is that of the first answer that shows the change (the page names the container that served it). The 20 ms cadence is part of the figures.',
    ...problemLines(problems)
  ].join('\n')
  await writeBenchSection('ingress', 'Front door: the price of a hop, route and reach changes', body)
  process.stdout.write(body + '\n')
}

if (process.argv[2] === 'probe') {
  await probeMain(process.argv.slice(3))
} else {
  await main()
}
