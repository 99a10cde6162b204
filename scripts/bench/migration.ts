/**
 * npm run bench:migration: what moving a stateful app costs, on real lab
 * nodes (3 nodes, lab `bmig`). Writes its section of docs/benchmarks.md. Not a
 * test: the numbers are reported, never asserted; a product failure is
 * recorded in the report, not thrown.
 *
 *   1. planned move (`dcloud app move`) of apps/examples/bigvol holding 1 GiB
 *      of random bytes, 10 MiB of it changed since the last snapshot: the
 *      downtime dcloud reports, the move's wall time, and the downtime a
 *      client polling the app every 50 ms from the third node saw;
 *   2. the naive way with plain docker on the same engines: stop, tar pipe
 *      into a fresh volume on the other node, docker run (a copy of the same
 *      data, so the dcloud app is not disturbed);
 *   3. stateful failover: kill the node hosting notes (and bigvol), time to
 *      "dead" on the leader and to the app answering on a survivor;
 *   4. snapshot overhead: notes under a write loop, 10 s without a snapshot,
 *      10 s with one `dcloud snapshot create` in the middle.
 *
 * Clients run inside a lab node's namespace (the only place node addresses
 * are reachable): this file is also the probe, `migration.ts probe`, run there
 * through `dcloud lab exec`.
 *
 * Options: --quick (one move, one naive copy, no 1 GiB failover), --mb N
 * (volume size, default 1024).
 */
import { randomFillSync } from 'node:crypto'
import { open, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { LabHandle, waitFor, type Run } from '../../test/lab/harness.ts'
import { ProbeProcess, stopWhenAsked } from './probe-process.ts'
import { frontDoorFetch, runningFrontDoor, startLabWriters } from '../lab/notes-client.ts'
import { run } from '../lab/sh.ts'
import { writeBenchSection, median, fmtMs, problemLines } from './report.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { apiGet, apiText } from '../../agent/cli/client.ts'
import { loadApp } from '../../apps/catalog.ts'
import type { AppView, SnapshotView } from '../../proto/api.ts'

const SELF = fileURLToPath(import.meta.url)
const NODE_BIN = join(PROJECT_ROOT, 'node_modules', '.bin', 'node')
const BIGVOL = join(PROJECT_ROOT, 'apps', 'examples', 'bigvol')
const NOTES = join(PROJECT_ROOT, 'apps', 'examples', 'notes')
const MiB = 1024 * 1024
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }
const ip = (node: string): string => `10.213.0.${10 + Number(node.slice(1))}`

// ---- the probe, run inside a lab node ---------------------------------------

/**
 * `migration.ts probe (--app NAME --lab LAB | --url URL) [--every MS] [--timeout MS]`:
 * sends a GET every MS (default 50) without waiting for the previous one, so a
 * hung request does not slow the cadence, and prints one JSON line per answer
 * or failure: {"t":"r","s":SENT,"at":DONE,"ok":BOOL,"url":URL} (ms since the
 * epoch). --app follows the app through this node's agent, looked up every
 * 100 ms, to the front door of the node running it (the web port is not
 * published on the node), asked for https://NAME.DOMAIN and trusting only the
 * cluster's root; --url asks a fixed URL (the naive baseline's own published
 * port). Stops when stdin closes.
 */
async function probeMain (argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { app: { type: 'string' }, lab: { type: 'string' }, url: { type: 'string' }, every: { type: 'string', default: '50' }, timeout: { type: 'string', default: '2000' } } })
  if ((values.app === undefined) === (values.url === undefined) || (values.app !== undefined && values.lab === undefined)) throw new Error('usage: migration.ts probe (--app NAME --lab LAB | --url URL) [--every MS] [--timeout MS]')
  let host = ''
  const fetchImpl = values.app === undefined ? fetch : frontDoorFetch(() => host, await apiText('/v1/ca.pem', undefined, 10_000))
  const every = Number(values.every)
  const timeout = Number(values.timeout)
  const emit = (m: object): void => { process.stdout.write(`${JSON.stringify(m)}\n`) }
  let current: string | null = values.url ?? null
  let running = true
  const lookup = async (): Promise<string | null> => {
    const found = await runningFrontDoor(values.lab as string, values.app as string)
    if (found !== null) host = found.host
    return found?.url ?? null
  }
  const follow = (async () => {
    while (running && values.app !== undefined) {
      const next = await lookup().catch(() => null)
      if (next !== null && next !== current) { current = next; emit({ t: 'url', at: Date.now(), url: next }) }
      await sleep(100)
    }
  })()
  const inflight = new Set<Promise<void>>()
  const poll = (async () => {
    while (running) {
      const sent = Date.now()
      const url = current
      if (url !== null) {
        const p = fetchImpl(url, { signal: AbortSignal.timeout(timeout) })
          .then(async r => { await r.arrayBuffer(); return r.status === 200 })
          .catch(() => false)
          .then(ok => { emit({ t: 'r', s: sent, at: Date.now(), ok, url }) })
        inflight.add(p)
        void p.finally(() => inflight.delete(p))
      }
      await sleep(Math.max(1, every - (Date.now() - sent)))
    }
  })()
  stopWhenAsked(async () => {
    running = false
    await Promise.all([follow, poll, ...inflight])
  })
}

interface Answer { s: number, at: number, ok: boolean, url: string }

/** The host's side of a probe running in a lab node. */
class Probe {
  private readonly proc: ProbeProcess<Answer>

  constructor (lab: string, node: string, target: { app: string } | { url: string }) {
    const args = ['lab', '--lab', lab, 'exec', node, '--', NODE_BIN, SELF, 'probe', ...('app' in target ? ['--app', target.app, '--lab', lab] : ['--url', target.url])]
    this.proc = new ProbeProcess(args, m => m.t === 'r' ? { s: m.s as number, at: m.at as number, ok: m.ok as boolean, url: m.url as string } : undefined)
  }

