/**
 * The lab: a cluster of real nodes on one machine.
 *
 * Each node is a network namespace with its own dockerd (own data root, exec
 * root, socket) and its own agent. The nodes' `eth0` ends sit on a bridge that
 * lives in a namespace of its own (the "hub"), so nothing of the lab, and no
 * multicast, touches the machine's own interfaces. The namespaces have no
 * default route: nothing leaves the bridge.
 *
 * Faults are made where real ones happen: `kill` kills every process of the
 * node at once and takes its link down; `partition` drops frames in the hub's
 * bridge, the lab's switch.
 */
import { spawn } from 'node:child_process'
import { existsSync, openSync, closeSync, readFileSync, readdirSync, statSync, readlinkSync } from 'node:fs'
import { chmod, mkdir, readFile, rm, writeFile, copyFile, rename } from 'node:fs/promises'
import { join } from 'node:path'
import { run, tryRun } from './sh.ts'
import { buildBusyboxRootfs, loadImageTar } from './images.ts'
import { newClusterKey, parseClusterKey } from '../../agent/mesh/cluster-key.ts'
import { apiGet } from '../../agent/cli/client.ts'
import { API_PORT, P2P_PORT, PROJECT_ROOT, paths } from '../../agent/config.ts'
import { UserError, EXIT } from '../../agent/util/errors.ts'

const DCLOUD_BIN = join(PROJECT_ROOT, 'bin', 'dcloud')

export const SUBNET_PREFIX = '10.213.0.'
/** The lab switch's own address: nodes probe it as their gateway would be probed on a LAN. */
export const WITNESS_IP = '10.213.0.1'
const STATE_ROOT = '/var/lib/dcloud-lab'
const RUN_ROOT = '/run/dcloud-lab'

export interface LabNode {
  name: string
  index: number
  ip: string
  /** The cluster key this node holds (the lab's, unless `lab add --key-file`). */
  keyFile: string
  state: 'running' | 'killed'
  dockerdPid: number | null
  agentPid: number | null
  /** The node's fencing watchdog (agent/fence/watchdog.ts): it outlives the agent, not the node. */
  watchdogPid?: number | null
  /** The agent's extra arguments, kept for restarts. */
  agentArgs: string[]
}

export interface LabState {
  name: string
  createdAt: string
  keyFile: string
  nodes: LabNode[]
  partition: string[][] | null
}

export type Progress = (line: string) => void

export class Lab {
  readonly name: string
  readonly stateDir: string
  readonly runDir: string

  constructor (name: string) {
    if (!/^[a-z0-9]{1,6}$/.test(name)) throw new UserError(`lab name '${name}' must be 1 to 6 lowercase letters or digits`, { exitCode: EXIT.usage })
    this.name = name
    this.stateDir = join(STATE_ROOT, name)
    this.runDir = join(RUN_ROOT, name)
  }

  get hubNs (): string { return `dcl-${this.name}-hub` }
  nodeNs (node: string): string { return `dcl-${this.name}-${node}` }
  nodeDir (node: string): string { return join(this.stateDir, node) }
  nodeRunDir (node: string): string { return join(this.runDir, node) }
  agentDataDir (node: string): string { return join(this.nodeDir(node), 'agent') }
  dockerSocket (node: string): string { return join(this.nodeRunDir(node), 'docker.sock') }
  /** The agent's runtime directory, outside its data directory (0700) so that the `dcloud` group can reach the socket, as on an installed node. */
  agentRuntimeDir (node: string): string { return join(this.nodeRunDir(node), 'api') }
  agentSocket (node: string): string { return paths(this.agentDataDir(node), { DCLOUD_RUNTIME_DIR: this.agentRuntimeDir(node) }).socket }
  private get statePath (): string { return join(this.stateDir, 'lab.json') }

  exists (): boolean {
    return existsSync(this.statePath)
  }

  async state (): Promise<LabState> {
    try {
      return JSON.parse(await readFile(this.statePath, 'utf8')) as LabState
    } catch {
      throw new UserError(`lab '${this.name}' is not up`, { exitCode: EXIT.unavailable, hint: 'start it with `dcloud lab up --nodes 3`' })
    }
  }

