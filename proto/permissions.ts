/**
 * Permissions: every power an app asks for beyond an ordinary container, which
 * its owner grants (or not) by name, and can later revoke. Pure: derivation
 * from a manifest, names, plain-words descriptions, the check of a grant list,
 * and the manifest as it runs with only what was granted (the runtime builds
 * containers from that, so nothing ungranted reaches Docker).
 *
 * Names (stable: they are what users type and what the replicated state keeps):
 *
 * | name                          | power |
 * | ---                           | --- |
 * | `path:/srv/music:ro`          | bind a host path read-only (`:rw`: read-write) |
 * | `dangerous_path:/etc:ro`      | bind a path that holds the node itself: `/`, a system directory, the agent's data or program, Docker's data (or one containing them) |
 * | `docker_socket`               | bind the Docker socket: control every container of the node, Dentropy's own included |
 * | `device:/dev/dri`             | a host device (also: only nodes that have it can run the app) |
 * | `host_network`                | the node's own network stack (`network_mode: host`) |
 * | `net_admin`, `sys_time`, …    | one Linux capability (`cap_add`), lower case without `CAP_` |
 * | `privileged`                  | every capability and device: the node itself |
 * | `sysctl:net.ipv4.ip_forward`  | one kernel setting in the container's namespaces |
 */
import type { AppManifest, ComposeService } from './app.ts'
import { ValidationError, array, string } from './validate.ts'

export type PermissionKind = 'path' | 'dangerous_path' | 'docker_socket' | 'device' | 'host_network' | 'capability' | 'privileged' | 'sysctl'

export interface Permission {
  name: string
  kind: PermissionKind
  /** Gives the app the node (its files, its engine, every device): asked for apart and loudly. */
  dangerous: boolean
  /** What it lets the app do, in plain words, without the app's name: "manage the node's network (NET_ADMIN)". */
  description: string
  /** Where the manifest asks for it ("services.pihole.cap_add"), for messages. */
  fields: string[]
}

/** Files on every node an app may bind read-only without asking: the node's time zone. */
export const BENIGN_BINDS = new Set(['/etc/localtime', '/etc/timezone'])
export const DOCKER_SOCKETS = new Set(['/var/run/docker.sock', '/run/docker.sock'])

/**
 * Paths that hold the node itself: the system, Docker's and the agent's own
 * data and program (docs/install.md). A bind at, below or above one of these
 * is a `dangerous_path`: binding /var reaches /var/lib/dcloud as surely as
 * binding it. The node's own data directory, when elsewhere, is checked by
 * the agent (agent/runtime/host-paths.ts).
 */
export const DANGEROUS_PATHS = ['/', '/bin', '/boot', '/dev', '/etc', '/lib', '/lib64', '/proc', '/root', '/run', '/sbin', '/sys', '/usr', '/var/lib/docker', '/var/run', '/var/lib/dcloud', '/opt/dcloud']

/** Linux capabilities Docker knows, lower case without CAP_. */
export const CAPABILITIES = ['audit_control', 'audit_read', 'audit_write', 'block_suspend', 'bpf', 'checkpoint_restore', 'chown', 'dac_override', 'dac_read_search', 'fowner', 'fsetid', 'ipc_lock', 'ipc_owner', 'kill', 'lease', 'linux_immutable', 'mac_admin', 'mac_override', 'mknod', 'net_admin', 'net_bind_service', 'net_broadcast', 'net_raw', 'perfmon', 'setfcap', 'setgid', 'setpcap', 'setuid', 'sys_admin', 'sys_boot', 'sys_chroot', 'sys_module', 'sys_nice', 'sys_pacct', 'sys_ptrace', 'sys_rawio', 'sys_resource', 'sys_time', 'sys_tty_config', 'syslog', 'wake_alarm']

/** Capabilities that amount to the node: load kernel modules, mount, read any file, trace any process, raw disk access. */
const DANGEROUS_CAPABILITIES = new Set(['sys_admin', 'sys_module', 'sys_rawio', 'sys_ptrace', 'dac_read_search', 'sys_boot', 'mac_admin', 'mac_override', 'bpf', 'perfmon', 'linux_immutable'])

