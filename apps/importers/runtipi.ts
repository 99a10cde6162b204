/**
 * Runtipi apps: a folder with config.json (the store's app-info schema) and
 * the compose part in one of three shapes, newest first:
 *
 * - docker-compose.json, Runtipi's "dynamic compose" (services as a list,
 *   camelCase keys, `isMain` + `internalPort` for the web UI);
 * - docker-compose.yml with `x-runtipi` blocks (`is_main`, `internal_port`);
 * - a plain, legacy docker-compose.yml that publishes `${APP_PORT}` and routes
 *   through Traefik labels on Runtipi's shared network.
 *
 * Runtipi's variables are supplied (APP_DOMAIN, TZ, …), form fields come from
 * the user or are generated (type "random"), and `${APP_DATA_DIR}` folders
 * become named volumes (runtipi-config.ts reads config.json and the
 * variables). Every field of both schemas is mapped or refused by name; the
 * tables are what docs/apps.md lists.
 */
import { readFileSync, statSync } from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { CONFIG_LIMITS } from '../../proto/app.ts'
import { ValidationError, isRecord } from '../../proto/validate.ts'
import { Findings, problemOf } from '../findings.ts'
import { interpolate, interpolateValues } from '../interpolate.ts'
import { inSource, manifestFromCompose, type ParsedApp } from '../manifest.ts'
import { loadYaml } from '../yaml.ts'
import { checkNotFile, oneLine, otherHostPath, parseJson, readText, rewriteMounts, webPath, VolumeMapper, type ImportOptions } from './common.ts'
import { DATA, ROOT, appInfo, variables, type AppInfo, type Variables } from './runtipi-config.ts'

export { APP_INFO_KEYS, RUNTIPI_VARIABLES } from './runtipi-config.ts'

/** docker-compose.json service keys (dynamic-compose-schema.json): the compose key each becomes, or what happens. */
export const DYNAMIC_SERVICE_KEYS: Record<string, string> = {
  name: 'the service name',
  image: 'image',
  command: 'command',
  entrypoint: 'entrypoint',
  environment: 'environment (a map, or the store\'s list of {key, value})',
  user: 'user',
  internalPort: 'the web UI\'s port on the main service (published on a port the node picks); exposed on others',
  isMain: 'x-dcloud.web.service',
  addPorts: 'ports (tcp and/or udp; interface becomes the host address, which must be 0.0.0.0)',
  volumes: 'volumes (${APP_DATA_DIR} folders become named volumes; shared propagation refused)',
  healthCheck: 'healthcheck',
  dependsOn: 'depends_on',
  deploy: 'deploy (resources become requests; device reservations refused)',
  extraLabels: 'labels (Traefik routing labels dropped)',
  addToMainNetwork: 'a warning: there is no network shared between apps',
  networkMode: 'network_mode (host when granted host_network)',
  hostname: 'hostname (ignored with a warning)',
  stopGracePeriod: 'stop_grace_period (ignored with a warning)',
  stopSignal: 'stop_signal (ignored with a warning)',
  logging: 'logging (ignored with a warning)',
  privileged: 'privileged (when granted)',
  capAdd: 'cap_add (each capability when granted)',
  capDrop: 'cap_drop',
  devices: 'devices (each device when granted)',
  pid: 'pid (refused)',
  securityOpt: 'security_opt (only no-new-privileges; others refused)',
  sysctls: 'sysctls (each when granted)',
  ulimits: 'ulimits',
  extraHosts: 'extra_hosts',
  tty: 'tty',
  stdinOpen: 'stdin_open',
  workingDir: 'working_dir',
  shmSize: 'shm_size',
  readOnly: 'read_only'
}

/** Dynamic-compose keys that are compose keys under another name. */
const RENAMED: Record<string, string> = {
  networkMode: 'network_mode',
  extraHosts: 'extra_hosts',
  capAdd: 'cap_add',
  capDrop: 'cap_drop',
  workingDir: 'working_dir',
  shmSize: 'shm_size',
  readOnly: 'read_only',
  securityOpt: 'security_opt',
  stopSignal: 'stop_signal',
  stopGracePeriod: 'stop_grace_period',
  stdinOpen: 'stdin_open',
  dependsOn: 'depends_on',
  extraLabels: 'labels'
}
const SAME = ['image', 'command', 'entrypoint', 'user', 'deploy', 'hostname', 'devices', 'pid', 'privileged', 'tty', 'logging', 'sysctls', 'ulimits']

