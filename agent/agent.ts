/**
 * The agent: one per node. Wires the mesh, the status gossip and membership,
 * the Docker runtime and the local API together, and owns their lifecycle.
 */
import { mkdir, open, readFile, writeFile, rename } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { Mesh } from './mesh/mesh.ts'
import { readClusterKey, writeNewClusterKey } from './mesh/cluster-key.ts'
import { ClusterTls, clusterSecret } from './frontdoor/ca.ts'
import { CaddyAdmin } from './frontdoor/caddy-admin.ts'
import { FrontDoor, LocalWebAddresses, type FrontDoorStatus } from './frontdoor/frontdoor.ts'
import { AcmeIssuer, PublicCertificates } from './frontdoor/acme.ts'
import { ReplicatedSecrets } from './secrets/secrets.ts'
import type { RenderNode } from './frontdoor/render.ts'
import { AccessLog } from './access/service.ts'
import type { RetentionLimits } from './access/lines.ts'
import type { AccessRequest, AccessView } from '../proto/access.ts'
import { appReach, clusterDomain, reservedNameReason } from '../proto/frontdoor.ts'
import { dnsZone } from './frontdoor/dns-zone.ts'
import { ZoneFile } from './frontdoor/dns-server.ts'
import { AppMdns } from './frontdoor/mdns-names.ts'
import type Docker from 'dockerode'
import { loadOrCreateIdentity } from './mesh/identity.ts'
import { Membership, type Member } from './status/membership.ts'
import { StatusGossip } from './status/gossip.ts'
import { ResourceCollector } from './status/collector.ts'
import { DockerRuntime, dockerFromEnv } from './runtime/docker.ts'
import { ApiServer, ApiError } from './api/server.ts'
import { RpcServer } from './mesh/rpc.ts'
import { apiRoutes, type ApiBackend, type ClusterApi, type ClusterNames } from './api/routes.ts'
import { BackupFiles } from './snapshots/backup-files.ts'
import { DesiredStore, stateDigest } from './cluster/desired-store.ts'
import { Replicator } from './cluster/replication.ts'
import { Coordinator } from './cluster/coordinator.ts'
import { ElectionDriver } from './cluster/election-driver.ts'
import { AppRuntime } from './runtime/apps.ts'
import { serveImages } from './runtime/image-transfer.ts'
import { SnapshotService } from './snapshots/service.ts'
import { pullRepo, serveRepos } from './snapshots/repo-sync.ts'
import { KeyedMutex } from './util/async.ts'
import { peerIdFromString } from '@libp2p/peer-id'
import { join } from 'node:path'
import type { AppReport } from '../proto/status.ts'
import type { AppActual } from '../proto/runtime.ts'
import { AGENT_VERSION, paths, runtimeDir } from './config.ts'
import { NodeLease, echoLeaseMs } from './fence/lease.ts'
import type { Logger } from './util/log.ts'
import type { FrontDoorView, MetricsResponse, NodeView, StatusResponse } from '../proto/api.ts'
import type { NodeResources, NodeStatus } from '../proto/status.ts'
import { DEFAULT_HEARTBEAT_MS, DEFAULT_LIVENESS } from '../scheduler/liveness.ts'

export interface AgentOptions {
  dataDir: string
  /** Cluster key file; when it is the data directory's own and missing, a new cluster is created. */
  keyFile: string
  name: string
  labels: Record<string, string>
  listen: string[]
  apiTcp: string | null
  mdns: boolean
  peers: string[]
  dockerHost?: string
  heartbeatMs?: number
  /** How often old snapshots are forgotten and pruned (default 10 minutes). */
  retentionEveryMs?: number
  /** An address both halves of a two-node cluster can probe (host or host:port); null disables the two-node rule's witness. */
  witness?: string | null
  /** The restic program; default `restic` on PATH. */
  restic?: string
  /** Extra Host names the TCP API answers to (`--api-host`), e.g. the front door's domain. */
  apiHosts?: string[]
  /** Proxies whose X-Forwarded-For the API believes (`--trusted-proxy`). */
  trustedProxies?: string[]
  /** The node's devices as the user gives them (`--devices`); absent or null: read from /sys. */
  devices?: string[] | null
  /**
   * The front door (docs/frontdoor.md): Caddy's admin socket and the ports it
   * serves on (every node of a cluster uses the same HTTPS port: front doors
   * forward to each other on it). Absent or null: this node runs none.
   */
  frontDoor?: { adminSocket: string, httpsPort: number, httpPort: number | null } | null
  /** The front door's access log (agent/access/): kept, replicated and answered on every node; read from Caddy where there is a front door. */
  accessLog?: AccessLogOptions
  /** Where to write the private DNS zone for dcloud-dns.service (docs/frontdoor.md); absent or null: none. */
  dnsZone?: string | null
}

