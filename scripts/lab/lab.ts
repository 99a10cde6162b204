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
import { existsSync, openSync, closeSync, readFileSync, readdirSync, statSync, readlinkSync, writeFileSync } from 'node:fs'
import { chmod, mkdir, open, readdir, readFile, rm, stat, statfs, writeFile, copyFile, rename } from 'node:fs/promises'
import { dirname, join } from 'node:path'
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
/**
 * Clients of the lab that are not nodes (`lab client`), on the lab's own
 * bridge: one on the LAN, and one "from the internet", whose address is from
 * 203.0.113.0/24 (TEST-NET-3, a documentation range no machine here uses).
 * The public one reaches only the lab's subnet (an on-link route, no default
 * route); the nodes reach it back by an on-link route of their own.
 */
export const PUBLIC_CLIENT_NET = '203.0.113.0/24'
export const LAB_CLIENTS = {
  lan: { ns: 'lan', ip: `${SUBNET_PREFIX}250`, prefix: 24, routes: [] as string[] },
  public: { ns: 'pub', ip: '203.0.113.10', prefix: 24, routes: [`${SUBNET_PREFIX}0/24`] }
} as const
const STATE_ROOT = '/var/lib/dcloud-lab'
const RUN_ROOT = '/run/dcloud-lab'
/** Each node's data disk unless `lab up --disk-size` says otherwise: a sparse image, so it costs only what is written. */
export const DEFAULT_DISK_BYTES = 4 * 1024 ** 3
const MIN_DISK_BYTES = 64 * 1024 ** 2

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
  /** The node's front door, Caddy (docs/frontdoor.md): like the watchdog, it outlives the agent, not the node. */
  caddyPid?: number | null
  /** The node's private DNS responder (`dcloud dns-server`, port 53 of the namespace), like Caddy. */
  dnsPid?: number | null
  /** The agent's extra arguments, kept for restarts. */
  agentArgs: string[]
}

export interface LabState {
  name: string
  createdAt: string
  keyFile: string
  nodes: LabNode[]
  partition: string[][] | null
  /** The partition cuts one way only: the first group's data frames to the others are dropped (`partition --one-way`). */
  oneWay?: boolean
  /** Size of each node's data disk (absent in state files of labs made before nodes had disks). */
  diskBytes?: number
}

