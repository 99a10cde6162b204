/**
 * What the CasaOS and Runtipi importers share: the options a user gives
 * (values for the app's variables, time zone, domain), secrets, and turning
 * the stores' host folders into named volumes so an imported app can be
 * snapshotted and moved like any other.
 */
import { randomBytes } from 'node:crypto'
import { readFile, stat } from 'node:fs/promises'
import { OversizedError, ValidationError } from '../../proto/validate.ts'
import { LAN_DOMAIN, appHost } from '../../proto/frontdoor.ts'
import { problemOf, type Findings } from '../findings.ts'
import { MAX_FILE_BYTES } from '../yaml.ts'

export interface ImportOptions {
  /** Values for the app's variables and form fields (`--set KEY=VALUE`). */
  values?: Record<string, string>
  /** Time zone given to apps that ask for one ($TZ). Default Etc/UTC. */
  tz?: string
  /**
   * The cluster's domain (`dcloud domain`); the app's own host is NAME.DOMAIN,
   * as the front door serves it (proto/frontdoor.ts). Default: the LAN
   * default, dcloud.home.arpa. `dcloud app install` passes the cluster's.
   */
  domain?: string
  /** The name the app is installed under (`--name`); default its id. Its host is `<name>.<domain>`. */
  name?: string
  /** uid and gid for $PUID/$PGID and Runtipi's TIPI_UID/TIPI_GID. Default 1000. */
  uid?: number
  gid?: number
  /** Source of randomness for generated secrets (tests pass a seeded one). */
  random?: (bytes: number) => Uint8Array
}

export const DEFAULTS = { tz: 'Etc/UTC', domain: LAN_DOMAIN, uid: 1000, gid: 1000 }