/**
 * The file this node's Caddy writes the access log to (null: it logs none,
 * e.g. no front door; the node still holds its peers' replicas and answers
 * queries), and how long and how much is kept.
 */
export interface AccessLogOptions { caddyLog: string | null, retention?: Partial<RetentionLimits> }

/** Members of this group reach the API's Unix socket, i.e. administer the node (as with `docker`). */
export const SOCKET_GROUP = 'dcloud'

const LOAD_SAMPLE_MS = 5000
const DOCKER_POLL_MS = 30_000
const LIVENESS_TICK_MS = 250
const REDIAL_MS = 2000
/** How long we keep dialling a dead node before leaving its return to mDNS or its own dials. */
const REDIAL_DEAD_FOR_MS = 15 * 60_000

export class Agent implements ApiBackend {
  readonly startedAt = Date.now()
  listeningAt: number | null = null
  private readonly opts: AgentOptions
  private readonly log: Logger
  private mesh: Mesh | undefined
  private gossip: StatusGossip | undefined
  private membership: Membership | undefined
  private collector: ResourceCollector | undefined
  private api: ApiServer | undefined
  private rpc: RpcServer | undefined
  private coordinator: Coordinator | undefined
  private election: ElectionDriver | undefined
  private replicator: Replicator | undefined
  private lease: NodeLease | undefined
  private store: DesiredStore | undefined
  private tls: ClusterTls | undefined
  private frontDoor: FrontDoor | undefined
  /** Replicated secrets (agent/secrets/secrets.ts), and the public certificates among them. */
  private secrets: ReplicatedSecrets | undefined
  private publicCerts: PublicCertificates | undefined
  private acme: AcmeIssuer | undefined
  private localWeb: LocalWebAddresses | undefined
  private accessLog: AccessLog | undefined
  private appMdns: AppMdns | undefined
  /** DATA_DIR/backups: backup files through the API (ApiBackend). */
  readonly backups: BackupFiles
  /** The agent's own directories, which no ordinary path grant reaches (ApiBackend). */
  readonly ownDirs: string[]
  private timers: NodeJS.Timeout[] = []
  private readonly controller = new AbortController()
  private started = false

  constructor (opts: AgentOptions, log: Logger) {
    this.opts = opts
    this.log = log
    this.backups = new BackupFiles(opts.dataDir)
    this.ownDirs = [opts.dataDir]
  }

