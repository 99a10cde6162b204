/**
 * Node status: the heartbeat every agent publishes on the status topic.
 *
 * Every heartbeat says who is alive; every few heartbeats (and whenever
 * something changed) it also carries the node's resources. Beats without
 * resources are about a fifth of the size, which matters because gossip
 * relays every message to several peers each second.
 *
 * Receivers trust nothing in it: `decodeStatus` bounds the size first, then
 * checks the version, every field, and that the claimed peer is the peer that
 * signed the gossip message.
 */
import {
  DOCKER_NAME, MAX_INT, NODE_LABEL_KEY, PEER_ID, SNAPSHOT_ID, ValidationError, array, number, parseJsonBytes, record, string, stringMap
} from './validate.ts'
import { DEVICE_PATH } from './permissions.ts'

export const STATUS_TOPIC = '/dcloud/status/1'
export const STATUS_VERSION = 1
/** A status message is a few hundred bytes (a few KiB with many apps and images); anything near this limit is hostile. */
export const STATUS_MAX_BYTES = 64 * 1024
/** Devices a status reports at most (a few KiB): agent/status/devices.ts leaves out terminals and the like. */
export const MAX_DEVICES = 256

export interface NodeStatus {
  v: typeof STATUS_VERSION
  /** libp2p peer id of the sender; must equal the gossip message's signer. */
  peerId: string
  name: string
  /** Start time of the sending agent (ms since epoch): a restart is a new incarnation. */
  incarnation: number
  /** Increases by one with every message of an incarnation. */
  seq: number
  /** How often the sender publishes, so receivers can judge silence. */
  intervalMs: number
  /**
   * The sender's CLOCK_MONOTONIC ms when it published this beat. Meaningless
   * to anyone else; peers echo it back in `heard`, so the sender learns which
   * of its beats a majority received (its fencing lease, agent/fence/).
   */
  sent?: number
  /** For each peer, the `sent` of the newest beat of it received here: the echo of what others said. */
  heard?: Record<string, number>
  /** Present on full reports; receivers keep the last one they got. */
  resources?: NodeResources
  cluster?: ClusterBeat
}

export interface NodeResources {
  cpu: { cores: number, load: number }
  mem: { total: number, free: number }
  /** Free bytes on the filesystem that holds Docker's data (0 when Docker is unreachable). */
  diskFree: number
  arch: string
  dockerVersion: string | null
  agentVersion: string
  labels: Record<string, string>
  /** Managed apps (label dcloud.app) with at least one running container on this node. */
  apps: string[]
  /** Every managed app on this node, whatever its state, rebuilt from Docker's labels. */
  appStates: AppReport[]
  /** Running containers that carry dcloud labels. */
  containers: number
  /** The address other machines reach this node at (for app endpoints), or null. */
  address: string | null
  /** Images present on the node (repo:tag), so the scheduler and peers know who can share one. */
  images: string[]
  /** The newest restorable snapshot of each app this node holds (its own or a replica). */
  snapshots?: Array<{ app: string, id: string, time: number }>
  /** Device paths of the node (agent/status/devices.ts), for apps granted a device; absent from older agents. */
  devices?: string[]
}

export interface AppReport {
  name: string
  state: 'running' | 'starting' | 'stopped' | 'failed'
  revision: number
  /**
   * Host ports the app's containers publish on the node: its raw TCP/UDP
   * services (DNS, a game server). Never the web UI's, which the front door
   * reaches on the app's Docker network. Absent from older agents.
   */
  ports?: Array<{ port: number, protocol: 'tcp' | 'udp' }>
  /**
   * Always null now (the web UI is not published); sent because agents before
   * that refuse a report without it, and a node whose status is refused is
   * soon declared dead: a cluster upgraded one node at a time needs it.
   */
  webPort: null
  /** Stateful apps: the data generation the copy runs (label dcloud.generation); absent means 1. */
  generation?: number
}

/**
 * What the node's agent knows of the cluster's control plane, on every beat:
 * followers learn the leader and whether their desired state is behind.
 */
export interface ClusterBeat {
  term: number
  /** The peer id this node follows as leader (itself when it leads), or null. */
  leader: string | null
  desiredRevision: number
}

