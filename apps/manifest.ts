/**
 * Our own app format: a compose file whose top-level `x-dcloud:` block holds
 * the app's metadata. parseManifest turns the file into the validated,
 * normalised AppManifest of proto/app.ts, with warnings for what was accepted
 * but not honoured as written. Anything the runtime cannot honour is an error
 * that names the field.
 */
import type { AppManifest } from '../proto/app.ts'
import { NODE_LABEL_KEY, ValidationError, isRecord } from '../proto/validate.ts'
import { ARCHITECTURES, normaliseArch } from './arch.ts'
import { normaliseCompose } from './compose.ts'
import { Findings, RefusedError, problemOf } from './findings.ts'
import { UnsetVariableError, interpolateValues } from './interpolate.ts'
import { parseBytes, parseCpus, parseDuration } from './units.ts'
import { KEEP_DEFAULTS, KEEP_MAX, SNAPSHOT_DEFAULTS } from '../proto/app.ts'
import { loadYaml } from './yaml.ts'

export interface ParsedApp {
  manifest: AppManifest
  /** "field: what was not honoured as written", for the user to read before installing. */
  warnings: string[]
}

export interface ParseOptions {
  /** Values for `${VAR}` in the file (e.g. from `dcloud app install --set K=V`). */
  variables?: Record<string, string>
}

/** A manifest error: the file, the field in it, and what is wrong. */
export class ManifestError extends ValidationError {
  override name = 'ManifestError'
  readonly source: string
  readonly problem: string
  /** Every field the runtime cannot honour (the first is `field`); one entry for other errors. */
  readonly refusals: Array<{ field: string, problem: string }>
  /** Set when the problem is a variable without a value, so a caller can ask for it. */
  readonly variable: string | undefined

  constructor (source: string, refusals: Array<{ field: string, problem: string }>, variable?: string) {
    const [first] = refusals as [{ field: string, problem: string }]
    super(first.field, first.problem)
    this.source = source
    this.problem = first.problem
    this.refusals = refusals
    this.variable = variable
    const line = (r: { field: string, problem: string }): string => r.field === source ? r.problem : `${r.field}: ${r.problem}`
    this.message = `${source}: ${line(first)}${refusals.slice(1).map(r => `\n  also ${line(r)}`).join('')}`
  }
}

/**
 * Rewraps any ValidationError as a ManifestError of `source`; other errors (our
 * bugs) pass through. `showText` turns an importer's internal placeholders in
 * a problem back into what the user's file wrote.
 */
export function inSource (err: unknown, source: string, renameField: (field: string) => string = f => f, showText: (problem: string) => string = p => p): unknown {
  if (err instanceof ManifestError || !(err instanceof ValidationError)) return err
  const refusals = err instanceof RefusedError ? err.refusals : [{ field: err.field, problem: problemOf(err) }]
  return new ManifestError(source, refusals.map(r => ({ field: renameField(r.field), problem: showText(r.problem) })), err instanceof UnsetVariableError ? err.variable : undefined)
}

/** Lowercase letters, digits and dashes: one DNS label, since every app gets a subdomain. */
export const APP_ID = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/
const META_KEYS = ['id', 'name', 'version', 'description', 'icon', 'category', 'architectures', 'requests', 'web', 'constraints', 'snapshots']

/** What a service that states no requests is assumed to need; the scheduler must not think it free. */
export const DEFAULT_SERVICE_REQUESTS = { memoryBytes: 64 * 1024 * 1024, cpus: 0.1 }

export function parseManifest (text: string, source: string, opts: ParseOptions = {}): ParsedApp {
  const vars = opts.variables ?? {}
  try {
    const raw = loadYaml(text, source)
    if (!isRecord(raw)) throw new ValidationError(source, 'must be a compose file: a map with services and x-dcloud')
    const interpolated = interpolateValues(raw, name => Object.hasOwn(vars, name) ? vars[name] : undefined, '') as Record<string, unknown>
    return manifestFromCompose(interpolated)
  } catch (err) {
    throw inSource(err, source)
  }
}

