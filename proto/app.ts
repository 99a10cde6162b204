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
}

export const SNAPSHOT_DEFAULTS: SnapshotPolicy = { everyMs: 60 * 60_000, replicas: 1, quiesce: 'pause', hook: null }

export interface ComposeProject {
  services: Record<string, ComposeService>
  /** Named volumes; an app with one is stateful. */
  volumes: Record<string, { labels: Record<string, string> }>
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
}

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

/** Host ports an app publishes, as "port/protocol". */
export function hostPorts (manifest: AppManifest): string[] {
  return Object.values(manifest.compose.services).flatMap(s => s.ports.filter(p => p.host !== null).map(p => `${p.host}/${p.protocol}`))
}