  async start (): Promise<void> {
    if (this.started) return
    this.started = true
    const { opts, log } = this
    const p = paths(opts.dataDir)
    await mkdir(opts.dataDir, { recursive: true, mode: 0o700 })
    await this.backups.start()

    if (opts.keyFile === p.keyFile && !existsSync(p.keyFile)) {
      await writeNewClusterKey(p.keyFile)
      log.info('created a new cluster key; copy it to other nodes to let them join', { keyFile: p.keyFile })
    }
    const clusterKey = await readClusterKey(opts.keyFile)
    // The cluster CA: the same on every node, from the key alone (agent/frontdoor/ca.ts).
    this.tls = new ClusterTls(clusterSecret(clusterKey))
    const secret = clusterSecret(clusterKey)
    const privateKey = await loadOrCreateIdentity(p.identity)
    const incarnation = await nextIncarnation(p.incarnation)
    const token = await loadOrCreateToken(p.token)
    const intervalMs = opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS

    const docker = dockerFromEnv(opts.dockerHost)
    // Stateful containers start only while this node holds its fencing lease (agent/fence/).
    const runtime = new AppRuntime({ docker, log: log.child('runtime'), configDir: join(opts.dataDir, 'configs'), ownDirs: this.ownDirs, mayStartStateful: () => this.lease?.holds === true ? null : 'this node does not see the cluster\'s majority (its fencing lease is not held)' })
    const store = new DesiredStore(opts.dataDir, log.child('desired'))
    await store.load()
    this.store = store
    this.collector = new ResourceCollector(new DockerRuntime(docker), log.child('resources'), opts.devices ?? null)
    this.collector.useAppReporter(async (signal) => reportApps(await runtime.list(signal ?? AbortSignal.timeout(10_000))))
    await this.collector.sampleLoad()
    await this.collector.refresh(AbortSignal.timeout(5000)).catch(err => { log.warn('first resource sample failed', { error: (err as Error).message }) })

    this.mesh = await Mesh.create({
      privateKey,
      clusterKey,
      listen: opts.listen,
      mdns: opts.mdns,
      peers: opts.peers,
      agentVersion: AGENT_VERSION,
      log: log.child('mesh')
    })
    const mesh = this.mesh
    this.membership = new Membership({
      now: Date.now,
      isConnected: (id) => mesh.isConnected(id),
      onTransition: (m, from) => {
        logTransition(log, m, from)
        if (m.state === 'dead') void mesh.hangUp(m.status.peerId)
        // A node's death changes where its apps' requests can go.
        this.frontDoor?.poke()
      },
      // Where apps run changed: the front door routes by it at once, not at its next second.
      onAppsChanged: () => { this.frontDoor?.poke() }
    })
    this.gossip = new StatusGossip({
      mesh,
      membership: this.membership,
      collector: this.collector,
      name: opts.name,
      labels: opts.labels,
      agentVersion: AGENT_VERSION,
      incarnation,
      intervalMs,
      log: log.child('gossip'),
      cluster: () => this.coordinator?.beat() ?? { term: 0, leader: null, desiredRevision: store.current().revision },
      snapshots: () => this.coordinator?.data.holdings() ?? []
    })
    this.rpc = new RpcServer(mesh, log.child('rpc'))
    this.election = new ElectionDriver({ mesh, rpc: this.rpc, membership: this.membership, store, dataDir: opts.dataDir, witness: opts.witness ?? null, log: log.child('election') })
    this.replicator = new Replicator({ mesh, rpc: this.rpc, store, election: this.election, membership: this.membership, log: log.child('replication') })
    // One lock per app's snapshot repository: restic runs, pulls into it and pulls from it never overlap.
    const repoLocks = new KeyedMutex()
    const lock = async (app: string): Promise<() => void> => await repoLocks.acquire(app)
    const snapshots = new SnapshotService({
      dataDir: opts.dataDir,
      clusterKey,
      nodeName: () => opts.name,
      runtime,
      lock,
      pull: async (peer, app, signal) => await pullRepo(mesh, typeof peer === 'string' ? peerIdFromString(peer) : peer, app, join(opts.dataDir, 'snapshots', 'repos'), { signal, lock }),
      log: log.child('snapshots'),
      ...(opts.restic !== undefined ? { restic: opts.restic } : {})
    })
    this.secrets = new ReplicatedSecrets({ clusterSecret: secret, state: () => store.current(), change: async (c, signal) => await this.cluster().change(c, signal) })
    this.publicCerts = new PublicCertificates(this.secrets, log.child('acme'))
    this.coordinator = new Coordinator({ mesh, rpc: this.rpc, membership: this.membership, gossip: this.gossip, collector: this.collector, store, election: this.election, replicator: this.replicator, runtime, docker, snapshots, frontDoor: { withdraw: async (app) => { await this.frontDoor?.withdraw(app) }, release: (app) => { this.frontDoor?.release(app) } }, ...(opts.retentionEveryMs !== undefined ? { retentionEveryMs: opts.retentionEveryMs } : {}), log: log.child('cluster') })

    await mesh.start()
    this.listeningAt = Date.now()
    await serveImages(mesh, docker, log.child('images'))
    await serveRepos(mesh, { root: snapshots.reposRoot, log: log.child('repo-sync'), lock })
    await this.coordinator.start()
    await this.replicator.start()
    await this.election.start()

    this.gossip.start()
    // Before the front door: its first configuration names the file the access log tails.
    const accessLog = { caddyLog: opts.frontDoor != null ? opts.accessLog?.caddyLog ?? null : null, retention: opts.accessLog?.retention }
    this.accessLog = this.makeAccessLog(accessLog)
    await this.accessLog.start()
    if (opts.frontDoor != null) {
      this.frontDoor = this.makeFrontDoor(opts.frontDoor, this.tls, docker, store)
      this.frontDoor.start()
      this.acme = this.makeAcmeIssuer(opts.frontDoor, store)
      this.acme.start()
      store.onCommitted(() => { this.frontDoor?.poke(); this.acme?.poke() })
    }
    this.startNames(store)
    log.info('agent listening', { name: opts.name, peerId: mesh.peerId.toString(), addrs: mesh.listenAddrs(), mdns: opts.mdns })

    this.api = new ApiServer({
      socketPath: p.socket,
      socketGroup: SOCKET_GROUP,
      tcp: opts.apiTcp,
      token,
      nodeName: opts.name,
      hostNames: opts.apiHosts ?? [],
      trustedProxies: opts.trustedProxies ?? [],
      log: log.child('api'),
      routes: apiRoutes(this, () => this.api?.metrics() ?? { refused: { unauthorized: 0, forbidden: 0, rateLimited: 0, badHost: 0, badOrigin: 0, badContentType: 0, tooLarge: 0, badJson: 0 }, refusalsNotLogged: 0 })
    })
    await this.api.start()
    // The fencing lease sits beside the API socket (/run/dcloud for the system agent), in the
    // directory the API server prepared for the socket's group.
    const election = this.election
    const echoLease = echoLeaseMs(intervalMs, DEFAULT_LIVENESS.deadAfterIntervals)
    this.lease = new NodeLease({ dir: runtimeDir(opts.dataDir), node: opts.name, entitled: () => election.seesQuorum(), heardUntil: (now) => election.heardByQuorumAt(now) + echoLease, log: log.child('fence') })
    this.lease.start()

    const membership = this.membership
    const collector = this.collector
    this.timers.push(setInterval(() => { membership.tick() }, LIVENESS_TICK_MS))
    // Reconnect to members we lost (a healed partition, a node back from the dead);
    // mDNS would find them too, but only at its next query.
    this.timers.push(setInterval(() => {
      const now = Date.now()
      mesh.redial(membership.list().filter(m => m.state !== 'dead' || now - m.stateSince < REDIAL_DEAD_FOR_MS).map(m => m.status.peerId))
    }, REDIAL_MS))
    this.timers.push(setInterval(() => {
      collector.sampleLoad().catch(err => { log.debug('load sample failed', { error: (err as Error).message }) })
    }, LOAD_SAMPLE_MS))
    // Docker tells us when containers or images change; this slow poll only catches what an event stream can miss.
    collector.watchDocker(() => { this.gossip?.announceChange(); this.localWeb?.invalidate(); this.frontDoor?.poke() }, this.controller.signal)
    this.timers.push(setInterval(() => {
      collector.refresh(AbortSignal.any([this.controller.signal, AbortSignal.timeout(DOCKER_POLL_MS)]))
        .catch(err => { log.debug('resource refresh failed', { error: (err as Error).message }) })
    }, DOCKER_POLL_MS))
  }