const CAPABILITY_WORDS: Record<string, string> = {
  net_admin: 'manage the node\'s network',
  net_raw: 'send raw network packets',
  net_bind_service: 'listen on ports below 1024',
  net_broadcast: 'send network broadcasts',
  sys_time: 'set the node\'s clock',
  sys_admin: 'administer the node (mount file systems and much more)',
  sys_module: 'load kernel modules into the node',
  sys_rawio: 'read and write disks directly',
  sys_ptrace: 'trace and inspect other processes',
  sys_nice: 'raise its own priority over other programs',
  sys_resource: 'exceed the node\'s resource limits',
  dac_read_search: 'read any file it can reach, whatever its permissions',
  mknod: 'create device files',
  ipc_lock: 'lock memory',
  syslog: 'read the kernel log'
}

/** A sysctl name (dots or slashes between parts), as Docker takes it. */
export const SYSCTL_NAME = /^[a-z0-9_]+([./][a-zA-Z0-9_-]+)+$/
/**
 * Devices that are the node itself: its disks and partitions (raw reads and
 * writes bypass every file permission), device-mapper and loop devices, and
 * its memory and I/O ports.
 */
const DANGEROUS_DEVICE = /^\/dev\/(sd[a-z]+\d*|hd[a-z]+\d*|vd[a-z]+\d*|xvd[a-z]+\d*|nvme\d+(n\d+(p\d+)?)?|mmcblk\d+(p\d+)?|loop\d+|dm-\d+|md\d+|mapper(\/.*)?|disk(\/.*)?|mem|kmem|port)$/

/** A device path on the node. */
export const DEVICE_PATH = /^\/dev(\/[a-zA-Z0-9_.+-]+)+$/

/**
 * A host path in one form: absolute, `//` and `.` collapsed, no trailing
 * `/`. Null when it is not absolute, holds `..` (which could climb out of
 * whatever it names) or a control character, or has a ":" (Docker's bind
 * syntax splits on it).
 */
export function normaliseHostPath (path: string): string | null {
  if (!path.startsWith('/') || /[\0-\x1f:]/.test(path)) return null
  const parts = path.split('/').filter(p => p !== '' && p !== '.')
  if (parts.includes('..')) return null
  return '/' + parts.join('/')
}

/** Whether binding `path` reaches what DANGEROUS_PATHS (or `extra`) name: equal, below, or above one. */
export function isDangerousPath (path: string, extra: readonly string[] = []): boolean {
  if (DOCKER_SOCKETS.has(path)) return true
  return [...DANGEROUS_PATHS, ...extra].some(d => path === d || (d !== '/' && path.startsWith(d + '/')) || d.startsWith(path === '/' ? '/' : path + '/'))
}

/** The permission a bind of `source` (read-only or not) needs, or null when it needs none (the time-zone files, read-only). */
export function pathPermission (source: string, readOnly: boolean, extra: readonly string[] = []): string | null {
  if (BENIGN_BINDS.has(source) && readOnly) return null
  if (DOCKER_SOCKETS.has(source)) return 'docker_socket'
  return `${isDangerousPath(source, extra) ? 'dangerous_path' : 'path'}:${source}:${readOnly ? 'ro' : 'rw'}`
}

/** The permissions one service asks for, each with the field that asks. */
function serviceRequests (svc: ComposeService, f: string): Array<{ name: string, field: string }> {
  const out: Array<{ name: string, field: string }> = []
  svc.volumes.forEach((v, i) => {
    if (v.kind !== 'bind') return
    const name = pathPermission(v.source, v.readOnly)
    if (name !== null) out.push({ name, field: `${f}.volumes[${i}]` })
  })
  svc.devices.forEach((d, i) => { out.push({ name: `device:${d.host}`, field: `${f}.devices[${i}]` }) })
  if (svc.networkMode === 'host') out.push({ name: 'host_network', field: `${f}.network_mode` })
  svc.capAdd.forEach((c, i) => { out.push({ name: c.toLowerCase(), field: `${f}.cap_add[${i}]` }) })
  if (svc.privileged) out.push({ name: 'privileged', field: `${f}.privileged` })
  for (const k of Object.keys(svc.sysctls)) out.push({ name: `sysctl:${k}`, field: `${f}.sysctls.${k}` })
  return out
}

