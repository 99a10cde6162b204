/**
 * The compose part of an app: turns a parsed compose file (already
 * interpolated) into the normalised ComposeProject of proto/app.ts, applying
 * the key tables of compose-keys.ts. Malformed input throws a ValidationError
 * naming the field; what the runtime cannot honour is collected in Findings
 * and reported together. Nothing is dropped silently: an app that installs
 * must behave as its file says.
 */
import { CONFIG_LIMITS, HOST_NAME, TMPFS_OPTION, ULIMIT_NAMES, isIpAddress, type ComposeProject, type ComposeService, type ConfigMount, type DeviceMapping, type HealthCheck, type TmpfsMount, type VolumeMount } from '../proto/app.ts'
import { CAPABILITIES, DEVICE_PATH, DOCKER_SOCKETS, SYSCTL_NAME, normaliseHostPath, pathPermission } from '../proto/permissions.ts'
import { DOCKER_NAME, LABEL_KEY, ValidationError, isRecord } from '../proto/validate.ts'
import { ARCHITECTURES, normaliseArch } from './arch.ts'
import { NO_FIELD, PRIVILEGE, SERVICE_KEYS, TOP_LEVEL_KEYS, type KeyRule } from './compose-keys.ts'
import { Findings, Unsupported } from './findings.ts'
import { PortRegistry, port } from './ports.ts'
import { bool, isDefaultValue, list, scalar } from './read.ts'
import { splitShellWords } from './shell.ts'
import { parseBytes, parseCpus, parseDuration } from './units.ts'


// The limits below are no looser than what a peer accepts when the manifest is
// replicated (proto/cluster.ts decodeManifest): an app accepted here must not
// be dropped there.
const ENV_KEY = /^[^=\s]{1,255}$/
const IMAGE = /^[a-zA-Z0-9][a-zA-Z0-9._\-/:@+]{0,254}$/
const USER = /^[a-zA-Z0-9_.-]{1,64}(:[a-zA-Z0-9_.-]{1,64})?$/
const MAX_SERVICES = 32
const MAX_ENV_VALUE = 64 * 1024
const MAX_LABEL_VALUE = 4096
const MAX_PORTS = 128
const MAX_WORDS = 256
const MAX_WORD = 4096

/** Docker's own healthcheck defaults, filled in so the normalised form is complete. */
export const HEALTHCHECK_DEFAULTS = { intervalMs: 30_000, timeoutMs: 30_000, retries: 3, startPeriodMs: 0 }

export interface ServiceRequests { memoryBytes: number | null, cpus: number | null }

export interface ComposeResult {
  compose: ComposeProject
  /** What each service asks for in deploy.resources, mem_*, cpus; null when it says nothing. */
  requests: Record<string, ServiceRequests>
  /** Container ports each service exposes, as "port/protocol" (published or `expose:`). */
  exposed: Record<string, Set<string>>
  /** Architectures named by `platform:`, null when no service pins one. */
  platforms: string[] | null
}

export function normaliseCompose (raw: Record<string, unknown>, findings: Findings): ComposeResult {
  for (const key of Object.keys(raw)) {
    if (key.startsWith('x-')) continue
    checkKey(TOP_LEVEL_KEYS, key, raw[key], key, findings, 'top-level key')
  }
  const volumes = topLevelVolumes(raw.volumes, findings)
  const networks = topLevelNetworks(raw.networks, findings)
  const configs = topLevelConfigs(raw.configs, findings)

  const rawServices = raw.services
  if (!isRecord(rawServices)) throw new ValidationError('services', rawServices === undefined ? 'missing: an app needs at least one service' : 'must be a map of service names to services')
  const active = Object.entries(rawServices).filter(([name, s]) => {
    if (isRecord(s) && s.profiles !== undefined && !(Array.isArray(s.profiles) && s.profiles.length === 0)) {
      findings.warn(`services.${name}.profiles`, 'a service with profiles is not started by default in compose; left out')
      return false
    }
    return true
  })
  if (active.length === 0) throw new ValidationError('services', 'no service to run: an app needs at least one service (without profiles)')
  if (active.length > MAX_SERVICES) throw new ValidationError('services', `more than ${MAX_SERVICES} services`)

  const services: Record<string, ComposeService> = {}
  const requests: Record<string, ServiceRequests> = {}
  const exposed: Record<string, Set<string>> = {}
  const platforms: string[] = []
  const ports = new PortRegistry()
  const names = active.map(([n]) => n)
  for (const [name, value] of active) {
    const f = `services.${name}`
    if (!DOCKER_NAME.test(name)) throw new ValidationError(f, 'service names are letters, digits, ".", "_" and "-", at most 63 characters')
    const svc = service(value, f, { names, volumes, networks, configs, ports, findings })
    services[name] = svc.service
    requests[name] = svc.requests
    exposed[name] = svc.exposed
    if (svc.platform !== null) platforms.push(svc.platform)
  }
  checkCycles(services)
  for (const name of Object.keys(volumes)) {
    if (!Object.values(services).some(s => s.volumes.some(m => m.kind === 'volume' && m.source === name))) {
      findings.warn(`volumes.${name}`, 'declared but no service mounts it (it still makes the app stateful)')
    }
  }
  for (const name of Object.keys(configs.carried)) {
    if (!Object.values(services).some(s => s.configs.some(c => c.source === name))) findings.warn(`configs.${name}`, 'declared but no service mounts it')
  }
  return { compose: { services, volumes, configs: configs.carried }, requests, exposed, platforms: platforms.length > 0 ? [...new Set(platforms)] : null }
}

function checkKey (rules: Record<string, KeyRule>, key: string, value: unknown, field: string, findings: Findings, what: string): void {
  const rule = Object.hasOwn(rules, key) ? rules[key] : undefined
  if (rule === undefined) throw new ValidationError(field, `unknown ${what}${suggest(key, Object.keys(rules))}`)
  if (rule.rule === 'refused' && !isDefaultValue(value)) findings.refuse(field, `not supported: ${rule.why}`)
  if (rule.rule === 'ignored' && !isDefaultValue(value)) findings.warn(field, `ignored: ${rule.why}`)
}

function suggest (key: string, known: string[]): string {
  const close = known.find(k => k !== key && (k.replaceAll('_', '') === key.replaceAll(/[_-]/g, '').toLowerCase() || editDistance(k, key) <= 2))
  return close === undefined ? '' : ` (did you mean ${close}?)`
}