/** Reads a text file of an app folder, bounded in size before it is read. */
export async function readText (path: string, field: string): Promise<string> {
  let size: number
  try {
    size = (await stat(path)).size
  } catch (err) {
    throw new ValidationError(field, `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  if (size > MAX_FILE_BYTES) throw new OversizedError(field, size, MAX_FILE_BYTES)
  return await readFile(path, 'utf8')
}

export function parseJson (text: string, field: string): unknown {
  if (Buffer.byteLength(text) > MAX_FILE_BYTES) throw new OversizedError(field, Buffer.byteLength(text), MAX_FILE_BYTES)
  try {
    return JSON.parse(text)
  } catch (err) {
    throw new ValidationError(field, `is not valid JSON: ${(err as Error).message}`)
  }
}

/** A secret of `length` characters: hex, or base64 of `length` random bytes when asked for base64. */
export function secret (length: number, encoding: 'hex' | 'base64' | undefined, random: (n: number) => Uint8Array = randomBytes): string {
  if (encoding === 'base64') return Buffer.from(random(length)).toString('base64')
  return Buffer.from(random(Math.ceil(length / 2))).toString('hex').slice(0, length)
}

/** Files a named volume cannot stand in for: a volume is always a directory. */
const FILE_NAME = /^[^.].*\.(ya?ml|json|conf|cfg|toml|ini|db|sqlite3?|env|js|mjs|txt|xml|php|sh|py|pem|key|crt|log|lua|properties|sock)$/i

export function looksLikeFile (path: string): boolean {
  return FILE_NAME.test(path.split('/').filter(s => s !== '').pop() ?? '')
}

/**
 * Turns host folders of a store's data root into named volumes, one volume
 * per distinct folder: two services binding the same folder share one volume,
 * as they shared the folder.
 */
export class VolumeMapper {
  private readonly byPath = new Map<string, { name: string, kind: FolderKind }>()
  private readonly names = new Set<string>()
  private readonly warn: (field: string, message: string) => void
  private readonly show: (path: string) => string

  constructor (warn: (field: string, message: string) => void, show: (path: string) => string = p => p) {
    this.warn = warn
    this.show = show
  }

  /**
   * The volume for host folder `path`, named from `rest` (the part below the
   * store's root). Nested app-data folders are refused: the app may rely on
   * one service seeing what another writes below it, which two volumes
   * cannot give. A user folder nested with anything only draws a warning:
   * it starts empty in its own volume anyway.
   */
  volumeFor (path: string, rest: string, fallback: string, field: string, kind: FolderKind): string {
    const clean = path.length > 1 ? path.replace(/\/+$/, '') : path
    const known = this.byPath.get(clean)
    if (known !== undefined) return known.name
    for (const [other, o] of this.byPath) {
      if (!clean.startsWith(`${other}/`) && !other.startsWith(`${clean}/`)) continue
      if (kind === 'data' && o.kind === 'data') {
        throw new ValidationError(field, `${this.show(clean)} and ${this.show(other)} are nested app-data folders: as separate named volumes they would no longer share files`)
      }
      this.warn(field, `${this.show(clean)} and ${this.show(other)} are nested on the host but become separate volumes: files written below one are not seen in the other`)
    }
    const base = volumeName(rest) ?? fallback
    let name = base
    for (let i = 2; this.names.has(name); i++) name = `${base}-${i}`
    this.byPath.set(clean, { name, kind })
    this.names.add(name)
    return name
  }

  get volumes (): string[] {
    return [...this.names]
  }
}

/** A store's app-data folder (the app's own state) or a user folder (media, downloads). */
export type FolderKind = 'data' | 'user'

function volumeName (rest: string): string | null {
  const name = rest.split('/').filter(s => s !== '' && s !== '.').join('-').toLowerCase()
    .replace(/[^a-z0-9_.-]+/g, '-').replace(/^[^a-z0-9]+/, '').replace(/-+$/, '').slice(0, 63).replace(/[^a-z0-9]+$/, '')
  return name === '' ? null : name
}

/** The first line (or sentence) of a description, for the one-line description a catalog shows. */
export function oneLine (text: string, max = 300): string {
  const first = text.trim().split(/\n\s*\n/)[0]?.replace(/\s+/g, ' ').trim() ?? ''
  return first.length > max ? `${first.slice(0, max - 1)}…` : first
}

/** A store's "index"/"url_suffix" as our web path: "/admin", "/?token=x"; "/" when empty. */
export function webPath (v: unknown): string {
  if (typeof v !== 'string' || v.trim() === '') return '/'
  const p = v.trim().split(/\s+/)[0] as string
  return p.startsWith('/') ? p : `/${p}`
}

/**
 * What a store's host path becomes: the name of a named volume, or null to
 * keep it as a bind (only the node's time files). Throws for host paths an
 * imported app may not have.
 */
export type HostPathRule = (source: string, target: string, field: string) => string | null

/**
 * The rule for host paths outside the store's data folders, the same for
 * every store: kept as binds. Each is a permission the app then requests
 * (path:…, dangerous_path:…, docker_socket: proto/permissions.ts), which the
 * owner grants or refuses at install; the manifest's checks name them.
 */
export function otherHostPath (_source: string, _field: string): null {
  return null
}

/** Refuses a data folder bound as a single file, which a named volume (a directory) cannot replace. */
export function checkNotFile (source: string, target: string, field: string): void {
  if (looksLikeFile(target) || looksLikeFile(source)) {
    throw new ValidationError(field, `binds the single file ${source}: a named volume is a directory and cannot stand in for it`)
  }
}

/**
 * Rewrites a compose service's volumes (short or long syntax) through
 * `rule`: store folders become named volumes. A host path the rule refuses is
 * recorded as a refusal and its entry replaced by a placeholder volume (named
 * in `placeholders`), so the rest of the file is still checked and every
 * refusal reported together. Entries that are not host paths are left for the
 * manifest validator.
 */
export function rewriteMounts (volumes: unknown, field: string, rule: HostPathRule, isHostPath: (s: string) => boolean, findings: Findings, placeholders: Set<string>): unknown {
  if (!Array.isArray(volumes)) return volumes
  const apply = (source: string, target: string, f: string): string | null => {
    try {
      return rule(source, target, f)
    } catch (err) {
      if (!(err instanceof ValidationError)) throw err
      findings.refuse(err.field, problemOf(err))
      const name = `refused-${placeholders.size + 1}`
      placeholders.add(name)
      return name
    }
  }
  return volumes.map((v, i) => {
    const f = `${field}[${i}]`
    if (typeof v === 'string') {
      const parts = v.split(':')
      const [source, target, ...mode] = parts
      if (parts.length < 2 || source === undefined || target === undefined || !isHostPath(source)) return v
      const name = apply(source, target, f)
      return name === null ? v : [name, target, ...mode].join(':')
    }
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) {
      const m = v as Record<string, unknown>
      if (m.type !== 'bind' || typeof m.source !== 'string' || !isHostPath(m.source)) return v
      const name = apply(m.source, typeof m.target === 'string' ? m.target : '', f)
      if (name === null) return v
      const { bind: _bind, ...rest } = m
      return { ...rest, type: 'volume', source: name }
    }
    return v
  })
}

/** The app's own host: NAME.DOMAIN, the one naming scheme of the front door. */
export function ownHost (id: string, opts: ImportOptions): string {
  return appHost(opts.name ?? id, opts.domain ?? DEFAULTS.domain)
}