/**
 * Where an app's data is kept on the node when not in Docker's volumes
 * (`dcloud restore --data-dir`, DesiredApp.storage): a host path the app
 * writes to, so a permission like any bind (read-write), asked for by the
 * restore rather than by the manifest.
 */
export type StorageRequest = { hostPath: string } | null | undefined

/** Every permission the app asks for (its manifest, and its storage directory), sorted by name, each once with every field that asks for it. */
export function requestedPermissions (manifest: AppManifest, storage?: StorageRequest): Permission[] {
  const byName = new Map<string, string[]>()
  for (const [service, svc] of Object.entries(manifest.compose.services)) {
    for (const r of serviceRequests(svc, `services.${service}`)) byName.set(r.name, [...(byName.get(r.name) ?? []), r.field])
  }
  const kept = storagePermission(storage)
  if (kept !== null) byName.set(kept, [...(byName.get(kept) ?? []), 'storage.hostPath'])
  return [...byName.entries()].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0).map(([name, fields]) => ({ ...describePermission(name), fields }))
}

/**
 * The grants of an app from before permissions existed (its state holds no
 * `grants`). Then a host bind ran with a warning, so its plain host paths are
 * taken as granted: an upgrade must not take an app's files away. What gave
 * the node away (the Docker socket, `/`, `/etc`, the agent's own files) is
 * not: the owner grants it again, knowingly, with `dcloud app grant`.
 */
export function grandfatheredGrants (manifest: AppManifest, storage?: StorageRequest): string[] {
  return requestedPermissions(manifest, storage).filter(p => p.kind === 'path' && !p.dangerous).map(p => p.name)
}

/** The permission an app's storage directory needs, or null when its data is in Docker's volumes. */
export function storagePermission (storage: StorageRequest): string | null {
  return storage == null ? null : pathPermission(storage.hostPath, false)
}

/** Kind, danger and plain words of a permission name; throws a ValidationError (field `field`) for a name that is no permission. */
export function describePermission (name: string, field = 'grants'): Omit<Permission, 'fields'> {
  const bad = (why: string): never => { throw new ValidationError(field, `"${name}" is not a permission: ${why}`) }
  if (name === 'docker_socket') return { name, kind: 'docker_socket', dangerous: true, description: 'control every container of the node, Dentropy\'s own included (the Docker socket)' }
  if (name === 'host_network') return { name, kind: 'host_network', dangerous: false, description: 'use the node\'s own network: its addresses, every port, other programs\' traffic (host networking)' }
  if (name === 'privileged') return { name, kind: 'privileged', dangerous: true, description: 'do anything on the node: every capability and device (privileged)' }
  const path = /^(path|dangerous_path):(.+):(ro|rw)$/.exec(name)
  if (path !== null) {
    const [, kind, p, mode] = path as unknown as [string, 'path' | 'dangerous_path', string, 'ro' | 'rw']
    if (normaliseHostPath(p) !== p) bad('the path must be absolute and plain (no "..", ".", "//", ":" or trailing "/")')
    const dangerous = isDangerousPath(p)
    if (dangerous && kind === 'path') bad(`${p} holds the node itself; its permission is dangerous_path:${p}:${mode}`)
    if (!dangerous && kind === 'dangerous_path') bad(`${p} is an ordinary path; its permission is path:${p}:${mode}`)
    const what = mode === 'ro' ? 'read' : 'read and change'
    return { name, kind, dangerous, description: dangerous ? `${what} the node's own files at ${p} (DANGEROUS: the node itself)` : `${what} the node's files at ${p}` }
  }
  const device = /^device:(.+)$/.exec(name)
  if (device !== null) {
    if (!DEVICE_PATH.test(device[1] as string) || normaliseHostPath(device[1] as string) !== device[1]) bad('a device is a path below /dev, such as device:/dev/dri')
    const path = device[1] as string
    if (DANGEROUS_DEVICE.test(path)) return { name, kind: 'device', dangerous: true, description: `use the node's device ${path} (DANGEROUS: a disk, or the node's memory: the node itself)` }
    return { name, kind: 'device', dangerous: false, description: `use the node's device ${path}` }
  }
  const sysctl = /^sysctl:(.+)$/.exec(name)
  if (sysctl !== null) {
    if (!SYSCTL_NAME.test(sysctl[1] as string)) bad('a sysctl is a kernel setting such as sysctl:net.ipv4.ip_forward')
    return { name, kind: 'sysctl', dangerous: false, description: `change the kernel setting ${sysctl[1] as string} for itself` }
  }
  if (CAPABILITIES.includes(name)) {
    const words = CAPABILITY_WORDS[name] ?? `use the capability ${name.toUpperCase()}`
    return { name, kind: 'capability', dangerous: DANGEROUS_CAPABILITIES.has(name), description: `${words} (${name.toUpperCase()})` }
  }
  return bad('permissions are path:PATH:ro|rw, dangerous_path:PATH:ro|rw, device:/dev/…, sysctl:NAME, host_network, privileged, docker_socket, or a capability such as net_admin (see docs/apps.md)')
}