function editDistance (a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 2) return 3
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const cur = [i]
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min((prev[j] as number) + 1, (cur[j - 1] as number) + 1, (prev[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    prev = cur
  }
  return prev[b.length] as number
}

interface ServiceContext {
  names: string[]
  volumes: Record<string, { labels: Record<string, string> }>
  networks: Set<string>
  configs: TopLevelConfigs
  ports: PortRegistry
  findings: Findings
}

interface ServiceResult {
  service: ComposeService
  requests: ServiceRequests
  exposed: Set<string>
  platform: string | null
}

function service (value: unknown, f: string, ctx: ServiceContext): ServiceResult {
  if (!isRecord(value)) throw new ValidationError(f, 'must be a map of service settings')
  for (const [key, v] of Object.entries(value)) {
    if (key.startsWith('x-')) continue
    checkKey(SERVICE_KEYS, key, v, `${f}.${key}`, ctx.findings, 'service key')
  }
  let image = ''
  if (value.image === undefined || value.image === null || value.image === '') {
    // Collected, not thrown: next to a refused `build:` it is the same problem, and both are reported.
    ctx.findings.refuse(`${f}.image`, 'missing: every service needs an image (nodes never build)')
  } else {
    image = scalar(value.image, `${f}.image`)
    if (!IMAGE.test(image)) throw new ValidationError(`${f}.image`, `"${image}" is not an image reference`)
  }

  const refusing = ctx.findings
  refusing.unsupported(() => { serviceNetworks(value.networks, `${f}.networks`, ctx.networks) })
  refusing.unsupported(() => { links(value.links, `${f}.links`, ctx.names) })
  if (value.scale !== undefined && value.scale !== 1) refusing.refuse(`${f}.scale`, 'only 1 is supported: one container per service')

  const portList = value.ports === undefined || value.ports === null ? [] : list(value.ports, `${f}.ports`).flatMap((p, i) => refusing.unsupported(() => port(p, `${f}.ports[${i}]`)) ?? [])
  if (portList.length > MAX_PORTS) throw new ValidationError(`${f}.ports`, `publishes ${portList.length} ports, more than ${MAX_PORTS}`)
  portList.forEach(p => { ctx.ports.add(p.mapping, p.field) })
  const exposed = new Set(portList.map(p => `${p.mapping.container}/${p.mapping.protocol}`))
  if (value.expose !== undefined && value.expose !== null) {
    list(value.expose, `${f}.expose`).forEach((e, i) => {
      for (const p of refusing.unsupported(() => port(e, `${f}.expose[${i}]`)) ?? []) {
        if (p.mapping.host !== null) throw new ValidationError(`${f}.expose[${i}]`, 'expose takes container ports only; publish with ports')
        exposed.add(`${p.mapping.container}/${p.mapping.protocol}`)
      }
    })
  }

  // Two mounts at one path: the later would hide the earlier. One claim per path, across volumes, tmpfs and configs.
  const targets = new Map<string, string>()
  const mounted = mounts(value.volumes, `${f}.volumes`, ctx, targets)
  const svc: ComposeService = {
    image,
    command: argv(value.command, `${f}.command`, ctx.findings),
    entrypoint: argv(value.entrypoint, `${f}.entrypoint`, ctx.findings),
    environment: stringPairs(value.environment, `${f}.environment`, ENV_KEY, ctx.findings, 512, MAX_ENV_VALUE),
    ports: portList.map(p => p.mapping),
    volumes: mounted.volumes,
    healthcheck: healthcheck(value.healthcheck, `${f}.healthcheck`, ctx.findings),
    dependsOn: dependsOn(value.depends_on, `${f}.depends_on`, ctx.names, ctx.findings),
    restart: 'no',
    labels: stringPairs(value.labels, `${f}.labels`, LABEL_KEY, ctx.findings, 128, MAX_LABEL_VALUE),
    user: value.user === undefined || value.user === null ? null : userSpec(value.user, `${f}.user`),
    workingDir: value.working_dir === undefined || value.working_dir === null ? null : containerPath(value.working_dir, `${f}.working_dir`),
    tty: value.tty === undefined || value.tty === null ? false : bool(value.tty, `${f}.tty`),
    stdinOpen: value.stdin_open === undefined || value.stdin_open === null ? false : bool(value.stdin_open, `${f}.stdin_open`),
    shmSizeBytes: value.shm_size === undefined || value.shm_size === null ? null : parseBytes(value.shm_size, `${f}.shm_size`),
    tmpfs: [...mounted.tmpfs, ...tmpfsList(value.tmpfs, `${f}.tmpfs`, ctx.findings, targets)],
    readOnly: value.read_only === undefined || value.read_only === null ? false : bool(value.read_only, `${f}.read_only`),
    capDrop: capabilities(value.cap_drop, `${f}.cap_drop`, true),
    capAdd: capabilities(value.cap_add, `${f}.cap_add`, false),
    devices: devices(value.devices, `${f}.devices`),
    networkMode: refusing.unsupported(() => networkMode(value.network_mode, `${f}.network_mode`)) ?? 'bridge',
    privileged: value.privileged === undefined || value.privileged === null ? false : bool(value.privileged, `${f}.privileged`),
    // A map or a list of "NAME=VALUE"; each a permission `sysctl:NAME`.
    sysctls: stringPairs(value.sysctls, `${f}.sysctls`, SYSCTL_NAME, ctx.findings, 64, 255),
    ulimits: ulimits(value.ulimits, `${f}.ulimits`),
    extraHosts: extraHosts(value.extra_hosts, `${f}.extra_hosts`),
    noNewPrivileges: securityOpt(value.security_opt, `${f}.security_opt`, ctx.findings),
    configs: serviceConfigs(value.configs, `${f}.configs`, ctx, targets)
  }
  for (const k of Object.keys(svc.labels)) {
    if (k.startsWith('dcloud.')) throw new ValidationError(`${f}.labels.${k}`, 'dcloud.* labels are the runtime\'s own (actual state is read back from them)')
  }
  const dep = deploy(value.deploy, `${f}.deploy`, ctx.findings)
  svc.restart = restart(value.restart, `${f}.restart`, ctx.findings) ?? dep.restart ?? 'no'
  const requests = serviceRequests(value, dep, f, ctx.findings)
  const platform = value.platform === undefined || value.platform === null ? null : platformArch(value.platform, `${f}.platform`)
  return { service: svc, requests, exposed, platform }
}

function argv (v: unknown, field: string, findings: Findings): string[] | null {
  if (v === undefined || v === null) return null
  let words: string[]
  if (typeof v === 'string') {
    const split = splitShellWords(v, field)
    if (split.operators.length > 0) {
      findings.warn(field, `"${split.operators[0] ?? ''}" is passed to the program as a plain argument: no shell runs the command (write ["sh", "-c", "..."] for one)`)
    }
    words = split.words
  } else {
    words = list(v, field, MAX_WORDS).map((w, i) => scalar(w, `${field}[${i}]`))
  }
  if (words.length > MAX_WORDS) throw new ValidationError(field, `more than ${MAX_WORDS} words`)
  const long = words.findIndex(w => w.length > MAX_WORD)
  if (long !== -1) throw new ValidationError(`${field}[${long}]`, `longer than ${MAX_WORD} characters`)
  return words
}

/** environment and labels: a map, or a list of "KEY=value". */
function stringPairs (v: unknown, field: string, key: RegExp, findings: Findings, maxEntries: number, maxValue: number): Record<string, string> {
  const out: Record<string, string> = {}
  if (v === undefined || v === null) return out
  const set = (k: string, value: unknown, f: string): void => {
    if (!key.test(k) || k === '__proto__') throw new ValidationError(f, `"${k}" is not a valid name`)
    if (value === null || value === undefined) {
      findings.warn(f, 'has no value: compose would take it from the shell running compose, which a node does not have; left out')
      return
    }
    const s = scalar(value, f)
    if (s.length > maxValue) throw new ValidationError(f, `longer than ${maxValue} characters`)
    out[k] = s
  }
  if (Array.isArray(v)) {
    if (v.length > maxEntries) throw new ValidationError(field, `more than ${maxEntries} entries`)
    v.forEach((item, i) => {
      const s = scalar(item, `${field}[${i}]`)
      const eq = s.indexOf('=')
      if (eq === -1) set(s, null, `${field}[${i}]`)
      else set(s.slice(0, eq), s.slice(eq + 1), `${field}[${i}]`)
    })
    return out
  }
  if (!isRecord(v)) throw new ValidationError(field, 'must be a map or a list of "KEY=value"')
  const entries = Object.entries(v)
  if (entries.length > maxEntries) throw new ValidationError(field, `more than ${maxEntries} entries`)
  for (const [k, value] of entries) set(k, value, `${field}.${k}`)
  return out
}

function userSpec (v: unknown, field: string): string {
  const s = scalar(v, field)
  if (!USER.test(s)) throw new ValidationError(field, `"${s}" is not a user such as 1000, 1000:1000 or www-data`)
  return s
}

/** `host` is the permission host_network; bridge and default are the app's own network. */
function networkMode (v: unknown, field: string): ComposeService['networkMode'] {
  if (v === undefined || v === null) return 'bridge'
  const mode = scalar(v, field)
  if (mode === 'bridge' || mode === 'default') return 'bridge'
  if (mode === 'host') return 'host'
  throw new Unsupported(field, `"${mode}" is not supported: every service joins the app's own network (or, granted host_network, the node's)`)
}

function serviceNetworks (v: unknown, field: string, declared: Set<string>): void {
  if (v === undefined || v === null) return
  const check = (name: string, f: string): void => {
    if (name !== 'default' && !declared.has(name)) throw new ValidationError(f, `network "${name}" is not declared under the top-level networks`)
  }
  if (Array.isArray(v)) {
    v.forEach((n, i) => { check(scalar(n, `${field}[${i}]`), `${field}[${i}]`) })
    return
  }
  if (!isRecord(v)) throw new ValidationError(field, 'must be a list or a map of network names')
  for (const [name, opts] of Object.entries(v)) {
    check(name, `${field}.${name}`)
    if (opts === null || opts === undefined) continue
    if (!isRecord(opts)) throw new ValidationError(`${field}.${name}`, 'must be a map')
    for (const [k, o] of Object.entries(opts)) {
      if (isDefaultValue(o)) continue
      throw new Unsupported(`${field}.${name}.${k}`, 'not supported: the runtime gives each service one address on the app network, reachable by its service name')
    }
  }
}

function links (v: unknown, field: string, names: string[]): void {
  if (v === undefined || v === null) return
  list(v, field).forEach((l, i) => {
    const [target, alias] = scalar(l, `${field}[${i}]`).split(':')
    if (target === undefined || !names.includes(target)) throw new ValidationError(`${field}[${i}]`, `service "${target ?? ''}" is not defined`)
    if (alias !== undefined && alias !== target) throw new Unsupported(`${field}[${i}]`, `the alias "${alias}" is not supported: reach the service by its name "${target}"`)
  })
}

function mounts (v: unknown, field: string, ctx: ServiceContext, targets: Map<string, string>): { volumes: VolumeMount[], tmpfs: TmpfsMount[] } {
  const out = { volumes: [] as VolumeMount[], tmpfs: [] as TmpfsMount[] }
  if (v === undefined || v === null) return out
  list(v, field, 128).forEach((item, i) => {
    const f = `${field}[${i}]`
    const m = ctx.findings.unsupported(() => typeof item === 'string' ? shortMount(item, f, ctx.findings) : longMount(item, f))
    if (m === undefined) return
    if ('options' in m) {
      claim(targets, m.target, f)
      out.tmpfs.push(m)
      return
    }
    checkMount(m, f, ctx)
    claim(targets, m.target, f)
    out.volumes.push(m)
  })
  return out
}

function shortMount (text: string, field: string, findings: Findings): VolumeMount {
  const parts = text.split(':')
  if (parts.length === 1) throw anonymous(field, text)
  if (parts.length > 3) throw new ValidationError(field, `"${text}" is not SOURCE:TARGET[:MODE]`)
  const [source, target, mode] = parts as [string, string, string | undefined]
  let readOnly = false
  for (const opt of (mode ?? '').split(',').filter(o => o !== '')) {
    if (opt === 'ro') readOnly = true
    else if (opt === 'rw' || opt === 'cached' || opt === 'delegated' || opt === 'consistent') continue
    else if (opt === 'z' || opt === 'Z') findings.warn(field, `mount option "${opt}" ignored: no SELinux relabelling`)
    else throw new Unsupported(field, `mount option "${opt}" is not supported (ro or rw)`)
  }
  return { source, target, kind: source.startsWith('/') || source.startsWith('.') || source.startsWith('~') ? 'bind' : 'volume', readOnly }
}

function anonymous (field: string, target: string): ValidationError {
  return new Unsupported(field, `anonymous volume at ${target}: name it under the top-level volumes (e.g. "data:${target}") so its data can be snapshotted and moved with the app`)
}

function longMount (v: unknown, field: string): VolumeMount | TmpfsMount {
  if (!isRecord(v)) throw new ValidationError(field, 'must be "SOURCE:TARGET[:MODE]" or a map with type, source and target')
  const type = v.type === undefined ? 'volume' : scalar(v.type, `${field}.type`)
  if (type === 'tmpfs') return longTmpfs(v, field)
  for (const [k, o] of Object.entries(v)) {
    if (['type', 'source', 'target', 'read_only', 'consistency'].includes(k)) continue
    if (k === 'bind' && isRecord(o)) {
      for (const [bk, bv] of Object.entries(o)) {
        if (bk === 'create_host_path' || (bk === 'propagation' && (bv === 'private' || bv === 'rprivate')) || isDefaultValue(bv)) continue
        throw new Unsupported(`${field}.bind.${bk}`, 'not supported: the runtime makes plain private bind mounts')
      }
      continue
    }
    if (k === 'volume' && isRecord(o)) {
      for (const [vk, vv] of Object.entries(o)) {
        if (!isDefaultValue(vv)) throw new Unsupported(`${field}.volume.${vk}`, 'not supported: the runtime mounts whole named volumes')
      }
      continue
    }
    if (isDefaultValue(o)) continue
    throw new ValidationError(`${field}.${k}`, 'unknown or unsupported mount key')
  }
  if (type !== 'volume' && type !== 'bind') throw new Unsupported(`${field}.type`, `"${type}" is not supported (volume or bind)`)
  if (v.target === undefined) throw new ValidationError(`${field}.target`, 'missing')
  const target = scalar(v.target, `${field}.target`)
  if (v.source === undefined || v.source === null || v.source === '') {
    if (type === 'volume') throw anonymous(field, target)
    throw new ValidationError(`${field}.source`, 'missing: the host path to bind')
  }
  const readOnly = v.read_only === undefined ? false : bool(v.read_only, `${field}.read_only`)
  return { source: scalar(v.source, `${field}.source`), target, kind: type, readOnly }
}

function checkMount (m: VolumeMount, field: string, ctx: ServiceContext): void {
  if (!m.target.startsWith('/')) throw new ValidationError(field, `the container path "${m.target}" must be absolute`)
  if (m.kind === 'volume') {
    if (!DOCKER_NAME.test(m.source)) throw new ValidationError(field, `"${m.source}" is not a volume name`)
    if (!Object.hasOwn(ctx.volumes, m.source)) throw new ValidationError(field, `named volume "${m.source}" is used but not declared under the top-level volumes`)
    return
  }
  if (!m.source.startsWith('/')) {
    ctx.findings.refuse(field, `the relative bind mount "${m.source}" needs files from the app's folder, which are not shipped to nodes; use a named volume`)
    return
  }
  const source = normaliseHostPath(m.source)
  if (source === null) throw new ValidationError(field, `the host path "${m.source}" must be plain: no "..", ":" or control characters`)
  m.source = source
  // A permission (proto/permissions.ts), granted at install; the warning says what it does not give.
  if (pathPermission(source, m.readOnly) !== null && !DOCKER_SOCKETS.has(source)) {
    ctx.findings.warn(field, `binds the host path ${source}: the app only finds its files on a node that has them, and they are not snapshotted or moved with it`)
  }
}

function healthcheck (v: unknown, field: string, findings: Findings): HealthCheck | null {
  if (v === undefined || v === null) return null
  if (!isRecord(v)) throw new ValidationError(field, 'must be a map')
  for (const k of Object.keys(v)) {
    if (!['test', 'interval', 'timeout', 'retries', 'start_period', 'start_interval', 'disable'].includes(k)) throw new ValidationError(`${field}.${k}`, `unknown healthcheck key${suggest(k, ['test', 'interval', 'timeout', 'retries', 'start_period', 'start_interval', 'disable'])}`)
  }
  const timings = {
    intervalMs: v.interval === undefined ? HEALTHCHECK_DEFAULTS.intervalMs : parseDuration(v.interval, `${field}.interval`),
    timeoutMs: v.timeout === undefined ? HEALTHCHECK_DEFAULTS.timeoutMs : parseDuration(v.timeout, `${field}.timeout`),
    retries: v.retries === undefined ? HEALTHCHECK_DEFAULTS.retries : retries(v.retries, `${field}.retries`),
    startPeriodMs: v.start_period === undefined ? HEALTHCHECK_DEFAULTS.startPeriodMs : parseDuration(v.start_period, `${field}.start_period`)
  }
  if (v.start_interval !== undefined) findings.warn(`${field}.start_interval`, 'ignored: checks run at interval during the start period too')
  if (v.disable !== undefined && bool(v.disable, `${field}.disable`)) return { test: ['NONE'], ...timings }
  if (v.test === undefined || v.test === null) {
    if (Object.keys(v).some(k => k !== 'disable')) findings.warn(field, 'has timings but no test: the image\'s own healthcheck runs with its own timings')
    return null
  }
  let test: string[]
  if (typeof v.test === 'string') {
    if (v.test.length > MAX_WORD) throw new ValidationError(`${field}.test`, `longer than ${MAX_WORD} characters`)
    test = ['CMD-SHELL', v.test]
  } else {
    test = list(v.test, `${field}.test`, 64).map((w, i) => scalar(w, `${field}.test[${i}]`))
    if (test.some(w => w.length > MAX_WORD)) throw new ValidationError(`${field}.test`, `a word is longer than ${MAX_WORD} characters`)
    const kind = test[0]
    if (kind === 'NONE') test = ['NONE']
    else if (kind !== 'CMD' && kind !== 'CMD-SHELL') throw new ValidationError(`${field}.test`, 'a list must start with "CMD", "CMD-SHELL" or "NONE"')
    else if (test.length < 2) throw new ValidationError(`${field}.test`, `"${kind}" needs a command after it`)
  }
  return { test, ...timings }
}

function retries (v: unknown, field: string): number {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 1000) throw new ValidationError(field, 'must be a whole number of retries')
  return n
}