  private async save (state: LabState): Promise<void> {
    // Renamed into place: a reader (a chaos run's monitor, `lab ls`) never sees half a file.
    await writeFile(`${this.statePath}.tmp`, JSON.stringify(state, null, 2) + '\n')
    await rename(`${this.statePath}.tmp`, this.statePath)
  }

  async node (name: string): Promise<LabNode> {
    const node = (await this.state()).nodes.find(n => n.name === name)
    if (node === undefined) throw new UserError(`lab '${this.name}' has no node '${name}'`, { exitCode: EXIT.usage, hint: 'see `dcloud lab ls`' })
    return node
  }

  /** Environment of a command run "on" a node: its dockerd, its agent, dcloud on PATH. */
  nodeEnv (node: string): NodeJS.ProcessEnv {
    return {
      ...process.env,
      PATH: `${join(PROJECT_ROOT, 'bin')}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`,
      DOCKER_HOST: `unix://${this.dockerSocket(node)}`,
      DCLOUD_DATA_DIR: this.agentDataDir(node),
      DCLOUD_RUNTIME_DIR: this.agentRuntimeDir(node),
      DCLOUD_API: `unix:${this.agentSocket(node)}`,
      DCLOUD_LAB_NODE: node
    }
  }

  /**
   * `imagesOn` names the nodes that get the test images (default: all); the
   * others must get them from a peer, as an offline homelab would.
   */
  async up (opts: { nodes: number, agentArgs?: string[], imagesOn?: string[], progress: Progress }): Promise<LabState> {
    checkPrerequisites()
    if (this.exists()) throw new UserError(`lab '${this.name}' is already up`, { exitCode: EXIT.tempFail, hint: '`dcloud lab down` first, or use another --lab name' })
    if (!(opts.nodes >= 1 && opts.nodes <= 64)) throw new UserError('--nodes must be between 1 and 64', { exitCode: EXIT.usage })
    await this.cleanupLeftovers()
    await mkdir(this.stateDir, { recursive: true, mode: 0o700 })
    await mkdir(this.runDir, { recursive: true, mode: 0o700 })
    // Traversable (not listable) down to each node's agent runtime directory, whose own
    // mode and group (dcloud) decide who reaches the API socket, as /run/dcloud does on a node.
    await chmod(RUN_ROOT, 0o711)
    await chmod(this.runDir, 0o711)
    const keyFile = join(this.stateDir, 'cluster.key')
    await writeFile(keyFile, newClusterKey(), { mode: 0o600 })
    const state: LabState = { name: this.name, createdAt: new Date().toISOString(), keyFile, nodes: [], partition: null }
    await this.save(state)

    opts.progress(`creating the lab's switch (namespace ${this.hubNs})`)
    await run('ip', ['netns', 'add', this.hubNs])
    await run('ip', ['-n', this.hubNs, 'link', 'set', 'lo', 'up'])
    await run('ip', ['-n', this.hubNs, 'link', 'add', 'br0', 'type', 'bridge', 'mcast_snooping', '0'])
    await run('ip', ['-n', this.hubNs, 'link', 'set', 'br0', 'up'])
    // The switch answers on the lab's "gateway" address: the agents' witness for the two-node rule.
    await run('ip', ['-n', this.hubNs, 'addr', 'add', `${WITNESS_IP}/24`, 'dev', 'br0'])
    // Partitions are rules in this table; it starts empty.
    await run('nsenter', [`--net=/run/netns/${this.hubNs}`, 'nft', 'add table bridge dcloud_lab; add chain bridge dcloud_lab forward { type filter hook forward priority 0; policy accept; }'])

    const names = Array.from({ length: opts.nodes }, (_, i) => `n${i + 1}`)
    for (const [i, name] of names.entries()) {
      state.nodes.push({ name, index: i + 1, ip: `${SUBNET_PREFIX}${10 + i + 1}`, keyFile, state: 'running', dockerdPid: null, agentPid: null, agentArgs: opts.agentArgs ?? [] })
    }
    await this.save(state)
    opts.progress(`starting ${names.length} node(s): namespaces, links and dockerd`)
    await Promise.all(state.nodes.map(async n => { await this.createNodeNetwork(n); n.dockerdPid = await this.startDockerd(n) }))
    await this.save(state)
    await Promise.all(state.nodes.map(async n => { await this.waitForDocker(n) }))
    const withImages = state.nodes.filter(n => opts.imagesOn === undefined || opts.imagesOn.includes(n.name))
    opts.progress(`loading test images into ${withImages.length === state.nodes.length ? 'every node' : withImages.map(n => n.name).join(', ') || 'no node'}`)
    const rootfs = await buildBusyboxRootfs(join(STATE_ROOT, 'images'))
    await Promise.all(withImages.map(async n => { await loadImageTar(this.dockerSocket(n.name), rootfs) }))
    opts.progress('starting agents')
    for (const n of state.nodes) { n.watchdogPid = this.startWatchdog(n); n.agentPid = await this.startAgent(n) }
    await this.save(state)
    await Promise.all(state.nodes.map(async n => { await this.waitForAgent(n) }))
    opts.progress(`lab '${this.name}' is up: ${names.join(', ')}`)
    return state
  }

