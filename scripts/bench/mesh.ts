/**
 * npm run bench:mesh: how fast the mesh forms and notices a death, and what an
 * idle agent costs, measured on real lab nodes. Writes its section of
 * docs/benchmarks.md. Not a test: the numbers are reported, never asserted.
 *
 * Options: --quick (10 s windows instead of 60 s, one kill; for trying it out).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { LabHandle, waitFor } from '../../test/lab/harness.ts'
import { run } from '../lab/sh.ts'
import { writeBenchSection, median, fmtMs } from './report.ts'
import { DEFAULT_HEARTBEAT_MS, DEFAULT_LIVENESS } from '../../scheduler/liveness.ts'

const quick = process.argv.includes('--quick')
const WINDOW_S = quick ? 10 : 60
const KILLS = quick ? 1 : 3
const CLK_TCK = 100

interface Idle { rssMb: number[], cpuPct: number[], txBps: number[], rxBps: number[], falseAlarms: number }

/**
 * Lab up, then until every node sees every other alive. `afterListenMs` is
 * from the moment the last agent listened to the moment the last node heard
 * of its last peer, both by the agents' own clocks (one machine, one clock).
 */
async function membership (lab: LabHandle, nodes: number): Promise<{ upMs: number, afterListenMs: number }> {
  const started = performance.now()
  await lab.up(nodes)
  const names = Array.from({ length: nodes }, (_, i) => `n${i + 1}`)
  await waitFor(async () => {
    const views = await Promise.all(names.map(async n => await lab.view(n)))
    return views.every(v => names.every(n => v[n] === 'alive')) ? true : undefined
  }, 60_000, `all ${nodes} nodes alive everywhere`, 50)
  const upMs = performance.now() - started
  const metrics = await Promise.all(names.map(async n => await lab.metrics(n)))
  const lastListening = Math.max(...metrics.map(m => m.listeningAt ?? 0))
  const complete = Math.max(...metrics.map(m => Math.max(0, ...Object.values(m.firstHeardAt))))
  return { upMs, afterListenMs: Math.max(0, complete - lastListening) }
}

function procStat (pid: number): Promise<{ cpuTicks: number, rssKb: number }> {
  return Promise.all([readFile(`/proc/${pid}/stat`, 'utf8'), readFile(`/proc/${pid}/status`, 'utf8')]).then(([stat, status]) => {
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return { cpuTicks: Number(f[11]) + Number(f[12]), rssKb: Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) }
  })
}

/** Bytes each node's port on the lab switch has carried: what the node sent (rx here) and received (tx). */
async function portBytes (lab: LabHandle): Promise<Map<string, { sent: number, received: number }>> {
  const out = await run('ip', ['-n', lab.lab.hubNs, '-s', '-j', 'link', 'show'])
  const links = JSON.parse(out) as Array<{ ifname: string, stats64?: { rx: { bytes: number }, tx: { bytes: number } } }>
  return new Map(links.filter(l => /^n\d+$/.test(l.ifname)).map(l => [l.ifname, { sent: l.stats64?.rx.bytes ?? 0, received: l.stats64?.tx.bytes ?? 0 }]))
}

async function transitions (lab: LabHandle): Promise<number> {
  const state = await lab.lab.state()
  let count = 0
  for (const n of state.nodes) {
    const log = await readFile(join(lab.lab.nodeDir(n.name), 'agent.log'), 'utf8')
    count += log.split('\n').filter(l => /node is (suspect|dead)/.test(l)).length
  }
  return count
}

async function idle (lab: LabHandle, seconds: number): Promise<Idle> {
  const state = await lab.lab.state()
  const pids = state.nodes.map(n => n.agentPid as number)
  const alarmsBefore = await transitions(lab)
  const before = await Promise.all(pids.map(procStat))
  const bytesBefore = await portBytes(lab)
  await new Promise(resolve => setTimeout(resolve, seconds * 1000))
  const after = await Promise.all(pids.map(procStat))
  const bytesAfter = await portBytes(lab)
  return {
    rssMb: after.map(a => a.rssKb / 1024),
    cpuPct: after.map((a, i) => (a.cpuTicks - before[i]!.cpuTicks) / CLK_TCK / seconds * 100),
    txBps: state.nodes.map(n => ((bytesAfter.get(n.name)?.sent ?? 0) - (bytesBefore.get(n.name)?.sent ?? 0)) / seconds),
    rxBps: state.nodes.map(n => ((bytesAfter.get(n.name)?.received ?? 0) - (bytesBefore.get(n.name)?.received ?? 0)) / seconds),
    falseAlarms: (await transitions(lab)) - alarmsBefore
  }
}

/** Keeps both cores busy, as a Pi transcoding a video would be. */
function burnCpu (): ChildProcess[] {
  return [0, 1].map(() => spawn(process.execPath, ['-e', 'for(;;){}'], { stdio: 'ignore' }))
}