function dependsOn (v: unknown, field: string, names: string[], findings: Findings): string[] {
  if (v === undefined || v === null) return []
  const known = (name: string, f: string): string => {
    if (!names.includes(name)) throw new ValidationError(f, `service "${name}" is not defined (services: ${names.join(', ')})`)
    return name
  }
  if (Array.isArray(v)) return [...new Set(v.map((n, i) => known(scalar(n, `${field}[${i}]`), `${field}[${i}]`)))]
  if (!isRecord(v)) throw new ValidationError(field, 'must be a list or a map of service names')
  const out: string[] = []
  for (const [name, opts] of Object.entries(v)) {
    const f = `${field}.${name}`
    out.push(known(name, f))
    if (opts === null) continue
    if (!isRecord(opts)) throw new ValidationError(f, 'must be a map with condition')
    for (const [k, o] of Object.entries(opts)) {
      if (k === 'condition') {
        const c = scalar(o, `${f}.condition`)
        if (!['service_started', 'service_healthy', 'service_completed_successfully'].includes(c)) throw new ValidationError(`${f}.condition`, `"${c}" is not a condition`)
        if (c !== 'service_started') findings.warn(`${f}.condition`, `${c} is not waited for: the runtime starts "${name}" first, then this service`)
      } else if (k === 'restart' || k === 'required') {
        bool(o, `${f}.${k}`)
      } else {
        throw new ValidationError(`${f}.${k}`, 'unknown depends_on key')
      }
    }
  }
  return out
}