  /** Adds the next node; with `keyFile`, the node holds that key instead of the lab's. */
  async add (opts: { keyFile?: string, agentArgs?: string[], images?: boolean, progress: Progress }): Promise<LabNode> {
    const state = await this.state()
    const index = Math.max(0, ...state.nodes.map(n => n.index)) + 1
    const name = `n${index}`
    let keyFile = state.keyFile
    if (opts.keyFile !== undefined) {
      parseClusterKey(await readFile(opts.keyFile, 'utf8'), opts.keyFile)
      keyFile = join(this.stateDir, `${name}.key`)
      await copyFile(opts.keyFile, keyFile)
    }
    const node: LabNode = { name, index, ip: `${SUBNET_PREFIX}${10 + index}`, keyFile, state: 'running', dockerdPid: null, agentPid: null, agentArgs: opts.agentArgs ?? [] }
    state.nodes.push(node)
    await this.save(state)
    opts.progress(`starting ${name}`)
    await this.createNodeNetwork(node)
    node.dockerdPid = await this.startDockerd(node)
    await this.save(state)
    await this.waitForDocker(node)
    if (opts.images !== false) await loadImageTar(this.dockerSocket(name), await buildBusyboxRootfs(join(STATE_ROOT, 'images')))
    node.watchdogPid = this.startWatchdog(node)
    node.agentPid = await this.startAgent(node)
    await this.save(state)
    await this.waitForAgent(node)
    if (state.partition !== null) await this.applyPartition(state)
    opts.progress(`${name} is up`)
    return node
  }

  /** Abrupt death: every process of the node is killed at once and its link goes down. */
  async kill (name: string): Promise<void> {
    const state = await this.state()
    const node = state.nodes.find(n => n.name === name)
    if (node === undefined) throw new UserError(`lab '${this.name}' has no node '${name}'`, { exitCode: EXIT.usage })
    await tryRun('ip', ['-n', this.nodeNs(name), 'link', 'set', 'eth0', 'down'])
    killTree(pidsOfNode(this.nodeNs(name), [node.dockerdPid, node.agentPid, node.watchdogPid ?? null]))
    await this.unmountNode(name)
    node.state = 'killed'
    node.agentPid = null
    node.dockerdPid = null
    node.watchdogPid = null
    await this.save(state)
  }

