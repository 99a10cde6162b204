/**
 * Private DNS for the cluster's domain (split horizon, docs/frontdoor.md):
 * the zone, computed by the agent from the replicated state and the live
 * nodes, and the answer to one DNS message, computed from the zone. Both
 * pure: no socket, no clock. The responder (dns-server.ts) that binds port
 * 53 only reads the zone the agent writes and calls `answerDns`.
 *
 * What it answers, for DOMAIN and one label below it:
 * - A/AAAA of DOMAIN, `ns.DOMAIN` and every app's NAME.DOMAIN: the live
 *   nodes' addresses (any node's front door reaches every app; several
 *   records let a client try another node when one is down);
 * - SOA and NS at the apex (`ns.DOMAIN`, with its addresses as glue);
 * - NXDOMAIN for any other name under DOMAIN, with the SOA for negative caching;
 * - REFUSED for a name outside DOMAIN: it is no recursive resolver;
 * - FORMERR for a query it cannot decode, NOTIMP for other opcodes; a message
 *   too short to carry an id, or a response, is dropped (never answered: no loops).
 */
import dnsPacket from 'dns-packet'
import type { Answer, DecodedPacket, Packet, Question } from 'dns-packet'
import { reservedNameReason } from '../../proto/frontdoor.ts'
import { ValidationError, array, number, record, string } from '../../proto/validate.ts'
import { TrustedProxies } from '../api/auth.ts'

/** Seconds a resolver may keep an answer: short, so a dead node or a removed app drops out soon. */
export const DNS_TTL = 5
/** Seconds a resolver may keep "no such name" (the SOA's minimum): a new app resolves within them. */
export const DNS_NEGATIVE_TTL = 5
/** The one name server's host, under the zone (`ns` is a reserved app name). */
export const NS_LABEL = 'ns'
/**
 * Hosts under the domain the cluster serves itself, answered like apps.
 * Reserved names (proto/frontdoor.ts) are NXDOMAIN until they are served:
 * sign-in or the API at their own host go here when they are built.
 */
export const CLUSTER_HOSTS: readonly string[] = [NS_LABEL]

export interface DnsZone {
  domain: string
  /** The desired state's revision: the same on every node that applied it. */
  serial: number
  /** Labels under the domain that exist: the apps, and `ns`. */
  names: string[]
  /** The live nodes' addresses, sorted. */
  v4: string[]
  v6: string[]
}

/** The zone from what the node knows: the domain, the installed apps, the live nodes (with their reported addresses). */
export function dnsZone (input: { domain: string, revision: number, apps: string[], nodes: Array<{ address: string | null }> }): DnsZone {
  // A reserved name is never routed by the front door (render.ts): no name for it either.
  const apps = input.apps.map(a => a.toLowerCase()).filter(a => reservedNameReason(a) === null)
  const addresses = [...new Set(input.nodes.map(n => n.address).filter((a): a is string => a !== null && a !== ''))].sort()
  return {
    domain: input.domain.toLowerCase(),
    serial: input.revision % 2 ** 32,
    names: [...new Set([...CLUSTER_HOSTS, ...apps])].sort(),
    v4: addresses.filter(a => !a.includes(':')),
    v6: addresses.filter(a => a.includes(':'))
  }
}

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/
const DOMAIN = /^[a-z0-9.-]{1,253}$/
const V4 = /^(\d{1,3}\.){3}\d{1,3}$/
const V6 = /^[0-9a-f:.]{2,45}$/i

/** The zone as the responder reads it from the file the agent writes: validated like anything from outside. */
export function decodeDnsZone (raw: unknown): DnsZone {
  const r = record(raw, 'zone')
  const domain = string(r.domain, 'zone.domain', { max: 253, pattern: DOMAIN })
  if (!domain.includes('.')) throw new ValidationError('zone.domain', 'needs two labels or more')
  return {
    domain,
    serial: number(r.serial, 'zone.serial', { min: 0, max: 2 ** 32 - 1, integer: true }),
    names: array(r.names, 'zone.names', 10_000, (v, f) => string(v, f, { max: 63, pattern: LABEL })),
    v4: array(r.v4, 'zone.v4', 256, (v, f) => string(v, f, { max: 15, pattern: V4 })),
    v6: array(r.v6, 'zone.v6', 256, (v, f) => string(v, f, { max: 45, pattern: V6 }))
  }
}

/**
 * Who the private DNS answers: the home. Private, shared (CGNAT, VPNs like
 * Tailscale), loopback and link-local addresses, and the subnets of the
 * node's own interfaces (a LAN with public IPv6 addresses). Anyone else
 * gets no answer at all: a node on a VPS would otherwise tell the internet
 * the cluster's addresses, and serve as an amplifier for forged queries.
 */
export const HOME_SOURCES = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', 'fc00::/7', 'fe80::/10', '::1/128']

/** An address matcher for the home's sources and `ownSubnets` (CIDRs, e.g. from os.networkInterfaces()). */
export function homeSources (ownSubnets: readonly string[]): (address: string) => boolean {
  // The same address-list matcher as the API's trusted proxies (IPv4-mapped IPv6 addresses included).
  const list = new TrustedProxies([...HOME_SOURCES, ...ownSubnets])
  return (address) => list.has(address)
}

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const
type Rcode = keyof typeof RCODE
const QR = 0x8000
const RD = 0x0100
/** What the responder answers in over UDP at most when the query says more (EDNS): DNS flag day 2020's safe size. */
const EDNS_UDP_MAX = 1232

