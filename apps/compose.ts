/**
 * The compose part of an app: turns a parsed compose file (already
 * interpolated) into the normalised ComposeProject of proto/app.ts, applying
 * the key tables of compose-keys.ts. Malformed input throws a ValidationError
 * naming the field; what the runtime cannot honour is collected in Findings
 * and reported together. Nothing is dropped silently: an app that installs
 * must behave as its file says.
 */
import type { ComposeProject, ComposeService, HealthCheck, VolumeMount } from '../proto/app.ts'
import { ValidationError, isRecord } from '../proto/validate.ts'
import { ARCHITECTURES, normaliseArch } from './arch.ts'
import { NO_FIELD, PRIVILEGE, SERVICE_KEYS, TOP_LEVEL_KEYS, type KeyRule } from './compose-keys.ts'
import { Findings, Unsupported } from './findings.ts'
import { PortRegistry, port } from './ports.ts'
import { bool, isDefaultValue, list, scalar } from './read.ts'
import { splitShellWords } from './shell.ts'
import { parseBytes, parseCpus, parseDuration } from './units.ts'

/** Host files every node has, bound read-only to give a container the node's time zone. */
const BENIGN_BINDS = new Set(['/etc/localtime', '/etc/timezone'])
const DOCKER_SOCKETS = new Set(['/var/run/docker.sock', '/run/docker.sock'])

export const SERVICE_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/
const VOLUME_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/
// The limits below are no looser than what a peer accepts when the manifest is
// replicated (proto/cluster.ts decodeManifest): an app accepted here must not
// be dropped there.
const ENV_KEY = /^[^=\s]{1,255}$/
const LABEL_KEY = /^[a-zA-Z0-9][a-zA-Z0-9._/-]{0,127}$/
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
    if (!SERVICE_NAME.test(name)) throw new ValidationError(f, 'service names are letters, digits, ".", "_" and "-", at most 63 characters')
    const svc = service(value, f, { names, volumes, networks, ports, findings })
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
  return { compose: { services, volumes }, requests, exposed, platforms: platforms.length > 0 ? [...new Set(platforms)] : null }
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
  refusing.unsupported(() => { networkMode(value.network_mode, `${f}.network_mode`) })
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

  const svc: ComposeService = {
    image,
    command: argv(value.command, `${f}.command`, ctx.findings),
    entrypoint: argv(value.entrypoint, `${f}.entrypoint`, ctx.findings),
    environment: stringPairs(value.environment, `${f}.environment`, ENV_KEY, ctx.findings, 512, MAX_ENV_VALUE),
    ports: portList.map(p => p.mapping),
    volumes: mounts(value.volumes, `${f}.volumes`, ctx),
    healthcheck: healthcheck(value.healthcheck, `${f}.healthcheck`, ctx.findings),
    dependsOn: dependsOn(value.depends_on, `${f}.depends_on`, ctx.names, ctx.findings),
    restart: 'no',
    labels: stringPairs(value.labels, `${f}.labels`, LABEL_KEY, ctx.findings, 128, MAX_LABEL_VALUE),
    user: value.user === undefined || value.user === null ? null : userSpec(value.user, `${f}.user`)
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

function networkMode (v: unknown, field: string): void {
  if (v === undefined || v === null) return
  const mode = scalar(v, field)
  if (mode === 'bridge' || mode === 'default') return
  if (mode === 'host') throw new Unsupported(field, `"host" is not supported: ${PRIVILEGE}, and its ports could clash with other apps on the node; publish ports instead`)
  throw new Unsupported(field, `"${mode}" is not supported: every service joins the app's own network`)
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

function mounts (v: unknown, field: string, ctx: ServiceContext): VolumeMount[] {
  if (v === undefined || v === null) return []
  const out: VolumeMount[] = []
  const targets = new Map<string, string>()
  list(v, field, 128).forEach((item, i) => {
    const f = `${field}[${i}]`
    const m = ctx.findings.unsupported(() => typeof item === 'string' ? shortMount(item, f, ctx.findings) : longMount(item, f))
    if (m === undefined) return
    checkMount(m, f, ctx)
    const first = targets.get(m.target)
    if (first !== undefined) throw new ValidationError(f, `${m.target} is mounted twice (also ${first})`)
    targets.set(m.target, f)
    out.push(m)
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

function longMount (v: unknown, field: string): VolumeMount {
  if (!isRecord(v)) throw new ValidationError(field, 'must be "SOURCE:TARGET[:MODE]" or a map with type, source and target')
  const type = v.type === undefined ? 'volume' : scalar(v.type, `${field}.type`)
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
  if (type === 'tmpfs') throw new Unsupported(`${field}.type`, `tmpfs is not supported: ${NO_FIELD}`)
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
    if (!VOLUME_NAME.test(m.source)) throw new ValidationError(field, `"${m.source}" is not a volume name`)
    if (!Object.hasOwn(ctx.volumes, m.source)) throw new ValidationError(field, `named volume "${m.source}" is used but not declared under the top-level volumes`)
    return
  }
  if (!m.source.startsWith('/')) {
    ctx.findings.refuse(field, `the relative bind mount "${m.source}" needs files from the app's folder, which are not shipped to nodes; use a named volume`)
    return
  }
  if (m.source.split('/').includes('..')) throw new ValidationError(field, `the host path "${m.source}" must not contain ".."`)
  if (m.source.length > 1 && m.source.endsWith('/')) m.source = m.source.replace(/\/+$/, '')
  if (BENIGN_BINDS.has(m.source) && m.readOnly) return
  if (DOCKER_SOCKETS.has(m.source)) {
    ctx.findings.warn(field, 'binds the Docker socket: the app can control every container on its node, Dentropy\'s own included')
    return
  }
  ctx.findings.warn(field, `binds the host path ${m.source}: the app only finds its files on a node that has them, and they are not snapshotted or moved with it`)
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
    if (!VOLUME_NAME.test(name)) throw new ValidationError(f, 'volume names are letters, digits, ".", "_" and "-", at most 63 characters')
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