  get answers (): Answer[] { return this.proc.lines }

  /** Time of the first good answer after `after` from a URL `want` accepts. */
  async firstOk (after: number, want: (url: string) => boolean = () => true, timeoutMs = 60_000): Promise<number> {
    const { value } = await waitFor(async () => {
      this.proc.check()
      return this.answers.find(a => a.ok && a.at > after && want(a.url))?.at
    }, timeoutMs, 'the probe to get an answer', 20)
    return value
  }

  async stop (): Promise<void> { await this.proc.stop() }

  /** Good answers' times, sorted. */
  oks (): number[] {
    return this.answers.filter(a => a.ok).map(a => a.at).sort((a, b) => a - b)
  }
}

/** Longest time between two consecutive good answers, over the pairs that reach into [from, to]. */
function longestGap (oks: number[], from: number, to: number): number {
  let best = 0
  for (let i = 1; i < oks.length; i++) {
    const a = oks[i - 1] as number
    const b = oks[i] as number
    if (b < from || a > to) continue
    best = Math.max(best, b - a)
  }
  return best
}

/** Gaps above `min` ms in [from, to], as "+OFFSET: LENGTH" from `from`. */
function gapsOver (oks: number[], from: number, to: number, min: number): string[] {
  const out: string[] = []
  for (let i = 1; i < oks.length; i++) {
    const a = oks[i - 1] as number
    const b = oks[i] as number
    if (b < from || a > to || b - a < min) continue
    out.push(`+${fmtMs(a - from)}: ${fmtMs(b - a)}`)
  }
  return out
}

// ---- the benchmark ---------------------------------------------------------

const { values: opts } = parseArgs({ args: process.argv.slice(2), allowPositionals: true, strict: false, options: { quick: { type: 'boolean', default: false }, mb: { type: 'string', default: '1024' } } })
const quick = opts.quick === true
const DATA_MB = Number(opts.mb)
const FILE_MB = 64
const CHANGE_MB = 10
const RUNS = quick ? 1 : 3
const log = (s: string): void => { process.stderr.write(`bench:migration: ${s}\n`) }

const lab = new LabHandle('bmig')
const problems: string[] = []
const benchStart = performance.now()
const benchStartedAt = Date.now()
const elapsed = (): string => `${Math.round((performance.now() - benchStart) / 1000)} s`

class ProductError extends Error {}

async function dc (node: string, args: string[]): Promise<Run> {
  return await lab.exec(node, ['dcloud', ...args])
}

/** Runs dcloud on a node; a failure becomes a ProductError carrying the exact command and what it printed. */
async function dcOk (node: string, args: string[]): Promise<string> {
  const r = await dc(node, args)
  if (r.code !== 0) throw new ProductError(`\`dcloud ${args.join(' ')}\` on ${node} exited ${r.code}: ${(r.stderr.trim() || r.stdout.trim()).split('\n').slice(-6).join(' / ')}`)
  return r.stdout
}

async function apps (node: string): Promise<AppView[]> {
  return await apiGet<AppView[]>('/v1/apps', { socketPath: lab.lab.agentSocket(node), describe: node }, 5000)
}

async function appOn (node: string, name: string): Promise<AppView | undefined> {
  return (await apps(node)).find(a => a.name === name)
}

function docker (node: string, ...args: string[]): Promise<string> {
  return run('docker', ['-H', `unix://${lab.lab.dockerSocket(node)}`, ...args], { timeoutMs: 120_000 })
}

async function mountpoint (node: string, volume: string): Promise<string> {
  return (await docker(node, 'volume', 'inspect', volume, '--format', '{{.Mountpoint}}')).trim()
}

/** Lines of a node's agent log from `since` (ms since the epoch) on, with their time. */
async function agentLog (node: string, since: number): Promise<Array<{ at: number, line: string }>> {
  const text = await readFile(join(lab.lab.nodeDir(node), 'agent.log'), 'utf8').catch(() => '')
  const out: Array<{ at: number, line: string }> = []
  for (const line of text.split('\n')) {
    const at = Date.parse(line.slice(0, 24))
    if (Number.isFinite(at) && at >= since) out.push({ at, line })
  }
  return out
}

function fmtBytes (n: number): string {
  return n >= MiB ? `${(n / MiB).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`
}

/** The snapshot service's own line (not "handed off: stopped, final snapshot taken"). */
const isSnapshotTaken = (line: string): boolean => line.includes('[agent:snapshots] snapshot taken ')

function field (line: string, name: string): string | undefined {
  return new RegExp(`(?:^| )${name}=(\\S+)`).exec(line)?.[1]
}

/** The "snapshot taken" line of snapshot `id` (or the last one of `app`) in a node's log since `since`. */
async function snapshotTaken (node: string, app: string, since: number, id?: string): Promise<{ quiescedMs: number, ms: number, added: number } | null> {
  const lines = (await agentLog(node, since)).filter(l => isSnapshotTaken(l.line) && field(l.line, 'app') === app && (id === undefined || field(l.line, 'id') === id))
  const l = lines.at(-1)
  if (l === undefined) return null
  return { quiescedMs: Number(field(l.line, 'quiescedMs')), ms: Number(field(l.line, 'ms')), added: Number(field(l.line, 'added')) }
}

async function fillRandom (dir: string, totalMb: number): Promise<void> {
  const buf = Buffer.alloc(16 * MiB)
  for (let i = 0, left = totalMb; left > 0; i++, left -= FILE_MB) {
    const fh = await open(join(dir, `blob-${String(i).padStart(3, '0')}`), 'w')
    try {
      for (let done = 0; done < Math.min(FILE_MB, left); done += 16) {
        randomFillSync(buf)
        await fh.write(buf, 0, Math.min(16, Math.min(FILE_MB, left) - done) * MiB)
      }
    } finally { await fh.close() }
  }
}

