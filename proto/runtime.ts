/**
 * The app runtime's shapes: what runs on a node as Docker reports it (rebuilt
 * from `dcloud.*` labels, never kept only in memory), the labels themselves,
 * and the image-transfer protocol (`/dcloud/image/1`) with its validators.
 *
 * Everything a peer sends is checked here before use: a Docker reference is
 * a small grammar, and a hostile one (a path, a flag, 10 MB of text) must be
 * refused before it reaches the Docker API.
 */
import { MAX_INT, ValidationError, number, parseJsonBytes, record, string } from './validate.ts'

/** Labels on every object the runtime creates. `list()` needs nothing else to rebuild what runs. */
export const LABELS = {
  /** The app instance (DesiredApp.name): on containers, the network and volumes. */
  app: 'dcloud.app',
  /** The compose service: on containers. */
  service: 'dcloud.service',
  /** The app's revision when this container was created. */
  revision: 'dcloud.revision',
  /** The leader's term when this container was created (fencing). */
  term: 'dcloud.term',
  /** Hash of the service's normalised spec: equal hash, nothing to change. */
  spec: 'dcloud.spec',
  /** The compose volume name: on volumes. */
  volume: 'dcloud.volume',
  /** Stateful apps: the data generation the container was started with (DesiredApp.generation). */
  generation: 'dcloud.generation',
  /** On volumes of an app with a storage: the node directory their data is in (AppStorage.hostPath). */
  hostPath: 'dcloud.host-path',
  /** On containers of stateful apps: the node's watchdog stops them when the agent's lease lapses (agent/fence/). */
  fence: 'dcloud.fence'
} as const

export type AppRunState = 'running' | 'starting' | 'stopped' | 'failed'
export type ServiceRunState = AppRunState
export type ServiceHealth = 'none' | 'starting' | 'healthy' | 'unhealthy'

export interface PortActual {
  container: number
  /** The port Docker published on the node (chosen by Docker when the manifest said null); null when not published. */
  host: number | null
  protocol: 'tcp' | 'udp'
}

export interface ServiceActual {
  service: string
  containerId: string
  state: ServiceRunState
  /** Docker's healthcheck status; 'none' when the service has no healthcheck. */
  health: ServiceHealth
  ports: PortActual[]
  /** Labels of this container: the revision and term it was created at, and its spec hash. */
  revision: number
  term: number
  /** The data generation it was started with (1 when unlabelled). */
  generation: number
  spec: string
}

/** One app as Docker reports it on this node. */
export interface AppActual {
  app: string
  /**
   * The highest `dcloud.revision` among the app's containers. A revision that
   * changes no service's spec recreates nothing, so labels keep the older
   * number: compare spec hashes (`ServiceActual.spec`) to decide whether a
   * deploy would change anything.
   */
  revision: number
  /** The highest `dcloud.term` among the app's containers. */
  term: number
  /** The lowest `dcloud.generation` among the app's containers (1 when unlabelled). */
  generation: number
  state: AppRunState
  services: ServiceActual[]
}

/**
 * Service states combine into the app's: any failure fails the app; all
 * running is running, all stopped is stopped; anything still starting is
 * starting; a mix of running and stopped (part of the app is down) is failed.
 */
export function appState (services: Array<{ state: ServiceRunState }>): AppRunState {
  if (services.length === 0) return 'stopped'
  if (services.some(s => s.state === 'failed')) return 'failed'
  if (services.every(s => s.state === 'running')) return 'running'
  if (services.every(s => s.state === 'stopped')) return 'stopped'
  if (services.some(s => s.state === 'starting')) return 'starting'
  return 'failed'
}

// ---------------------------------------------------------------------------
// Image references