export type DropReason = 'oversized' | 'malformed' | 'version' | 'forged' | 'unsigned' | 'stale'

export class StatusDropError extends Error {
  override name = 'StatusDropError'
  readonly reason: DropReason

  constructor (reason: DropReason, message: string) {
    super(message)
    this.reason = reason
  }
}

const MAX_BYTES_VALUE = MAX_INT
/** A cluster is a handful of machines; a membership table holds at most a few hundred. */
const MAX_HEARD = 256

export function encodeStatus (status: NodeStatus): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(status))
}

/**
 * Decodes and validates a status message received from `signer` (the peer id
 * gossipsub verified the signature of). Throws StatusDropError with the reason
 * the message is dropped.
 */
export function decodeStatus (bytes: Uint8Array, signer: string | undefined): NodeStatus {
  if (signer === undefined) throw new StatusDropError('unsigned', 'status messages must be signed by their author')
  let raw: Record<string, unknown>
  try {
    raw = record(parseJsonBytes(bytes, STATUS_MAX_BYTES, 'status'), 'status')
  } catch (err) {
    if ((err as Error).name === 'OversizedError') throw new StatusDropError('oversized', (err as Error).message)
    throw new StatusDropError('malformed', (err as Error).message)
  }
  if (raw.v !== STATUS_VERSION) {
    throw new StatusDropError('version', `status.v: version ${JSON.stringify(raw.v)} is not supported (this agent speaks ${STATUS_VERSION})`)
  }
  let status: NodeStatus
  try {
    status = validateStatusFields(raw)
  } catch (err) {
    throw new StatusDropError('malformed', (err as Error).message)
  }
  if (status.peerId !== signer) {
    throw new StatusDropError('forged', `status.peerId claims ${status.peerId} but the message was signed by ${signer}`)
  }
  return status
}

function validateStatusFields (raw: Record<string, unknown>): NodeStatus {
  const status: NodeStatus = {
    v: STATUS_VERSION,
    peerId: string(raw.peerId, 'status.peerId', { max: 64, pattern: PEER_ID }),
    name: string(raw.name, 'status.name', { max: 63, pattern: DOCKER_NAME }),
    incarnation: number(raw.incarnation, 'status.incarnation', { min: 0, max: MAX_BYTES_VALUE, integer: true }),
    seq: number(raw.seq, 'status.seq', { min: 0, max: MAX_BYTES_VALUE, integer: true }),
    intervalMs: number(raw.intervalMs, 'status.intervalMs', { min: 100, max: 60_000, integer: true })
  }
  if (raw.sent !== undefined) status.sent = number(raw.sent, 'status.sent', { min: 0, max: MAX_BYTES_VALUE, integer: true })
  if (raw.heard !== undefined) {
    const heard = record(raw.heard, 'status.heard')
    const entries = Object.entries(heard)
    if (entries.length > MAX_HEARD) throw new ValidationError('status.heard', `has ${entries.length} entries; at most ${MAX_HEARD}`)
    status.heard = {}
    for (const [peer, sent] of entries) {
      if (!PEER_ID.test(peer)) throw new ValidationError('status.heard', `${JSON.stringify(peer.slice(0, 80))} is not a peer id`)
      status.heard[peer] = number(sent, `status.heard.${peer}`, { min: 0, max: MAX_BYTES_VALUE, integer: true })
    }
  }
  if (raw.resources !== undefined) status.resources = validateResources(record(raw.resources, 'status.resources'))
  if (raw.cluster !== undefined) {
    const c = record(raw.cluster, 'status.cluster')
    status.cluster = {
      term: number(c.term, 'status.cluster.term', { min: 0, max: MAX_BYTES_VALUE, integer: true }),
      leader: c.leader === null ? null : string(c.leader, 'status.cluster.leader', { max: 64, pattern: PEER_ID }),
      desiredRevision: number(c.desiredRevision, 'status.cluster.desiredRevision', { min: 0, max: MAX_BYTES_VALUE, integer: true })
    }
  }
  return status
}