/** Overwrites CHANGE_MB MiB in the middle of one of the files (a different one each time). */
async function changeData (dir: string, round: number): Promise<void> {
  const files = Math.ceil(DATA_MB / FILE_MB)
  const fh = await open(join(dir, `blob-${String(round % files).padStart(3, '0')}`), 'r+')
  try {
    const buf = Buffer.alloc(CHANGE_MB * MiB)
    randomFillSync(buf)
    await fh.write(buf, 0, buf.length, Math.min(8 * MiB, Math.max(0, Math.min(FILE_MB, DATA_MB) - CHANGE_MB) * MiB))
  } finally { await fh.close() }
}

// ---- 1. planned moves ------------------------------------------------------

interface MoveRun {
  from: string
  to: string
  reportedMs: number | null
  totalMs: number
  clientMs: number | null
  gaps: string[]
  snapshotBefore: { ms: number, quiescedMs: number | null } | null
  breakdown: string
  /** Attempts the leader gave up on before the one that worked, with their error. */
  failedAttempts: string[]
  /** From the leader starting the move to asking the source to stop. */
  beforeStop?: string
  error?: string
}

async function moveOnce (i: number, from: string, to: string, prober: string): Promise<MoveRun> {
  const res: MoveRun = { from, to, reportedMs: null, totalMs: 0, clientMs: null, gaps: [], snapshotBefore: null, breakdown: '', failedAttempts: [] }
  // The last snapshot, then 10 MiB changed after it.
  const s0 = Date.now()
  const made = JSON.parse(await dcOk(prober, ['snapshot', 'create', 'bigvol', '--json'])) as SnapshotView & { replicatedTo: string[] }
  const taken = await snapshotTaken(from, 'bigvol', s0, made.id)
  res.snapshotBefore = { ms: Date.now() - s0, quiescedMs: taken?.quiescedMs ?? null }
  log(`  run ${i + 1}: snapshot ${made.id} on ${from} in ${fmtMs(Date.now() - s0)} (app paused ${taken !== null ? fmtMs(taken.quiescedMs) : '?'}, replicated to ${made.replicatedTo.join(',') || 'nobody'})`)
  await changeData(await mountpoint(from, 'dcloud-bigvol-data'), i)
  const probe = new Probe(lab.name, prober, { app: 'bigvol' })
  try {
    await probe.firstOk(0)
    await sleep(1000)
    log(`  run ${i + 1}: dcloud app move bigvol ${to}`)
    const t0 = Date.now()
    const r = await dc(prober, ['app', 'move', 'bigvol', to])
    const t1 = Date.now()
    res.totalMs = t1 - t0
    if (r.code !== 0) {
      res.error = `\`dcloud app move bigvol ${to}\` exited ${r.code}: ${(r.stderr.trim() || r.stdout.trim()).split('\n').slice(-6).join(' / ')}`
      problems.push(`move run ${i + 1}: ${res.error}`)
      log(`  run ${i + 1}: ${res.error}`)
    }
    process.stderr.write(r.stdout)
    const m = /downtime (\d+) ms/.exec(r.stdout)
    if (m !== null) res.reportedMs = Number(m[1])
    if (res.reportedMs === null && r.code === 0) problems.push(`move run ${i + 1}: \`dcloud app move\` printed no downtime: ${r.stdout.trim()}`)
    const back = await probe.firstOk(t0, url => url.includes(`//${ip(to)}/`), 60_000).catch(() => null)
    if (back !== null) {
      res.clientMs = longestGap(probe.oks(), t0, back)
      res.gaps = gapsOver(probe.oks(), t0, back, 200)
    } else problems.push(`move run ${i + 1}: the app never answered on ${to} within 60 s of the move's end`)
    // Where the downtime went, from the agents' logs.
    const lines = (await Promise.all(['n1', 'n2', 'n3'].map(async n => (await agentLog(n, t0)).map(l => ({ ...l, node: n }))))).flat().sort((a, b) => a.at - b.at)
    const find = (node: string, text: string): number | undefined => lines.find(l => l.node === node && l.line.includes(text) && l.line.includes('bigvol'))?.at
    const done = lines.find(l => l.line.includes('move: done') && l.line.includes('app=bigvol'))
    for (const l of lines) {
      if (l.line.includes('operation failed') && l.line.includes('move bigvol')) {
        const err = /error=(.*)$/.exec(l.line)?.[1] ?? l.line
        res.failedAttempts.push(`${fmtMs(l.at - t0)} into the move: ${err}`)
        problems.push(`move run ${i + 1} (${from} → ${to}): an attempt failed and the leader tried again; its log: \`operation failed op=move bigvol … error=${err}\``)
      }
      if (l.line.includes('repository pull failed') && l.line.includes('app=bigvol')) problems.push(`move run ${i + 1}: ${l.node} logged \`${l.line.slice(25, 400)}\``)
    }
    if (done !== undefined) {
      const downtime = Number(field(done.line, 'downtimeMs'))
      const stopped = done.at - downtime
      const handed = find(from, 'handed off')
      const fetched = find(to, 'fetched snapshots for a restore')
      const restoring = find(to, 'restoring snapshot')
      const fetchedBytes = lines.find(l => l.node === to && l.line.includes('fetched snapshots for a restore'))?.line
      const parts: string[] = []
      const copying = lines.find(l => l.line.includes('move: copying while the app runs') && l.line.includes('app=bigvol'))?.at
      const sent = lines.filter(l => l.node === from && l.line.includes('sent repository') && l.line.includes('app=bigvol') && l.at <= stopped).reduce((n, l) => n + Number(field(l.line, 'bytes') ?? 0), 0)
      if (copying !== undefined) res.beforeStop = `${fmtMs(stopped - copying)} while the app ran (snapshot, then the target pulled ${fmtBytes(sent)})`
      if (handed !== undefined) parts.push(`stop + final snapshot ${fmtMs(handed - stopped)}`)
      if (handed !== undefined && fetched !== undefined) parts.push(`pull of the increment ${fmtMs(fetched - handed)}${fetchedBytes !== undefined ? ` (${fmtBytes(Number(field(fetchedBytes, 'bytes')))})` : ''}`)
      if (fetched !== undefined && restoring !== undefined) parts.push(`target prepares ${fmtMs(restoring - fetched)}`)
      if (restoring !== undefined) parts.push(`restore + start ${fmtMs(done.at - restoring)}`)
      res.breakdown = parts.join(', ')
    }
    if (res.failedAttempts.length > 0) log(`  run ${i + 1}: failed attempts: ${res.failedAttempts.join('; ')}`)
    log(`  run ${i + 1}: reported downtime ${res.reportedMs ?? '?'} ms, move took ${fmtMs(res.totalMs)}, client saw ${res.clientMs !== null ? fmtMs(res.clientMs) : '?'}; ${res.breakdown}`)
  } finally {
    await probe.stop()
  }
  return res
}