/**
 * Builds the manifest from a parsed, interpolated compose object with its
 * `x-dcloud` block. The importers produce such objects from other stores'
 * formats and come through here, so every app meets the same rules.
 * Throws ValidationError naming the field.
 */
export function manifestFromCompose (raw: Record<string, unknown>, findings = new Findings()): ParsedApp {
  const metaRaw = raw['x-dcloud']
  if (metaRaw === undefined) throw new ValidationError('x-dcloud', 'missing: the app\'s metadata block (at least id)')
  if (!isRecord(metaRaw)) throw new ValidationError('x-dcloud', 'must be a map')
  for (const key of Object.keys(metaRaw)) {
    if (!META_KEYS.includes(key)) throw new ValidationError(`x-dcloud.${key}`, `unknown key (known: ${META_KEYS.join(', ')})`)
  }
  const id = text(metaRaw.id, 'x-dcloud.id', 63, true)
  if (!APP_ID.test(id)) throw new ValidationError('x-dcloud.id', `"${id}" is not an app id: lowercase letters, digits and dashes, at most 63, not starting or ending with a dash`)

  const { compose, requests, exposed, platforms } = normaliseCompose(raw, findings)
  // What cannot be honoured is reported before checks that may only fail because of it (a web port on a refused mapping).
  findings.throwRefusals()

  const manifest: AppManifest = {
    id,
    name: metaRaw.name === undefined ? id : text(metaRaw.name, 'x-dcloud.name', 100, true),
    version: metaRaw.version === undefined ? 'latest' : text(metaRaw.version, 'x-dcloud.version', 64, true),
    description: metaRaw.description === undefined || metaRaw.description === null ? '' : text(metaRaw.description, 'x-dcloud.description', 4000),
    icon: metaRaw.icon === undefined || metaRaw.icon === null ? null : text(metaRaw.icon, 'x-dcloud.icon', 2048, true),
    category: metaRaw.category === undefined || metaRaw.category === null ? null : text(metaRaw.category, 'x-dcloud.category', 64, true).toLowerCase(),
    architectures: architectures(metaRaw.architectures, platforms),
    requests: { memoryBytes: 0, cpus: 0 },
    web: null,
    constraints: constraints(metaRaw.constraints),
    compose
  }

  // Requests: the app's own statement wins; otherwise the services' deploy.resources, with a floor for the silent ones.
  const stated = metaRaw.requests === undefined || metaRaw.requests === null ? {} : record(metaRaw.requests, 'x-dcloud.requests', ['memory', 'cpus'])
  const noMemory = Object.keys(requests).filter(n => requests[n]?.memoryBytes === null)
  const noCpus = Object.keys(requests).filter(n => requests[n]?.cpus === null)
  const memory = Object.values(requests).reduce((sum, r) => sum + (r.memoryBytes ?? DEFAULT_SERVICE_REQUESTS.memoryBytes), 0)
  const cpus = Object.values(requests).reduce((sum, r) => sum + (r.cpus ?? DEFAULT_SERVICE_REQUESTS.cpus), 0)
  manifest.requests.memoryBytes = stated.memory === undefined ? memory : parseBytes(stated.memory, 'x-dcloud.requests.memory')
  manifest.requests.cpus = Math.round((stated.cpus === undefined ? cpus : parseCpus(stated.cpus, 'x-dcloud.requests.cpus')) * 1000) / 1000
  if (manifest.requests.memoryBytes === 0) throw new ValidationError('x-dcloud.requests.memory', 'must be more than 0: every app uses some memory')
  const assumed = [
    stated.memory === undefined && noMemory.length > 0 ? `no memory request from ${noMemory.join(', ')} (64M assumed for each)` : '',
    stated.cpus === undefined && noCpus.length > 0 ? `no cpus request from ${noCpus.join(', ')} (0.1 assumed for each)` : ''
  ].filter(a => a !== '')
  if (assumed.length > 0) findings.warn('x-dcloud.requests', `not stated, summed from the services: ${assumed.join('; ')}`)

  if (metaRaw.web !== undefined && metaRaw.web !== null) {
    const web = record(metaRaw.web, 'x-dcloud.web', ['service', 'port', 'path', 'scheme'])
    const service = text(web.service, 'x-dcloud.web.service', 63, true)
    const ports = exposed[service]
    if (ports === undefined) throw new ValidationError('x-dcloud.web.service', `"${service}" is not a service of the app (services: ${Object.keys(compose.services).join(', ')})`)
    const port = typeof web.port === 'string' && /^\d+$/.test(web.port) ? Number(web.port) : web.port
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) throw new ValidationError('x-dcloud.web.port', 'must be a port number (1-65535)')
    if (!ports.has(`${port}/tcp`)) {
      const list = [...ports].join(', ')
      throw new ValidationError('x-dcloud.web.port', `${port} is not exposed by service "${service}" (${list === '' ? 'it exposes no port' : `it exposes ${list}`}); add it to its ports or expose`)
    }
    manifest.web = { service, port }
    if (web.path !== undefined && web.path !== null) {
      const path = text(web.path, 'x-dcloud.web.path', 512, true)
      if (!path.startsWith('/') || /\s/.test(path)) throw new ValidationError('x-dcloud.web.path', `"${path}" must be a URL path starting with "/"`)
      if (path !== '/') manifest.web.path = path
    }
    if (web.scheme !== undefined && web.scheme !== null) {
      if (web.scheme !== 'http' && web.scheme !== 'https') throw new ValidationError('x-dcloud.web.scheme', 'must be http or https')
      if (web.scheme === 'https') manifest.web.scheme = 'https'
    }
  }
  if (metaRaw.snapshots !== undefined && metaRaw.snapshots !== null) {
    const snap = record(metaRaw.snapshots, 'x-dcloud.snapshots', ['every', 'replicas', 'quiesce', 'hook', 'keep'])
    if (Object.keys(manifest.compose.volumes).length === 0) findings.warn('x-dcloud.snapshots', 'the app has no named volumes: there is nothing to snapshot')
    const policy = { ...SNAPSHOT_DEFAULTS }
    // "0" turns scheduled snapshots off (moves and failovers still take theirs).
    if (snap.every !== undefined) policy.everyMs = snap.every === 0 || snap.every === '0' ? 0 : parseDuration(snap.every, 'x-dcloud.snapshots.every')
    if (snap.replicas !== undefined) {
      if (typeof snap.replicas !== 'number' || !Number.isInteger(snap.replicas) || snap.replicas < 0 || snap.replicas > 16) throw new ValidationError('x-dcloud.snapshots.replicas', 'must be a whole number from 0 to 16')
      policy.replicas = snap.replicas
    }
    if (snap.quiesce !== undefined) {
      if (snap.quiesce !== 'pause' && snap.quiesce !== 'stop' && snap.quiesce !== 'none') throw new ValidationError('x-dcloud.snapshots.quiesce', 'must be pause (freeze the containers for the final pass), stop, or none')
      policy.quiesce = snap.quiesce
    }
    if (snap.hook !== undefined && snap.hook !== null) {
      const hook = record(snap.hook, 'x-dcloud.snapshots.hook', ['service', 'command'])
      const service = text(hook.service, 'x-dcloud.snapshots.hook.service', 63, true)
      if (manifest.compose.services[service] === undefined) throw new ValidationError('x-dcloud.snapshots.hook.service', `"${service}" is not a service of the app`)
      const command = hook.command
      if (!Array.isArray(command) || command.length === 0 || !command.every(c => typeof c === 'string')) throw new ValidationError('x-dcloud.snapshots.hook.command', 'must be a non-empty list of strings, e.g. ["pg_dumpall", "-f", "/backup/all.sql"]')
      policy.hook = { service, command: command as string[] }
    }
    if (snap.keep !== undefined && snap.keep !== null) {
      // Partial rules take the cluster's defaults for what they leave out: `keep: { last: 3 }`.
      const keep = record(snap.keep, 'x-dcloud.snapshots.keep', ['last', 'hourly', 'daily', 'weekly'])
      const rule = { ...KEEP_DEFAULTS }
      for (const k of ['last', 'hourly', 'daily', 'weekly'] as const) {
        const v = keep[k]
        if (v === undefined) continue
        if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > KEEP_MAX) throw new ValidationError(`x-dcloud.snapshots.keep.${k}`, `must be a whole number from 0 to ${KEEP_MAX}`)
        rule[k] = v
      }
      policy.keep = rule
    }
    manifest.snapshots = policy
  }
  return { manifest, warnings: findings.warnings }
}