  async stop (): Promise<void> {
    if (!this.started) return
    this.started = false
    this.controller.abort()
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    this.gossip?.stop()
    await this.acme?.stop()
    await this.frontDoor?.stop()
    await this.accessLog?.stop()
    await this.appMdns?.stop()
    await this.api?.stop()
    this.lease?.stop()
    await this.election?.stop()
    await this.replicator?.stop()
    await this.coordinator?.stop()
    await this.rpc?.stop()
    await this.mesh?.stop()
  }

  status (): StatusResponse {
    const self = this.requireStarted()
    const now = Date.now()
    const mine = self.gossip.current()
    const drained = new Set(this.store?.current().drained ?? [])
    const nodes: NodeView[] = [{ ...viewOf(mine, mine.resources), drained: drained.has(mine.peerId), state: 'alive', self: true, lastSeenMs: 0 }]
    for (const m of self.membership.list()) nodes.push({ ...viewOf(m.status, m.resources), drained: drained.has(m.status.peerId), state: m.state, self: false, lastSeenMs: now - m.lastHeardAt })
    nodes.sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id))
    return { self: mine.peerId, leader: this.election?.leader ?? null, nodes }
  }

  metrics (): Omit<MetricsResponse, 'api'> {
    const self = this.requireStarted()
    const usage = process.cpuUsage()
    return {
      peerId: self.mesh.peerId.toString(),
      name: this.opts.name,
      startedAt: this.startedAt,
      listeningAt: this.listeningAt,
      firstHeardAt: Object.fromEntries(self.membership.list().map(m => [m.status.peerId, m.firstHeardAt])),
      statusPublished: self.gossip.published,
      statusAccepted: self.gossip.accepted,
      statusDropped: { ...self.gossip.dropped },
      dialFailures: self.mesh.counters.dialFailures,
      lastDialError: self.mesh.counters.lastDialError,
      connections: self.mesh.connectionCount(),
      term: this.election?.term ?? 0,
      leader: this.election?.leader ?? null,
      ops: this.coordinator?.counters ?? { opsExecuted: 0, opsRefused: 0, opsFailed: 0, plans: 0 },
      state: this.stateView(),
      replication: this.replicator?.counters ?? null,
      rpc: this.rpc?.counters ?? { served: 0, rejected: 0, failed: 0 },
      backups: { ...this.backups.counters },
      frontDoor: this.frontDoor === undefined ? null : frontDoorView(this.frontDoor.status),
      acme: this.acme === undefined ? null : { ...this.acme.status, plan: [...this.acme.status.plan] },
      accessLog: this.accessLog === undefined ? null : { ...this.accessLog.counters },
      names: { dnsZone: this.opts.dnsZone ?? null, mdns: this.appMdns?.hosts() ?? null },
      ...memory(),
      cpuSeconds: (usage.user + usage.system) / 1e6
    }
  }

  /** Where this node's copy of the replicated state stands. */
  private stateView (): MetricsResponse['state'] {
    const store = this.store
    if (store === undefined) return { revision: 0, term: 0, lastIndex: 0, commitIndex: 0, digest: '' }
    const s = store.current()
    return { revision: s.revision, term: s.term, lastIndex: store.lastIndex, commitIndex: store.committed, digest: stateDigest(s) }
  }

  /** The cluster's domain and CA root (ApiBackend). */
  async names (): Promise<ClusterNames> {
    if (this.tls === undefined || this.store === undefined) throw new ApiError('internal', 'agent not started')
    const state = this.store.current()
    const ca = await this.tls.root(clusterDomain(state))
    return {
      domain: ca.domain,
      isDefault: state.domain === undefined,
      rootPem: ca.rootPem,
      fingerprint: ca.fingerprint,
      acme: state.acme === undefined ? null : { directory: state.acme.directory, email: state.acme.email, customRoot: state.acme.caRootPem !== null },
      certificates: this.publicCerts?.view(state) ?? [],
      acmeFailure: state.acmeFailure ?? null
    }
  }

  /**
   * The front door's driver, fed from what this node knows: the committed
   * desired state, every live node's report of the apps it runs (status
   * gossip), and this node's own web containers from Docker.
   */
  private makeFrontDoor (fd: NonNullable<AgentOptions['frontDoor']>, tls: ClusterTls, docker: Docker, store: DesiredStore): FrontDoor {
    const self = (): RenderNode => {
      const s = this.requireStarted().gossip.current()
      return { id: s.peerId, name: s.name, address: s.resources.address }
    }
    const localWeb = new LocalWebAddresses(docker)
    this.localWeb = localWeb
    return new FrontDoor({
      admin: new CaddyAdmin(fd.adminSocket),
      tls,
      listen: { https: [`:${fd.httpsPort}`], http: fd.httpPort === null ? [] : [`:${fd.httpPort}`] },
      peerHttpsPort: fd.httpsPort,
      accessLog: this.opts.accessLog?.caddyLog ?? null,
      self,
      gather: async (signal) => {
        const { gossip, membership } = this.requireStarted()
        const state = store.current()
        const serving = (reports: AppReport[]): string[] => reports.filter(r => r.state === 'running' || r.state === 'starting').map(r => r.name)
        const mine = gossip.current()
        const nodes = [{ ...self(), apps: serving(mine.resources.appStates) }]
        for (const m of membership.list()) {
          if (m.state === 'dead' || m.resources === null) continue
          nodes.push({ id: m.status.peerId, name: m.status.name, address: m.resources.address, apps: serving(m.resources.appStates) })
        }
        const local = await localWeb.get(state.apps.map(a => ({ name: a.name, webService: a.manifest.web?.service ?? null })), signal)
        const pub = this.publicCerts?.serving(state, Date.now()).map(c => ({ certPem: c.certPem, keyPem: c.keyPem, names: c.names })) ?? []
        return { domain: clusterDomain(state), apps: state.apps.map(a => ({ name: a.name, web: a.manifest.web, reach: appReach(a) })), nodes, local, public: pub, ...(state.challenges !== undefined ? { challenges: state.challenges } : {}), mdnsHosts: this.appMdns?.hosts() ?? {} }
      },
      log: this.log.child('frontdoor')
    })
  }

  /**
   * The ACME issuer (agent/frontdoor/acme.ts): on every node with a front
   * door, ordering only while this node leads.
   */
  private makeAcmeIssuer (fd: NonNullable<AgentOptions['frontDoor']>, store: DesiredStore): AcmeIssuer {
    const { secrets, publicCerts } = this
    if (secrets === undefined || publicCerts === undefined) throw new Error('agent not started')
    return new AcmeIssuer({
      secrets,
      certificates: publicCerts,
      state: () => store.current(),
      isLeader: () => this.election?.isLeader === true,
      change: async (c, signal) => await this.cluster().change(c, signal),
      frontDoors: () => {
        const { gossip, membership } = this.requireStarted()
        const addresses = [gossip.current().resources.address, ...membership.list().filter(m => m.state === 'alive').map(m => m.resources?.address ?? null)]
        return [...new Set(addresses.filter((a): a is string => a !== null))]
      },
      httpPort: fd.httpPort,
      log: this.log.child('acme')
    })
  }

  /**
   * The access log's service: its replicas and queries go to the live
   * nodes; a node's address tells a request another front door forwarded.
   */
  private makeAccessLog (opts: AccessLogOptions): AccessLog {
    const { mesh, rpc, membership } = { ...this.requireStarted(), rpc: this.rpc }
    if (rpc === undefined) throw new Error('agent not started')
    return new AccessLog({
      dataDir: this.opts.dataDir,
      caddyLog: opts.caddyLog,
      mesh,
      rpc,
      log: this.log.child('access'),
      peers: () => membership.list().filter(m => m.state !== 'dead').map(m => ({ id: m.status.peerId })),
      nodeAddresses: () => membership.list().map(m => m.resources?.address).filter((a): a is string => typeof a === 'string'),
      nodeName: (id) => id === mesh.peerId.toString() ? this.opts.name : membership.list().find(m => m.status.peerId === id)?.status.name ?? null,
      ...(opts.retention !== undefined ? { retention: opts.retention } : {})
    })
  }

  /** An app's access log across the cluster (ApiBackend). */
  async access (app: string, q: AccessRequest, signal: AbortSignal): Promise<AccessView> {
    if (this.accessLog === undefined) throw new ApiError('internal', 'agent not started')
    return await this.accessLog.query(app, q, signal)
  }

  /**
   * Names in the home (docs/frontdoor.md): the private DNS zone written for
   * the responder that holds port 53, and the apps' `.local` names over
   * mDNS. Both follow the committed state and the live nodes: once a second
   * and at once on a commit.
   */
  private startNames (store: DesiredStore): void {
    const zoneFile = this.opts.dnsZone != null ? new ZoneFile(this.opts.dnsZone, this.log.child('dns')) : null
    const appMdns = this.opts.mdns ? new AppMdns(this.log.child('mdns')) : null
    if (zoneFile === null && appMdns === null) return
    this.appMdns = appMdns ?? undefined
    let hosts = '{}'
    // The other nodes' answers tell apart from another device's only once their status is heard:
    // names are probed a few heartbeats after the start (a name given up too early comes back anyway).
    const mdnsFrom = Date.now() + 3 * (this.opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS)
    const tick = (): void => {
      if (!this.started) return
      const { gossip, membership } = this.requireStarted()
      const state = store.current()
      const self = gossip.current().resources.address
      const members = membership.list().filter(m => m.resources !== null)
      // Only nodes heard from now: a suspect node may be gone, and a resolver would try it first.
      const alive = [{ address: self }, ...members.filter(m => m.state === 'alive').map(m => ({ address: m.resources?.address ?? null }))]
      if (zoneFile !== null) void zoneFile.write(dnsZone({ domain: clusterDomain(state), revision: state.revision, apps: state.apps.map(a => a.name), nodes: alive }))
      if (appMdns !== null && Date.now() >= mdnsFrom) {
        const web = state.apps.filter(a => a.manifest.web != null && reservedNameReason(a.name) === null).map(a => a.name)
        // Any member's address is the cluster's own, never another device's.
        const cluster = [self, ...members.map(m => m.resources?.address ?? null)].filter((a): a is string => a !== null)
        appMdns.update(web, self, cluster)
        const now = JSON.stringify(appMdns.hosts())
        if (now !== hosts) { hosts = now; this.frontDoor?.poke() }
      }
    }
    tick()
    this.timers.push(setInterval(tick, 1000))
    store.onCommitted(tick)
  }

  cluster (): ClusterApi {
    if (this.coordinator === undefined) throw new ApiError('internal', 'agent not started')
    return this.coordinator
  }

  private requireStarted (): { mesh: Mesh, gossip: StatusGossip, membership: Membership } {
    if (this.mesh === undefined || this.gossip === undefined || this.membership === undefined) throw new Error('agent not started')
    return { mesh: this.mesh, gossip: this.gossip, membership: this.membership }
  }
}

