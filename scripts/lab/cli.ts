/** `dcloud lab ...`: try a cluster on one machine. */
import { spawn } from 'node:child_process'
import { randomInt } from 'node:crypto'
import { DEFAULT_DISK_BYTES, Lab, formatBytes, isRunning, parseSize, type DiskView } from './lab.ts'
import { table } from '../../agent/cli/format.ts'
import { intOption, parseCommand } from '../../agent/cli/args.ts'
import { UsageError } from '../../agent/util/errors.ts'

export const labHelp = `dcloud lab [--lab NAME] COMMAND
  up --nodes N [--images-on N1,N2|none] [--disk-size SIZE] [--devices NODE=LIST]... [-- AGENT_ARGS]
                                 start nodes n1..nN (namespace + data disk + dockerd + agent each) sharing
                                 one key; test images go to every node unless --images-on names some;
                                 each node's Docker and agent data live on a disk of SIZE (default 4G);
                                 --devices n2=/dev/dri gives a node its own device list (or none): lab
                                 nodes share this machine's /dev, so tests tell them apart this way
  add [--key-file F] [--no-images] [-- AGENT_ARGS]
                                 add the next node, optionally holding another cluster key
  exec NODE -- CMD ...           run CMD inside NODE (docker and dcloud talk to that node)
  client [--public] -- CMD ...   run CMD on a client of the lab that is not a node: on the LAN (10.213.0.250),
                                 or with --public from the internet (203.0.113.10, reaching only the lab's nodes)
  kill NODE                      abrupt death: all of NODE's processes die, its link goes down
  start NODE [--agent-only]      bring a killed node back (same data, same id), or restart its agent
  restart-docker NODE [--crash] [--down-ms MS]
                                 restart only NODE's dockerd (stopped, or killed with --crash), agent and link up
  caddy NODE --kill|--start      kill only NODE's front door (Caddy), or start it again; the agent reloads it
  fill NODE [--leave BYTES]      fill NODE's data disk, leaving BYTES free (default 0: full)
  unfill NODE                    remove what \`fill\` wrote: the disk has its space again
  partition A,B C[,D] ...        cut the lab into groups that cannot reach each other
  partition --one-way A C[,D]    A keeps hearing C,D but they stop hearing A (A's data frames dropped)
  heal                           undo the partition
  ls [--json]                    the lab's nodes
  chaos [--minutes N] [--seed S] [--workloads notes,postgres] [--snapshot-every 30s] [--json] [--dry-run [--nodes N]]
                                 inject seeded random faults while workloads run, and check the safety
                                 invariants (one copy, no acknowledged write lost beyond the RPO,
                                 divergent copies kept, convergence); exit 1 on any violation;
                                 --dry-run prints the seed's fault schedule and touches nothing
  down                           stop everything; nothing stays running, mounted or attached
The lab's name defaults to "lab" (or DCLOUD_LAB). It needs root, iproute2, nftables, docker.io and caddy.`

function report (node: string, what: string, disk: DiskView, json: boolean): void {
  if (json) {
    process.stdout.write(JSON.stringify({ node, ...disk }) + '\n')
    return
  }
  process.stdout.write(`${node}: ${what}; ${formatBytes(disk.free)} free of ${formatBytes(disk.bytes)} (${disk.free} bytes), the filler holds ${formatBytes(disk.filler)}\n`)
}

/** Runs `cmd` in the namespace `ns`, its output ours; resolves its exit code. */
async function runIn (ns: string, cmd: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return await new Promise<number>((resolve) => {
    const child = spawn('nsenter', [`--net=/run/netns/${ns}`, '--', ...cmd], { stdio: 'inherit', env })
    child.on('error', (err) => { process.stderr.write(`lab: ${err.message}\n`); resolve(127) })
    child.on('exit', (code, signal) => { resolve(code ?? (signal !== null ? 128 + 9 : 1)) })
  })
}