function text (v: unknown, field: string, max: number, nonEmpty = false): string {
  if (typeof v === 'number' && field.endsWith('.version')) throw new ValidationError(field, `must be a string: quote it ("${v}") so YAML keeps it as written`)
  if (typeof v !== 'string') throw new ValidationError(field, v === undefined ? 'missing' : 'must be a string')
  if (v.length > max) throw new ValidationError(field, `longer than ${max} characters`)
  if (nonEmpty && v.trim() === '') throw new ValidationError(field, 'must not be empty')
  return v
}

function record (v: unknown, field: string, keys: string[]): Record<string, unknown> {
  if (!isRecord(v)) throw new ValidationError(field, 'must be a map')
  for (const k of Object.keys(v)) {
    if (!keys.includes(k)) throw new ValidationError(`${field}.${k}`, `unknown key (known: ${keys.join(', ')})`)
  }
  return v
}

function architectures (v: unknown, platforms: string[] | null): string[] {
  let out: string[] = []
  if (v !== undefined && v !== null) {
    if (!Array.isArray(v)) throw new ValidationError('x-dcloud.architectures', 'must be a list such as [amd64, arm64] (empty means any)')
    out = [...new Set(v.map((a, i) => {
      const name = typeof a === 'string' ? normaliseArch(a) : null
      if (name === null) throw new ValidationError(`x-dcloud.architectures[${i}]`, `${JSON.stringify(a)} is not a known architecture (${ARCHITECTURES.join(', ')})`)
      return name
    }))]
  }
  if (platforms === null) return out
  // `platform:` pins an image to one architecture: the app runs only where every pinned image can.
  if (platforms.length > 1) throw new ValidationError('services', `platform pins services to different architectures (${platforms.join(', ')}): no node can run them all`)
  if (out.length === 0) return platforms
  const both = out.filter(a => platforms.includes(a))
  if (both.length === 0) throw new ValidationError('x-dcloud.architectures', `none of ${out.join(', ')} matches the platform ${platforms.join(', ')} a service pins`)
  return both
}