export interface RuntipiFiles {
  config: string
  composeJson?: string
  composeYaml?: string
  /**
   * Paths below the app folder's data/ (Runtipi copies them into the app's
   * data): files and folders, and how to read a file (its path as in
   * `files`), for the files bound one by one, which are shipped as configs.
   */
  seeds?: { files: Set<string>, dirs: Set<string>, read?: (path: string) => Uint8Array }
}

export interface RuntipiOptions extends ImportOptions {
  /** Which compose file to read when the app has both; default json, as Runtipi does with dynamic_config. */
  prefer?: 'json' | 'yaml'
}

/** Imports the Runtipi app in folder `dir`. */
export async function importRuntipi (dir: string, opts: RuntipiOptions = {}): Promise<ParsedApp> {
  const exists = async (p: string): Promise<boolean> => (await stat(p).catch(() => null)) !== null
  const files: RuntipiFiles = { config: await readText(join(dir, 'config.json'), join(dir, 'config.json')) }
  if (await exists(join(dir, 'docker-compose.json'))) files.composeJson = await readText(join(dir, 'docker-compose.json'), join(dir, 'docker-compose.json'))
  if (await exists(join(dir, 'docker-compose.yml'))) files.composeYaml = await readText(join(dir, 'docker-compose.yml'), join(dir, 'docker-compose.yml'))
  if (await exists(join(dir, 'data'))) files.seeds = { ...await seedsOf(join(dir, 'data')), read: path => readSeed(join(dir, path), path) }
  return importRuntipiFiles(files, dir, opts)
}

/** A seed file of the app folder, refused before it is read when it is larger than a config may be. */
function readSeed (file: string, path: string): Uint8Array {
  const size = statSync(file).size
  if (size > CONFIG_LIMITS.maxBytes) throw new ValidationError(path, `is ${size} bytes, more than the ${CONFIG_LIMITS.maxBytes} a config shipped with the app may hold`)
  return readFileSync(file)
}

async function seedsOf (root: string): Promise<{ files: Set<string>, dirs: Set<string> }> {
  const out = { files: new Set<string>(), dirs: new Set<string>() }
  const walk = async (d: string, depth: number): Promise<void> => {
    if (depth > 8 || out.files.size + out.dirs.size > 1000) return
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name)
      const rel = `data/${relative(root, p)}`
      if (e.isDirectory()) {
        out.dirs.add(rel)
        await walk(p, depth + 1)
      } else {
        out.files.add(rel)
      }
    }
  }
  await walk(root, 0)
  return out
}

