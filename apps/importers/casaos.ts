/**
 * CasaOS apps: a folder with a docker-compose.yml whose top-level and
 * per-service `x-casaos` blocks hold the store's metadata. The compose part is
 * ordinary compose and goes through the same validation as our own files; what
 * is CasaOS's own:
 *
 * - variables CasaOS supplies: $AppID, $PUID, $PGID, $TZ;
 * - data in bind mounts under /DATA/AppData/<app>/…, which become named
 *   volumes (portable, snapshotted), and user folders under /DATA/…, which
 *   become named volumes private to the app;
 * - the web UI as `main` service plus `port_map` (a published host port),
 *   `index` (path) and `scheme`.
 */
import { join } from 'node:path'
import { stat } from 'node:fs/promises'
import { ValidationError, isRecord } from '../../proto/validate.ts'
import { Findings } from '../findings.ts'
import { interpolateValues } from '../interpolate.ts'
import { APP_ID, inSource, manifestFromCompose, type ParsedApp } from '../manifest.ts'
import { loadYaml } from '../yaml.ts'
import { DEFAULTS, checkNotFile, oneLine, otherHostPath, readText, rewriteMounts, webPath, VolumeMapper, type ImportOptions } from './common.ts'

/** Keys of the top-level x-casaos block and what becomes of each (docs/apps.md lists them). */
export const CASAOS_KEYS: Record<string, string> = {
  id: 'ignored: the compose project name ($AppID) is the id',
  main: 'x-dcloud.web.service',
  port_map: 'x-dcloud.web.port (the container port published on this host port)',
  index: 'x-dcloud.web.path',
  scheme: 'x-dcloud.web.scheme',
  title: 'x-dcloud.name (en_US, else the first language)',
  tagline: 'x-dcloud.description (en_US), else the description\'s first paragraph',
  description: 'x-dcloud.description when there is no tagline',
  icon: 'x-dcloud.icon',
  category: 'x-dcloud.category (lowercased)',
  architectures: 'x-dcloud.architectures',
  version: 'x-dcloud.version',
  hostname: 'ignored: apps are reached by their own subdomain',
  author: 'ignored (display only)',
  developer: 'ignored (display only)',
  screenshot_link: 'ignored (display only)',
  screenshot: 'ignored (display only)',
  thumbnail: 'ignored (display only)',
  tips: 'ignored (display only); read it before installing, it often holds the default password',
  update_at: 'ignored (store bookkeeping)',
  release_notes: 'ignored (display only)',
  website: 'ignored (display only)',
  repo: 'ignored (display only)',
  support: 'ignored (display only)',
  docs: 'ignored (display only)',
  store_app_id: 'ignored (store bookkeeping)',
  is_uncontrolled: 'ignored (CasaOS UI state)',
  project_url: 'ignored (display only)'
}

/** Imports the CasaOS app in `path`: its folder, or its docker-compose.yml. */
export async function importCasaOS (path: string, opts: ImportOptions = {}): Promise<ParsedApp> {
  const file = (await stat(path).catch(() => null))?.isDirectory() === true ? join(path, 'docker-compose.yml') : path
  return importCasaOSText(await readText(file, file), file, opts)
}

export function importCasaOSText (text: string, source: string, opts: ImportOptions = {}): ParsedApp {
  try {
    return convert(text, source, opts)
  } catch (err) {
    throw inSource(err, source)
  }
}

function convert (text: string, source: string, opts: ImportOptions): ParsedApp {
  const findings = new Findings()
  const raw = loadYaml(text, source)
  if (!isRecord(raw)) throw new ValidationError(source, 'must be a compose file')
  const meta = raw['x-casaos']
  if (!isRecord(meta)) throw new ValidationError('x-casaos', 'missing: not a CasaOS app (no top-level x-casaos block)')
  for (const key of Object.keys(meta)) {
    // Some apps nest a stray translation map at the top of x-casaos ("en_US: …"): display text, harmless.
    if (!Object.hasOwn(CASAOS_KEYS, key) && !/^[a-z]{2}_[A-Z]{2}$/.test(key)) findings.warn(`x-casaos.${key}`, 'unknown CasaOS key, ignored')
  }

  // $AppID is the compose project name: CasaOS's data folders are named after it.
  const appId = typeof raw.name === 'string' && raw.name !== '' ? raw.name : null
  if (appId === null) throw new ValidationError('name', 'missing: CasaOS apps name their project, which is also their $AppID')
  const id = APP_ID.test(appId) ? appId : appId.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 63)
  if (id !== appId) findings.warn('name', `"${appId}" is not a valid app id; imported as "${id}"`)
  if (!APP_ID.test(id)) throw new ValidationError('name', `"${appId}" cannot be made into an app id`)

  const values = opts.values ?? {}
  const supplied: Record<string, string> = {
    AppID: appId,
    PUID: String(opts.uid ?? DEFAULTS.uid),
    PGID: String(opts.gid ?? DEFAULTS.gid),
    TZ: opts.tz ?? DEFAULTS.tz
  }
  const lookup = (name: string): string | undefined => Object.hasOwn(values, name) ? values[name] : supplied[name]
  const { name: _project, version: _version, 'x-casaos': _meta, ...compose } = raw
  const project = interpolateValues(compose, lookup, '') as Record<string, unknown>

  const mapper = new VolumeMapper((f, m) => { findings.warn(f, m) })
  const rule = (src: string, target: string, field: string): string | null => {
    const path = src.length > 1 ? src.replace(/\/+$/, '') : src
    const appData = /^\/DATA\/AppData\/([^/]+)(?:\/(.*))?$/.exec(path)
    if (appData !== null) {
      checkNotFile(path, target, field)
      const name = mapper.volumeFor(path, appData[2] ?? '', appData[1] === appId ? 'data' : (appData[1] ?? 'data'), field, 'data')
      findings.warn(field, `${src} became the named volume "${name}": the app's data is snapshotted and moves with it`)
      return name
    }
    if (path === '/DATA' || path.startsWith('/DATA/')) {
      checkNotFile(path, target, field)
      const name = mapper.volumeFor(path, path.slice('/DATA'.length), 'data', field, 'user')
      findings.warn(field, `the user folder ${src} became the named volume "${name}", private to the app: it starts empty and does not see the node's ${src}`)
      return name
    }
    return otherHostPath(path, field)
  }
  const services = project.services
  if (!isRecord(services)) throw new ValidationError('services', 'missing: an app needs at least one service')
  const refused = new Set<string>()
  for (const [name, svc] of Object.entries(services)) {
    if (!isRecord(svc)) continue
    svc.volumes = rewriteMounts(svc.volumes, `services.${name}.volumes`, rule, s => s.startsWith('/'), findings, refused)
  }
  const volumes: Record<string, unknown> = isRecord(project.volumes) ? { ...project.volumes } : {}
  for (const v of [...mapper.volumes, ...refused]) volumes[v] = null
  if (Object.keys(volumes).length > 0) project.volumes = volumes

  const web = webUi(meta, services, findings)
  project['x-dcloud'] = {
    id,
    name: localized(meta.title) ?? id,
    version: typeof meta.version === 'string' || typeof meta.version === 'number' ? String(meta.version) : 'latest',
    description: oneLine(localized(meta.tagline) ?? localized(meta.description) ?? ''),
    icon: typeof meta.icon === 'string' && meta.icon !== '' ? meta.icon : null,
    category: typeof meta.category === 'string' && meta.category !== '' ? meta.category : null,
    architectures: architectures(meta.architectures, findings),
    web
  }
  return manifestFromCompose(project, findings)
}

