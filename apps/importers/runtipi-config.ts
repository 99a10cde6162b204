/**
 * A Runtipi app's config.json (the store's app-info-schema.json): its
 * metadata, and the variables its compose files use: the form fields a user
 * fills in at install (or that are generated), and Runtipi's own variables.
 */
import { generateKeyPairSync } from 'node:crypto'
import { ValidationError, isRecord } from '../../proto/validate.ts'
import type { Findings } from '../findings.ts'
import { UnsetVariableError, type Lookup } from '../interpolate.ts'
import { APP_ID } from '../manifest.ts'
import { DEFAULTS, ownHost, parseJson, secret, type ImportOptions } from './common.ts'

/** config.json (app-info-schema.json) fields and what becomes of each. */
export const APP_INFO_KEYS: Record<string, string> = {
  id: 'x-dcloud.id',
  name: 'x-dcloud.name',
  short_desc: 'x-dcloud.description',
  description: 'x-dcloud.description when there is no short_desc',
  version: 'x-dcloud.version',
  categories: 'x-dcloud.category (the first that is not "featured")',
  supported_architectures: 'x-dcloud.architectures (less any with an override)',
  port: 'the value of ${APP_PORT}; the UI is not published on it (Dentropy gives each app its own endpoint)',
  url_suffix: 'x-dcloud.web.path',
  https: 'x-dcloud.web.scheme: https',
  no_gui: 'no x-dcloud.web',
  form_fields: 'variables: values given with --set, generated (random), their default, or "" when optional',
  generate_vapid_keys: 'VAPID_PUBLIC_KEY and VAPID_PRIVATE_KEY are generated (P-256, base64url)',
  uid: 'a warning: Runtipi gives the data folder to this uid; a named volume starts as the image has the mount point',
  gid: 'as uid',
  available: 'a warning when false',
  deprecated: 'a warning when true',
  dynamic_config: 'chooses docker-compose.json over docker-compose.yml',
  exposable: 'ignored: every app gets its own endpoint',
  force_expose: 'ignored: every app gets its own endpoint',
  author: 'ignored (display only)',
  source: 'ignored (display only)',
  website: 'ignored (display only)',
  tipi_version: 'ignored (store bookkeeping)',
  min_tipi_version: 'ignored (store bookkeeping)',
  created_at: 'ignored (store bookkeeping)',
  updated_at: 'ignored (store bookkeeping)',
  force_pull: 'ignored: nodes pull (or get from a peer) the image they lack',
  requirements: 'ignored: host ports are checked when the app is placed (not in the schema, used by a few apps)',
  $schema: 'ignored'
}

/** Runtipi's own variables and what Dentropy gives them (docs/apps.md). */
export const RUNTIPI_VARIABLES: Record<string, string> = {
  APP_ID: 'the app id',
  APP_DATA_DIR: 'the app\'s data folder: folders below it become named volumes; anywhere else it is refused',
  ROOT_FOLDER_HOST: 'Runtipi\'s folder: ${ROOT_FOLDER_HOST}/media/… becomes a named volume private to the app; the rest is refused',
  APP_DOMAIN: '<id>.<domain>',
  APP_HOST: '<id>.<domain> (with a warning: a cluster has no one host address)',
  LOCAL_DOMAIN: '<domain>',
  APP_LOCAL_DOMAIN: '<id>.<domain>',
  INTERNAL_IP: '<id>.<domain> (with a warning)',
  APP_PROTOCOL: 'https (the ingress serves every app over TLS)',
  APP_PORT: 'config.json port',
  APP_EXPOSED: 'true',
  DNS_IP: 'empty (only used by dns:, which is refused)',
  TZ: 'the time zone option (Etc/UTC)',
  TIPI_UID: 'the uid option (1000)',
  TIPI_GID: 'the gid option (1000)'
}

/** Placeholders for Runtipi's folders, so a volume's host path can be told from any other use. */
export const DATA = '\u0001APP_DATA_DIR'
export const ROOT = '\u0001ROOT_FOLDER_HOST'

export interface AppInfo {
  id: string
  config: Record<string, unknown>
  architectures: string[]
  formFields: FormField[]
}

interface FormField {
  type: string
  label: string
  env: string
  required: boolean
  min?: number
  max?: number
  default?: string
  options?: string[]
  regex?: string
  encoding?: 'hex' | 'base64'
  field: string
}