/** A node's data disk as `lab ls` and `lab fill` report it. */
export interface DiskView { mounted: boolean, device: string | null, bytes: number, free: number, filler: number }

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
  /** The image file of the node's data disk (sparse), beside its logs. */
  diskImage (node: string): string { return join(this.nodeDir(node), 'disk.img') }
  /** Where the node's data disk is mounted: its Docker data root and its agent's data directory live there. */
  diskDir (node: string): string { return join(this.nodeDir(node), 'disk') }
  dockerRoot (node: string): string { return join(this.diskDir(node), 'docker') }
  agentDataDir (node: string): string { return join(this.diskDir(node), 'agent') }
  /** What `lab fill` writes: a directory at the disk's root, apart from Docker's and the agent's data. */
  fillerDir (node: string): string { return join(this.diskDir(node), 'lab-filler') }
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
  async up (opts: { nodes: number, agentArgs?: string[], imagesOn?: string[], diskBytes?: number, devices?: Record<string, string>, progress: Progress }): Promise<LabState> {
    checkPrerequisites()
    if (this.exists()) throw new UserError(`lab '${this.name}' is already up`, { exitCode: EXIT.tempFail, hint: '`dcloud lab down` first, or use another --lab name' })
    if (!(opts.nodes >= 1 && opts.nodes <= 64)) throw new UserError('--nodes must be between 1 and 64', { exitCode: EXIT.usage })
    const diskBytes = opts.diskBytes ?? DEFAULT_DISK_BYTES
    if (!(Number.isSafeInteger(diskBytes) && diskBytes >= MIN_DISK_BYTES)) throw new UserError(`--disk-size must be at least ${MIN_DISK_BYTES / 1024 ** 2} MiB`, { exitCode: EXIT.usage })
    await this.cleanupLeftovers()
    await mkdir(this.stateDir, { recursive: true, mode: 0o700 })
    await mkdir(this.runDir, { recursive: true, mode: 0o700 })
    // Traversable (not listable) down to each node's agent runtime directory, whose own
    // mode and group (dcloud) decide who reaches the API socket, as /run/dcloud does on a node.
    await chmod(RUN_ROOT, 0o711)
    await chmod(this.runDir, 0o711)
    const keyFile = join(this.stateDir, 'cluster.key')
    await writeFile(keyFile, newClusterKey(), { mode: 0o600 })
    const state: LabState = { name: this.name, createdAt: new Date().toISOString(), keyFile, nodes: [], partition: null, diskBytes }
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
      // A node's own devices list (`--devices n2=/dev/dri`) is its agent's --devices: the agent validates it.
      const devices = opts.devices?.[name]
      state.nodes.push({ name, index: i + 1, ip: `${SUBNET_PREFIX}${10 + i + 1}`, keyFile, state: 'running', dockerdPid: null, agentPid: null, agentArgs: [...(opts.agentArgs ?? []), ...(devices !== undefined ? ['--devices', devices] : [])] })
    }
    await this.save(state)
    opts.progress(`starting ${names.length} node(s): namespaces, links, data disks of ${formatBytes(diskBytes)} and dockerd`)
    await Promise.all(state.nodes.map(async n => { await this.createNodeNetwork(n) }))
    // One after the other: two `losetup --find` at once may pick the same free device.
    for (const n of state.nodes) await this.attachDisk(n.name, diskBytes)
    await Promise.all(state.nodes.map(async n => { n.dockerdPid = await this.startDockerd(n) }))
    await this.save(state)
    await Promise.all(state.nodes.map(async n => { await this.waitForDocker(n) }))
    const withImages = state.nodes.filter(n => opts.imagesOn === undefined || opts.imagesOn.includes(n.name))
    opts.progress(`loading test images into ${withImages.length === state.nodes.length ? 'every node' : withImages.map(n => n.name).join(', ') || 'no node'}`)
    const rootfs = await buildBusyboxRootfs(join(STATE_ROOT, 'images'))
    await Promise.all(withImages.map(async n => { await loadImageTar(this.dockerSocket(n.name), rootfs) }))
    opts.progress('starting agents')
    for (const n of state.nodes) { n.watchdogPid = this.startWatchdog(n); n.caddyPid = await this.startCaddy(n); n.dnsPid = await this.startDns(n); n.agentPid = await this.startAgent(n) }
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
    await this.attachDisk(name, state.diskBytes ?? DEFAULT_DISK_BYTES)
    node.dockerdPid = await this.startDockerd(node)
    await this.save(state)
    await this.waitForDocker(node)
    if (opts.images !== false) await loadImageTar(this.dockerSocket(name), await buildBusyboxRootfs(join(STATE_ROOT, 'images')))
    node.watchdogPid = this.startWatchdog(node)
    node.caddyPid = await this.startCaddy(node)
    node.dnsPid = await this.startDns(node)
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
    killTree(pidsOfNode(this.nodeNs(name), [node.dockerdPid, node.agentPid, node.watchdogPid ?? null, node.caddyPid ?? null, node.dnsPid ?? null]))
    // Its disk stays mounted, as a dead machine's disk keeps its data: only what dockerd mounted goes.
    await this.unmountNode(name, { keepDisk: true })
    node.state = 'killed'
    node.agentPid = null
    node.dockerdPid = null
    node.watchdogPid = null
    node.caddyPid = null
    node.dnsPid = null
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
      await this.nodeRoutes(this.nodeNs(name), tryRun)
      await this.attachDisk(name, state.diskBytes ?? DEFAULT_DISK_BYTES)
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
    if (node.caddyPid == null || !isRunning(node.caddyPid)) node.caddyPid = await this.startCaddy(node)
    if (node.dnsPid == null || !isRunning(node.dnsPid)) node.dnsPid = await this.startDns(node)
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
    if (opts.crash === true) await this.unmountNode(name, { keepDisk: true })
    if ((opts.downMs ?? 0) > 0) await new Promise(resolve => setTimeout(resolve, opts.downMs))
    node.dockerdPid = await this.startDockerd(node)
    await this.save(state)
    await this.waitForDocker(node)
  }

  /**
   * Cuts the lab into groups that cannot reach each other; nodes named in no
   * group keep all their links. `oneWay`: only frames carrying data from the
   * first group to the others are dropped, while ARP and bare TCP
   * acknowledgements (IP packets of at most 64 bytes) pass: the first group
   * keeps receiving what the others send, and they hear nothing from it, as
   * when a node's outgoing streams fail while its incoming ones work.
   */
  async partition (groups: string[][], opts: { oneWay?: boolean } = {}): Promise<void> {
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
    state.oneWay = opts.oneWay === true
    await this.applyPartition(state)
    await this.save(state)
  }

  async heal (): Promise<void> {
    const state = await this.state()
    state.partition = null
    delete state.oneWay
    await this.applyPartition(state)
    await this.save(state)
  }

  private async applyPartition (state: LabState): Promise<void> {
    const rules = ['flush chain bridge dcloud_lab forward;']
    for (const [i, a] of (state.partition ?? []).entries()) {
      for (const [j, b] of (state.partition ?? []).entries()) {
        if (i === j || (state.oneWay === true && i !== 0)) continue
        const match = state.oneWay === true ? ' ip length > 64' : ''
        for (const x of a) for (const y of b) rules.push(`add rule bridge dcloud_lab forward iifname "${x}" oifname "${y}"${match} drop;`)
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
    // Nodes with a disk but no namespace (a crash between the two) go too.
    for (const entry of existsSync(this.stateDir) ? readdirSync(this.stateDir) : []) {
      if (/^n\d+$/.test(entry) && existsSync(this.diskImage(entry))) nodes.push(entry)
    }
    nodes = [...new Set(nodes)]
    progress(`stopping ${nodes.length} node(s) of lab '${this.name}'`)
    const pids: number[] = []
    for (const n of nodes) {
      if (existsSync(`/run/netns/${this.nodeNs(n)}`)) pids.push(...pidsOfNode(this.nodeNs(n), []))
    }
    killTree(pids)
    // A process still exiting holds its files open: the disks would only unmount lazily and their loop devices stay.
    await waitUntil(() => !pids.some(isRunning), 10_000, 'the lab\'s processes to die').catch(() => {})
    for (const n of nodes) {
      await this.unmountNode(n)
      await tryRun('ip', ['netns', 'del', this.nodeNs(n)])
    }
    await tryRun('ip', ['netns', 'del', this.hubNs])
    await this.unmountUnder(this.runDir)
    await this.unmountUnder(this.stateDir)
    await this.detachLoops()
    await rm(this.runDir, { recursive: true, force: true })
    await rm(this.stateDir, { recursive: true, force: true })
    const left = leftovers(this)
    if (left.length > 0) throw new UserError(`lab '${this.name}' left something behind: ${left.join('; ')}`, { exitCode: EXIT.osError })
    progress(`lab '${this.name}' is down`)
  }

  private async cleanupLeftovers (): Promise<void> {
    if (existsSync(`/run/netns/${this.hubNs}`) || existsSync(this.runDir) || existsSync(this.stateDir) || loopDevicesUnder(this.stateDir).length > 0) await this.down(() => {})
  }

  /**
   * Gives the node its data disk: an ext4 file system in a sparse image file,
   * attached to a loop device and mounted where its Docker data root and agent
   * data directory live, so that filling it (`lab fill`) fills only that node.
   * Made once and kept across `lab kill` and `lab start`; a no-op when mounted.
   */
  private async attachDisk (node: string, bytes: number): Promise<void> {
    const dir = this.diskDir(node)
    const image = this.diskImage(node)
    if (isMountPoint(dir)) return
    await mkdir(dir, { recursive: true, mode: 0o700 })
    if (!existsSync(image)) {
      const file = await open(image, 'wx', 0o600)
      try { await file.truncate(bytes) } finally { await file.close() }
      // No blocks reserved for root (everything in the lab runs as root: a full disk is full for all),
      // one inode per 64 KiB (a lab node holds few files), no discard (nothing to discard in a new sparse file).
      await run('mkfs.ext4', ['-q', '-F', '-m', '0', '-i', '65536', '-E', 'nodiscard', '-L', `${this.name}-${node}`.slice(0, 16), image])
    }
    // A loop device left attached to this image without its mount (a crash between the two) would be a
    // second writer of the same file system: detach it first.
    for (const dev of loopDevicesUnder(image)) await tryRun('losetup', ['-d', dev])
    let device = ''
    for (let attempt = 0; device === ''; attempt++) {
      // Another process (another lab) may take the free device between the look-up and the attach: try again.
      const r = await tryRun('losetup', ['--find', '--show', image])
      if (r.code === 0) device = r.stdout.trim()
      else if (attempt >= 5) throw new UserError(`cannot attach ${image} to a loop device: ${r.stderr.trim()}`, { exitCode: EXIT.osError, hint: '`losetup -a` lists the devices in use' })
      else await new Promise(resolve => setTimeout(resolve, 200 * (attempt + 1)))
    }
    const m = await tryRun('mount', ['-t', 'ext4', device, dir])
    if (m.code !== 0) {
      await tryRun('losetup', ['-d', device])
      throw new UserError(`cannot mount ${node}'s data disk (${image} on ${device}): ${m.stderr.trim()}`, { exitCode: EXIT.osError })
    }
  }

  /** Detaches the loop devices of this lab's disk images, waiting for those a lazy unmount still holds. */
  private async detachLoops (): Promise<void> {
    const detach = async (): Promise<boolean> => {
      const devices = loopDevicesUnder(this.stateDir)
      // On a device still in use, `losetup -d` only marks it to detach itself once released.
      for (const dev of devices) await tryRun('losetup', ['-d', dev])
      return loopDevicesUnder(this.stateDir).length === 0
    }
    if (await waitUntilAsync(detach, 15_000, 'the lab\'s loop devices to detach').then(() => true, () => false)) return
    // Still held: by a container whose dockerd was killed while the container was paused (a
    // fence pauses before it stops). Its frozen processes outlive the engine and cannot die
    // until thawed. Found by the disk they hold, thawed, killed; then the devices detach.
    for (const pid of pidsHolding(loopDevicesUnder(this.stateDir))) {
      thawCgroupOf(pid)
      try { process.kill(pid, 'SIGKILL') } catch {}
    }
    await waitUntilAsync(detach, 15_000, 'the lab\'s loop devices to detach').catch(() => {})
  }

  /** The node's data disk: its size, what is free (for root: nothing is reserved) and what `lab fill` holds. */
  async disk (name: string): Promise<DiskView> {
    const dir = this.diskDir(name)
    const device = loopDevicesUnder(this.diskImage(name))[0] ?? null
    if (!isMountPoint(dir)) return { mounted: false, device, bytes: 0, free: 0, filler: 0 }
    const s = await statfs(dir)
    return { mounted: true, device, bytes: s.blocks * s.bsize, free: s.bavail * s.bsize, filler: await treeBytes(this.fillerDir(name)) }
  }

  /**
   * Fills the node's data disk until `leave` bytes are free (0: full; every
   * write of any process of the node then fails with ENOSPC). The space goes
   * to files in a directory of its own at the disk's root (`lab-filler/`),
   * apart from Docker's and the agent's data: `unfill` removes them and
   * nothing else. Filling again adjusts to the new `leave`.
   */
  async fill (name: string, leave = 0): Promise<DiskView> {
    await this.node(name)
    if (!(Number.isSafeInteger(leave) && leave >= 0)) throw new UserError('--leave must be a number of bytes, 0 or more', { exitCode: EXIT.usage })
    const dir = this.diskDir(name)
    if (!isMountPoint(dir)) throw new UserError(`${name} has no data disk mounted at ${dir}`, { exitCode: EXIT.unavailable, hint: '`dcloud lab start` it, or make the lab again with `dcloud lab up`' })
    const fillers = this.fillerDir(name)
    await mkdir(fillers, { recursive: true, mode: 0o700 })
    const free = async (): Promise<{ bytes: number, block: number }> => { const s = await statfs(dir); return { bytes: s.bavail * s.bsize, block: s.bsize } }
    let f = await free()
    if (f.bytes < leave) {
      // Less free than asked to leave: give back filler space (the newest files first), then fill again to the mark.
      for (const file of (await readdirSorted(fillers)).reverse()) {
        await rm(join(fillers, file), { force: true })
        f = await free()
        if (f.bytes >= leave) break
      }
    }
    // The bulk with fallocate: blocks allocated, nothing written, so the sparse image file stays small.
    // ext4 needs a few blocks of its own for a big file's extents: on ENOSPC, ask for half as much.
    let step = f.bytes - leave
    let index = Math.max(-1, ...(await readdirSorted(fillers)).map(f => Number(/^fill-(\d+)$/.exec(f)?.[1] ?? -1))) + 1
    while (f.bytes - leave >= f.block && step >= f.block) {
      step = Math.min(step, f.bytes - leave)
      step -= step % f.block
      if (step < f.block) break
      const file = join(fillers, `fill-${String(index).padStart(4, '0')}`)
      const r = await tryRun('fallocate', ['-l', String(step), file])
      if (r.code !== 0) {
        await rm(file, { force: true })
        step = Math.floor(step / 2)
      } else {
        index++
      }
      f = await free()
    }
    // The last blocks (fewer than a big file's extent tree needs) by writing, until the disk refuses.
    if (f.bytes > leave) await writeUntilFull(join(fillers, `fill-${String(index).padStart(4, '0')}`), f.bytes - leave, f.block)
    return await this.disk(name)
  }

  /** Removes what `lab fill` wrote on the node's disk. */
  async unfill (name: string): Promise<DiskView> {
    await this.node(name)
    await rm(this.fillerDir(name), { recursive: true, force: true })
    return await this.disk(name)
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
    await this.nodeRoutes(ns, run)
    await mkdir(this.nodeDir(n.name), { recursive: true, mode: 0o700 })
    await mkdir(this.nodeRunDir(n.name), { recursive: true, mode: 0o700 })
    await chmod(this.nodeRunDir(n.name), 0o711)
  }

  /**
   * A node's routes besides its subnet's, all onto the lab's bridge: there is
   * no default route. Multicast (mDNS); the public client's range (`lab client --public`).
   */
  private async nodeRoutes (ns: string, exec: (cmd: string, args: string[]) => Promise<unknown>): Promise<void> {
    await exec('ip', ['-n', ns, 'route', 'replace', '224.0.0.0/4', 'dev', 'eth0'])
    await exec('ip', ['-n', ns, 'route', 'replace', PUBLIC_CLIENT_NET, 'dev', 'eth0'])
  }

  /**
   * A client of the lab that is not a node (`lab client`): a namespace of its
   * own with one link on the lab's bridge, made at first use and removed by
   * `lab down`. It runs no agent and no dockerd: a laptop on the LAN, or a
   * phone on the internet (`public`), asking the nodes' front doors.
   */
  async client (kind: keyof typeof LAB_CLIENTS): Promise<{ ns: string, ip: string }> {
    await this.state()
    const c = LAB_CLIENTS[kind]
    const ns = this.nodeNs(c.ns)
    if (existsSync(`/run/netns/${ns}`)) return { ns, ip: c.ip }
    await run('ip', ['netns', 'add', ns])
    await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up'])
    await run('ip', ['link', 'add', 'eth0', 'netns', ns, 'type', 'veth', 'peer', 'name', c.ns, 'netns', this.hubNs])
    await run('ip', ['-n', this.hubNs, 'link', 'set', c.ns, 'master', 'br0', 'up'])
    await run('ip', ['-n', ns, 'addr', 'add', `${c.ip}/${c.prefix}`, 'dev', 'eth0'])
    await run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up'])
    for (const r of c.routes) await run('ip', ['-n', ns, 'route', 'add', r, 'dev', 'eth0'])
    return { ns, ip: c.ip }
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
      '--data-root', this.dockerRoot(n.name),
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

  /** Where the node's Caddy takes its configuration: its admin API, on a Unix socket only. */
  caddyAdminSocket (node: string): string { return join(this.nodeRunDir(node), 'caddy', 'admin.sock') }

  /**
   * The node's front door: Debian's Caddy in the node's namespace (so `lab
   * kill` takes it with the node), started with nothing but its admin socket,
   * as dcloud-caddy.service starts it; the agent loads the rest. Serves 80
   * and 443 of the node's address. `lab caddy NODE --kill` stops only it.
   */
  async startCaddy (n: LabNode): Promise<number> {
    const home = join(this.nodeDir(n.name), 'caddy')
    await mkdir(home, { recursive: true })
    await mkdir(dirname(this.caddyAdminSocket(n.name)), { recursive: true, mode: 0o700 })
    const config = join(home, 'bootstrap.json')
    await writeFile(config, JSON.stringify({ admin: { listen: `unix/${this.caddyAdminSocket(n.name)}`, config: { persist: false } } }) + '\n')
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, XDG_DATA_HOME: join(home, 'data'), XDG_CONFIG_HOME: join(home, 'config') }
    return spawnDetached('nsenter', [`--net=/run/netns/${this.nodeNs(n.name)}`, '--', 'caddy', 'run', '--config', config], join(this.nodeDir(n.name), 'caddy.log'), env)
  }

  /** Kills only the node's Caddy (the agent loads its configuration again once it is back), or starts it again. */
  async caddy (name: string, action: 'kill' | 'start'): Promise<void> {
    const state = await this.state()
    const node = state.nodes.find(n => n.name === name)
    if (node === undefined) throw new UserError(`lab '${this.name}' has no node '${name}'`, { exitCode: EXIT.usage })
    if (node.state !== 'running') throw new UserError(`${name} is not running`, { exitCode: EXIT.usage })
    const pid = node.caddyPid ?? null
    if (action === 'kill') {
      if (pid !== null && isRunning(pid)) process.kill(pid, 'SIGKILL')
      if (pid !== null) await waitUntil(() => !isRunning(pid), 10_000, `${name}'s Caddy to die`)
      node.caddyPid = null
    } else if (pid === null || !isRunning(pid)) {
      node.caddyPid = await this.startCaddy(node)
    }
    await this.save(state)
  }

  /** The zone the node's agent writes and its DNS responder reads. */
  dnsZoneFile (node: string): string { return join(this.nodeRunDir(node), 'dns', 'zone.json') }

  /**
   * The node's private DNS responder, `dcloud dns-server`, in the node's
   * namespace (root there, so port 53 needs nothing more; on an installed
   * node dcloud-dns.service gives it CAP_NET_BIND_SERVICE only), answering
   * from the zone the node's agent writes. Its log is dns.log.
   */
  private async startDns (n: LabNode): Promise<number> {
    await mkdir(dirname(this.dnsZoneFile(n.name)), { recursive: true, mode: 0o700 })
    return spawnDetached('nsenter', [`--net=/run/netns/${this.nodeNs(n.name)}`, '--', DCLOUD_BIN, 'dns-server', '--zone', this.dnsZoneFile(n.name), '--listen', '0.0.0.0:53'], join(this.nodeDir(n.name), 'dns.log'), this.nodeEnv(n.name))
  }

  private async startAgent (n: LabNode): Promise<number> {
    return spawnDetached('nsenter', [
      `--net=/run/netns/${this.nodeNs(n.name)}`, '--', DCLOUD_BIN, 'agent',
      '--name', n.name,
      '--key-file', n.keyFile,
      '--listen', `/ip4/${n.ip}/tcp/${P2P_PORT}`,
      '--api', `127.0.0.1:${API_PORT}`,
      '--witness', `${WITNESS_IP}:53`,
      '--caddy-admin', this.caddyAdminSocket(n.name),
      '--dns-zone', this.dnsZoneFile(n.name),
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
    const store = join(this.dockerRoot(n.name), 'network', 'files', 'local-kv.db')
    if (!existsSync(store)) return false
    await rename(store, `${store}.crashed-${Date.now()}`)
    await this.unmountNode(n.name, { keepDisk: true })
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

  /** Unmounts what dockerd mounted for the node and, unless `keepDisk`, the node's data disk. */
  private async unmountNode (node: string, opts: { keepDisk?: boolean } = {}): Promise<void> {
    await this.unmountUnder(this.nodeRunDir(node))
    await this.unmountUnder(this.nodeDir(node), opts.keepDisk === true ? [this.diskDir(node)] : [])
  }

  private async unmountUnder (dir: string, keep: string[] = []): Promise<void> {
    for (const mount of mountsUnder(dir).filter(m => !keep.includes(m))) {
      if ((await tryRun('umount', [mount])).code !== 0) await tryRun('umount', ['-l', mount])
    }
  }
}

export function checkPrerequisites (): void {
  if (process.getuid?.() !== 0) throw new UserError('the lab needs root (network namespaces and dockerd)', { exitCode: EXIT.noPermission, hint: 'run it as root, e.g. `sudo npx dcloud lab up`' })
  const missing = [['ip', 'iproute2'], ['nsenter', 'util-linux'], ['fallocate', 'util-linux'], ['losetup', 'mount'], ['mkfs.ext4', 'e2fsprogs'], ['dockerd', 'docker.io'], ['nft', 'nftables'], ['busybox', 'busybox-static'], ['docker', 'docker.io'], ['caddy', 'caddy']]
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

/** What a lab that is down must not leave: processes in its namespaces, namespaces, mounts, loop devices. */
export function leftovers (lab: Lab): string[] {
  const found: string[] = []
  for (const ns of listNetns()) if (ns.startsWith(`dcl-${lab.name}-`)) found.push(`namespace ${ns}`)
  for (const m of [...mountsUnder(lab.runDir), ...mountsUnder(lab.stateDir)]) found.push(`mount ${m}`)
  for (const dev of loopDevicesUnder(lab.stateDir)) found.push(`loop device ${dev}`)
  return found
}

/**
 * Loop devices whose backing file is `path` or lies under it, from
 * /sys/block/loopN/loop/backing_file (the kernel appends " (deleted)" to a
 * file removed while attached).
 */
/** Processes whose mounts come from one of `devices` (/dev/loopN): a lab disk's last holders, containers included. */
function pidsHolding (devices: string[]): number[] {
  if (devices.length === 0) return []
  const out: number[] = []
  for (const entry of readdirSync('/proc').filter(e => /^\d+$/.test(e))) {
    let info = ''
    try { info = readFileSync(`/proc/${entry}/mountinfo`, 'utf8') } catch { continue }
    if (info.split('\n').some(line => devices.some(d => line.includes(` ${d} `)))) out.push(Number(entry))
  }
  return out.filter(pid => pid !== process.pid)
}

/** Thaws the freezer cgroup of `pid` (v1 freezer.state, v2 cgroup.freeze), so a kill can end it. */
function thawCgroupOf (pid: number): void {
  let lines: string[] = []
  try { lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n') } catch { return }
  for (const line of lines) {
    const [, controllers, path] = line.split(':')
    if (path === undefined) continue
    try {
      if (controllers === 'freezer') writeFileSync(`/sys/fs/cgroup/freezer${path}/freezer.state`, 'THAWED')
      else if (controllers === '' && existsSync(`/sys/fs/cgroup${path}/cgroup.freeze`)) writeFileSync(`/sys/fs/cgroup${path}/cgroup.freeze`, '0')
    } catch {}
  }
}

export function loopDevicesUnder (path: string): string[] {
  const prefix = path.endsWith('/') ? path : `${path}/`
  const found: string[] = []
  let entries: string[] = []
  try { entries = readdirSync('/sys/block') } catch {}
  for (const dev of entries.filter(e => /^loop\d+$/.test(e))) {
    let backing: string
    try { backing = readFileSync(`/sys/block/${dev}/loop/backing_file`, 'utf8').trim().replace(/ \(deleted\)$/, '') } catch { continue }
    if (backing === path || backing.startsWith(prefix)) found.push(`/dev/${dev}`)
  }
  return found.sort()
}

function isMountPoint (dir: string): boolean {
  return mountsUnder(dir).includes(dir)
}

/** Sizes as people write them: `4G`, `512M`, `1.5GiB`, `1000000` (binary units, bytes without one). */
export function parseSize (text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$/i.exec(text)
  if (m === null) throw new UserError(`${what} '${text}' is not a size`, { exitCode: EXIT.usage, hint: 'e.g. 4G, 512M, 100K or a number of bytes' })
  const unit = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[(m[2] ?? '').toUpperCase() as '' | 'K' | 'M' | 'G' | 'T']
  return Math.floor(Number(m[1]) * unit)
}

export function formatBytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  let v = n
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`
}

async function readdirSorted (dir: string): Promise<string[]> {
  try { return (await readdir(dir)).sort() } catch { return [] }
}

/** Bytes allocated to the files directly in `dir` (what the filler holds). */
async function treeBytes (dir: string): Promise<number> {
  let total = 0
  for (const name of await readdirSorted(dir)) {
    try { total += (await stat(join(dir, name))).blocks * 512 } catch {}
  }
  return total
}

/** Writes zeros to a new file until `bytes` are written or the file system says ENOSPC; fsyncs what it wrote. */
async function writeUntilFull (file: string, bytes: number, block: number): Promise<void> {
  const handle = await open(file, 'wx', 0o600)
  const zeros = Buffer.alloc(64 * block)
  try {
    let left = bytes
    let size = zeros.length
    while (left > 0 && size >= block) {
      const n = Math.min(size, left)
      try {
        const { bytesWritten } = await handle.write(zeros, 0, n)
        left -= bytesWritten
        if (bytesWritten < n) size = Math.floor(size / 2)
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
        size = Math.floor(size / 2)
      }
    }
    await handle.sync().catch(() => {})
  } finally {
    await handle.close()
  }
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