/** CasaOS text is a map of locales; en_US first, else any. */
function localized (v: unknown): string | null {
  if (typeof v === 'string') return v.trim() === '' ? null : v
  if (!isRecord(v)) return null
  const text = [v.en_US, v.en_GB, ...Object.values(v)].find(t => typeof t === 'string' && t.trim() !== '')
  return typeof text === 'string' ? text : null
}

function architectures (v: unknown, findings: Findings): string[] {
  if (!Array.isArray(v)) return []
  const known = ['amd64', 'arm64', 'arm', '386', 'ppc64le', 's390x', 'riscv64']
  const out: string[] = []
  v.forEach((a, i) => {
    const s = String(a)
    if (known.includes(s)) out.push(s)
    else findings.warn(`x-casaos.architectures[${i}]`, `"${s}" is not an architecture nodes report; left out`)
  })
  return out
}

/**
 * The web UI: `main` names the service (else the only one), `port_map` the
 * host port CasaOS opens it on. Dentropy does not need that fixed host port,
 * so the UI's port is published on a port the node picks.
 */
function webUi (meta: Record<string, unknown>, services: Record<string, unknown>, findings: Findings): Record<string, unknown> | null {
  const names = Object.keys(services)
  const main = typeof meta.main === 'string' && meta.main !== '' ? meta.main : names.length === 1 ? names[0] : undefined
  if (main === undefined) {
    findings.warn('x-casaos.main', 'missing and the app has several services: no web UI')
    return null
  }
  const svc = services[main]
  if (!isRecord(svc)) throw new ValidationError('x-casaos.main', `"${main}" is not a service of the app (services: ${names.join(', ')})`)
  const portMap = meta.port_map === undefined || meta.port_map === null ? '' : String(meta.port_map).trim()
  const ports = Array.isArray(svc.ports) ? svc.ports : []
  // No port_map: a database or a daemon without a UI (CasaOS shows no "open" button either).
  if (portMap === '') return null
  const index = ports.findIndex(p => publishedOf(p) === portMap && protocolOf(p) === 'tcp')
  if (index === -1) {
    findings.warn('x-casaos.port_map', `no TCP port of "${main}" is published on ${portMap}: the app has no web UI here`)
    return null
  }
  const port = targetOf(ports[index])
  if (port === null) return null
  // The UI is reached through the app's endpoint: publish it on a port the node picks, so two apps never clash.
  const published = publishedOf(ports[index])
  if (published !== null && published !== '') {
    ports[index] = { target: port, protocol: 'tcp' }
    findings.warn(`services.${main}.ports[${index}]`, `the web UI's host port ${published} is not kept: it is published on a port the node picks`)
  }
  const scheme = meta.scheme === 'https' ? 'https' : 'http'
  return { service: main, port, path: webPath(meta.index), scheme }
}

function publishedOf (p: unknown): string | null {
  if (isRecord(p)) return p.published === undefined || p.published === null ? null : String(p.published)
  if (typeof p !== 'string') return null
  const parts = p.split('/')[0]?.split(':') ?? []
  return parts.length >= 2 ? (parts[parts.length - 2] ?? null) : null
}

function targetOf (p: unknown): number | null {
  const t = isRecord(p) ? p.target : typeof p === 'string' ? p.split('/')[0]?.split(':').pop() : p
  const n = typeof t === 'string' && /^\d+$/.test(t) ? Number(t) : t
  return typeof n === 'number' && Number.isInteger(n) ? n : null
}

function protocolOf (p: unknown): string {
  if (isRecord(p)) return typeof p.protocol === 'string' ? p.protocol : 'tcp'
  return typeof p === 'string' && p.includes('/') ? p.split('/').pop() as string : 'tcp'
}