function checkCycles (services: Record<string, ComposeService>): void {
  const state = new Map<string, 'visiting' | 'done'>()
  const visit = (name: string, path: string[]): void => {
    const s = state.get(name)
    if (s === 'done') return
    if (s === 'visiting') {
      const cycle = [...path.slice(path.indexOf(name)), name]
      throw new ValidationError(`services.${cycle[0] ?? name}.depends_on`, `dependency cycle: ${cycle.join(' → ')}`)
    }
    state.set(name, 'visiting')
    for (const dep of services[name]?.dependsOn ?? []) visit(dep, [...path, name])
    state.set(name, 'done')
  }
  for (const name of Object.keys(services)) visit(name, [])
}

function restart (v: unknown, field: string, findings: Findings): ComposeService['restart'] | null {
  if (v === undefined || v === null) return null
  if (v === false) return 'no'
  const s = scalar(v, field)
  if (s === 'no' || s === 'always' || s === 'unless-stopped' || s === 'on-failure') return s
  if (/^on-failure:\d+$/.test(s)) {
    findings.warn(field, 'the retry count is ignored: restarted on every failure')
    return 'on-failure'
  }
  throw new ValidationError(field, `"${s}" is not a restart policy (no, always, on-failure, unless-stopped)`)
}

interface DeployResult {
  reservations: ServiceRequests
  limits: ServiceRequests
  restart: ComposeService['restart'] | null
}