export function importRuntipiFiles (files: RuntipiFiles, dir: string, opts: RuntipiOptions = {}): ParsedApp {
  let source = join(dir, 'config.json')
  let rename = (f: string): string => f
  let remap = (text: string): string => text
  try {
    const findings = new Findings()
    const app = appInfo(files.config, findings)
    const vars = variables(app, opts, findings)
    const useJson = files.composeJson !== undefined && (files.composeYaml === undefined || (app.config.dynamic_config !== false && opts.prefer !== 'yaml'))
    if (!useJson && files.composeYaml === undefined) throw new ValidationError(dir, 'has neither docker-compose.json nor docker-compose.yml')
    source = join(dir, useJson ? 'docker-compose.json' : 'docker-compose.yml')
    const converted = useJson
      ? fromDynamic(files.composeJson as string, source, app, vars, findings)
      : fromYaml(files.composeYaml as string, source, app, vars, findings)
    rename = converted.rename
    // Interpolated after the conversion, so an unset variable is named by its field in the store's file.
    const project = useJson ? interpolateValues(converted.project, vars.lookup, '', { optional: vars.optional }) as Record<string, unknown> : converted.project
    const moved = portableVolumes(project, files.seeds, findings)
    const storeName = rename
    // A seeded file's entry left the service's volumes for its configs: later entries are named by their index in the file.
    remap = text => text.replace(/(services\.[^.[\s]+\.volumes)\[(\d+)\]/g, (_all, key: string, i: string) => `${key}[${moved.get(key)?.[Number(i)] ?? i}]`)
    rename = f => storeName(remap(f))
    const leftover = findSentinel(project, '')
    if (leftover !== null) findings.refuse(leftover, 'uses ${APP_DATA_DIR} or ${ROOT_FOLDER_HOST} outside a volume\'s host path: a host folder means nothing to an app that moves between nodes')
    if (app.config.no_gui === true) converted.web = null
    project['x-dcloud'] = {
      id: app.id,
      name: typeof app.config.name === 'string' ? app.config.name : app.id,
      version: typeof app.config.version === 'string' || typeof app.config.version === 'number' ? String(app.config.version) : 'latest',
      description: oneLine(typeof app.config.short_desc === 'string' && app.config.short_desc !== '' ? app.config.short_desc : typeof app.config.description === 'string' ? app.config.description : ''),
      icon: null,
      category: category(app.config.categories),
      architectures: app.architectures.filter(a => !converted.overridden.includes(a)),
      web: converted.web === null ? null : { ...converted.web, path: webPath(app.config.url_suffix), scheme: app.config.https === true ? 'https' : 'http' }
    }
    if (converted.overridden.length > 0 && app.architectures.filter(a => !converted.overridden.includes(a)).length === 0) {
      throw new ValidationError('overrides', `every supported architecture (${app.architectures.join(', ')}) needs an image of its own, which one manifest cannot carry`)
    }
    return manifestFromCompose(project, findings)
  } catch (err) {
    throw inSource(err, source, rename, problem => display(remap(problem)))
  }
}

function category (v: unknown): string | null {
  if (!Array.isArray(v)) return null
  const c = v.find(x => typeof x === 'string' && x !== 'featured')
  return typeof c === 'string' ? c : null
}

interface Converted {
  project: Record<string, unknown>
  web: { service: string, port: number } | null
  /** Architectures with an image override, which one manifest cannot carry. */
  overridden: string[]
  /** Compose field names back to the store file's names, for errors. */
  rename: (field: string) => string
}

function fromDynamic (text: string, source: string, app: AppInfo, vars: Variables, findings: Findings): Converted {
  const raw = parseJson(text, source)
  if (!isRecord(raw)) throw new ValidationError(source, 'must be an object')
  for (const k of Object.keys(raw)) {
    if (!['services', 'schemaVersion', '$schema', 'overrides'].includes(k)) throw new ValidationError(k, 'not a key of Runtipi\'s dynamic compose schema')
  }
  if (!Array.isArray(raw.services) || raw.services.length === 0) throw new ValidationError('services', 'must be a non-empty list')
  const list = raw.services as unknown[]
  const services: Record<string, Record<string, unknown>> = {}
  const portNames: Record<string, string[]> = {}
  let web: Converted['web'] = null
  list.forEach((s, i) => {
    const f = `services[${i}]`
    if (!isRecord(s)) throw new ValidationError(f, 'must be an object')
    if (typeof s.name !== 'string' || s.name === '') throw new ValidationError(`${f}.name`, 'missing')
    const name = s.name
    if (Object.hasOwn(services, name)) throw new ValidationError(`${f}.name`, `"${name}" is used twice`)
    const { service, ports, internalPort } = dynamicService(s, `services.${name}`, app.id, vars, findings)
    warnAppPort(service.environment, `services.${name}.environment`, findings)
    services[name] = service
    portNames[name] = ports
    const isMain = s.isMain === true || (list.length === 1 && s.isMain !== false)
    if (isMain && web === null && internalPort !== null) web = { service: name, port: internalPort }
  })
  const overridden = overrides(raw.overrides, services, findings)
  const compose: Record<string, unknown> = { services }
  const rename = (field: string): string => {
    const m = /^services\.([^.[]+)\.([a-z_]+)(.*)$/.exec(field)
    if (m === null) return field
    const [, svc, key, rest] = m as unknown as [string, string, string, string]
    if (key === 'ports') {
      const idx = /^\[(\d+)\](.*)$/.exec(rest)
      const name = idx === null ? undefined : portNames[svc]?.[Number(idx[1])]
      return name === undefined ? `services.${svc}.addPorts` : `services.${svc}.${name}`
    }
    const back = key === 'healthcheck' ? 'healthCheck' : Object.entries(RENAMED).find(([, c]) => c === key)?.[0]
    return `services.${svc}.${back ?? key}${rest.replace(/^\.start_(period|interval)/, (_, w: string) => `.start${w[0]?.toUpperCase() ?? ''}${w.slice(1)}`)}`
  }
  return { project: compose, web, overridden, rename }
}

function dynamicService (s: Record<string, unknown>, f: string, id: string, vars: Variables, findings: Findings): { service: Record<string, unknown>, ports: string[], internalPort: number | null } {
  const out: Record<string, unknown> = {}
  const ports: unknown[] = []
  const portNames: string[] = []
  let internalPort: number | null = null
  for (const [k, v] of Object.entries(s)) {
    if (!Object.hasOwn(DYNAMIC_SERVICE_KEYS, k)) throw new ValidationError(`${f}.${k}`, 'not a key of Runtipi\'s dynamic compose schema')
    if (v === undefined || v === null) continue
    if (SAME.includes(k)) {
      out[k] = v
    } else if (Object.hasOwn(RENAMED, k)) {
      out[RENAMED[k] as string] = v
    } else if (k === 'internalPort') {
      const text = typeof v === 'string' ? interpolate(v, vars.lookup, `${f}.internalPort`, { optional: vars.optional }) : v
      const n = typeof text === 'string' && /^\d+$/.test(text) ? Number(text) : text
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 65535) throw new ValidationError(`${f}.internalPort`, `${JSON.stringify(v)} is not a port`)
      internalPort = n
    } else if (k === 'healthCheck') {
      if (!isRecord(v)) throw new ValidationError(`${f}.healthCheck`, 'must be an object')
      const keys: Record<string, string> = { test: 'test', interval: 'interval', timeout: 'timeout', retries: 'retries', startPeriod: 'start_period', startInterval: 'start_interval' }
      const hc: Record<string, unknown> = {}
      for (const [hk, hv] of Object.entries(v)) {
        const ck = keys[hk]
        if (ck === undefined) throw new ValidationError(`${f}.healthCheck.${hk}`, 'not a key of Runtipi\'s healthCheck')
        hc[ck] = hv
      }
      out.healthcheck = hc
    } else if (k === 'environment') {
      out.environment = environment(v, `${f}.environment`)
    } else if (k === 'addPorts') {
      if (!Array.isArray(v)) throw new ValidationError(`${f}.addPorts`, 'must be a list')
      v.forEach((p, i) => {
        const pf = `${f}.addPorts[${i}]`
        if (!isRecord(p)) throw new ValidationError(pf, 'must be an object')
        for (const pk of Object.keys(p)) {
          if (!['containerPort', 'hostPort', 'udp', 'tcp', 'interface'].includes(pk)) throw new ValidationError(`${pf}.${pk}`, 'not a key of Runtipi\'s addPorts')
        }
        const protocols = [p.tcp === true ? 'tcp' : null, p.udp === true ? 'udp' : null].filter(x => x !== null)
        for (const protocol of protocols.length === 0 ? ['tcp'] : protocols) {
          ports.push({ target: p.containerPort, published: p.hostPort, protocol, ...(p.interface === undefined ? {} : { host_ip: p.interface }) })
          portNames.push(`addPorts[${i}]`)
        }
      })
    } else if (k === 'volumes') {
      if (!Array.isArray(v)) throw new ValidationError(`${f}.volumes`, 'must be a list')
      out.volumes = v.map((m, i) => {
        const mf = `${f}.volumes[${i}]`
        if (!isRecord(m)) throw new ValidationError(mf, 'must be an object')
        for (const mk of Object.keys(m)) {
          if (!['hostPath', 'containerPath', 'readOnly', 'shared', 'private'].includes(mk)) throw new ValidationError(`${mf}.${mk}`, 'not a key of Runtipi\'s volumes')
        }
        if (m.shared === true) throw new ValidationError(`${mf}.shared`, 'shared mount propagation is not supported: the runtime makes plain private mounts')
        return { type: 'bind', source: m.hostPath, target: m.containerPath, ...(m.readOnly === true ? { read_only: true } : {}) }
      })
    } else if (k === 'addToMainNetwork') {
      if (v === true) findings.warn(`${f}.addToMainNetwork`, 'ignored: apps do not share a network; each app has its own')
    } else if (k === 'isMain' || k === 'name') {
      continue
    }
  }
  if (isRecord(out.labels)) out.labels = labels(out.labels, `${f}.extraLabels`, id, findings)
  if (internalPort !== null) {
    if (s.isMain === true) {
      ports.push({ target: internalPort })
      portNames.push('internalPort')
    } else {
      out.expose = [internalPort]
    }
  }
  if (ports.length > 0) out.ports = ports
  // The schema has no restart key: Runtipi writes unless-stopped into every service it generates.
  out.restart = 'unless-stopped'
  return { service: out, ports: portNames, internalPort }
}

/**
 * ${APP_PORT} in an environment value: config.json's port, where Runtipi
 * publishes the UI. Here the UI is on a port the node picks, behind the
 * app's own address, so a link the app builds with it points nowhere.
 */
function warnAppPort (env: unknown, field: string, findings: Findings): void {
  const entries: Array<[string, unknown]> = isRecord(env)
    ? Object.entries(env)
    : Array.isArray(env) ? env.map((e, i) => [typeof e === 'string' ? (e.split('=')[0] ?? String(i)) : String(i), e]) : []
  for (const [key, value] of entries) {
    if (typeof value === 'string' && /\$(\{APP_PORT[}:?+-]|APP_PORT(?![A-Za-z0-9_]))/.test(value)) {
      findings.warn(`${field}.${key}`, '${APP_PORT} is config.json\'s port, where Runtipi publishes the UI; here the UI is on a port the node picks, reached at the app\'s own address: a link the app builds with it may point nowhere')
    }
  }
}

function environment (v: unknown, field: string): Record<string, unknown> {
  // The schema says a map; the store writes a list of {key, value}. Both are read.
  if (isRecord(v)) return v
  if (!Array.isArray(v)) throw new ValidationError(field, 'must be a map or a list of {key, value}')
  const out: Record<string, unknown> = {}
  v.forEach((e, i) => {
    if (!isRecord(e) || typeof e.key !== 'string') throw new ValidationError(`${field}[${i}]`, 'must be {key, value}')
    out[e.key] = e.value
  })
  return out
}

/** Traefik routing labels are Runtipi's ingress; Dentropy routes by itself. Others stay. */
function labels (v: Record<string, unknown>, field: string, id: string, findings: Findings): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  let dropped = 0
  for (const [k, value] of Object.entries(v)) {
    if (k.startsWith('traefik.') || k.startsWith('runtipi.')) {
      dropped++
      continue
    }
    out[k.replaceAll('{{RUNTIPI_APP_ID}}', id)] = typeof value === 'string' ? value.replaceAll('{{RUNTIPI_APP_ID}}', id) : value
  }
  if (dropped > 0) findings.warn(field, `${dropped} Traefik/Runtipi routing label(s) dropped: Dentropy routes to the app itself`)
  return out
}