const FORM_TYPES = ['text', 'password', 'email', 'number', 'fqdn', 'ip', 'fqdnip', 'url', 'random', 'boolean']
const FORM_KEYS = ['type', 'label', 'placeholder', 'max', 'min', 'hint', 'options', 'required', 'default', 'regex', 'pattern_error', 'env_variable', 'encoding']

export function appInfo (text: string, findings: Findings): AppInfo {
  const config = parseJson(text, 'config.json')
  if (!isRecord(config)) throw new ValidationError('config.json', 'must be an object')
  for (const key of Object.keys(config)) {
    if (!Object.hasOwn(APP_INFO_KEYS, key)) findings.warn(`config.${key}`, 'not in Runtipi\'s app-info schema; ignored')
  }
  if (typeof config.id !== 'string') throw new ValidationError('config.id', 'missing')
  const id = config.id
  if (!APP_ID.test(id)) throw new ValidationError('config.id', `"${id}" is not an app id: lowercase letters, digits and dashes`)
  if (config.available === false) findings.warn('config.available', 'false: the store no longer offers this app')
  if (config.deprecated === true) findings.warn('config.deprecated', 'true: the store has deprecated this app')
  if (config.uid !== undefined || config.gid !== undefined) {
    findings.warn('config.uid', `Runtipi hands the data folder to ${String(config.uid ?? '?')}:${String(config.gid ?? '?')}; a named volume starts owned as the image has its mount point, which the app may not be able to write`)
  }
  const architectures = Array.isArray(config.supported_architectures)
    ? config.supported_architectures.map((a, i) => {
      if (a !== 'amd64' && a !== 'arm64') throw new ValidationError(`config.supported_architectures[${i}]`, `${JSON.stringify(a)} is not amd64 or arm64`)
      return a
    })
    : []
  const formFields = (Array.isArray(config.form_fields) ? config.form_fields : []).map((f, i) => formField(f, `config.form_fields[${i}]`))
  return { id, config, architectures, formFields }
}

function formField (v: unknown, field: string): FormField {
  if (!isRecord(v)) throw new ValidationError(field, 'must be an object')
  for (const k of Object.keys(v)) {
    if (!FORM_KEYS.includes(k)) throw new ValidationError(`${field}.${k}`, 'not a form field key of Runtipi\'s schema')
  }
  if (typeof v.type !== 'string' || !FORM_TYPES.includes(v.type)) throw new ValidationError(`${field}.type`, `must be one of ${FORM_TYPES.join(', ')}`)
  if (typeof v.env_variable !== 'string' || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(v.env_variable)) throw new ValidationError(`${field}.env_variable`, 'must be a variable name')
  const num = (x: unknown, f: string): number | undefined => {
    if (x === undefined) return undefined
    if (typeof x !== 'number' || !Number.isFinite(x)) throw new ValidationError(f, 'must be a number')
    return x
  }
  const out: FormField = {
    type: v.type,
    label: typeof v.label === 'string' ? v.label : v.env_variable,
    env: v.env_variable,
    required: v.required === true,
    field: `${field} (${v.env_variable})`
  }
  const min = num(v.min, `${field}.min`)
  const max = num(v.max, `${field}.max`)
  if (min !== undefined) out.min = min
  if (max !== undefined) out.max = max
  if (v.default !== undefined) out.default = String(v.default)
  if (Array.isArray(v.options)) out.options = v.options.map((o, i) => isRecord(o) ? String(o.value) : (() => { throw new ValidationError(`${field}.options[${i}]`, 'must be {label, value}') })())
  if (typeof v.regex === 'string') out.regex = v.regex
  if (v.encoding === 'hex' || v.encoding === 'base64') out.encoding = v.encoding
  return out
}

export interface Variables {
  lookup: Lookup
  optional: (name: string) => boolean
}