function deploy (v: unknown, field: string, findings: Findings): DeployResult {
  const out: DeployResult = { reservations: { memoryBytes: null, cpus: null }, limits: { memoryBytes: null, cpus: null }, restart: null }
  if (v === undefined || v === null) return out
  if (!isRecord(v)) throw new ValidationError(field, 'must be a map')
  for (const [k, o] of Object.entries(v)) {
    findings.unsupported(() => { deployKey(k, o, `${field}.${k}`, out, findings) })
  }
  return out
}

function deployKey (k: string, o: unknown, f: string, out: DeployResult, findings: Findings): void {
  if (k === 'resources') {
    if (o === null) return
    if (!isRecord(o)) throw new ValidationError(f, 'must be a map')
    for (const [rk, ro] of Object.entries(o)) {
      if (ro === null) continue
      if ((rk !== 'reservations' && rk !== 'limits') || !isRecord(ro)) throw new ValidationError(`${f}.${rk}`, 'unknown resources key (reservations or limits)')
      const target = rk === 'reservations' ? out.reservations : out.limits
      for (const [ek, eo] of Object.entries(ro)) {
        const ef = `${f}.${rk}.${ek}`
        if (ek === 'memory') target.memoryBytes = parseBytes(eo, ef)
        else if (ek === 'cpus') target.cpus = parseCpus(eo, ef)
        else if (ek === 'pids') findings.warn(ef, 'ignored: limits are not enforced yet')
        else if (ek === 'devices' || ek === 'generic_resources') {
          if (!isDefaultValue(eo)) findings.refuse(ef, 'not supported: device reservations (GPUs) tie the app to one machine\'s hardware; only memory and cpus are scheduled')
        } else throw new ValidationError(ef, 'unknown resources key (memory, cpus)')
      }
    }
  } else if (k === 'replicas') {
    if (o !== 1) throw new Unsupported(f, 'only 1 is supported: one container per service')
  } else if (k === 'mode') {
    if (o !== 'replicated') throw new Unsupported(f, `"${String(o)}" is not supported: each service runs once, on the node the scheduler picks`)
  } else if (k === 'restart_policy') {
    if (!isRecord(o)) throw new ValidationError(f, 'must be a map')
    const c = o.condition === undefined ? 'any' : scalar(o.condition, `${f}.condition`)
    const map: Record<string, ComposeService['restart']> = { none: 'no', 'on-failure': 'on-failure', any: 'always' }
    const r = map[c]
    if (r === undefined) throw new ValidationError(`${f}.condition`, `"${c}" is not a condition (none, on-failure, any)`)
    out.restart = r
    if (Object.keys(o).some(x => x !== 'condition')) findings.warn(f, 'only condition is honoured; delay, max_attempts and window are ignored')
  } else if (['placement', 'labels', 'update_config', 'rollback_config', 'endpoint_mode'].includes(k)) {
    if (!isDefaultValue(o)) findings.warn(f, k === 'placement' ? 'ignored: swarm placement; use x-dcloud.constraints' : 'ignored: a swarm setting')
  } else {
    throw new ValidationError(f, 'unknown deploy key')
  }
}

function serviceRequests (v: Record<string, unknown>, dep: DeployResult, f: string, findings: Findings): ServiceRequests {
  const memReservation = v.mem_reservation === undefined || v.mem_reservation === null ? null : parseBytes(v.mem_reservation, `${f}.mem_reservation`)
  const memLimit = v.mem_limit === undefined || v.mem_limit === null ? null : parseBytes(v.mem_limit, `${f}.mem_limit`)
  const cpus = v.cpus === undefined || v.cpus === null ? null : parseCpus(v.cpus, `${f}.cpus`)
  const memoryBytes = dep.reservations.memoryBytes ?? memReservation ?? dep.limits.memoryBytes ?? memLimit
  const cpu = dep.reservations.cpus ?? dep.limits.cpus ?? cpus
  if ((dep.reservations.memoryBytes === null && memReservation === null && memoryBytes !== null) || (dep.reservations.cpus === null && cpu !== null)) {
    findings.warn(f, 'resource limits are taken as the service\'s request and not enforced as limits')
  }
  return { memoryBytes, cpus: cpu }
}

function platformArch (v: unknown, field: string): string {
  const s = scalar(v, field)
  if (!s.startsWith('linux/')) throw new ValidationError(field, `"${s}" is not a Linux platform such as linux/arm64`)
  const arch = normaliseArch(s)
  if (arch === null) throw new ValidationError(field, `"${s}" is not a known architecture (${ARCHITECTURES.join(', ')})`)
  return arch
}

