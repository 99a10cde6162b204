/**
 * Apps: what a user installs. An app is one compose project (the format people
 * already write) plus metadata, kept in the compose file's `x-dcloud` block.
 * These are the validated, normalised shapes every part of the system uses;
 * apps/ parses and validates files into them.
 */

export interface AppManifest {
  /** Catalog id: lowercase letters, digits and dashes, e.g. "nextcloud". */
  id: string
  /** Display name, e.g. "Nextcloud". */
  name: string
  version: string
  description: string
  icon: string | null
  category: string | null
  /** Docker architectures the images exist for (amd64, arm64, arm); empty means any. */
  architectures: string[]
  /** What the app needs on a node, summed over its services. */
  requests: { memoryBytes: number, cpus: number }
  /**
   * The service and container port of the app's web UI, if any; `path` is
   * where the UI starts ("/admin") and `scheme` what the port speaks (both
   * stores mark apps that serve only HTTPS). Absent means "/" and "http".
   */
  web: { service: string, port: number, path?: string, scheme?: 'http' | 'https' } | null
  /** Node labels the app requires, e.g. { ssd: 'true' }. */
  constraints: Record<string, string>
  compose: ComposeProject
  /** How stateful apps are snapshotted (`x-dcloud.snapshots`); absent means the defaults (SNAPSHOT_DEFAULTS). */
  snapshots?: SnapshotPolicy
}

/**
 * When and how an app's volumes are snapshotted. `quiesce` is what the app
 * goes through for the final pass of a consistent snapshot: `pause` freezes
 * its containers (a crash-consistent copy, which databases recover from),
 * `stop` stops them, `none` copies while it runs. `hook` runs in a service
 * before every snapshot (a database dump into a volume, say).
 */
export interface SnapshotPolicy {
  everyMs: number
  replicas: number
  quiesce: 'pause' | 'stop' | 'none'
  hook: { service: string, command: string[] } | null
  /**
   * Which of the snapshots the system took by itself stay (scheduler/retention.ts):
   * the newest `last`, and the newest of each of the last `hourly` hours,
   * `daily` days, `weekly` weeks. Absent: the cluster's default rule.
   */
  keep?: { last: number, hourly: number, daily: number, weekly: number }
}

/** The bounds of a keep rule's counts: enough for years of weekly snapshots. */
export const KEEP_MAX = 1000
/** The cluster's keep rule, for apps that set none (scheduler/retention.ts applies it). */
export const KEEP_DEFAULTS = { last: 6, hourly: 24, daily: 7, weekly: 4 }

export const SNAPSHOT_DEFAULTS: SnapshotPolicy = { everyMs: 60 * 60_000, replicas: 1, quiesce: 'pause', hook: null }

export interface ComposeProject {
  services: Record<string, ComposeService>
  /** Named volumes; an app with one is stateful. */
  volumes: Record<string, { labels: Record<string, string> }>
  /**
   * Configs whose content travels in the manifest (compose's inline
   * `content:`, or a file a store ships in the app's folder): the node that
   * runs a service writes the file and mounts it read-only.
   */
  configs: Record<string, { content: string }>
}

export interface ComposeService {
  image: string
  command: string[] | null
  entrypoint: string[] | null
  environment: Record<string, string>
  ports: PortMapping[]
  volumes: VolumeMount[]
  healthcheck: HealthCheck | null
  dependsOn: string[]
  restart: 'no' | 'always' | 'on-failure' | 'unless-stopped'
  labels: Record<string, string>
  user: string | null
  /** The process's working directory (absolute); null: the image's. */
  workingDir: string | null
  tty: boolean
  stdinOpen: boolean
  /** Size of /dev/shm; null: Docker's default (64 MiB). */
  shmSizeBytes: number | null
  tmpfs: TmpfsMount[]
  /** The container's root filesystem is mounted read-only. */
  readOnly: boolean
  /** Capabilities taken away (upper case, without CAP_; "ALL" for every one). */
  capDrop: string[]
  /** Resource limits by name (nofile, nproc, memlock, …); -1 is unlimited. */
  ulimits: Record<string, { soft: number, hard: number }>
  /** Extra /etc/hosts lines; `address` is an IP or Docker's "host-gateway" (the node's own address). */
  extraHosts: Array<{ host: string, address: string }>
  /** security_opt no-new-privileges: setuid binaries gain nothing. The only security option an app may set. */
  noNewPrivileges: boolean
  /** Configs of the project mounted as read-only files. */
  configs: ConfigMount[]
  // Powers: each is a permission the app requests (proto/permissions.ts) and
  // reaches Docker only when granted.
  /** Capabilities added (upper case, without CAP_): permission `net_admin`, … */
  capAdd: string[]
  /** Host devices: permission `device:HOST`. */
  devices: DeviceMapping[]
  /** `host`: the node's network stack (permission `host_network`); `bridge`: the app's own network. */
  networkMode: 'bridge' | 'host'
  /** Permission `privileged`. */
  privileged: boolean
  /** Namespaced kernel settings: permission `sysctl:NAME` each. */
  sysctls: Record<string, string>
}