/** `overrides`: per-architecture replacements of services, which one manifest cannot carry. */
function overrides (v: unknown, services: Record<string, Record<string, unknown>>, findings: Findings): string[] {
  if (v === undefined || v === null) return []
  if (!Array.isArray(v)) throw new ValidationError('overrides', 'must be a list')
  return v.map((o, i) => {
    if (!isRecord(o) || typeof o.architecture !== 'string') throw new ValidationError(`overrides[${i}].architecture`, 'missing')
    const names = Array.isArray(o.services) ? o.services.map(s => isRecord(s) ? String(s.name) : '?') : []
    for (const n of names) {
      if (!Object.hasOwn(services, n)) throw new ValidationError(`overrides[${i}].services`, `"${n}" is not a service of the app`)
    }
    findings.warn(`overrides[${i}]`, `${o.architecture} replaces ${names.join(', ')} (a different image), which one manifest cannot carry: the app is not offered on ${o.architecture}`)
    return o.architecture
  })
}

function fromYaml (text: string, source: string, app: AppInfo, vars: Variables, findings: Findings): Converted {
  const raw = loadYaml(text, source)
  if (!isRecord(raw) || !isRecord(raw.services)) throw new ValidationError('services', 'missing: an app needs at least one service')
  // ${APP_PORT} is where Runtipi publishes the UI: find it before the variable is replaced by a number.
  const appPort = new Map<string, { index: number, port: number }>()
  for (const [name, s] of Object.entries(raw.services)) {
    if (!isRecord(s) || !Array.isArray(s.ports)) continue
    s.ports.forEach((p, index) => {
      const m = typeof p === 'string' ? /^\$\{APP_PORT\}:(\d+)(\/tcp)?$/.exec(p.trim()) : null
      if (m !== null && !appPort.has(name)) appPort.set(name, { index, port: Number(m[1]) })
    })
  }
  // Routing labels go before interpolation: they hold Traefik's own ${…} syntax, not variables.
  for (const [name, s] of Object.entries(raw.services)) {
    if (!isRecord(s)) continue
    if (isRecord(s.labels)) s.labels = labels(s.labels, `services.${name}.labels`, app.id, findings)
    else if (Array.isArray(s.labels)) s.labels = s.labels.filter(l => typeof l !== 'string' || !/^(traefik|runtipi)\./.test(l))
  }
  for (const [name, s] of Object.entries(raw.services)) {
    if (isRecord(s)) warnAppPort(s.environment, `services.${name}.environment`, findings)
  }
  const { version: _version, 'x-runtipi': _x, ...rest } = raw
  const project = interpolateValues(rest, vars.lookup, '', { optional: vars.optional }) as Record<string, unknown>
  const services = project.services as Record<string, unknown>
  let web: Converted['web'] = null
  for (const [name, s] of Object.entries(services)) {
    if (!isRecord(s)) continue
    const x = (raw.services as Record<string, unknown>)[name]
    const xr = isRecord(x) && isRecord(x['x-runtipi']) ? x['x-runtipi'] : null
    if (xr !== null) {
      for (const k of Object.keys(xr)) {
        if (!['internal_port', 'is_main'].includes(k)) findings.warn(`services.${name}.x-runtipi.${k}`, 'unknown Runtipi key, ignored')
      }
      const port = typeof xr.internal_port === 'number' ? xr.internal_port : Number(xr.internal_port)
      if (Number.isInteger(port) && port > 0) {
        if (xr.is_main === true && web === null) {
          web = { service: name, port }
          s.ports = [...(Array.isArray(s.ports) ? s.ports : []), String(port)]
        } else {
          s.expose = [...(Array.isArray(s.expose) ? s.expose : []), port]
        }
      }
    }
    const published = appPort.get(name)
    if (published !== undefined && Array.isArray(s.ports)) {
      if (web === null) web = { service: name, port: published.port }
      s.ports[published.index] = String(published.port)
      findings.warn(`services.${name}.ports[${published.index}]`, '${APP_PORT}, where Runtipi publishes the UI, is not kept: the UI is published on a port the node picks')
    }
    // Runtipi's network shared by all apps; an app here has a network of its own.
    if (Array.isArray(s.networks)) {
      const kept = s.networks.filter(n => n !== 'tipi_main_network')
      if (kept.length === 0) delete s.networks
      else s.networks = kept
    } else if (isRecord(s.networks) && Object.hasOwn(s.networks, 'tipi_main_network')) {
      const { tipi_main_network: _main, ...others } = s.networks
      s.networks = others
    }
  }
  if (isRecord(project.networks) && Object.hasOwn(project.networks, 'tipi_main_network')) {
    const { tipi_main_network: _main, ...others } = project.networks
    if (Object.keys(others).length === 0) delete project.networks
    else project.networks = others
  }
  if (web === null && app.config.no_gui !== true) findings.warn('services', 'no service is marked main and none publishes ${APP_PORT}: no web UI')
  return { project, web, overridden: [], rename: f => f }
}

