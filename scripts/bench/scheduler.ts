/**
 * npm run bench:scheduler: planning speed (pure, simulated nodes, named as
 * such), leader election after the leader dies, and stateless failover side by
 * side with Docker Swarm on the same lab engines. Writes its section of
 * docs/benchmarks.md. Not a test: the numbers are reported, never asserted.
 *
 * Options: --quick (one kill each, a 15 s flapping run).
 */
import { join } from 'node:path'
import { LabHandle, viaFrontDoor, waitFor } from '../../test/lab/harness.ts'
import { benchPlan } from './scheduler-plan.ts'
import { writeBenchSection, median, fmtMs } from './report.ts'
import { run, tryRun } from '../lab/sh.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import type { AppView } from '../../proto/api.ts'

const quick = process.argv.includes('--quick')
const KILLS = quick ? 1 : 3
const FLAP_S = quick ? 15 : 60
const HELLO = join(PROJECT_ROOT, 'apps', 'examples', 'hello')
const log = (s: string): void => { process.stderr.write(`bench:scheduler: ${s}\n`) }
const ip = (node: string): string => `10.213.0.${10 + Number(node.slice(1))}`
const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

async function leader (lab: LabHandle, node: string): Promise<{ id: string, name: string } | null> {
  const s = await lab.status(node)
  const n = s.nodes.find(x => x.id === s.leader)
  return n === undefined || n.state !== 'alive' ? null : { id: n.id, name: n.name }
}

/** Kill the leader; time until every survivor agrees on a new, live one (polled every 20 ms through the API sockets). */
async function electionAfterKill (lab: LabHandle): Promise<number[]> {
  const times: number[] = []
  for (let i = 0; i < KILLS; i++) {
    const { value: old } = await waitFor(async () => await leader(lab, 'n1').catch(() => null) ?? undefined, 30_000, 'a leader')
    const survivors = ['n1', 'n2', 'n3'].filter(n => n !== old.name)
    await sleep(1000 + 137 * i)
    const t0 = performance.now()
    await lab.cmd('kill', old.name)
    await waitFor(async () => {
      const ls = await Promise.all(survivors.map(async n => await leader(lab, n).catch(() => null)))
      return ls.every(l => l !== null && l.id !== old.id && l.id === ls[0]?.id) ? true : undefined
    }, 30_000, 'a new leader', 20)
    times.push(performance.now() - t0)
    await lab.cmd('start', old.name)
    await waitFor(async () => Object.values(await lab.view(survivors[0] as string)).every(s => s === 'alive') ? true : undefined, 30_000, 'all alive again')
  }
  return times
}

/** A hello page answers curl `target` from `from`: ours at its name through `from`'s front door (viaFrontDoor), Swarm's at its published port. */
async function answers (lab: LabHandle, from: string, target: string[]): Promise<boolean> {
  const r = await lab.exec(from, ['curl', '-sf', '--max-time', '0.5', ...target])
  return r.code === 0 && r.stdout.includes('hello')
}

async function apps (lab: LabHandle, node: string): Promise<AppView[]> {
  const r = await lab.exec(node, ['dcloud', 'app', 'ls', '--json'])
  return r.code === 0 ? JSON.parse(r.stdout) as AppView[] : []
}