/** What the runtime found, as this node reports it: with the host ports its containers publish (raw TCP/UDP services). */
function reportApps (apps: AppActual[]): AppReport[] {
  return apps.map(a => {
    const ports = [...new Map(a.services.flatMap(s => s.ports).filter(p => p.host !== null).map(p => [`${p.host}/${p.protocol}`, { port: p.host as number, protocol: p.protocol }])).values()]
      .sort((x, y) => x.port - y.port || x.protocol.localeCompare(y.protocol))
    return { name: a.app, state: a.state, revision: a.revision, ports, webPort: null, generation: a.generation }
  })
}

function frontDoorView (s: FrontDoorStatus): FrontDoorView {
  return {
    loaded: s.loaded,
    loadedAt: s.loadedAt,
    loads: s.loads,
    reloadsAfterLoss: s.reloadsAfterLoss,
    failures: s.failures,
    lastError: s.lastError,
    routes: s.routes.map(r => ({ name: r.name, host: r.host, kind: r.kind, ...(r.kind === 'remote' ? { node: r.nodeName } : {}), ...(r.kind === 'down' || r.kind === 'skipped' ? { reason: r.reason } : {}) }))
  }
}

function memory (): { rssBytes: number, heapUsedBytes: number, externalBytes: number } {
  const m = process.memoryUsage()
  return { rssBytes: m.rss, heapUsedBytes: m.heapUsed, externalBytes: m.external }
}