/**
 * ${APP_DATA_DIR}/… and ${ROOT_FOLDER_HOST}/media/… become named volumes; a
 * file Runtipi seeds from the app folder and the app binds by itself is
 * shipped with the app as a config; other host paths are refused. Returns,
 * for each service's volumes a seeded file left, the index each remaining
 * entry had in the file.
 */
function portableVolumes (project: Record<string, unknown>, seeds: RuntipiFiles['seeds'], findings: Findings): Map<string, number[]> {
  const mapper = new VolumeMapper((f, m) => { findings.warn(f, m) }, display)
  const configs = new SeedConfigs(seeds, findings)
  const rule = (src: string, target: string, field: string): string | null => {
    const path = src.length > 1 ? src.replace(/\/+$/, '') : src
    if (path === DATA || path.startsWith(`${DATA}/`)) {
      const rel = path.slice(DATA.length + 1)
      if (seeds?.files.has(rel) === true) return configs.mount(rel, target, field)
      checkNotFile(display(path), target, field)
      const seeded = [...seeds?.files ?? []].filter(s => (rel === '' || s.startsWith(`${rel}/`)) && !s.endsWith('/.gitkeep'))
      const name = mapper.volumeFor(path, rel.replace(/^data(\/|$)/, ''), 'data', field, 'data')
      findings.warn(field, `\${APP_DATA_DIR}/${rel} became the named volume "${name}": the app's data is snapshotted and moves with it`)
      if (seeded.length > 0) {
        findings.warn(field, `Runtipi seeds ${rel} with ${seeded.length} file(s) from the app folder (${seeded.slice(0, 3).join(', ')}${seeded.length > 3 ? ', …' : ''}); the named volume starts empty`)
      }
      return name
    }
    if (path.startsWith(`${ROOT}/media`) && (path.length === `${ROOT}/media`.length || path[`${ROOT}/media`.length] === '/')) {
      const rel = path.slice(ROOT.length + 1)
      checkNotFile(display(path), target, field)
      const name = mapper.volumeFor(path, `media/${rel.replace(/^media(\/data)?\/?/, '')}`, 'media', field, 'user')
      findings.warn(field, `the shared folder \${ROOT_FOLDER_HOST}/${rel} became the named volume "${name}", private to the app: it starts empty`)
      return name
    }
    if (path === ROOT || path.startsWith(`${ROOT}/`)) {
      throw new ValidationError(field, `binds \${ROOT_FOLDER_HOST}${path.slice(ROOT.length)}, Runtipi's own folders (another app's data, its proxy, its settings): not portable`)
    }
    return otherHostPath(path, field)
  }
  const services = isRecord(project.services) ? project.services : {}
  const refused = new Set<string>()
  const moved = new Map<string, number[]>()
  for (const [name, svc] of Object.entries(services)) {
    if (!isRecord(svc)) continue
    const field = `services.${name}.volumes`
    const rewritten = rewriteMounts(svc.volumes, field, rule, s => s.startsWith('/') || s.startsWith('\u0001'), findings, refused)
    const mounts = configs.takeMounts(field)
    if (mounts.length === 0 || !Array.isArray(rewritten)) {
      svc.volumes = rewritten
      continue
    }
    const seeded = (v: unknown): boolean => typeof v === 'string' ? v.startsWith(`${SEED_CONFIG}:`) : isRecord(v) && v.source === SEED_CONFIG
    const kept = rewritten.map((v, i) => [v, i] as const).filter(([v]) => !seeded(v))
    svc.volumes = kept.map(([v]) => v)
    moved.set(field, kept.map(([, i]) => i))
    svc.configs = [...(Array.isArray(svc.configs) ? svc.configs : []), ...mounts]
  }
  const volumes: Record<string, unknown> = isRecord(project.volumes) ? { ...project.volumes } : {}
  for (const v of [...mapper.volumes, ...refused]) volumes[v] = null
  if (Object.keys(volumes).length > 0) project.volumes = volumes
  if (configs.size > 0) project.configs = { ...(isRecord(project.configs) ? project.configs : {}), ...configs.declared }
  return moved
}