export async function labCommand (argv: string[]): Promise<number> {
  let labName = process.env.DCLOUD_LAB ?? 'lab'
  const args = [...argv]
  if (args[0] === '--lab') {
    labName = args[1] ?? ''
    args.splice(0, 2)
  }
  const [sub, ...rest] = args
  const lab = new Lab(labName)
  const progress = (line: string): void => { process.stderr.write(`lab: ${line}\n`) }
  switch (sub) {
    case 'up': {
      const dash = rest.indexOf('--')
      const own = dash === -1 ? rest : rest.slice(0, dash)
      const { values } = parseCommand(own, { usage: 'dcloud lab up --nodes N [--images-on N1,N2|none] [--disk-size SIZE] [--devices NODE=LIST]... [-- AGENT_ARGS]', options: { nodes: { type: 'string', default: '3' }, 'images-on': { type: 'string' }, 'disk-size': { type: 'string' }, devices: { type: 'string', multiple: true, default: [] } } })
      const imagesOn = values['images-on'] === undefined ? undefined : values['images-on'] === 'none' ? [] : values['images-on'].split(',')
      const diskBytes = values['disk-size'] === undefined ? DEFAULT_DISK_BYTES : parseSize(values['disk-size'], '--disk-size')
      const devices: Record<string, string> = {}
      for (const d of values.devices ?? []) {
        const eq = d.indexOf('=')
        if (eq <= 0) throw new UsageError(`--devices ${d}: expected NODE=LIST, e.g. n2=/dev/dri or n1=none`)
        devices[d.slice(0, eq)] = d.slice(eq + 1)
      }
      await lab.up({ nodes: Number(values.nodes), agentArgs: dash === -1 ? [] : rest.slice(dash + 1), imagesOn, diskBytes, devices, progress })
      return 0
    }
    case 'add': {
      const dash = rest.indexOf('--')
      const own = dash === -1 ? rest : rest.slice(0, dash)
      const { values } = parseCommand(own, { usage: 'dcloud lab add [--key-file F] [--no-images] [-- AGENT_ARGS]', options: { 'key-file': { type: 'string' }, 'no-images': { type: 'boolean', default: false } } })
      const node = await lab.add({ keyFile: values['key-file'], images: values['no-images'] !== true, agentArgs: dash === -1 ? [] : rest.slice(dash + 1), progress })
      process.stdout.write(`${node.name}\n`)
      return 0
    }
    case 'exec': {
      const dash = rest.indexOf('--')
      // NODE, then the command, after `--` when it has options of its own.
      const { args: [node] } = parseCommand(dash === -1 ? rest.slice(0, 1) : rest.slice(0, dash), { usage: 'dcloud lab exec NODE -- CMD ...', args: ['NODE'] })
      const cmd = dash === -1 ? rest.slice(1) : rest.slice(dash + 1)
      if (cmd.length === 0) throw new UsageError('missing CMD', 'usage: dcloud lab exec NODE -- CMD ...')
      await lab.node(node)
      return await runIn(lab.nodeNs(node), cmd, lab.nodeEnv(node))
    }
    case 'client': {
      const dash = rest.indexOf('--')
      const usage = 'dcloud lab client [--public] -- CMD ...'
      const { values } = parseCommand(dash === -1 ? rest : rest.slice(0, dash), { usage, options: { public: { type: 'boolean', default: false } } })
      const cmd = dash === -1 ? [] : rest.slice(dash + 1)
      if (cmd.length === 0) throw new UsageError('missing CMD', `usage: ${usage}`)
      const client = await lab.client(values.public === true ? 'public' : 'lan')
      return await runIn(client.ns, cmd, { ...process.env })
    }
    case 'kill': {
      const { args: [node] } = parseCommand(rest, { usage: 'dcloud lab kill NODE', args: ['NODE'] })
      await lab.kill(node)
      progress(`${node} killed`)
      return 0
    }
    case 'start': {
      const { values, args: [node] } = parseCommand(rest, { usage: 'dcloud lab start NODE [--agent-only]', args: ['NODE'], options: { 'agent-only': { type: 'boolean', default: false } } })
      await lab.start(node, { agentOnly: values['agent-only'], progress })
      return 0
    }
    case 'caddy': {
      const { values, args: [node] } = parseCommand(rest, { usage: 'dcloud lab caddy NODE --kill|--start', args: ['NODE'], options: { kill: { type: 'boolean', default: false }, start: { type: 'boolean', default: false } } })
      if (values.kill === values.start) throw new UsageError('give exactly one of --kill and --start', 'usage: dcloud lab caddy NODE --kill|--start')
      await lab.caddy(node, values.kill === true ? 'kill' : 'start')
      progress(`${node}'s Caddy ${values.kill === true ? 'killed' : 'started'}`)
      return 0
    }
    case 'restart-docker': {
      const { values, args: [node] } = parseCommand(rest, { usage: 'dcloud lab restart-docker NODE [--crash] [--down-ms MS]', args: ['NODE'], options: { crash: { type: 'boolean', default: false }, 'down-ms': { type: 'string', default: '0' } } })
      const downMs = intOption(values['down-ms'], 'down-ms', 0, 3_600_000) ?? 0
      await lab.restartDockerd(node, { crash: values.crash, downMs })
      progress(`${node}'s dockerd restarted`)
      return 0
    }
    case 'fill': {
      const { values, args: [node] } = parseCommand(rest, { usage: 'dcloud lab fill NODE [--leave BYTES] [--json]', args: ['NODE'], options: { leave: { type: 'string', default: '0' }, json: { type: 'boolean', default: false } } })
      const disk = await lab.fill(node, parseSize(values.leave ?? '0', '--leave'))
      report(node, 'filled', disk, values.json === true)
      return 0
    }
    case 'unfill': {
      const { values, args: [node] } = parseCommand(rest, { usage: 'dcloud lab unfill NODE [--json]', args: ['NODE'], options: { json: { type: 'boolean', default: false } } })
      report(node, 'unfilled', await lab.unfill(node), values.json === true)
      return 0
    }
    case 'partition': {
      const { values, args: [first], rest: others } = parseCommand(rest, { usage: 'dcloud lab partition [--one-way] A[,B] C[,D] ...', args: ['GROUP'], rest: 'GROUP', options: { 'one-way': { type: 'boolean', default: false } } })
      const positionals = [first, ...others]
      const oneWay = values['one-way'] === true
      if (oneWay && positionals.length !== 2) throw new UsageError('usage: dcloud lab partition --one-way A[,B] C[,D]: the first group stops being heard by the second')
      await lab.partition(positionals.map(g => g.split(',').filter(n => n !== '')), { oneWay })
      progress(`partitioned: ${positionals.join(oneWay ? ' -/-> ' : ' | ')}`)
      return 0
    }
    case 'heal':
      parseCommand(rest, { usage: 'dcloud lab heal' })
      await lab.heal()
      progress('healed')
      return 0
    case 'ls': {
      const { values } = parseCommand(rest, { usage: 'dcloud lab ls [--json]', options: { json: { type: 'boolean', default: false } } })
      const state = await lab.state()
      const nodes = await Promise.all(state.nodes.map(async n => ({
        name: n.name,
        ip: n.ip,
        state: n.state,
        agent: n.agentPid !== null && isRunning(n.agentPid) ? 'running' : 'stopped',
        dockerd: n.dockerdPid !== null && isRunning(n.dockerdPid) ? 'running' : 'stopped',
        ownKey: n.keyFile !== state.keyFile,
        disk: await lab.disk(n.name)
      })))
      if (values.json === true) {
        process.stdout.write(JSON.stringify({ lab: state.name, partition: state.partition, nodes }, null, 2) + '\n')
      } else {
        process.stdout.write(table(['NODE', 'IP', 'STATE', 'AGENT', 'DOCKERD', 'KEY', 'DISK FREE'], nodes.map(n => [n.name, n.ip, n.state, n.agent, n.dockerd, n.ownKey ? 'other' : 'lab',
          n.disk.mounted ? `${formatBytes(n.disk.free)} of ${formatBytes(n.disk.bytes)}${n.disk.filler > 0 ? ' (filled)' : ''}` : 'not mounted'])))
        if (state.partition !== null) process.stdout.write(`partition: ${state.partition.map(g => g.join(',')).join(' | ')}\n`)
      }
      return 0
    }
    case 'chaos': {
      const { values } = parseCommand(rest, { usage: 'dcloud lab chaos [--minutes N] [--seed S] [--workloads notes,postgres] [--snapshot-every 30s] [--json] [--dry-run [--nodes N]]', options: { minutes: { type: 'string', default: '5' }, seed: { type: 'string' }, workloads: { type: 'string', default: 'notes,postgres' }, 'snapshot-every': { type: 'string', default: '30s' }, json: { type: 'boolean', default: false }, 'dry-run': { type: 'boolean', default: false }, nodes: { type: 'string' } } })
      const minutes = Number(values.minutes)
      const seed = values.seed === undefined ? randomInt(0, 2 ** 31) : Number(values.seed)
      if (!/^\d+$/.test(String(values.seed ?? seed))) throw new UsageError('--seed must be a whole number, e.g. --seed 42')
      const workloads = (values.workloads ?? '').split(',').filter(w => w !== '')
      for (const w of workloads) if (w !== 'notes' && w !== 'postgres') throw new UsageError(`unknown workload '${w}': notes, postgres`)
      if (workloads.length === 0) throw new UsageError('--workloads needs at least one of notes, postgres')
      if (values['dry-run'] === true) {
        // The schedule only: the lab's nodes if it is up, else n1..nN.
        const { chaosSchedule, formatFault, ScheduleError } = await import('./chaos/schedule.ts')
        const nodes = values.nodes !== undefined ? Array.from({ length: Number(values.nodes) }, (_, i) => `n${i + 1}`) : lab.exists() ? (await lab.state()).nodes.map(n => n.name) : ['n1', 'n2', 'n3']
        try {
          const plan = chaosSchedule({ seed, minutes, nodes })
          if (values.json === true) process.stdout.write(JSON.stringify(plan, null, 2) + '\n')
          else process.stdout.write(`seed ${seed}, ${minutes} min, nodes ${plan.nodes.join(',')}: ${plan.faults.length} faults, quiet from ${plan.quietFromMs / 1000} s\n${plan.faults.map(f => `  ${formatFault(f)}`).join('\n')}\n`)
          return 0
        } catch (err) {
          if (err instanceof ScheduleError) throw new UsageError(err.message)
          throw err
        }
      }
      const { runChaos, formatResult } = await import('./chaos/run.ts')
      const result = await runChaos({ lab, minutes, seed, workloads: workloads as Array<'notes' | 'postgres'>, snapshotEvery: values['snapshot-every'] ?? '30s', progress: line => { process.stderr.write(`chaos ${line}\n`) } })
      if (values.json === true) process.stdout.write(JSON.stringify(result, null, 2) + '\n')
      else process.stdout.write(formatResult(result))
      return result.violations.length === 0 ? 0 : 1
    }
    case 'down':
      parseCommand(rest, { usage: 'dcloud lab down' })
      await lab.down(progress)
      return 0
    default:
      throw new UsageError(sub === undefined ? 'missing lab command' : `unknown lab command '${sub}'`, labHelp)
  }
}