function topLevelVolumes (v: unknown, findings: Findings): Record<string, { labels: Record<string, string> }> {
  const out: Record<string, { labels: Record<string, string> }> = {}
  if (v === undefined || v === null) return out
  if (!isRecord(v)) throw new ValidationError('volumes', 'must be a map of volume names')
  for (const [name, opts] of Object.entries(v)) {
    const f = `volumes.${name}`
    if (!DOCKER_NAME.test(name)) throw new ValidationError(f, 'volume names are letters, digits, ".", "_" and "-", at most 63 characters')
    out[name] = { labels: {} }
    if (opts === null || opts === undefined) continue
    if (!isRecord(opts)) throw new ValidationError(f, 'must be a map (or empty)')
    for (const [k, o] of Object.entries(opts)) findings.unsupported(() => {
      if (k === 'labels') {
        const labels = stringPairs(o, `${f}.labels`, LABEL_KEY, findings, 64, 1024)
        for (const lk of Object.keys(labels)) {
          if (lk.startsWith('dcloud.')) throw new ValidationError(`${f}.labels.${lk}`, 'dcloud.* labels are the runtime\'s own')
        }
        out[name] = { labels }
      } else if (k === 'driver') {
        if (o !== 'local' && o !== null) throw new Unsupported(`${f}.driver`, `"${String(o)}" is not supported: volumes are local, snapshotted and moved by Dentropy`)
      } else if (k === 'name') {
        findings.warn(`${f}.name`, 'ignored: the runtime names volumes after the app instance')
      } else if (k === 'external') {
        if (o !== false) throw new Unsupported(`${f}.external`, 'not supported: an app owns its volumes, so they can be snapshotted and moved with it')
      } else if (k === 'driver_opts') {
        if (!isDefaultValue(o)) throw new Unsupported(`${f}.driver_opts`, 'not supported: volumes are plain local volumes (a driver_opts bind would tie the app to one node)')
      } else {
        throw new ValidationError(`${f}.${k}`, 'unknown volume key')
      }
    })
  }
  return out
}

function topLevelNetworks (v: unknown, findings: Findings): Set<string> {
  const out = new Set<string>()
  if (v === undefined || v === null) return out
  if (!isRecord(v)) throw new ValidationError('networks', 'must be a map of network names')
  for (const [name, opts] of Object.entries(v)) {
    const f = `networks.${name}`
    out.add(name)
    if (opts === null || opts === undefined) continue
    if (!isRecord(opts)) throw new ValidationError(f, 'must be a map (or empty)')
    for (const [k, o] of Object.entries(opts)) findings.unsupported(() => {
      if (k === 'driver') {
        if (o !== 'bridge' && o !== 'default' && o !== null) throw new Unsupported(`${f}.driver`, `"${String(o)}" is not supported: the app gets one bridge network`)
      } else if (k === 'name' || k === 'labels' || k === 'attachable') {
        if (!isDefaultValue(o)) findings.warn(`${f}.${k}`, 'ignored: the runtime creates and names the app\'s network')
      } else if (['external', 'internal', 'ipam', 'driver_opts', 'enable_ipv6', 'enable_ipv4'].includes(k)) {
        // enable_ipv4 defaults to true: saying so asks for nothing special.
        const asksNothing = k === 'enable_ipv4' ? o === true || o === null : isDefaultValue(o)
        if (!asksNothing) throw new Unsupported(`${f}.${k}`, 'not supported: the app gets one plain bridge network of its own')
      } else {
        throw new ValidationError(`${f}.${k}`, 'unknown network key')
      }
    })
  }
  if (out.size > 1) findings.warn('networks', `${[...out].join(', ')} become one network: every service of the app can reach every other`)
  return out
}

/** Records that `field` mounts something at `target`; a second mount there is an error naming both. */
function claim (targets: Map<string, string>, target: string, field: string): void {
  const first = targets.get(target)
  if (first !== undefined) throw new ValidationError(field, `${target} is mounted twice (also ${first})`)
  targets.set(target, field)
}

/** An absolute path in the container: working_dir, tmpfs and config targets. */
function containerPath (v: unknown, field: string): string {
  const path = scalar(v, field)
  if (!path.startsWith('/')) throw new ValidationError(field, `"${path}" must be an absolute path in the container`)
  if (path.length > 4096 || path.includes('\0')) throw new ValidationError(field, 'is not a usable path (at most 4096 characters, no NUL)')
  return path
}

/** Docker reads a tmpfs as "path:options,…": a path holding ":" or "," would be misread. */
function tmpfsTarget (v: unknown, field: string): string {
  const path = containerPath(v, field)
  if (/[:,]/.test(path)) throw new ValidationError(field, `"${path}" cannot be a tmpfs mount point: it holds ":" or ","`)
  return path
}

/** Tmpfs options a file may write besides the TMPFS_OPTION words: sizes with units, and the two that add power. */
function tmpfsOptions (words: string[], field: string): string[] {
  return words.map(w => {
    const [key, value] = w.split('=', 2) as [string, string | undefined]
    if (key === 'size' && value !== undefined) return `size=${parseBytes(value, `${field} (size)`)}`
    if (key === 'mode' && value !== undefined && !/^[0-7]{3,4}$/.test(value)) throw new ValidationError(field, `mode "${value}" is not an octal file mode such as 1777`)
    if (w === 'suid' || w === 'dev') throw new Unsupported(field, `tmpfs option "${w}" is not supported: ${PRIVILEGE}`)
    if (!TMPFS_OPTION.test(w)) throw new ValidationError(field, `"${w}" is not a tmpfs option (size, mode, uid, gid, nr_inodes, ro, rw, exec, noexec, nosuid, nodev, noatime, …)`)
    return w
  })
}

/** Service-level tmpfs: "TARGET" or "TARGET:OPTIONS", alone or in a list. */
function tmpfsList (v: unknown, field: string, findings: Findings, targets: Map<string, string>): TmpfsMount[] {
  if (v === undefined || v === null) return []
  const items = typeof v === 'string' ? [v] : list(v, field, 64)
  const out: TmpfsMount[] = []
  items.forEach((item, i) => {
    const f = typeof v === 'string' ? field : `${field}[${i}]`
    const text = scalar(item, f)
    const colon = text.indexOf(':')
    const target = tmpfsTarget(colon === -1 ? text : text.slice(0, colon), f)
    const options = findings.unsupported(() => tmpfsOptions(colon === -1 ? [] : text.slice(colon + 1).split(',').filter(o => o !== ''), f))
    if (options === undefined) return
    claim(targets, target, f)
    out.push({ target, options })
  })
  return out
}

/** A volumes entry of type tmpfs: `{type: tmpfs, target, tmpfs: {size, mode}}`. */
function longTmpfs (v: Record<string, unknown>, field: string): TmpfsMount {
  const options: string[] = []
  for (const [k, o] of Object.entries(v)) {
    if (k === 'type' || k === 'target') continue
    if (k === 'read_only') {
      if (bool(o, `${field}.read_only`)) options.push('ro')
    } else if (k === 'tmpfs') {
      if (o === null) continue
      if (!isRecord(o)) throw new ValidationError(`${field}.tmpfs`, 'must be a map with size and mode')
      for (const [tk, to] of Object.entries(o)) {
        if (tk === 'size') options.push(`size=${parseBytes(to, `${field}.tmpfs.size`)}`)
        else if (tk === 'mode') options.push(`mode=${fileMode(to, `${field}.tmpfs.mode`).toString(8)}`)
        else throw new ValidationError(`${field}.tmpfs.${tk}`, 'unknown tmpfs key (size, mode)')
      }
    } else if (k === 'source') {
      if (!isDefaultValue(o) && o !== '') throw new ValidationError(`${field}.source`, 'a tmpfs mount has no source')
    } else if (!isDefaultValue(o)) {
      throw new ValidationError(`${field}.${k}`, 'unknown or unsupported key for a tmpfs mount (target, read_only, tmpfs)')
    }
  }
  if (v.target === undefined) throw new ValidationError(`${field}.target`, 'missing')
  return { target: tmpfsTarget(v.target, `${field}.target`), options }
}