  /** Brings a killed node back (same namespace, same data, same identity), or restarts only its agent. */
  async start (name: string, opts: { agentOnly?: boolean, progress: Progress }): Promise<void> {
    const state = await this.state()
    const node = state.nodes.find(n => n.name === name)
    if (node === undefined) throw new UserError(`lab '${this.name}' has no node '${name}'`, { exitCode: EXIT.usage })
    if (opts.agentOnly === true) {
      if (node.agentPid !== null && isRunning(node.agentPid)) {
        process.kill(node.agentPid, 'SIGTERM')
        await waitUntil(() => !isRunning(node.agentPid ?? 0), 10_000, `${name}'s agent to stop`)
      }
    } else {
      if (node.state === 'running') throw new UserError(`${name} is running; kill it first or pass --agent-only`, { exitCode: EXIT.usage })
      await run('ip', ['-n', this.nodeNs(name), 'link', 'set', 'eth0', 'up'])
      await tryRun('ip', ['-n', this.nodeNs(name), 'route', 'replace', '224.0.0.0/4', 'dev', 'eth0'])
      node.dockerdPid = await this.startDockerd(node)
      await this.save(state)
      try {
        await this.waitForDocker(node)
      } catch (err) {
        if (!await this.repairNetworkStore(node)) throw err
        opts.progress(`${name}: dockerd 20.10 could not read its network store after the crash; kept it aside and started afresh`)
        node.dockerdPid = await this.startDockerd(node)
        await this.save(state)
        await this.waitForDocker(node)
      }
    }
    // An agent-only restart leaves the watchdog running: that is what it is for.
    if (node.watchdogPid == null || !isRunning(node.watchdogPid)) node.watchdogPid = this.startWatchdog(node)
    node.agentPid = await this.startAgent(node)
    node.state = 'running'
    await this.save(state)
    await this.waitForAgent(node)
    opts.progress(`${name} is up`)
  }

  /**
   * Restarts only the node's dockerd (an upgrade, a crash of the engine): it
   * stops, and its containers with it, while the agent, the watchdog and the
   * link stay up. `crash` kills it (SIGKILL) instead of stopping it.
   */
  async restartDockerd (name: string, opts: { crash?: boolean, downMs?: number } = {}): Promise<void> {
    const state = await this.state()
    const node = state.nodes.find(n => n.name === name)
    if (node === undefined) throw new UserError(`lab '${this.name}' has no node '${name}'`, { exitCode: EXIT.usage })
    if (node.state !== 'running' || node.dockerdPid === null) throw new UserError(`${name} is not running`, { exitCode: EXIT.usage })
    const pid = node.dockerdPid
    if (isRunning(pid)) process.kill(pid, opts.crash === true ? 'SIGKILL' : 'SIGTERM')
    await waitUntil(() => !isRunning(pid), 60_000, `${name}'s dockerd to stop`)
    if (opts.crash === true) await this.unmountNode(name)
    if ((opts.downMs ?? 0) > 0) await new Promise(resolve => setTimeout(resolve, opts.downMs))
    node.dockerdPid = await this.startDockerd(node)
    await this.save(state)
    await this.waitForDocker(node)
  }

  /** Cuts the lab into groups that cannot reach each other; nodes named in no group keep all their links. */
  async partition (groups: string[][]): Promise<void> {
    const state = await this.state()
    const known = new Set(state.nodes.map(n => n.name))
    const seen = new Set<string>()
    for (const g of groups) {
      for (const n of g) {
        if (!known.has(n)) throw new UserError(`no node '${n}' in lab '${this.name}'`, { exitCode: EXIT.usage })
        if (seen.has(n)) throw new UserError(`node '${n}' is in two groups`, { exitCode: EXIT.usage })
        seen.add(n)
      }
    }
    if (groups.length < 2) throw new UserError('a partition needs at least two groups, e.g. `dcloud lab partition n1 n2,n3`', { exitCode: EXIT.usage })
    state.partition = groups
    await this.applyPartition(state)
    await this.save(state)
  }

  async heal (): Promise<void> {
    const state = await this.state()
    state.partition = null
    await this.applyPartition(state)
    await this.save(state)
  }