/** A grant list as the replicated state and the API carry it: sorted, each name once and valid. */
export function decodeGrants (raw: unknown, field = 'grants'): string[] {
  const names = array(raw, field, 512, (v, f) => string(v, f, { min: 1, max: 4200 }))
  names.forEach((n, i) => { describePermission(n, `${field}[${i}]`) })
  return [...new Set(names)].sort()
}

/**
 * Checks a grant list against what the app asks for: every name must be a
 * permission the app requests, and, with `complete` (an install), every
 * request must be granted. Throws a ValidationError naming the field.
 */
export function checkGrants (manifest: AppManifest, grants: readonly string[], field = 'grants', complete = true, storage?: StorageRequest): void {
  const requested = requestedPermissions(manifest, storage)
  const asked = new Set(requested.map(p => p.name))
  grants.forEach((g, i) => {
    describePermission(g, `${field}[${i}]`)
    if (!asked.has(g)) throw new ValidationError(`${field}[${i}]`, `the app does not ask for ${g}${asked.size === 0 ? ' (it asks for no permission)' : ` (it asks for ${[...asked].join(', ')})`}`)
  })
  if (!complete) return
  const missing = requested.filter(p => !grants.includes(p.name))
  if (missing.length > 0) {
    throw new ValidationError(field, `not granted: ${missing.map(p => `${p.name} (${p.fields.join(', ')}: ${p.description})`).join('; ')}; grant them with --grant ${missing.map(p => p.name).join(',')}`)
  }
}

/**
 * The service as it runs with `grants`: every power not granted taken away
 * (binds, devices, capabilities, sysctls dropped; host networking and
 * privileged off). A revoked permission is gone from the next container.
 */
export function effectiveService (svc: ComposeService, grants: ReadonlySet<string>): ComposeService {
  const ok = (name: string | null): boolean => name === null || grants.has(name)
  return {
    ...svc,
    volumes: svc.volumes.filter(v => v.kind !== 'bind' || ok(pathPermission(v.source, v.readOnly))),
    devices: svc.devices.filter(d => ok(`device:${d.host}`)),
    networkMode: svc.networkMode === 'host' && !ok('host_network') ? 'bridge' : svc.networkMode,
    capAdd: svc.capAdd.filter(c => ok(c.toLowerCase())),
    privileged: svc.privileged && ok('privileged'),
    sysctls: Object.fromEntries(Object.entries(svc.sysctls).filter(([k]) => ok(`sysctl:${k}`)))
  }
}

/** The manifest as it runs with the app's grants. */
export function effectiveManifest (manifest: AppManifest, grants: readonly string[] | undefined): AppManifest {
  const set = new Set(grants ?? [])
  const services = Object.fromEntries(Object.entries(manifest.compose.services).map(([n, s]) => [n, effectiveService(s, set)]))
  return { ...manifest, compose: { ...manifest.compose, services } }
}

/** Devices the app needs a node to have (those granted): placement only on nodes that list them. */
export function grantedDevices (manifest: AppManifest, grants: readonly string[] | undefined): string[] {
  const set = new Set(grants ?? [])
  return [...new Set(Object.values(manifest.compose.services).flatMap(s => s.devices.map(d => d.host)))].filter(d => set.has(`device:${d}`)).sort()
}

/** Whether a node whose devices are `have` has `device`: itself, or a device below it (`/dev/dri` for `/dev/dri/renderD128`). */
export function hasDevice (have: readonly string[], device: string): boolean {
  return have.some(d => d === device || d.startsWith(device + '/'))
}