/**
 * A file mode: a number or a string of octal digits ("0440"). YAML's `0440`
 * arrives as 288 (yaml.ts reads it as compose does).
 */
function fileMode (v: unknown, field: string): number {
  const n = typeof v === 'string' && /^0?[0-7]{1,4}$/.test(v) ? parseInt(v, 8) : v
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 0o7777) throw new ValidationError(field, `${JSON.stringify(v)} is not a file mode such as 0440`)
  return n
}

/** Linux capabilities by name (capabilities(7)), for a clear error on a typo before Docker's. */
/** Capability names as compose writes them (upper case); `ALL` only in cap_drop. */
const CAP_NAMES = new Set([...CAPABILITIES.map(c => c.toUpperCase()), 'ALL'])

/** cap_drop: names as Docker takes them, upper case without CAP_ ("net_raw", "CAP_NET_RAW" → NET_RAW). */
/** cap_drop and cap_add: names with or without CAP_, any case; ALL only where it takes power away. */
function capabilities (v: unknown, field: string, allowAll: boolean): string[] {
  if (v === undefined || v === null) return []
  const out = list(v, field, 64).map((c, i) => {
    const name = scalar(c, `${field}[${i}]`).toUpperCase().replace(/^CAP_/, '')
    if (!CAP_NAMES.has(name)) throw new ValidationError(`${field}[${i}]`, `"${scalar(c, `${field}[${i}]`)}" is not a Linux capability (NET_RAW, SYS_ADMIN, …${allowAll ? ' or ALL' : ''})`)
    if (name === 'ALL' && !allowAll) throw new ValidationError(`${field}[${i}]`, 'ALL is every capability: ask for privileged instead, or name the capabilities the app needs')
    return name
  })
  return [...new Set(out)]
}

/** devices: "HOST[:CONTAINER[:PERMISSIONS]]" or {source, target, permissions}; each a permission `device:HOST`. */
function devices (v: unknown, field: string): DeviceMapping[] {
  if (v === undefined || v === null) return []
  return list(v, field, 64).map((d, i) => {
    const f = `${field}[${i}]`
    let host: string
    let container: string | undefined
    let permissions: string | undefined
    if (isRecord(d)) {
      host = scalar(d.source, `${f}.source`)
      container = d.target === undefined ? undefined : scalar(d.target, `${f}.target`)
      permissions = d.permissions === undefined ? undefined : scalar(d.permissions, `${f}.permissions`)
    } else {
      const parts = scalar(d, f).split(':')
      if (parts.length > 3) throw new ValidationError(f, `"${scalar(d, f)}" is not HOST[:CONTAINER[:PERMISSIONS]]`)
      host = parts[0] as string
      container = parts[1]
      // "/dev/x:rw" is the host path and permissions, as Docker reads it.
      if (parts.length === 2 && /^[rwm]+$/.test(container as string)) [container, permissions] = [undefined, container]
      else permissions = parts[2]
    }
    if (normaliseHostPath(host) !== host || !DEVICE_PATH.test(host)) throw new ValidationError(f, `the device "${host}" must be a plain path below /dev (no "..")`)
    container ??= host
    if (!container.startsWith('/') || container.includes(':')) throw new ValidationError(f, `the container path "${container}" must be absolute`)
    permissions ??= 'rwm'
    if (!/^[rwm]{1,3}$/.test(permissions)) throw new ValidationError(f, `the permissions "${permissions}" must be some of r, w and m`)
    return { host, container, permissions }
  })
}



/** ulimits: `nofile: 1024` (soft and hard) or `nofile: {soft, hard}`; -1 is unlimited. */
function ulimits (v: unknown, field: string): ComposeService['ulimits'] {
  const out: ComposeService['ulimits'] = {}
  if (v === undefined || v === null) return out
  if (!isRecord(v)) throw new ValidationError(field, 'must be a map of limits, e.g. nofile: {soft: 1024, hard: 4096}')
  const value = (x: unknown, f: string): number => {
    const n = typeof x === 'string' && /^-?\d+$/.test(x) ? Number(x) : x
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < -1) throw new ValidationError(f, `${JSON.stringify(x)} is not a limit (a whole number, or -1 for unlimited)`)
    return n
  }
  for (const [name, l] of Object.entries(v)) {
    const f = `${field}.${name}`
    if (!ULIMIT_NAMES.includes(name)) throw new ValidationError(f, `unknown limit${suggest(name, ULIMIT_NAMES)} (${ULIMIT_NAMES.join(', ')})`)
    let soft: number
    let hard: number
    if (isRecord(l)) {
      for (const k of Object.keys(l)) if (k !== 'soft' && k !== 'hard') throw new ValidationError(`${f}.${k}`, 'unknown key (soft, hard)')
      if (l.soft === undefined || l.hard === undefined) throw new ValidationError(f, 'needs both soft and hard')
      soft = value(l.soft, `${f}.soft`)
      hard = value(l.hard, `${f}.hard`)
    } else {
      soft = hard = value(l, f)
    }
    // -1 is unlimited: above every number.
    if (hard !== -1 && (soft === -1 || soft > hard)) throw new ValidationError(f, `the soft limit ${soft} is above the hard limit ${hard}`)
    out[name] = { soft, hard }
  }
  return out
}