function constraints (v: unknown): Record<string, string> {
  if (v === undefined || v === null) return {}
  if (!isRecord(v)) throw new ValidationError('x-dcloud.constraints', 'must be a map of node labels to values, e.g. { ssd: "true" }')
  const out: Record<string, string> = {}
  const entries = Object.entries(v)
  if (entries.length > 32) throw new ValidationError('x-dcloud.constraints', 'more than 32 labels')
  for (const [k, value] of entries) {
    if (!NODE_LABEL_KEY.test(k)) throw new ValidationError(`x-dcloud.constraints.${k}`, 'is not a node label name')
    if (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean') throw new ValidationError(`x-dcloud.constraints.${k}`, 'must be a string')
    const s = String(value)
    if (s.length > 128) throw new ValidationError(`x-dcloud.constraints.${k}`, 'longer than 128 characters')
    out[k] = s
  }
  return out
}

/** Null when a node of `arch` can run the app, otherwise why not, in words for the user. */
export function checkArchitecture (manifest: AppManifest, arch: string): string | null {
  const a = normaliseArch(arch) ?? arch
  if (manifest.architectures.length === 0 || manifest.architectures.includes(a)) return null
  return `app "${manifest.id}" has images for ${manifest.architectures.join(', ')} only; this node is ${a}`
}