/** Our stateless failover: kill the (non-leader) node running a hello app, time until it answers on a survivor. */
async function ourFailover (lab: LabHandle): Promise<{ times: number[], falseMoves: number }> {
  const times: number[] = []
  const { value: lead } = await waitFor(async () => await leader(lab, 'n1').catch(() => null) ?? undefined, 30_000, 'a leader')
  const followers = ['n1', 'n2', 'n3'].filter(n => n !== lead.name)
  const ca = await lab.caFile(lead.name)
  for (let i = 0; i < KILLS; i++) {
    // Not pinned (--node pins an app to its node): install until the scheduler puts one on a follower.
    let app: AppView | undefined
    for (let k = 0; app === undefined && k < 6; k++) {
      const r = await lab.exec(lead.name, ['dcloud', 'app', 'install', HELLO, '--name', `fo${i}-${k}`])
      if (r.code !== 0) throw new Error(r.stderr)
      app = (await apps(lab, lead.name)).find(a => a.name === `fo${i}-${k}` && a.node !== lead.name)
    }
    if (app === undefined) throw new Error('the scheduler put every app on the leader')
    const name = app.name
    const victim = app.node as string
    const t0 = performance.now()
    await lab.cmd('kill', victim)
    await waitFor(async () => {
      const a = (await apps(lab, lead.name)).find(x => x.name === name)
      if (a === undefined || a.node === victim || a.state !== 'running' || a.url === null) return undefined
      return await answers(lab, lead.name, viaFrontDoor(a.url, '127.0.0.1', ca)) ? true : undefined
    }, 120_000, `${name} answering on a survivor`, 50)
    times.push(performance.now() - t0)
    await lab.cmd('start', victim)
    await waitFor(async () => Object.values(await lab.view(lead.name)).every(s => s === 'alive') ? true : undefined, 30_000, 'all alive again')
  }
  // Flapping link: cut a node running apps for 1.5 s, heal for 1.5 s, for FLAP_S seconds; count moves.
  // First let the cluster settle (the kills above leave rebalancing to do), so only the flapping can move apps.
  let last = ''
  let since = performance.now()
  await waitFor(async () => {
    const list = await apps(lab, lead.name)
    const key = list.map(a => `${a.name}@${a.node ?? '-'}:${a.state}`).sort().join(' ')
    if (key !== last) { last = key; since = performance.now() }
    return list.every(a => a.state === 'running') && performance.now() - since > 8000 ? true : undefined
  }, 120_000, 'a settled cluster', 500)
  const before = (await apps(lab, lead.name)).map(a => `${a.name}@${a.node ?? '-'}`).sort()
  const flapper = followers[0] as string
  const rest = ['n1', 'n2', 'n3'].filter(n => n !== flapper)
  const end = performance.now() + FLAP_S * 1000
  while (performance.now() < end) {
    await lab.cmd('partition', flapper, rest.join(','))
    await sleep(1500)
    await lab.cmd('heal')
    await sleep(1500)
  }
  await sleep(5000)
  const after = (await apps(lab, lead.name)).map(a => `${a.name}@${a.node ?? '-'}`).sort()
  const falseMoves = after.filter(x => !before.includes(x)).length
  return { times, falseMoves }
}

/** Docker Swarm on the same engines: three managers, a host-mode published service, kill the node running its task. */
async function swarmFailover (lab: LabHandle): Promise<{ times: number[], falseMoves: number }> {
  const D = (node: string, ...cmd: string[]): Promise<string> => lab.cmd('exec', node, '--', ...cmd)
  await D('n1', 'docker', 'swarm', 'init', '--advertise-addr', ip('n1'))
  const token = (await D('n1', 'docker', 'swarm', 'join-token', '-q', 'manager')).trim()
  for (const n of ['n2', 'n3']) await D(n, 'docker', 'swarm', 'join', '--token', token, '--advertise-addr', ip(n), `${ip('n1')}:2377`)
  // Keep tasks off n1 (the first Raft leader) so a kill never costs Swarm a leader election: its best case.
  const self = (await D('n1', 'docker', 'info', '--format', '{{.Swarm.NodeID}}')).trim()
  await D('n1', 'docker', 'node', 'update', '--availability', 'drain', self)
  const times: number[] = []
  for (let i = 0; i < KILLS; i++) {
    const svc = `sw${i}`
    const port = String(18080 + i)
    await D('n1', 'docker', 'service', 'create', '--detach', '--no-resolve-image', '--name', svc, '--publish', `mode=host,target=8080,published=${port}`,
      'dcloud/busybox:lab', 'sh', '-c', 'mkdir -p /www && echo hello-swarm > /www/index.html && exec httpd -f -p 8080 -h /www')
    const { value: where } = await waitFor(async () => {
      for (const n of ['n2', 'n3']) if (await answers(lab, 'n1', [`http://${ip(n)}:${port}/`])) return n
      return undefined
    }, 60_000, `${svc} running`, 200)
    const survivor = where === 'n2' ? 'n3' : 'n2'
    const t0 = performance.now()
    await lab.cmd('kill', where)
    await waitFor(async () => await answers(lab, 'n1', [`http://${ip(survivor)}:${port}/`]) ? true : undefined, 180_000, `${svc} on ${survivor}`, 100)
    times.push(performance.now() - t0)
    await lab.cmd('start', where)
    await sleep(3000)
  }
  const tasks = async (): Promise<number> => Number((await D('n1', 'sh', '-c', 'docker service ps -q $(docker service ls -q) | wc -l')).trim())
  const before = await tasks()
  const end = performance.now() + FLAP_S * 1000
  while (performance.now() < end) {
    await lab.cmd('partition', 'n2', 'n1,n3')
    await sleep(1500)
    await lab.cmd('heal')
    await sleep(1500)
  }
  await sleep(5000)
  return { times, falseMoves: (await tasks()) - before }
}