// ---- 2. naive stop, tar, start ---------------------------------------------

interface NaiveRun { from: string, to: string, stopMs: number, copyMs: number, runMs: number, startedMs: number, answeringMs: number | null }

async function naiveOnce (i: number, from: string, to: string, prober: string, command: string[]): Promise<NaiveRun> {
  const src = `naive${i}`
  const dst = `naive${i + 1}`
  const port = String(18080 + i + 1)
  await docker(to, 'volume', 'create', dst)
  const srcDir = await mountpoint(from, src)
  const dstDir = await mountpoint(to, dst)
  const probe = new Probe(lab.name, prober, { url: `http://${ip(to)}:${port}/` })
  try {
    await sleep(1500) // the probe is up and failing
    const t0 = Date.now()
    await docker(from, 'stop', src)
    const stopped = Date.now()
    await run('sh', ['-c', 'tar -C "$1" -cf - . | tar -C "$2" -xf -', 'naive', srcDir, dstDir], { timeoutMs: 600_000 })
    const copied = Date.now()
    await docker(to, 'run', '-d', '--name', dst, '-v', `${dst}:/data`, '-p', `${port}:8080`, 'dcloud/busybox:lab', ...command)
    const started = Date.now()
    const answering = await probe.firstOk(t0, () => true, 60_000).catch(() => null)
    const r: NaiveRun = { from, to, stopMs: stopped - t0, copyMs: copied - stopped, runMs: started - copied, startedMs: started - t0, answeringMs: answering === null ? null : answering - t0 }
    log(`  naive ${i + 1}: ${from} -> ${to}: stop ${fmtMs(r.stopMs)}, tar ${fmtMs(r.copyMs)}, docker run ${fmtMs(r.runMs)}: started after ${fmtMs(r.startedMs)}, answering after ${r.answeringMs !== null ? fmtMs(r.answeringMs) : '?'}`)
    return r
  } finally {
    await probe.stop()
    await docker(from, 'rm', '-f', src).catch(() => '')
    await docker(from, 'volume', 'rm', src).catch(() => '')
  }
}

// ---- 3. failover -------------------------------------------------------------

interface Failover { app: string, victim: string, deadMs: number | null, answeringMs: number | null, on: string | null, victimWasLeader: boolean, note: string, snapshotMs: number, snapshotPausedMs: number | null }