/** A node as the API shows it; resources not yet reported show as zero and 'unknown'. */
function viewOf (s: NodeStatus, r: NodeResources | null): Omit<NodeView, 'state' | 'self' | 'lastSeenMs' | 'drained'> {
  return {
    id: s.peerId,
    name: s.name,
    cpu: r?.cpu.load ?? 0,
    cores: r?.cpu.cores ?? 0,
    memTotal: r?.mem.total ?? 0,
    memFree: r?.mem.free ?? 0,
    diskFree: r?.diskFree ?? 0,
    arch: r?.arch ?? 'unknown',
    dockerVersion: r?.dockerVersion ?? null,
    agentVersion: r?.agentVersion ?? 'unknown',
    labels: r?.labels ?? {},
    apps: r?.apps ?? []
  }
}

function logTransition (log: Logger, m: Member, from: string | null): void {
  const fields = { node: m.status.name, peerId: m.status.peerId }
  if (from === null) log.info('node joined', fields)
  else if (m.state === 'dead') log.warn('node is dead', fields)
  else log.info(`node is ${m.state}`, { ...fields, was: from })
}

/**
 * A number that grows with every start of this agent, even when the clock went
 * backwards (a Pi without a real-time clock boots in the past until NTP syncs).
 */
async function nextIncarnation (path: string): Promise<number> {
  let previous = 0
  try {
    previous = Number((await readFile(path, 'utf8')).trim()) || 0
  } catch {}
  const next = Math.max(Date.now(), previous + 1)
  await writeFile(`${path}.tmp`, String(next), { mode: 0o600 })
  await rename(`${path}.tmp`, path)
  return next
}

async function loadOrCreateToken (path: string): Promise<string> {
  try {
    return (await readFile(path, 'utf8')).trim()
  } catch {}
  const token = randomBytes(32).toString('base64url')
  const handle = await open(path, 'wx', 0o600)
  try { await handle.writeFile(token + '\n') } finally { await handle.close() }
  return token
}