/** What rewriteMounts puts where a seeded file's entry was: it leaves the volumes for the configs. */
const SEED_CONFIG = '\u0002seed-config'

/**
 * Files of the app folder's data/ that a service binds one by one (a
 * named volume, a directory, cannot stand in for a file). Runtipi copies them
 * into the app's data on install; here their text travels with the app as a
 * config (compose's `content:`), one per file, mounted read-only.
 */
class SeedConfigs {
  readonly declared: Record<string, { content: string }> = {}
  private readonly byPath = new Map<string, string>()
  private readonly pending = new Map<string, Array<{ source: string, target: string }>>()
  private bytes = 0
  private readonly seeds: RuntipiFiles['seeds']
  private readonly findings: Findings

  constructor (seeds: RuntipiFiles['seeds'], findings: Findings) {
    this.seeds = seeds
    this.findings = findings
  }

  get size (): number {
    return this.byPath.size
  }

  /** Records `rel` mounted at `target` by the entry `field`; the marker to put in its place. */
  mount (rel: string, target: string, field: string): string {
    const name = this.configFor(rel, field)
    const volumes = field.replace(/\[\d+\]$/, '')
    this.pending.set(volumes, [...this.pending.get(volumes) ?? [], { source: name, target }])
    this.findings.warn(field, `\${APP_DATA_DIR}/${rel}, seeded from the app folder, is shipped with the app as the config "${name}" and mounted read-only: the app cannot change it`)
    return SEED_CONFIG
  }