async function failover (app: string, victim: string, observer: string): Promise<Failover> {
  const res: Failover = { app, victim, deadMs: null, answeringMs: null, on: null, victimWasLeader: false, note: '', snapshotMs: 0, snapshotPausedMs: null }
  const status = await lab.status(observer)
  res.victimWasLeader = status.nodes.find(n => n.id === status.leader)?.name === victim
  const s0 = Date.now()
  const made = JSON.parse(await dcOk(observer, ['snapshot', 'create', app, '--json'])) as SnapshotView & { replicatedTo: string[] }
  res.snapshotMs = Date.now() - s0
  res.snapshotPausedMs = (await snapshotTaken(victim, app, s0, made.id))?.quiescedMs ?? null
  log(`  ${app}: snapshot ${made.id} in ${fmtMs(Date.now() - s0)} (app paused ${res.snapshotPausedMs !== null ? fmtMs(res.snapshotPausedMs) : '?'}), replicated to ${made.replicatedTo.join(',') || 'nobody'}`)
  const probe = new Probe(lab.name, observer, { app })
  try {
    await probe.firstOk(0)
    await sleep(1000)
    const t0 = Date.now()
    await lab.cmd('kill', victim)
    const dead = waitFor(async () => {
      const s = await lab.status(observer)
      return s.nodes.find(n => n.name === victim)?.state === 'dead' ? Date.now() : undefined
    }, 60_000, `${victim} dead on ${observer}`, 25).then(r => { res.deadMs = r.value - t0 }, (err: Error) => { problems.push(`failover of ${app}: ${err.message}`) })
    const back = await probe.firstOk(t0, url => !url.includes(`//${ip(victim)}:`), 300_000).catch((err: Error) => { problems.push(`failover of ${app}: not answering on a survivor within 300 s (${err.message})`); return null })
    await dead
    if (back !== null) res.answeringMs = back - t0
    // The leader records the relocation once the restore op returned, which can be after the app first answers.
    const a = await waitFor(async () => {
      const x = await appOn(observer, app)
      return x?.relocation != null && Date.parse(x.relocation.at) >= t0 - 1000 ? x : undefined
    }, 30_000, `the relocation of ${app} recorded`, 200).then(r => r.value, async () => await appOn(observer, app).catch(() => undefined))
    res.on = a?.node ?? null
    res.note = a?.relocation != null ? `relocation ${a.relocation.kind} from snapshot ${a.relocation.snapshot}${a.relocation.snapshot === made.id ? ' (the one just taken)' : ` (the one just taken was ${made.id})`}` : 'no relocation recorded'
    if (a?.relocation?.kind !== 'failover') {
      const plan = (await agentLog(observer, t0)).find(l => l.line.includes(`op=restore ${app} on`))?.line
      problems.push(`failover of ${app}: after its node was killed, \`dcloud app ls --json\` shows \`relocation: ${JSON.stringify(a?.relocation ?? null)}\`, expected kind 'failover' (from ${victim})${plan !== undefined ? `; the leader's plan: \`${plan.slice(25, 400)}\`` : ''}`)
    }
    log(`  ${app}: ${victim} dead on ${observer} after ${res.deadMs !== null ? fmtMs(res.deadMs) : '?'}, answering on ${res.on ?? '?'} after ${res.answeringMs !== null ? fmtMs(res.answeringMs) : '?'}; ${res.note}`)
  } finally {
    await probe.stop()
  }
  return res
}

/** Until every app runs and nothing changes for `quietMs`. */
async function settle (node: string, quietMs: number, timeoutMs: number): Promise<void> {
  let last = ''
  let since = performance.now()
  await waitFor(async () => {
    const list = await apps(node)
    const key = list.map(a => `${a.name}@${a.node ?? '-'}:${a.state}:${a.generation ?? 0}`).sort().join(' ')
    if (key !== last) { last = key; since = performance.now() }
    return list.every(a => a.state === 'running') && performance.now() - since > quietMs ? true : undefined
  }, timeoutMs, 'a settled cluster', 500)
}

// ---- 4. snapshot overhead ---------------------------------------------------

interface WriteWindow { acked: number, seconds: number, perS: number, longestGapMs: number, snapshotsDuring: number, snapshot?: { id: string, ms: number, quiescedMs: number | null } }

async function writeWindow (host: string, client: string, writer: string, withSnapshot: boolean): Promise<WriteWindow> {
  const w = startLabWriters(lab.name, writer, { app: 'notes' }, [client])
  await waitFor(async () => { w.assertRunning(); return w.ackCount() > 0 ? true : undefined }, 30_000, `${client}: a first acknowledgement`)
  await sleep(1000) // past the first writes of a fresh process
  const t0 = Date.now()
  const a0 = w.ackCount()
  let snapshot: WriteWindow['snapshot']
  let snapshotError: unknown = null
  const snapping = withSnapshot
    ? (async () => {
        await sleep(5000)
        const s0 = Date.now()
        const made = JSON.parse(await dcOk(host, ['snapshot', 'create', 'notes', '--json'])) as SnapshotView
        const taken = await snapshotTaken(host, 'notes', s0, made.id)
        snapshot = { id: made.id, ms: Date.now() - s0, quiescedMs: taken?.quiescedMs ?? null }
      })().catch((err: unknown) => { snapshotError = err })
    : Promise.resolve()
  await sleep(10_000)
  await snapping // a snapshot that runs past the 10 s stretches the window
  const t1 = Date.now()
  const a1 = w.ackCount()
  const [summary] = await w.stop()
  if (snapshotError !== null) throw snapshotError
  const snapshotsDuring = (await agentLog(host, t0)).filter(l => isSnapshotTaken(l.line) && field(l.line, 'app') === 'notes' && l.at <= t1).length
  const seconds = (t1 - t0) / 1000
  return { acked: a1 - a0, seconds, perS: (a1 - a0) / seconds, longestGapMs: summary?.longestGapMs ?? 0, snapshotsDuring, ...(snapshot !== undefined ? { snapshot } : {}) }
}

// ---- main --------------------------------------------------------------------

/** Labs other than ours on this machine (they share its cores). */
async function otherLabs (): Promise<string[]> {
  const out = await run('ip', ['netns', 'list']).catch(() => '')
  const names = new Set<string>()
  for (const m of out.matchAll(/^dcl-([a-z0-9]+)-hub\b/gm)) if (m[1] !== lab.name) names.add(m[1] as string)
  return [...names]
}

/** Snapshots that kept their app paused over `minMs`: "APP on NODE: paused N for X new". */
async function longPauses (since: number, minMs: number): Promise<string[]> {
  const out: string[] = []
  for (const n of ['n1', 'n2', 'n3']) {
    for (const l of await agentLog(n, since)) {
      if (!isSnapshotTaken(l.line) || !(Number(field(l.line, 'quiescedMs')) > minMs)) continue
      out.push(`${field(l.line, 'app') ?? '?'} on ${n} paused ${fmtMs(Number(field(l.line, 'quiescedMs')))} by snapshot ${field(l.line, 'id') ?? '?'} (${field(l.line, 'purpose') ?? '?'}), which added ${fmtBytes(Number(field(l.line, 'added')))} of ${fmtBytes(Number(field(l.line, 'bytes')))}`)
    }
  }
  return out
}

/** Paused snapshots after which the leader planned a restart of the app as failed: the pause failed its healthcheck. */
async function pausesSeenAsFailures (since: number): Promise<{ paused: number, restarted: string[] }> {
  const lines = (await Promise.all(['n1', 'n2', 'n3'].map(async n => (await agentLog(n, since)).map(l => ({ ...l, node: n }))))).flat().sort((x, y) => x.at - y.at)
  const pauses = lines.filter(l => isSnapshotTaken(l.line) && Number(field(l.line, 'quiescedMs')) > 0)
  const restarted: string[] = []
  for (const p of pauses) {
    const app = field(p.line, 'app') ?? ''
    const r = lines.find(l => l.at >= p.at - 500 && l.at <= p.at + 5000 && l.line.includes(`op=place ${app} on`) && l.line.includes('restart: failed'))
    if (r !== undefined) restarted.push(`${app} (paused ${fmtMs(Number(field(p.line, 'quiescedMs')))}): \`${r.line.slice(25, 300)}\``)
  }
  return { paused: pauses.length, restarted }
}

async function main (): Promise<void> {
  const others = new Set(await otherLabs())
  const moves: MoveRun[] = []
  const naive: NaiveRun[] = []
  const failovers: Failover[] = []
  let quiet: WriteWindow | null = null
  let snapped: WriteWindow | null = null
  let initial: { ms: number, quiescedMs: number | null, replicatedTo: string[] } | null = null
  let nodes = { a: 'n1', b: 'n2', c: 'n3' }
  const part = async (what: string, fn: () => Promise<void>): Promise<void> => {
    try {
      await fn()
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err)
      problems.push(`${what}: ${msg}`)
      log(`${what} failed: ${msg}`)
    }
  }

  try {
    log(`lab up, 3 nodes (${elapsed()})`)
    // A 1 GiB volume, its snapshots and the naive copy need more than a node's default 4 GiB disk.
    await lab.up(3, [], { diskSize: '12G' })
    const { value: leader } = await waitFor(async () => {
      const s = await lab.status('n1')
      const l = s.nodes.find(n => n.id === s.leader)
      return l !== undefined && s.nodes.every(n => n.state === 'alive') ? l.name : undefined
    }, 60_000, 'a leader and all nodes alive')
    const [a, b] = ['n1', 'n2', 'n3'].filter(n => n !== leader) as [string, string]
    // The app moves between the two followers; the leader's node runs the client, so killing the app's node never costs an election.
    nodes = { a, b, c: leader }
    log(`leader ${leader}; bigvol moves between ${a} and ${b}; clients run on ${leader} (${elapsed()})`)

    await part('planned moves of bigvol', async () => {
      await dcOk(leader, ['app', 'install', BIGVOL, '--node', a])
      const dir = await mountpoint(a, 'dcloud-bigvol-data')
      log(`writing ${DATA_MB} MiB of random bytes into ${dir} (${elapsed()})`)
      await fillRandom(dir, DATA_MB)
      // The naive comparison's own copy of the same data.
      await docker(a, 'volume', 'create', 'naive0')
      await run('cp', ['-a', `${dir}/.`, `${await mountpoint(a, 'naive0')}/`], { timeoutMs: 600_000 })
      log(`first snapshot of bigvol (${elapsed()})`)
      const s0 = Date.now()
      const made = JSON.parse(await dcOk(leader, ['snapshot', 'create', 'bigvol', '--json'])) as SnapshotView & { replicatedTo: string[] }
      const taken = await snapshotTaken(a, 'bigvol', s0, made.id)
      initial = { ms: Date.now() - s0, quiescedMs: taken?.quiescedMs ?? null, replicatedTo: made.replicatedTo }
      log(`  snapshot ${made.id} in ${fmtMs(initial.ms)}, replicated to ${made.replicatedTo.join(',') || 'nobody'} (${elapsed()})`)
      for (let i = 0; i < RUNS; i++) {
        const [from, to] = i % 2 === 0 ? [a, b] : [b, a]
        log(`move ${i + 1}/${RUNS}: ${from} -> ${to} (${elapsed()})`)
        moves.push(await moveOnce(i, from, to, leader))
      }
    })

    await part('naive stop-tar-start', async () => {
      const { manifest } = await loadApp(BIGVOL)
      const command = manifest.compose.services.web?.command
      if (!Array.isArray(command)) throw new Error('bigvol has no command list')
      await docker(a, 'run', '-d', '--name', 'naive0', '-v', 'naive0:/data', '-p', '18080:8080', 'dcloud/busybox:lab', ...command as string[])
      for (let i = 0; i < RUNS; i++) {
        const [from, to] = i % 2 === 0 ? [a, b] : [b, a]
        log(`naive ${i + 1}/${RUNS}: ${from} -> ${to} (${elapsed()})`)
        naive.push(await naiveOnce(i, from, to, leader, command as string[]))
      }
      // The last copy goes too: the disk is for what follows.
      const last = `naive${RUNS}`
      const at = RUNS % 2 === 1 ? b : a
      await docker(at, 'rm', '-f', last).catch(() => '')
      await docker(at, 'volume', 'rm', last).catch(() => '')
    })

    await part('snapshot overhead', async () => {
      log(`notes on ${a}: write throughput without and with a snapshot (${elapsed()})`)
      await dcOk(leader, ['app', 'install', NOTES, '--node', a])
      // Its first scheduled snapshot comes within seconds of the start: let it pass before measuring.
      await waitFor(async () => (await snapshotTaken(a, 'notes', 0)) !== null ? true : undefined, 30_000, 'the first scheduled snapshot of notes', 500)
        .catch(() => { log('  no scheduled snapshot of notes seen in 30 s; going on') })
      quiet = await writeWindow(a, 'quiet', leader, false)
      log(`  no snapshot: ${quiet.acked} writes in ${quiet.seconds.toFixed(1)} s = ${quiet.perS.toFixed(1)}/s, longest gap ${fmtMs(quiet.longestGapMs)}, snapshots during: ${quiet.snapshotsDuring}`)
      snapped = await writeWindow(a, 'snap', leader, true)
      const sn = snapped.snapshot
      log(`  one snapshot: ${snapped.acked} writes in ${snapped.seconds.toFixed(1)} s = ${snapped.perS.toFixed(1)}/s, longest gap ${fmtMs(snapped.longestGapMs)}; snapshot ${sn?.id ?? '?'} took ${sn !== undefined ? fmtMs(sn.ms) : '?'}, app paused ${sn?.quiescedMs != null ? fmtMs(sn.quiescedMs) : '?'}`)
      if (quiet.snapshotsDuring > 0) problems.push(`snapshot overhead: ${quiet.snapshotsDuring} snapshot(s) of notes were taken during the window meant to have none`)
    })

    await part('failover of notes', async () => {
      const where = (await appOn(leader, 'notes'))?.node
      if (where == null) throw new Error('notes is not running anywhere')
      log(`failover: kill ${where}, which runs notes (${elapsed()})`)
      failovers.push(await failover('notes', where, leader))
      await lab.cmd('start', where)
      await waitFor(async () => Object.values(await lab.view(leader)).every(s => s === 'alive') ? true : undefined, 60_000, 'all alive again')
      await settle(leader, 5000, 120_000)
    })

    await part('failover of bigvol', async () => {
      if (quick) return
      if (performance.now() - benchStart > 8 * 60_000) { problems.push(`failover of bigvol: skipped, the bench had already run ${elapsed()}`); return }
      const where = (await appOn(leader, 'bigvol'))?.node
      if (where == null) throw new Error('bigvol is not running anywhere')
      log(`failover: kill ${where}, which runs bigvol (${elapsed()})`)
      failovers.push(await failover('bigvol', where, leader))
    })
    const seen = await pausesSeenAsFailures(benchStartedAt)
    if (seen.restarted.length > 0) problems.push(`${seen.restarted.length} of ${seen.paused} paused snapshots were followed within 5 s by the leader planning a restart of the app as failed (its healthcheck fails while it is paused; the redeploy found it unchanged): ${seen.restarted.slice(0, 3).join('; ')}`)
    const long = await longPauses(benchStartedAt, 3000)
    if (long.length > 0) problems.push(`snapshots that kept the app paused over 3 s: ${long.join('; ')}`)
    for (const o of await otherLabs()) others.add(o)
  } finally {
    log(`lab down (${elapsed()})`)
    await lab.down().catch((err: Error) => { problems.push(`lab down: ${err.message}`) })
  }

  // ---- the report ----------------------------------------------------------
  const s = (xs: number[]): string => xs.length === 0 ? 'n/a' : xs.length === 1 ? fmtMs(xs[0] as number) : `${fmtMs(median(xs))} median (${xs.map(fmtMs).join(', ')})`
  const reported = moves.map(m => m.reportedMs).filter((x): x is number => x !== null)
  const client = moves.map(m => m.clientMs).filter((x): x is number => x !== null)
  const naiveStarted = naive.map(n => n.startedMs)
  const naiveAnswer = naive.map(n => n.answeringMs).filter((x): x is number => x !== null)
  const ratio = reported.length > 0 && naiveStarted.length > 0 ? median(reported) / median(naiveStarted) : NaN
  const ratioClient = client.length > 0 && naiveAnswer.length > 0 ? median(client) / median(naiveAnswer) : NaN
  const fo = (app: string): Failover | undefined => failovers.find(f => f.app === app)
  const fNotes = fo('notes')
  const fBig = fo('bigvol')
  const met = (ok: boolean | null): string => ok === null ? 'not measured' : ok ? 'met' : 'missed'
  const size = DATA_MB >= 1024 ? `${(DATA_MB / 1024).toFixed(DATA_MB % 1024 === 0 ? 0 : 1)} GiB` : `${DATA_MB} MiB`
  const q = quiet as WriteWindow | null
  const w = snapped as WriteWindow | null
  const init = initial as { ms: number, quiescedMs: number | null, replicatedTo: string[] } | null
  const { a, b, c } = nodes
  const flags = [...(quick ? ['--quick'] : []), ...(DATA_MB !== 1024 ? ['--mb', String(DATA_MB)] : [])]
  const rows = [
    `| planned move, ${size} volume, ${CHANGE_MB} MiB changed since the last snapshot: downtime dcloud reports | ${s(reported)} | < 3 s |`,
    `| the same, as a client polling every 50 ms from ${c} saw it (longest gap between answers) | ${s(client)} | |`,
    `| the same, \`dcloud app move\` from start to end | ${s(moves.map(m => m.totalMs))} | |`,
    `| naive: \`docker stop\`, tar pipe into a fresh volume on the other engine, \`docker run\`: stop → started | ${s(naiveStarted)} | |`,
    `| naive: stop → answering HTTP (polled every 50 ms from ${c}) | ${s(naiveAnswer)} | |`,
    `| ratio ours / naive (reported downtime / stop → started) | ${Number.isFinite(ratio) ? ratio.toFixed(2) : 'n/a'} | < 0.1 |`,
    `| ratio ours / naive, as the client saw it (longest gap / stop → answering) | ${Number.isFinite(ratioClient) ? ratioClient.toFixed(2) : 'n/a'} | |`,
    `| stateful failover (notes, a few KiB): \`lab kill\` → dead on the leader | ${fNotes?.deadMs != null ? fmtMs(fNotes.deadMs) : 'n/a'} | |`,
    `| the same: \`lab kill\` → notes answering on a survivor | ${fNotes?.answeringMs != null ? fmtMs(fNotes.answeringMs) : 'n/a'} | |`,
    `| stateful failover (bigvol, ${size}): \`lab kill\` → dead on the leader | ${fBig?.deadMs != null ? fmtMs(fBig.deadMs) : 'n/a'} | |`,
    `| the same: \`lab kill\` → bigvol answering on a survivor | ${fBig?.answeringMs != null ? fmtMs(fBig.answeringMs) : 'n/a'} | |`,
    `| notes under a write loop, 10 s, no snapshot: acknowledged writes, longest gap | ${q !== null ? `${q.perS.toFixed(1)}/s, ${fmtMs(q.longestGapMs)}` : 'n/a'} | |`,
    `| the same with one \`dcloud snapshot create\` in the middle | ${w !== null ? `${w.perS.toFixed(1)}/s, ${fmtMs(w.longestGapMs)}${w.seconds > 10.5 ? ` (over ${w.seconds.toFixed(1)} s: the snapshot ran past the 10 s)` : ''}` : 'n/a'} | |`,
    `| notes paused by that snapshot (agent's \`quiescedMs\`); the snapshot's wall time | ${w?.snapshot !== undefined ? `${w.snapshot.quiescedMs !== null ? fmtMs(w.snapshot.quiescedMs) : '?'}; ${fmtMs(w.snapshot.ms)}` : 'n/a'} | |`
  ]
  const details: string[] = []
  if (init !== null) details.push(`- First snapshot of the ${size} (restic pass while running, then paused for the pass that counts): ${fmtMs(init.ms)} including replication to ${init.replicatedTo.join(', ') || 'no peer'}; the app was paused ${init.quiescedMs !== null ? fmtMs(init.quiescedMs) : '?'}.`)
  moves.forEach((m, i) => {
    details.push(`- Move ${i + 1}, ${m.from} → ${m.to}: reported ${m.reportedMs !== null ? `${m.reportedMs} ms` : 'n/a'}, client ${m.clientMs !== null ? fmtMs(m.clientMs) : 'n/a'}, whole move ${fmtMs(m.totalMs)}${m.beforeStop !== undefined ? `, of which ${m.beforeStop}` : ''}${m.breakdown !== '' ? `; downtime: ${m.breakdown}` : ''}` +
      `${m.gaps.length > 0 ? `; client gaps over 200 ms from the move's start: ${m.gaps.join(', ')}` : ''}` +
      `${m.failedAttempts.length > 0 ? `; ${m.failedAttempts.length} failed attempt(s) first (${m.failedAttempts.join('; ')})` : ''}` +
      `${m.snapshotBefore !== null ? `. The snapshot before it took ${fmtMs(m.snapshotBefore.ms)} and paused the app ${m.snapshotBefore.quiescedMs !== null ? fmtMs(m.snapshotBefore.quiescedMs) : '?'}` : ''}${m.error !== undefined ? `. Failed: ${m.error}` : ''}.`)
  })
  naive.forEach((n, i) => details.push(`- Naive ${i + 1}, ${n.from} → ${n.to}: stop ${fmtMs(n.stopMs)}, tar pipe ${fmtMs(n.copyMs)}, \`docker run\` ${fmtMs(n.runMs)}; answering after ${n.answeringMs !== null ? fmtMs(n.answeringMs) : 'n/a'}.`))
  for (const f of failovers) details.push(`- Failover of ${f.app}: killed ${f.victim}${f.victimWasLeader ? ' (the leader: includes an election)' : ' (a follower)'}; back on ${f.on ?? '?'}; ${f.note}. The snapshot just before the kill took ${fmtMs(f.snapshotMs)} and paused the app ${f.snapshotPausedMs !== null ? fmtMs(f.snapshotPausedMs) : '?'}.`)
  const targets = [
    `- Planned move downtime under 3 s: ${met(reported.length > 0 ? median(reported) < 3000 : null)} (${reported.length > 0 ? fmtMs(median(reported)) : 'n/a'} median).`,
    `- Under a tenth of the naive copy: ${met(Number.isFinite(ratio) ? ratio < 0.1 : null)} (${Number.isFinite(ratio) ? ratio.toFixed(2) : 'n/a'}).`
  ]
  const body = [
    `Measured ${new Date().toISOString().slice(0, 10)} by \`npm run bench:migration${flags.length > 0 ? ` -- ${flags.join(' ')}` : ''}\` on ${(await run('nproc', [])).trim()} cores, Node ${process.versions.node}, lab of 3 nodes: bigvol moves between ${a} and ${b}, clients run on ${c} (the leader). ${size} of random bytes in ${FILE_MB} MiB files; ${CHANGE_MB} MiB of one file overwritten after the snapshot before each move.`,
    '',
    '| measure | result | target |',
    '| --- | --- | --- |',
    ...rows,
    '',
    ...targets,
    '',
    ...details,
    '',
    'All lab nodes share this machine\'s disk and page cache: the naive copy is a local `tar | tar` pipe between two engines\' volume directories, no network, no fsync, data still in the page cache. That favours the naive way; over a real network it would add the transfer of the whole volume. Our move copies through restic and libp2p even here. Client-side times are from a probe in ' + `${c}'s namespace sending a GET every 50 ms (not waiting for the previous one, 2 s timeout); it follows the app's endpoint through ${c}'s agent every 100 ms, so a new address costs up to that much more. "Reported" is the product's own figure: from the leader asking the source to stop until the target runs the app. Failover times count from the start of \`dcloud lab kill\`; "dead" is the leader's membership as \`/v1/status\` shows it, polled every 25 ms.`,
    ...(others.size > 0 ? ['', `Another lab (${[...others].join(', ')}) was running on the same machine during this run: its load is in these numbers.`] : []),
    ...problemLines(problems)
  ].join('\n')
  await writeBenchSection('migration', 'Migration: planned moves, naive copy, failover, snapshot overhead', body)
  process.stdout.write(body + '\n')
}

if (process.argv[2] === 'probe') {
  await probeMain(process.argv.slice(3))
} else {
  await main()
}