async function killDetection (lab: LabHandle): Promise<number[]> {
  const times: number[] = []
  for (let i = 0; i < KILLS; i++) {
    await waitFor(async () => Object.values(await lab.view('n1')).every(s => s === 'alive') ? true : undefined, 30_000, 'all alive before kill')
    await new Promise(resolve => setTimeout(resolve, 1000 + 317 * i)) // kill at different points of the heartbeat cycle
    const t0 = performance.now()
    await lab.cmd('kill', 'n3')
    await Promise.all(['n1', 'n2'].map(async n => await waitFor(async () => (await lab.view(n)).n3 === 'dead' ? true : undefined, 30_000, `${n} sees n3 dead`, 20)))
    times.push(performance.now() - t0)
    await lab.cmd('start', 'n3')
  }
  return times
}

const stat = (xs: number[], f: (x: number) => string): string => `${f(median(xs))} median, ${f(Math.max(...xs))} max`

async function main (): Promise<void> {
  const lab = new LabHandle('bench')
  const log = (s: string): void => { process.stderr.write(`bench:mesh: ${s}\n`) }
  try {
    log('3 nodes: membership')
    const m3 = await membership(lab, 3)
    log(`3 nodes: idle for ${WINDOW_S} s`)
    const idle3 = await idle(lab, WINDOW_S)
    log(`3 nodes: both cores busy for ${WINDOW_S} s`)
    const burners = burnCpu()
    let busy3: Idle
    try { busy3 = await idle(lab, WINDOW_S) } finally { for (const b of burners) b.kill('SIGKILL') }
    log(`3 nodes: ${KILLS} kill(s)`)
    const kills = await killDetection(lab)
    await lab.down()

    log('10 nodes: membership')
    const m10 = await membership(lab, 10)
    log(`10 nodes: idle for ${WINDOW_S} s`)
    const idle10 = await idle(lab, WINDOW_S)
    await lab.down()

    const mb = (x: number): string => `${x.toFixed(1)} MB`
    const pct = (x: number): string => `${x.toFixed(2)} %`
    const bps = (x: number): string => `${Math.round(x)} B/s`
    const window = DEFAULT_LIVENESS.deadAfterIntervals * DEFAULT_HEARTBEAT_MS
    const body = [
      `Measured ${new Date().toISOString().slice(0, 10)} by \`npm run bench:mesh${quick ? ' -- --quick' : ''}\` on ${(await run('nproc', [])).trim()} cores, one lab node per network namespace (own dockerd and agent), Node ${process.versions.node}. Heartbeat ${DEFAULT_HEARTBEAT_MS} ms, dead after ${window} ms of silence.`,
      '',
      '| measure | result | target |',
      '| --- | --- | --- |',
      `| full membership after the last agent listens, 3 nodes | ${fmtMs(m3.afterListenMs)} | < 2 s |`,
      `| full membership after the last agent listens, 10 nodes | ${fmtMs(m10.afterListenMs)} | < 2 s |`,
      `| \`lab up\` to full membership everywhere, 3 nodes | ${fmtMs(m3.upMs)} | |`,
      `| \`lab up\` to full membership everywhere, 10 nodes | ${fmtMs(m10.upMs)} | |`,
      `| killed node marked dead by both survivors (${kills.length} kills) | ${stat(kills, fmtMs)} | < 5 s |`,
      `| false suspect/dead alarms, 3 nodes idle ${WINDOW_S} s | ${idle3.falseAlarms} | 0 |`,
      `| false suspect/dead alarms, 3 nodes, both cores at 100 % for ${WINDOW_S} s | ${busy3.falseAlarms} | 0 |`,
      `| idle agent RSS, 3 nodes | ${stat(idle3.rssMb, mb)} | < 90 MB |`,
      `| idle agent RSS, 10 nodes | ${stat(idle10.rssMb, mb)} | < 90 MB |`,
      `| idle agent CPU over ${WINDOW_S} s, 3 nodes | ${stat(idle3.cpuPct, pct)} of one core | < 1 % |`,
      `| idle agent CPU over ${WINDOW_S} s, 10 nodes | ${stat(idle10.cpuPct, pct)} of one core | < 1 % |`,
      `| bytes a node sends on the wire, 3 nodes | ${stat(idle3.txBps, bps)} | |`,
      `| bytes a node sends on the wire, 10 nodes | ${stat(idle10.txBps, bps)} | |`,
      `| bytes a node receives on the wire, 10 nodes | ${stat(idle10.rxBps, bps)} | |`,
      '',
      'Wire bytes are counted at each node\'s port of the lab switch: everything the agent and its dockerd send, with TCP, Noise, Yamux, gossipsub, pings and mDNS overhead included.'
    ].join('\n')
    await writeBenchSection('mesh', 'Mesh: membership, failure detection, idle cost', body)
    process.stdout.write(body + '\n')
  } finally {
    await lab.down().catch(() => {})
  }
}

await main()