export function variables (app: AppInfo, opts: ImportOptions, findings: Findings): Variables {
  const given = opts.values ?? {}
  const domain = opts.domain ?? DEFAULTS.domain
  const own = ownHost(app.id, opts)
  const form = new Map<string, string>()
  const optional = new Set<string>()
  const missing: FormField[] = []
  for (const f of app.formFields) {
    if (Object.hasOwn(given, f.env)) {
      form.set(f.env, checkValue(f, given[f.env] as string))
    } else if (f.type === 'random') {
      form.set(f.env, secret(Math.max(f.min ?? 32, 8), f.encoding, opts.random))
    } else if (f.default !== undefined) {
      form.set(f.env, f.default)
    } else if (f.required) {
      missing.push(f)
    } else {
      optional.add(f.env)
    }
  }
  const first = missing[0]
  if (first !== undefined) {
    const others = missing.slice(1).map(f => f.env)
    throw new UnsetVariableError(first.field, first.env, `"${first.label}" is required: give it a value (--set ${first.env}=…)${others.length > 0 ? `; also required: ${others.join(', ')}` : ''}`)
  }
  const supplied: Record<string, string> = {
    APP_ID: app.id,
    APP_DATA_DIR: DATA,
    ROOT_FOLDER_HOST: ROOT,
    APP_DOMAIN: own,
    APP_HOST: own,
    LOCAL_DOMAIN: domain,
    APP_LOCAL_DOMAIN: own,
    INTERNAL_IP: own,
    APP_PROTOCOL: 'https',
    APP_PORT: typeof app.config.port === 'number' ? String(app.config.port) : '80',
    APP_EXPOSED: 'true',
    DNS_IP: '',
    TZ: opts.tz ?? DEFAULTS.tz,
    TIPI_UID: String(opts.uid ?? DEFAULTS.uid),
    TIPI_GID: String(opts.gid ?? DEFAULTS.gid)
  }
  if (app.config.generate_vapid_keys === true) Object.assign(supplied, vapidKeys())
  const lookup = (name: string): string | undefined => {
    if (name !== 'APP_DATA_DIR' && name !== 'ROOT_FOLDER_HOST' && Object.hasOwn(given, name)) return given[name]
    if (form.has(name)) return form.get(name)
    if (name === 'INTERNAL_IP' || name === 'APP_HOST') findings.warn(`\${${name}}`, `a cluster has no one host address: the app's domain ${own} is used`)
    return Object.hasOwn(supplied, name) ? supplied[name] : undefined
  }
  return { lookup, optional: name => optional.has(name) }
}

/** Checks a value the user gave against the form field, as Runtipi's install form does. */
function checkValue (f: FormField, value: string): string {
  const bad = (why: string): never => { throw new ValidationError(f.field, `"${value}" ${why}`) }
  if (f.options !== undefined && !f.options.includes(value)) bad(`is not one of ${f.options.join(', ')}`)
  switch (f.type) {
    case 'number':
      if (!/^-?\d+(\.\d+)?$/.test(value)) bad('is not a number')
      if ((f.min !== undefined && Number(value) < f.min) || (f.max !== undefined && Number(value) > f.max)) bad(`is not between ${f.min ?? '-∞'} and ${f.max ?? '∞'}`)
      break
    case 'boolean':
      if (value !== 'true' && value !== 'false') bad('is not true or false')
      break
    case 'email':
      if (!/^[^@\s]+@[^@\s]+$/.test(value)) bad('is not an email address')
      break
    case 'url':
      if (!URL.canParse(value)) bad('is not a URL')
      break
    case 'ip':
      if (!isIp(value)) bad('is not an IP address')
      break
    case 'fqdn':
      if (!isFqdn(value)) bad('is not a domain name')
      break
    case 'fqdnip':
      if (!isIp(value) && !isFqdn(value)) bad('is not a domain name or IP address')
      break
    default:
      if (f.min !== undefined && value.length < f.min) bad(`is shorter than ${f.min} characters`)
      if (f.max !== undefined && value.length > f.max) bad(`is longer than ${f.max} characters`)
  }
  if (f.regex !== undefined) {
    let re: RegExp | null = null
    try { re = new RegExp(f.regex) } catch { re = null }
    if (re !== null && !re.test(value)) bad(`does not match ${f.regex}`)
  }
  return value
}

function isIp (s: string): boolean {
  return /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/.test(s) || (s.includes(':') && /^[0-9a-fA-F:.]+$/.test(s))
}

function isFqdn (s: string): boolean {
  return /^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]{2,63}$/.test(s)
}

/** Web push keys as Mastodon wants them: the P-256 public point and private scalar, base64url. */
function vapidKeys (): Record<string, string> {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const jwk = privateKey.export({ format: 'jwk' })
  const pub = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x ?? '', 'base64url'), Buffer.from(jwk.y ?? '', 'base64url')])
  return { VAPID_PUBLIC_KEY: pub.toString('base64url'), VAPID_PRIVATE_KEY: jwk.d ?? '' }
}