/** The header only: for a message whose question cannot be read. */
function headerOnly (id: number, requestFlags: number, rcode: Rcode): Buffer {
  const b = Buffer.alloc(12)
  b.writeUInt16BE(id, 0)
  // QR, the opcode and RD as asked, the rcode.
  b.writeUInt16BE(QR | (requestFlags & 0x7800) | (requestFlags & RD) | RCODE[rcode], 2)
  return b
}

/**
 * The answer to one DNS message, or null when it gets none (too short to
 * carry an id, or not a query). `transport` decides the size limit: over UDP
 * an answer that does not fit is sent truncated (TC), and the client asks
 * again over TCP. Never throws.
 */
export function answerDns (msg: Buffer, zone: DnsZone | null, transport: 'udp' | 'tcp' = 'udp'): Buffer | null {
  if (msg.length < 12) return null
  const id = msg.readUInt16BE(0)
  const flags = msg.readUInt16BE(2)
  if ((flags & QR) !== 0) return null
  if (((flags >> 11) & 0xf) !== 0) return headerOnly(id, flags, 'NOTIMP')
  let query: DecodedPacket
  try {
    query = dnsPacket.decode(msg)
  } catch {
    return headerOnly(id, flags, 'FORMERR')
  }
  const questions = query.questions ?? []
  const q = questions[0]
  if (questions.length !== 1 || q === undefined) return headerOnly(id, flags, 'FORMERR')
  const opt = (query.additionals ?? []).find(a => a.type === 'OPT') as { udpPayloadSize?: number } | undefined
  const limit = transport === 'tcp' ? 65_535 : opt === undefined ? 512 : Math.max(512, Math.min(opt.udpPayloadSize ?? 512, EDNS_UDP_MAX))
  // An EDNS query gets an OPT record back (what this server takes over UDP).
  const optOut = opt !== undefined ? [{ type: 'OPT', name: '.', udpPayloadSize: EDNS_UDP_MAX } as unknown as Answer] : []
  const reply = (rcode: Rcode, answers: Answer[] = [], authorities: Answer[] = [], additionals: Answer[] = [], aa = true): Buffer => {
    const packet: Packet = {
      type: 'response',
      id,
      flags: (aa ? dnsPacket.AUTHORITATIVE_ANSWER : 0) | (flags & RD) | RCODE[rcode],
      questions: [q],
      answers,
      authorities,
      additionals: [...additionals, ...optOut]
    }
    try {
      const out = dnsPacket.encode(packet)
      if (out.length <= limit) return out
      // Too big for UDP: the question alone, truncated; the client asks again over TCP.
      return dnsPacket.encode({ ...packet, flags: (packet.flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE, answers: [], authorities: [], additionals: optOut })
    } catch {
      return headerOnly(id, flags, 'SERVFAIL')
    }
  }
  try {
    if (q.class !== 'IN') return reply('REFUSED', [], [], [], false)
    // The agent has not written a zone yet (just started): a resolver tries another node.
    if (zone === null) return reply('SERVFAIL', [], [], [], false)
    return answerQuestion(q, id, zone, reply)
  } catch {
    return headerOnly(id, flags, 'SERVFAIL')
  }
}

type Reply = (rcode: Rcode, answers?: Answer[], authorities?: Answer[], additionals?: Answer[], aa?: boolean) => Buffer

function answerQuestion (q: Question, id: number, zone: DnsZone, reply: Reply): Buffer {
  // Case-insensitive (RFC 4343); answers keep the case asked in (resolvers that randomise it check the echo).
  const name = q.name.toLowerCase().replace(/\.$/, '')
  const domain = zone.domain
  if (name !== domain && !name.endsWith(`.${domain}`)) return reply('REFUSED', [], [], [], false)
  const soa: Answer = {
    name: domain,
    type: 'SOA',
    ttl: DNS_NEGATIVE_TTL,
    data: { mname: `${NS_LABEL}.${domain}`, rname: `hostmaster.${domain}`, serial: zone.serial, refresh: 3600, retry: 600, expire: 86_400, minimum: DNS_NEGATIVE_TTL }
  }
  const label = name === domain ? '' : name.slice(0, -(domain.length + 1))
  if (label !== '' && !zone.names.includes(label)) return reply('NXDOMAIN', [], [soa])
  // dns-packet's types know no ANY; it decodes type 255 as 'ANY'.
  const type: string = q.type
  // Rotated by the query's id (pure, yet it varies): clients that take the first address spread over the nodes.
  const rotate = (list: string[]): string[] => { const k = list.length === 0 ? 0 : id % list.length; return [...list.slice(k), ...list.slice(0, k)] }
  const addresses = (owner: string, type: string): Answer[] => [
    ...(type === 'A' || type === 'ANY' ? rotate(zone.v4).map((a): Answer => ({ name: owner, type: 'A', ttl: DNS_TTL, data: a })) : []),
    ...(type === 'AAAA' || type === 'ANY' ? rotate(zone.v6).map((a): Answer => ({ name: owner, type: 'AAAA', ttl: DNS_TTL, data: a })) : [])
  ]
  const answers = addresses(q.name, type)
  const glue = addresses(`${NS_LABEL}.${domain}`, 'ANY')
  const ns: Answer = { name: q.name, type: 'NS', ttl: DNS_TTL, data: `${NS_LABEL}.${domain}` }
  if (label === '') {
    if (type === 'SOA' || type === 'ANY') answers.push({ ...soa, name: q.name })
    if (type === 'NS' || type === 'ANY') answers.push(ns)
  }
  // An existing name without records of that type: NODATA, the SOA for negative caching.
  if (answers.length === 0) return reply('NOERROR', [], [soa])
  return reply('NOERROR', answers, [], type === 'NS' ? glue : [])
}