function validateResources (raw: Record<string, unknown>): NodeResources {
  const f = 'status.resources'
  const cpu = record(raw.cpu, `${f}.cpu`)
  const mem = record(raw.mem, `${f}.mem`)
  const res: NodeResources = {
    cpu: {
      cores: number(cpu.cores, `${f}.cpu.cores`, { min: 1, max: 4096, integer: true }),
      load: number(cpu.load, `${f}.cpu.load`, { min: 0, max: 100 })
    },
    mem: {
      total: number(mem.total, `${f}.mem.total`, { min: 0, max: MAX_BYTES_VALUE, integer: true }),
      free: number(mem.free, `${f}.mem.free`, { min: 0, max: MAX_BYTES_VALUE, integer: true })
    },
    diskFree: number(raw.diskFree, `${f}.diskFree`, { min: 0, max: MAX_BYTES_VALUE, integer: true }),
    arch: string(raw.arch, `${f}.arch`, { max: 16, pattern: /^[a-z0-9_]+$/ }),
    dockerVersion: raw.dockerVersion === null ? null : string(raw.dockerVersion, `${f}.dockerVersion`, { max: 64 }),
    agentVersion: string(raw.agentVersion, `${f}.agentVersion`, { max: 32 }),
    labels: stringMap(raw.labels, `${f}.labels`, { maxEntries: 32, key: NODE_LABEL_KEY, maxValue: 128 }),
    apps: array(raw.apps, `${f}.apps`, 256, (v, fi) => string(v, fi, { max: 63, pattern: DOCKER_NAME })),
    appStates: array(raw.appStates, `${f}.appStates`, 256, (v, fi) => {
      const a = record(v, fi)
      const state = a.state
      if (state !== 'running' && state !== 'starting' && state !== 'stopped' && state !== 'failed') throw new ValidationError(`${fi}.state`, 'must be running, starting, stopped or failed')
      return {
        name: string(a.name, `${fi}.name`, { max: 63, pattern: DOCKER_NAME }),
        state,
        revision: number(a.revision, `${fi}.revision`, { min: 0, max: MAX_BYTES_VALUE, integer: true }),
        // An older agent's webPort (its published web UI) is not kept: the front door is the way to the UI.
        webPort: null,
        ...(a.ports !== undefined ? {
          ports: array(a.ports, `${fi}.ports`, 128, (pv, pf) => {
            const p = record(pv, pf)
            if (p.protocol !== 'tcp' && p.protocol !== 'udp') throw new ValidationError(`${pf}.protocol`, 'must be tcp or udp')
            return { port: number(p.port, `${pf}.port`, { min: 1, max: 65_535, integer: true }), protocol: p.protocol }
          })
        } : {}),
        ...(a.generation !== undefined ? { generation: number(a.generation, `${fi}.generation`, { min: 1, max: MAX_BYTES_VALUE, integer: true }) } : {})
      }
    }),
    containers: number(raw.containers, `${f}.containers`, { min: 0, max: 100_000, integer: true }),
    address: raw.address === null ? null : string(raw.address, `${f}.address`, { max: 64, pattern: /^[0-9a-fA-F.:]+$/ }),
    images: array(raw.images, `${f}.images`, 512, (v, fi) => string(v, fi, { max: 255 }))
  }
  if (raw.snapshots !== undefined) {
    res.snapshots = array(raw.snapshots, `${f}.snapshots`, 256, (v, fi) => {
      const s = record(v, fi)
      return {
        app: string(s.app, `${fi}.app`, { max: 63, pattern: DOCKER_NAME }),
        id: string(s.id, `${fi}.id`, { max: 64, pattern: SNAPSHOT_ID }),
        time: number(s.time, `${fi}.time`, { min: 0, max: MAX_BYTES_VALUE, integer: true })
      }
    })
  }
  if (raw.devices !== undefined) res.devices = array(raw.devices, `${f}.devices`, MAX_DEVICES, (v, fi) => string(v, fi, { max: 255, pattern: DEVICE_PATH }))
  if (res.mem.free > res.mem.total) throw new ValidationError(`${f}.mem.free`, `is larger than ${f}.mem.total`)
  return res
}