  /** The config mounts recorded for a service's volumes (`services.NAME.volumes`), once. */
  takeMounts (volumes: string): Array<{ source: string, target: string }> {
    const out = this.pending.get(volumes) ?? []
    this.pending.delete(volumes)
    return out
  }

  private configFor (rel: string, field: string): string {
    const known = this.byPath.get(rel)
    if (known !== undefined) return known
    const read = this.seeds?.read
    if (read === undefined) throw new ValidationError(field, `binds the single file \${APP_DATA_DIR}/${rel}, seeded from the app folder, which was not read`)
    let bytes: Uint8Array
    try {
      bytes = read(rel)
    } catch (err) {
      if (err instanceof ValidationError) throw new ValidationError(field, `binds \${APP_DATA_DIR}/${rel}, which ${problemOf(err)}`)
      throw new ValidationError(field, `binds \${APP_DATA_DIR}/${rel}, which cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
    let content: string
    try {
      content = new TextDecoder('utf-8', { fatal: true }).decode(bytes)
    } catch {
      throw new ValidationError(field, `binds \${APP_DATA_DIR}/${rel}, which is not text (UTF-8): a config shipped with the app carries text`)
    }
    if (bytes.length > CONFIG_LIMITS.maxBytes) throw new ValidationError(field, `binds \${APP_DATA_DIR}/${rel}, which is ${bytes.length} bytes, more than the ${CONFIG_LIMITS.maxBytes} a config shipped with the app may hold`)
    if (this.bytes + bytes.length > CONFIG_LIMITS.maxTotalBytes) throw new ValidationError(field, `binds \${APP_DATA_DIR}/${rel}, past the ${CONFIG_LIMITS.maxTotalBytes} bytes of files an app may ship`)
    this.bytes += bytes.length
    const base = rel.replace(/^data\//, '').replaceAll('/', '-').replace(/[^a-zA-Z0-9_.-]+/g, '-').replace(/^[^a-zA-Z0-9]+/, '').slice(0, 56) || 'seed'
    let name = base
    for (let i = 2; Object.hasOwn(this.declared, name); i++) name = `${base}-${i}`
    this.declared[name] = { content }
    this.byPath.set(rel, name)
    return name
  }
}

/** A path as the store file wrote it: the folder placeholders back as variables. */
function display (path: string): string {
  return path.replaceAll(DATA, '${APP_DATA_DIR}').replaceAll(ROOT, '${ROOT_FOLDER_HOST}')
}

/** The field of the first string still holding a Runtipi folder placeholder, or null. */
function findSentinel (v: unknown, field: string): string | null {
  if (typeof v === 'string') return v.includes('\u0001') ? field : null
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const f = findSentinel(v[i], `${field}[${i}]`)
      if (f !== null) return f
    }
    return null
  }
  if (isRecord(v)) {
    for (const [k, x] of Object.entries(v)) {
      const f = findSentinel(x, field === '' ? k : `${field}.${k}`)
      if (f !== null) return f
    }
  }
  return null
}