async function main (): Promise<void> {
  log('planning 1000 apps on 100 simulated nodes')
  const p = await benchPlan()
  const lab = new LabHandle('bsched')
  let election: number[] = []
  let ours = { times: [] as number[], falseMoves: 0 }
  let swarm = { times: [] as number[], falseMoves: 0 }
  try {
    log('3-node lab: leader election after the leader dies')
    await lab.up(3)
    election = await electionAfterKill(lab)
    log('3-node lab: our stateless failover and a flapping link')
    ours = await ourFailover(lab)
    await lab.down()
    log('3-node lab: Docker Swarm\'s stateless failover and a flapping link')
    await lab.up(3)
    // Our agents would compete for nothing here, but keep the engines to Swarm alone.
    for (const n of ['n1', 'n2', 'n3']) {
      const pid = (await lab.lab.node(n)).agentPid
      if (pid !== null) await tryRun('kill', [String(pid)])
    }
    swarm = await swarmFailover(lab)
  } finally {
    await lab.down().catch(() => {})
  }
  const s = (xs: number[]): string => xs.length === 0 ? 'n/a' : `${fmtMs(median(xs))} median (${xs.map(fmtMs).join(', ')})`
  const ratio = median(ours.times) / median(swarm.times)
  const body = [
    `Measured ${new Date().toISOString().slice(0, 10)} by \`npm run bench:scheduler${quick ? ' -- --quick' : ''}\` on ${(await run('nproc', [])).trim()} cores, Node ${process.versions.node}.`,
    '',
    '| measure | result | target |',
    '| --- | --- | --- |',
    `| plan 1000 apps on 100 simulated nodes (pure scheduler, ${p.iterations} runs) | ${fmtMs(p.medianMs)} median, ${fmtMs(p.p95Ms)} p95 | < 50 ms |`,
    `| re-plan after one of the 100 simulated nodes died (${p.failover.replaced} apps re-placed) | ${fmtMs(p.failover.medianMs)} median | |`,
    `| new leader agreed by both survivors after \`lab kill\` of the leader, 3 nodes | ${s(election)} | < 2 s |`,
    `| stateless app answering on a survivor after \`lab kill\` of its node: Dentropy | ${s(ours.times)} | at most half of Swarm's |`,
    `| the same with Docker Swarm 20.10 (3 managers, host-mode port, same engines) | ${s(swarm.times)} | |`,
    `| ratio Dentropy / Swarm | ${Number.isFinite(ratio) ? ratio.toFixed(2) : 'n/a'} | ≤ 0.5 |`,
    `| apps moved during ${FLAP_S} s of a link flapping (1.5 s down, 1.5 s up): Dentropy | ${ours.falseMoves} | 0 |`,
    `| tasks started during the same flapping: Swarm | ${swarm.falseMoves} | |`,
    '',
    'Times count from the start of `dcloud lab kill` (link down, then every process of the node killed) to the first successful HTTP answer on a survivor, polled every 50 ms (Dentropy, through `dcloud app ls` and curl) or 100 ms (Swarm, curl on the survivor\'s published port).'
  ].join('\n')
  await writeBenchSection('scheduler', 'Scheduler: planning, election, failover against Docker Swarm', body)
  process.stdout.write(body + '\n')
}

await main()