/** extra_hosts: "host:ip", "host=ip" (IPv6 may be in brackets), or a map of host to address(es). */
function extraHosts (v: unknown, field: string): ComposeService['extraHosts'] {
  if (v === undefined || v === null) return []
  const entry = (host: string, address: string, f: string): { host: string, address: string } => {
    const addr = address.trim().replace(/^\[(.*)\]$/, '$1')
    if (!HOST_NAME.test(host)) throw new ValidationError(f, `"${host}" is not a host name`)
    if (addr !== 'host-gateway' && !isIpAddress(addr)) throw new ValidationError(f, `"${address}" is not an IP address (or host-gateway, the node's own address)`)
    return { host, address: addr }
  }
  let out: ComposeService['extraHosts']
  if (isRecord(v)) {
    out = Object.entries(v).flatMap(([host, a]) => (Array.isArray(a) ? a : [a]).map((x, i) => entry(host, scalar(x, `${field}.${host}`), Array.isArray(a) ? `${field}.${host}[${i}]` : `${field}.${host}`)))
  } else {
    out = list(v, field, 256).map((h, i) => {
      const f = `${field}[${i}]`
      const text = scalar(h, f)
      // "=" first: an IPv6 address holds ":" ("host=::1"); else the first ":" ("host:::1", as Docker splits it).
      const at = text.includes('=') ? text.indexOf('=') : text.indexOf(':')
      if (at <= 0) throw new ValidationError(f, `"${text}" is not HOST:IP or HOST=IP`)
      return entry(text.slice(0, at), text.slice(at + 1), f)
    })
  }
  if (out.length > 256) throw new ValidationError(field, 'more than 256 entries')
  return out
}

/**
 * security_opt: only no-new-privileges, which takes power away (setuid
 * binaries gain nothing). Everything else (seccomp or apparmor unconfined,
 * SELinux labels, systempaths) loosens the confinement Docker gives.
 */
function securityOpt (v: unknown, field: string, findings: Findings): boolean {
  if (v === undefined || v === null) return false
  let on = false
  list(v, field, 32).forEach((o, i) => {
    const text = scalar(o, `${field}[${i}]`).trim()
    const m = /^no-new-privileges(?:[:=](true|false))?$/.exec(text)
    if (m !== null) {
      if (m[1] !== 'false') on = true
      return
    }
    findings.refuse(`${field}[${i}]`, `"${text}" is not supported: only no-new-privileges is (it takes power away); any other security option ${PRIVILEGE}`)
  })
  return on
}

interface TopLevelConfigs {
  /** Configs whose content the manifest carries. */
  carried: Record<string, { content: string }>
  /** Declared, but refused (a file, an environment variable): services naming them add no second error. */
  refused: Set<string>
}

/**
 * Top-level configs. Only `content:` can be honoured: the text travels in the
 * manifest to whichever node runs the app. `file:` names a file next to the
 * compose file and `environment:` a variable of the machine running compose;
 * neither reaches a node.
 */
function topLevelConfigs (v: unknown, findings: Findings): TopLevelConfigs {
  const out: TopLevelConfigs = { carried: {}, refused: new Set() }
  if (v === undefined || v === null) return out
  if (!isRecord(v)) throw new ValidationError('configs', 'must be a map of config names')
  if (Object.keys(v).length > CONFIG_LIMITS.maxConfigs) throw new ValidationError('configs', `more than ${CONFIG_LIMITS.maxConfigs} configs`)
  let total = 0
  for (const [name, c] of Object.entries(v)) {
    const f = `configs.${name}`
    if (!DOCKER_NAME.test(name)) throw new ValidationError(f, 'config names are letters, digits, ".", "_" and "-", at most 63 characters')
    if (!isRecord(c)) throw new ValidationError(f, 'must be a map with content')
    let content: string | null = null
    for (const [k, o] of Object.entries(c)) {
      if (k === 'content') {
        content = scalar(o, `${f}.content`)
      } else if (k === 'file') {
        findings.refuse(`${f}.file`, 'not supported: the file next to the compose file is not shipped to nodes; put its text under content:')
      } else if (k === 'environment') {
        findings.refuse(`${f}.environment`, 'not supported: the variable would come from the machine running compose, which a node is not; put the text under content:')
      } else if (k === 'external') {
        if (o !== false) findings.refuse(`${f}.external`, 'not supported: an app carries its own configs, so they move with it')
      } else if (k === 'name' || k === 'labels' || k === 'template_driver') {
        if (!isDefaultValue(o)) findings.warn(`${f}.${k}`, 'ignored: the config is written into the container as it is')
      } else {
        throw new ValidationError(`${f}.${k}`, `unknown config key${suggest(k, ['content', 'file', 'environment', 'external', 'name'])}`)
      }
    }
    if (content === null) {
      out.refused.add(name)
      if (!findings.refusals.some(r => r.field.startsWith(`${f}.`))) throw new ValidationError(f, 'needs content: (the config\'s text)')
      continue
    }
    const bytes = Buffer.byteLength(content)
    if (bytes > CONFIG_LIMITS.maxBytes) throw new ValidationError(`${f}.content`, `is ${bytes} bytes, more than ${CONFIG_LIMITS.maxBytes}: configs travel with the app to every node; put large files in a volume`)
    total += bytes
    out.carried[name] = { content }
  }
  if (total > CONFIG_LIMITS.maxTotalBytes) throw new ValidationError('configs', `hold ${total} bytes, more than ${CONFIG_LIMITS.maxTotalBytes}: configs travel with the app to every node; put large files in a volume`)
  return out
}

/** A service's configs: "name" (at /name) or {source, target, mode}. */
function serviceConfigs (v: unknown, field: string, ctx: ServiceContext, targets: Map<string, string>): ConfigMount[] {
  if (v === undefined || v === null) return []
  const out: ConfigMount[] = []
  list(v, field, CONFIG_LIMITS.maxConfigs).forEach((c, i) => {
    const f = `${field}[${i}]`
    let source: string
    let target: string | null = null
    let mode = 0o444
    if (isRecord(c)) {
      for (const [k, o] of Object.entries(c)) {
        if (k === 'source') continue
        else if (k === 'target') target = scalar(o, `${f}.target`)
        else if (k === 'mode') mode = fileMode(o, `${f}.mode`)
        else if (k === 'uid' || k === 'gid') {
          if (!['0', ''].includes(scalar(o, `${f}.${k}`))) ctx.findings.refuse(`${f}.${k}`, 'not supported: the file is owned by root; its mode (0444 unless given) decides who reads it')
        } else throw new ValidationError(`${f}.${k}`, 'unknown config key (source, target, mode)')
      }
      if (c.source === undefined) throw new ValidationError(`${f}.source`, 'missing: the name of a top-level config')
      source = scalar(c.source, `${f}.source`)
    } else {
      source = scalar(c, f)
    }
    if (ctx.configs.refused.has(source)) return
    if (!Object.hasOwn(ctx.configs.carried, source)) throw new ValidationError(f, `config "${source}" is not declared under the top-level configs`)
    // Compose's rule: a relative target is below the root.
    const path = containerPath(target === null ? `/${source}` : target.startsWith('/') ? target : `/${target}`, target === null ? f : `${f}.target`)
    if (path.endsWith('/') || path.includes(':')) throw new ValidationError(`${f}.target`, `"${path}" must name a file (no trailing "/", no ":")`)
    claim(targets, path, f)
    out.push({ source, target: path, mode })
  })
  return out
}