/**
 * A Docker image reference, after distribution/reference's grammar:
 * `[domain[:port]/]path[/path...][:tag][@algo:hex]`, path components
 * lowercase, IPv6 registry addresses left out. No whitespace, no leading dash (never a flag), no `..`.
 */
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])'
// A first component is a registry host only when it looks like one (a dot, a port, or localhost);
// otherwise it is a path component and must be lowercase, as Docker decides.
const DOMAIN = `(?:localhost(?::[0-9]{1,5})?|${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})+(?::[0-9]{1,5})?|${DOMAIN_COMPONENT}:[0-9]{1,5})`
const PATH_COMPONENT = '(?:[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)'
const TAG = '(?::[\\w][\\w.-]{0,127})'
const DIGEST = '(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})'
export const IMAGE_REF_PATTERN = new RegExp(`^(?:${DOMAIN}/)?${PATH_COMPONENT}(?:/${PATH_COMPONENT})*${TAG}?${DIGEST}?$`)
export const IMAGE_REF_MAX = 255

export function isImageRef (ref: string): boolean {
  return ref.length <= IMAGE_REF_MAX && IMAGE_REF_PATTERN.test(ref)
}

/**
 * Whether a registry could serve `ref`: it names an explicit registry host
 * (`ghcr.io/...`, `registry.lan:5000/...`) or is a Docker Hub name, and is
 * not a local-only name (`localhost/...`, or our own `dcloud/*` images that
 * are built on the machine and exist in no registry).
 */
export function isRegistryRef (ref: string): boolean {
  if (!isImageRef(ref)) return false
  const first = ref.split('/')[0] ?? ''
  const hasDomain = ref.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost')
  if (hasDomain) return !/^localhost(:\d+)?$/.test(first) && !/^127\./.test(first)
  return first !== 'dcloud' || !ref.includes('/')
}

// ---------------------------------------------------------------------------
// /dcloud/image/1
//
// requester -> server: one length-prefixed JSON ImageRequest
// server -> requester: one length-prefixed JSON ImageHeader, then (when ok)
// the raw `docker save` tar until the server closes its write side.

export const IMAGE_PROTOCOL = '/dcloud/image/1'
/** A request is `{"ref":"..."}`: 255 characters of reference and a little JSON. */
export const IMAGE_REQUEST_MAX_BYTES = 1024
/** The header is small too; more is a broken or hostile server. */
export const IMAGE_HEADER_MAX_BYTES = 4096

export interface ImageRequest {
  ref: string
}

export type ImageErrorCode = 'not_found' | 'bad_request' | 'busy' | 'too_large' | 'failed'
const ERROR_CODES: readonly string[] = ['not_found', 'bad_request', 'busy', 'too_large', 'failed']

export type ImageHeader =
  | { ok: true, size?: number }
  | { ok: false, error: { code: ImageErrorCode, message: string } }

export function decodeImageRequest (raw: unknown): ImageRequest {
  const r = record(raw, 'request')
  const ref = string(r.ref, 'request.ref', { min: 1, max: IMAGE_REF_MAX })
  if (!IMAGE_REF_PATTERN.test(ref)) throw new ValidationError('request.ref', 'is not a Docker image reference (like "nginx:1.27" or "ghcr.io/owner/app:tag")')
  return { ref }
}

export function decodeImageRequestBytes (bytes: Uint8Array): ImageRequest {
  return decodeImageRequest(parseJsonBytes(bytes, IMAGE_REQUEST_MAX_BYTES, 'request'))
}

export function decodeImageHeader (raw: unknown): ImageHeader {
  const r = record(raw, 'header')
  if (r.ok === true) {
    if (r.size === undefined || r.size === null) return { ok: true }
    return { ok: true, size: number(r.size, 'header.size', { min: 0, max: MAX_INT, integer: true }) }
  }
  if (r.ok !== false) throw new ValidationError('header.ok', 'must be true or false')
  const e = record(r.error, 'header.error')
  const code = string(e.code, 'header.error.code', { max: 32 })
  return {
    ok: false,
    error: {
      // An unknown code from a newer peer is still a failure we can report.
      code: ERROR_CODES.includes(code) ? code as ImageErrorCode : 'failed',
      message: string(e.message, 'header.error.message', { max: 2048 })
    }
  }
}

export function decodeImageHeaderBytes (bytes: Uint8Array): ImageHeader {
  return decodeImageHeader(parseJsonBytes(bytes, IMAGE_HEADER_MAX_BYTES, 'header'))
}

export function encodeJson (value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value))
}
