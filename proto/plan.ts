/**
 * The scheduler's inputs and outputs. The leader builds a ClusterSnapshot from
 * membership and Docker, the pure scheduler turns it into a Plan, and agents
 * execute the plan's operations, each stamped with the leader's term.
 */
import type { Journal } from './journal.ts'
import type { NodeState } from './api.ts'
import type { AppManifest } from './app.ts'

export interface SchedNode {
  /** libp2p peer id. */
  id: string
  name: string
  state: NodeState
  arch: string
  cores: number
  /** CPU load in percent of all cores. */
  load: number
  memTotal: number
  memFree: number
  labels: Record<string, string>
  /** Images present on the node, by reference; used to prefer nodes that need no transfer. */
  images: string[]
  /**
   * Why the node takes no new apps right now though it is alive (its Docker
   * engine does not answer, its last operation failed moments ago), or null.
   */
  unavailable?: string | null
  /** The user drained the node (`dcloud node drain`): it takes no apps, and its apps move away. */
  drained?: boolean
  /** Device paths the node has (`/dev/dri/renderD128`, …); absent: unknown, so no app needing a device goes there. */
  devices?: string[]
  /** The newest snapshot of each app this node holds a copy of (its own or replicated), by app name. */
  snapshots?: Record<string, SnapshotHolding>
}

/** A snapshot a node holds: the newest of an app's that it has. */
export interface SnapshotHolding {
  /** restic's short id (8 hex digits). */
  id: string
  /** When it was taken, ms since epoch. */
  time: number
}

export interface DesiredApp {
  /** Instance name, unique in the cluster (an app can be installed twice under two names). */
  name: string
  manifest: AppManifest
  /** Node id the user asked for (`--node`, `app move`); null lets the scheduler choose. */
  pinnedNode: string | null
  /** Increases with every change the user makes. */
  revision: number
  /**
   * Stateful apps: which copy of the data is the live one. Raised (and
   * replicated to a majority) every time the data moves to another node by a
   * restore; a copy of an older generation found on a node is stale and is
   * retired, never started. Absent means 1.
   */
  generation?: number
  /** The last time the app's data came from a snapshot (failover, move, restore): shown to the user. */
  relocation?: Relocation | null
  /**
   * The long operation under way on the app's data (a move, a failover, a
   * rollback), as far as it got: a new leader resumes it. Absent: none.
   */
  journal?: Journal
  /**
   * An app restored from a backup file: the snapshot its data starts from,
   * and the node holding it. Its first placement restores it.
   */
  seed?: { snapshot: string, time: number, node: string } | null
  /** Where the app's volumes keep their data on the node running it; absent or null: Docker's local volumes. */
  storage?: AppStorage | null
  /**
   * Permissions the owner granted (proto/permissions.ts names), sorted;
   * absent: none (state written before permissions existed). The app runs
   * with exactly these of the powers its manifest requests.
   */
  grants?: string[]
  /**
   * The revision at which the grants last changed: a copy started before it
   * runs with other powers, and is deployed again (scheduler/reconcile.ts).
   * Absent: never changed since the install.
   */
  grantsRevision?: number
  /**
   * Who reaches the app at its name on the network (`dcloud app expose`,
   * proto/frontdoor.ts): only `internet` is written; absent means `lan`, the
   * default, so a state written before the switch existed keeps every app on
   * the LAN.
   */
  reach?: 'internet'
}

/**
 * A directory of the node instead of Docker's volume directory: each volume
 * VOL of app APP keeps its data in `hostPath/dcloud-APP-VOL/_data` (the same
 * layout as Docker's, so snapshots of both look alike), bound into a Docker
 * local volume. A disk of its own, say, mounted at the same path on every
 * node the app may run on.
 */
export interface AppStorage {
  hostPath: string
}

export interface Relocation {
  kind: 'failover' | 'move' | 'rollback' | 'restore'
  /** The snapshot restored (short id). */
  snapshot: string
  /** When that snapshot was taken, ms since epoch. */
  snapshotTime: number
  from: string | null
  to: string
  /** When the app ran again. */
  at: number
  /** Planned moves: how long the app answered nowhere, ms. */
  downtimeMs: number | null
}

export type PlacementState = 'running' | 'starting' | 'stopped' | 'failed'

/** What Docker says runs where (rebuilt from `dcloud.*` labels). */
export interface Placement {
  app: string
  node: string
  state: PlacementState
  revision: number
  /** The data generation the copy was started with (stateful apps; absent means 1). */
  generation?: number
}

export interface ClusterSnapshot {
  nodes: SchedNode[]
  desired: DesiredApp[]
  actual: Placement[]
}

export interface SchedulerPolicy {
  strategy: 'spread' | 'binpack'
  /**
   * Rebalance stateless apps when the busiest eligible node runs this many
   * more apps than the least busy one (1 never rebalances a perfect spread).
   */
  rebalanceSpread: number
  /** At most this many moves per plan, so a join does not restart everything at once. */
  maxMovesPerPlan: number
}

export interface PlanInput {
  snapshot: ClusterSnapshot
  term: number
  /** The caller's clock (ms since epoch): the scheduler has none of its own. */
  now: number
  /** Breaks ties deterministically; the same seed and inputs give the same plan. */
  seed: number
  policy: SchedulerPolicy
}

export type Operation =
  | { op: 'place', app: string, node: string, reason: string }
  | { op: 'stop', app: string, node: string, reason: string }
  /** Stateless: start on `to`, then stop on `from`. */
  | { op: 'move', app: string, from: string, to: string, reason: string }
  /** Stateful, planned: copy the data while it runs, stop, send the last increment, start on `to`. */
  | { op: 'migrate', app: string, from: string, to: string, reason: string }
  /** Stateful, its node gone: restore `snapshot` (held by `source`) on `node` and start it there. */
  | { op: 'restore', app: string, node: string, snapshot: string, snapshotTime: number, source: string, reason: string }
  /** A stale copy of a stateful app (an older generation): keep its data as a snapshot, remove its containers. */
  | { op: 'retire', app: string, node: string, reason: string }

/** Why a node was not chosen for an app: `dcloud app why` prints these. */
export interface Rejection {
  node: string
  reason: string
}

export interface Plan {
  term: number
  createdAt: number
  operations: Operation[]
  /** For every app considered, the nodes that could not take it and why. */
  rejections: Record<string, Rejection[]>
  /** Apps that fit nowhere. */
  unplaced: string[]
  /** Apps left as they are on purpose, and why (a stateful app whose node is dead waits for it or a snapshot restore). */
  waiting: Waiting[]
  /** Stateful apps found on more than one node: the scheduler stops none of the copies (that could lose data). */
  conflicts: Conflict[]
}

export interface Waiting {
  app: string
  /** The node the app is on, or was on. */
  node: string
  reason: string
}

export interface Conflict {
  app: string
  nodes: string[]
  reason: string
}
