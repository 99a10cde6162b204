/**
 * Compose port syntaxes: short ("8080", "0.0.0.0:53:53/udp", ranges
 * "7000-7010:7000-7010") and long ({target, published, protocol, host_ip}),
 * and the app-wide registry that refuses a host port published twice.
 */
import type { PortMapping } from '../proto/app.ts'
import { ValidationError, isRecord } from '../proto/validate.ts'
import { Unsupported } from './findings.ts'
import { scalar } from './read.ts'

export interface ParsedPort { mapping: PortMapping, field: string }

const WILDCARD_IPS = new Set(['', '0.0.0.0', '::', '[::]'])

export function port (v: unknown, field: string): ParsedPort[] {
  if (typeof v === 'number') return [{ mapping: { host: null, container: portNumber(v, field), protocol: 'tcp' }, field }]
  if (typeof v === 'string') return shortPort(v, field)
  if (!isRecord(v)) throw new ValidationError(field, 'must be "HOST:CONTAINER/PROTO", a port number or a map with target')
  for (const k of Object.keys(v)) {
    if (!['target', 'published', 'host_ip', 'protocol', 'mode', 'app_protocol', 'name'].includes(k)) throw new ValidationError(`${field}.${k}`, 'unknown port key')
  }
  if (v.target === undefined) throw new ValidationError(`${field}.target`, 'missing: the container port')
  hostIp(v.host_ip === undefined || v.host_ip === null ? '' : scalar(v.host_ip, `${field}.host_ip`), `${field}.host_ip`)
  const protocol = proto(v.protocol === undefined || v.protocol === null ? 'tcp' : scalar(v.protocol, `${field}.protocol`), `${field}.protocol`)
  const published = v.published === undefined || v.published === null ? '' : scalar(v.published, `${field}.published`)
  return expand(published, scalar(v.target, `${field}.target`), protocol, field)
}

function shortPort (text: string, field: string): ParsedPort[] {
  let rest = text.trim()
  let protocol: PortMapping['protocol'] = 'tcp'
  const slash = rest.lastIndexOf('/')
  if (slash !== -1) {
    protocol = proto(rest.slice(slash + 1), field)
    rest = rest.slice(0, slash)
  }
  let ip = ''
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']:')
    if (close === -1) throw new ValidationError(field, `"${text}" is not a port mapping`)
    ip = rest.slice(0, close + 1)
    rest = rest.slice(close + 2)
  }
  const parts = rest.split(':')
  if (parts.length === 3 && ip === '') ip = parts.shift() as string
  if (parts.length > 2 || (ip !== '' && parts.length !== 2)) throw new ValidationError(field, `"${text}" is not a port mapping such as "8080:80/tcp"`)
  hostIp(ip, field)
  const container = parts.pop() as string
  return expand(parts[0] ?? '', container, protocol, field)
}

function hostIp (ip: string, field: string): void {
  if (!WILDCARD_IPS.has(ip)) throw new Unsupported(field, `binding to the address ${ip} is not supported: published ports listen on every address of the node the app runs on`)
}

function proto (text: string, field: string): PortMapping['protocol'] {
  const p = text.toLowerCase()
  if (p === 'tcp' || p === 'udp') return p
  throw new Unsupported(field, `protocol "${p}" is not supported (tcp or udp)`)
}

function portNumber (v: unknown, field: string, allowZero = false): number {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v
  if (typeof n !== 'number' || !Number.isInteger(n) || n < (allowZero ? 0 : 1) || n > 65535) throw new ValidationError(field, `${JSON.stringify(v)} is not a port number (1-65535)`)
  return n
}

function range (text: string, field: string): [number, number] {
  const m = /^(\d+)(?:-(\d+))?$/.exec(text)
  if (m === null) throw new ValidationError(field, `"${text}" is not a port or port range`)
  const lo = portNumber(m[1], field)
  const hi = m[2] === undefined ? lo : portNumber(m[2], field)
  if (hi < lo) throw new ValidationError(field, `"${text}" is an empty range`)
  if (hi - lo >= 1000) throw new ValidationError(field, `"${text}" spans more than 1000 ports`)
  return [lo, hi]
}

function expand (published: string, target: string, protocol: PortMapping['protocol'], field: string): ParsedPort[] {
  const [clo, chi] = range(target, field)
  if (published === '' || published === '0') {
    const out: ParsedPort[] = []
    for (let p = clo; p <= chi; p++) out.push({ mapping: { host: null, container: p, protocol }, field })
    return out
  }
  const [hlo, hhi] = range(published, field)
  if (hhi - hlo !== chi - clo) {
    throw new ValidationError(field, `host ports ${published} and container ports ${target} are ranges of different lengths`)
  }
  const out: ParsedPort[] = []
  for (let i = 0; i <= chi - clo; i++) out.push({ mapping: { host: hlo + i, container: clo + i, protocol }, field })
  return out
}

/** Host ports of the whole app: one node cannot publish the same port twice. */
export class PortRegistry {
  private readonly seen = new Map<string, string>()

  add (p: PortMapping, field: string): void {
    if (p.host === null) return
    const key = `${p.host}/${p.protocol}`
    const first = this.seen.get(key)
    if (first !== undefined) {
      throw new ValidationError(field, `host port ${p.host}/${p.protocol} is published twice${first === field ? ' in the same entry' : ` (also ${first})`}`)
    }
    this.seen.set(key, field)
  }
}