  private async applyPartition (state: LabState): Promise<void> {
    const rules = ['flush chain bridge dcloud_lab forward;']
    for (const [i, a] of (state.partition ?? []).entries()) {
      for (const [j, b] of (state.partition ?? []).entries()) {
        if (i === j) continue
        for (const x of a) for (const y of b) rules.push(`add rule bridge dcloud_lab forward iifname "${x}" oifname "${y}" drop;`)
      }
    }
    await run('nsenter', [`--net=/run/netns/${this.hubNs}`, 'nft', rules.join(' ')])
  }

  /** Stops everything of the lab and removes its namespaces, mounts and state. */
  async down (progress: Progress): Promise<void> {
    let nodes: string[] = []
    if (this.exists()) nodes = (await this.state()).nodes.map(n => n.name)
    // Namespaces named like ours but missing from the state file (a crashed `up`) go too.
    for (const ns of listNetns()) {
      const prefix = `dcl-${this.name}-`
      if (ns.startsWith(prefix) && ns !== this.hubNs) nodes.push(ns.slice(prefix.length))
    }
    nodes = [...new Set(nodes)]
    progress(`stopping ${nodes.length} node(s) of lab '${this.name}'`)
    for (const n of nodes) {
      if (existsSync(`/run/netns/${this.nodeNs(n)}`)) killTree(pidsOfNode(this.nodeNs(n), []))
    }
    for (const n of nodes) {
      await this.unmountNode(n)
      await tryRun('ip', ['netns', 'del', this.nodeNs(n)])
    }
    await tryRun('ip', ['netns', 'del', this.hubNs])
    await this.unmountUnder(this.runDir)
    await this.unmountUnder(this.stateDir)
    await rm(this.runDir, { recursive: true, force: true })
    await rm(this.stateDir, { recursive: true, force: true })
    const left = leftovers(this)
    if (left.length > 0) throw new UserError(`lab '${this.name}' left something behind: ${left.join('; ')}`, { exitCode: EXIT.osError })
    progress(`lab '${this.name}' is down`)
  }

  private async cleanupLeftovers (): Promise<void> {
    if (existsSync(`/run/netns/${this.hubNs}`) || existsSync(this.runDir) || existsSync(this.stateDir)) await this.down(() => {})
  }

  private async createNodeNetwork (n: LabNode): Promise<void> {
    const ns = this.nodeNs(n.name)
    await run('ip', ['netns', 'add', ns])
    await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
    // Both ends are created directly in their namespaces: the machine's own namespace never sees them.
    await run('ip', ['link', 'add', 'eth0', 'netns', ns, 'type', 'veth', 'peer', 'name', n.name, 'netns', this.hubNs])
    await run('ip', ['-n', this.hubNs, 'link', 'set', n.name, 'master', 'br0', 'up'])
    await run('ip', ['-n', ns, 'addr', 'add', `${n.ip}/24`, 'dev', 'eth0'])
    await run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up'])
    // No default route; multicast (mDNS) needs a route of its own, onto the lab's bridge only.
    await run('ip', ['-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', 'eth0'])
    await mkdir(this.nodeDir(n.name), { recursive: true, mode: 0o700 })
    await mkdir(this.nodeRunDir(n.name), { recursive: true, mode: 0o700 })
    await chmod(this.nodeRunDir(n.name), 0o711)
  }

  private async startDockerd (n: LabNode): Promise<number> {
    const run = this.nodeRunDir(n.name)
    // A killed dockerd leaves its pid file; its pid may live on as a zombie (some
    // init processes never reap) or belong to another process by now.
    await rm(join(run, 'docker.pid'), { force: true })
    // dockerd takes a live pid in its containerd's pid file for a running containerd and waits for it.
    await rm(join(run, 'exec', 'containerd', 'containerd.pid'), { force: true })
    // nsenter --net only: `ip netns exec` remounts /sys and dockerd then finds no cgroups.
    return spawnDetached('nsenter', [
      `--net=/run/netns/${this.nodeNs(n.name)}`, '--', 'dockerd',
      '--data-root', join(this.nodeDir(n.name), 'docker'),
      '--exec-root', join(run, 'exec'),
      '--pidfile', join(run, 'docker.pid'),
      '--host', `unix://${this.dockerSocket(n.name)}`,
      '--ip6tables=false',
      '--log-level', 'warn'
    ], join(this.nodeDir(n.name), 'dockerd.log'), process.env)
  }