/** A host device in the container: compose's `HOST[:CONTAINER[:PERMISSIONS]]`. */
export interface DeviceMapping {
  host: string
  container: string
  /** cgroup permissions: some of r, w, m. */
  permissions: string
}

/** The service keys added after the first release, at their defaults: a manifest of an older peer lacks them. */
export function serviceDefaults (): Pick<ComposeService, 'workingDir' | 'tty' | 'stdinOpen' | 'shmSizeBytes' | 'tmpfs' | 'readOnly' | 'capDrop' | 'ulimits' | 'extraHosts' | 'noNewPrivileges' | 'configs' | 'capAdd' | 'devices' | 'networkMode' | 'privileged' | 'sysctls'> {
  return { workingDir: null, tty: false, stdinOpen: false, shmSizeBytes: null, tmpfs: [], readOnly: false, capDrop: [], ulimits: {}, extraHosts: [], noNewPrivileges: false, configs: [], capAdd: [], devices: [], networkMode: 'bridge', privileged: false, sysctls: {} }
}

export interface TmpfsMount {
  target: string
  /** Mount options in Docker's words: "size=67108864", "mode=1777", "noexec". */
  options: string[]
}

/**
 * Tmpfs options an app may set (Docker's words). Left out on purpose: `suid`
 * and `dev`, which would let setuid binaries or device nodes on the mount
 * work: more than Docker's default (nosuid, nodev) tmpfs gives.
 */
export const TMPFS_OPTION = /^(size=\d{1,16}|mode=[0-7]{3,4}|uid=\d{1,10}|gid=\d{1,10}|nr_inodes=\d{1,16}|ro|rw|exec|noexec|nosuid|nodev|atime|noatime|relatime|norelatime|strictatime|nostrictatime|nodiratime)$/

/** A config's file in a container. */
export interface ConfigMount {
  /** The name in ComposeProject.configs. */
  source: string
  /** Absolute path of the file in the container. */
  target: string
  /** File mode, 0o444 unless the file says otherwise. */
  mode: number
}

/** Bounds of what configs a manifest carries: they are replicated to every node with it. */
export const CONFIG_LIMITS = { maxBytes: 256 * 1024, maxTotalBytes: 1024 * 1024, maxConfigs: 64 }

/** A hostname for /etc/hosts: labels of letters, digits, "-" and "_", dot separated. */
export const HOST_NAME = /^(?=.{1,253}$)[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?(\.[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?)*$/
/** Resource limit names Docker knows (setrlimit's, without RLIMIT_). */
export const ULIMIT_NAMES = ['as', 'core', 'cpu', 'data', 'fsize', 'locks', 'memlock', 'msgqueue', 'nice', 'nofile', 'nproc', 'rss', 'rtprio', 'rttime', 'sigpending', 'stack']

export interface PortMapping {
  /** Port published on the node; null lets Docker choose. */
  host: number | null
  container: number
  protocol: 'tcp' | 'udp'
}

export interface VolumeMount {
  /** A named volume of the project, or an absolute host path for a bind mount. */
  source: string
  target: string
  kind: 'volume' | 'bind'
  readOnly: boolean
}

export interface HealthCheck {
  test: string[]
  intervalMs: number
  timeoutMs: number
  retries: number
  startPeriodMs: number
}

export function isStateful (manifest: AppManifest): boolean {
  return Object.keys(manifest.compose.volumes).length > 0
}

/**
 * The app as a node runs it: the web UI's container port is not published on
 * the node. The front door reaches the web container on the app's Docker
 * network (docs/frontdoor.md), and a port on the node would let any client of
 * the LAN, or the internet, around the front door's reach check. Other ports
 * (raw TCP/UDP services: DNS on 53, a game server) stay published. A web
 * service on the host's network listens on the node itself: nothing to take.
 */
export function withoutWebPort (manifest: AppManifest): AppManifest {
  const web = manifest.web
  const svc = web == null ? undefined : manifest.compose.services[web.service]
  if (web == null || svc === undefined || svc.networkMode === 'host') return manifest
  const ports = svc.ports.filter(p => !(p.container === web.port && p.protocol === 'tcp'))
  if (ports.length === svc.ports.length) return manifest
  return { ...manifest, compose: { ...manifest.compose, services: { ...manifest.compose.services, [web.service]: { ...svc, ports } } } }
}

/**
 * Host ports an app holds on its node, as "port/protocol": those it publishes
 * and, for a service on the host's network, the ports its `ports` name (there
 * the container's own port is the node's; Docker ignores the mapping).
 */
export function hostPorts (manifest: AppManifest): string[] {
  return Object.values(withoutWebPort(manifest).compose.services).flatMap(s => s.networkMode === 'host'
    ? s.ports.map(p => `${p.container}/${p.protocol}`)
    : s.ports.filter(p => p.host !== null).map(p => `${p.host}/${p.protocol}`))
}

/** An IPv4 or IPv6 address (no brackets, no zone). Written without node:net: the dashboard bundles proto/. */
export function isIpAddress (s: string): boolean {
  if (/^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/.test(s)) return true
  return s.includes(':') && /^[0-9a-fA-F:.]{2,45}$/.test(s) && URL.canParse(`http://[${s}]/`)
}