  /** The node's fencing watchdog, in the node's namespace so that `lab kill` takes it with the node. */
  private startWatchdog (n: LabNode): number {
    return spawnDetached('nsenter', [`--net=/run/netns/${this.nodeNs(n.name)}`, '--', DCLOUD_BIN, 'watchdog'], join(this.nodeDir(n.name), 'watchdog.log'), this.nodeEnv(n.name))
  }

  private async startAgent (n: LabNode): Promise<number> {
    return spawnDetached('nsenter', [
      `--net=/run/netns/${this.nodeNs(n.name)}`, '--', DCLOUD_BIN, 'agent',
      '--name', n.name,
      '--key-file', n.keyFile,
      '--listen', `/ip4/${n.ip}/tcp/${P2P_PORT}`,
      '--api', `127.0.0.1:${API_PORT}`,
      '--witness', `${WITNESS_IP}:53`,
      ...n.agentArgs
    ], join(this.nodeDir(n.name), 'agent.log'), this.nodeEnv(n.name))
  }

  /**
   * dockerd 20.10 (Debian 12's) panics at start ("index out of range" in
   * libnetwork's reservePools) when it was killed while creating a network: its
   * network store holds a half-made network. A crashed machine meets the same;
   * the lab, which crashes machines on purpose, keeps the store aside (never
   * deleted) and lets dockerd make a new one. Returns whether it did.
   */
  private async repairNetworkStore (n: LabNode): Promise<boolean> {
    let log = ''
    try { log = await readFile(join(this.nodeDir(n.name), 'dockerd.log'), 'utf8') } catch {}
    if (!/panic: runtime error[\s\S]*reservePools/.test(log.slice(-20_000))) return false
    const store = join(this.nodeDir(n.name), 'docker', 'network', 'files', 'local-kv.db')
    if (!existsSync(store)) return false
    await rename(store, `${store}.crashed-${Date.now()}`)
    await this.unmountNode(n.name)
    return true
  }

  private async waitForDocker (n: LabNode): Promise<void> {
    const socket = this.dockerSocket(n.name)
    await waitUntilAsync(async () => {
      if (n.dockerdPid !== null && !isRunning(n.dockerdPid)) throw new UserError(`dockerd of ${n.name} exited; see ${join(this.nodeDir(n.name), 'dockerd.log')}`, { exitCode: EXIT.osError })
      return existsSync(socket) && (await tryRun('docker', ['-H', `unix://${socket}`, 'version', '--format', '{{.Server.Version}}'])).code === 0
    }, 60_000, `dockerd of ${n.name}`)
  }

  async waitForAgent (n: LabNode, timeoutMs = 60_000): Promise<void> {
    await waitUntilAsync(async () => {
      if (n.agentPid !== null && !isRunning(n.agentPid)) throw new UserError(`the agent of ${n.name} exited; see ${join(this.nodeDir(n.name), 'agent.log')}`, { exitCode: EXIT.software })
      try {
        await apiGet('/v1/health', { socketPath: this.agentSocket(n.name), describe: n.name }, 1000)
        return true
      } catch {
        return false
      }
    }, timeoutMs, `the agent of ${n.name}`)
  }

  private async unmountNode (node: string): Promise<void> {
    await this.unmountUnder(this.nodeRunDir(node))
    await this.unmountUnder(this.nodeDir(node))
  }

  private async unmountUnder (dir: string): Promise<void> {
    for (const mount of mountsUnder(dir)) {
      if ((await tryRun('umount', [mount])).code !== 0) await tryRun('umount', ['-l', mount])
    }
  }
}

export function checkPrerequisites (): void {
  if (process.getuid?.() !== 0) throw new UserError('the lab needs root (network namespaces and dockerd)', { exitCode: EXIT.noPermission, hint: 'run it as root, e.g. `sudo npx dcloud lab up`' })
  const missing = [['ip', 'iproute2'], ['nsenter', 'util-linux'], ['dockerd', 'docker.io'], ['nft', 'nftables'], ['busybox', 'busybox-static'], ['docker', 'docker.io']]
    .filter(([cmd]) => !onPath(cmd ?? ''))
  if (missing.length > 0) {
    throw new UserError(`the lab needs ${missing.map(m => m[0]).join(', ')}`, {
      exitCode: EXIT.unavailable,
      hint: `install them: apt-get install ${[...new Set(missing.map(m => m[1]))].join(' ')} (scripts/setup.sh does this)`
    })
  }
}

function onPath (cmd: string): boolean {
  return (process.env.PATH ?? '/usr/bin:/bin:/usr/sbin:/sbin').split(':').concat(['/usr/sbin', '/sbin']).some(d => existsSync(join(d, cmd)))
}

function spawnDetached (cmd: string, args: string[], logFile: string, env: NodeJS.ProcessEnv): number {
  const fd = openSync(logFile, 'a')
  try {
    const child = spawn(cmd, args, { detached: true, stdio: ['ignore', fd, fd], env })
    child.unref()
    if (child.pid === undefined) throw new UserError(`could not start ${cmd}`, { exitCode: EXIT.osError })
    return child.pid
  } finally {
    closeSync(fd)
  }
}

/** A pid counts as running unless it is gone or a zombie (some init processes never reap). */
export function isRunning (pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}

function listNetns (): string[] {
  try { return readdirSync('/run/netns') } catch { return [] }
}

/** Every live process in the node's network namespace, the given pids, and all their descendants. */
export function pidsOfNode (ns: string, extra: Array<number | null>): number[] {
  const nsPath = `/run/netns/${ns}`
  let nsInode: number | null = null
  try { nsInode = statSync(nsPath).ino } catch {}
  const parents = new Map<number, number[]>()
  const roots = new Set<number>(extra.filter((p): p is number => p !== null && isRunning(p)))
  for (const entry of readdirSync('/proc')) {
    const pid = Number(entry)
    if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid) continue
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      const after = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      if (after[0] === 'Z') continue
      const ppid = Number(after[1])
      parents.set(ppid, [...(parents.get(ppid) ?? []), pid])
      if (nsInode !== null && readlinkSync(`/proc/${pid}/ns/net`) === `net:[${nsInode}]`) roots.add(pid)
    } catch {}
  }
  const all = new Set<number>()
  const queue = [...roots]
  while (queue.length > 0) {
    const pid = queue.pop() as number
    if (all.has(pid)) continue
    all.add(pid)
    queue.push(...(parents.get(pid) ?? []))
  }
  return [...all]
}

function killTree (pids: number[]): void {
  for (const pid of pids) {
    try { process.kill(pid, 'SIGKILL') } catch {}
  }
}

export function mountsUnder (dir: string): string[] {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`
  let lines: string[] = []
  try { lines = readFileSync('/proc/self/mountinfo', 'utf8').split('\n') } catch {}
  const points = lines.map(l => l.split(' ')[4] ?? '').map(p => p.replace(/\\040/g, ' '))
    .filter(p => p === dir || p.startsWith(prefix))
  return [...new Set(points)].sort((a, b) => b.length - a.length)
}

/** What a lab that is down must not leave: processes in its namespaces, namespaces, mounts. */
export function leftovers (lab: Lab): string[] {
  const found: string[] = []
  for (const ns of listNetns()) if (ns.startsWith(`dcl-${lab.name}-`)) found.push(`namespace ${ns}`)
  for (const m of [...mountsUnder(lab.runDir), ...mountsUnder(lab.stateDir)]) found.push(`mount ${m}`)
  return found
}

async function waitUntilAsync (check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await check()) return
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  throw new UserError(`timed out after ${timeoutMs / 1000} s waiting for ${what}`, { exitCode: EXIT.tempFail })
}

async function waitUntil (check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  await waitUntilAsync(async () => check(), timeoutMs, what)
}
