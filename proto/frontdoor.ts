/**
 * Names at the front door: the cluster's domain, each app's host name under
 * it, and the names no app may take. One naming scheme: an app named NAME
 * is `https://NAME.DOMAIN`, wherever it runs; the dashboard and the API will
 * live at the bare DOMAIN.
 */
import { ValidationError, string } from './validate.ts'

/**
 * The domain of a cluster whose owner set none: under `home.arpa`, the zone
 * RFC 8375 sets aside for home networks (never delegated on the internet, so
 * nobody else's name is shadowed). One fixed name rather than one per
 * cluster: people type it. A second cluster in the same home sets its own
 * (`dcloud domain set lab.home.arpa`).
 */
export const LAN_DOMAIN = 'dcloud.home.arpa'

/**
 * App names refused because their host would be a host the cluster itself
 * needs (sign-in, the API, the CA's download, DNS and mail autoconfiguration
 * that devices look up by name) or one that browsers and resolvers treat
 * specially. The bare DOMAIN (the dashboard) cannot be an app's: names are
 * one label, never empty.
 */
export const RESERVED_NAMES: readonly string[] = [
  'api', 'auth', 'login', 'sso', 'id', 'oauth', 'dashboard', 'admin', 'www',
  'ca', 'pki', 'acme', 'dns', 'ns', 'ns1', 'ns2', 'mail', 'smtp', 'imap',
  'autoconfig', 'autodiscover', 'wpad', 'isatap', 'localhost', 'dcloud'
]

/** Why `name` cannot be an app's name at the front door, or null when it can. */
export function reservedNameReason (name: string): string | null {
  if (RESERVED_NAMES.includes(name)) return `${name} is reserved for the cluster itself (reserved: ${RESERVED_NAMES.join(', ')}); pick another --name`
  return null
}

/** The app's host name: one naming scheme for every app. */
export function appHost (name: string, domain: string): string {
  return `${name}.${domain}`
}

/** At most 200 characters: the longest app name (40) and a dot still fit DNS's 253. */
export const DOMAIN_MAX = 200
const DOMAIN_RE = /^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$/

/** Domains that cannot be a cluster's: resolvers, browsers or the internet give them another meaning. */
const REFUSED_SUFFIXES: Array<[string, string]> = [
  ['local', 'is mDNS\'s (.local): resolvers send it to multicast, not to DNS; use a name under home.arpa for a LAN'],
  ['localhost', 'always means this machine'],
  ['invalid', 'is reserved as never valid (RFC 6761)'],
  ['in-addr.arpa', 'is the reverse-lookup zone'],
  ['ip6.arpa', 'is the reverse-lookup zone'],
  ['onion', 'is Tor\'s']
]

/**
 * The cluster's domain as a user or peer gave it (`dcloud domain set`):
 * lowercased, a trailing dot dropped, at least two labels, not a zone with
 * another meaning, and not `home.arpa` itself (a cluster takes a name under it).
 */
export function decodeClusterDomain (raw: unknown, field = 'domain'): string {
  const d = string(raw, field, { min: 1, max: 254 }).toLowerCase().replace(/\.$/, '')
  if (d.length > DOMAIN_MAX) throw new ValidationError(field, `is ${d.length} characters long; at most ${DOMAIN_MAX}, so that NAME.DOMAIN fits in a DNS name`)
  if (!DOMAIN_RE.test(d)) throw new ValidationError(field, `${JSON.stringify(d)} is not a domain name (two or more labels of letters, digits and dashes, like alice.example.org)`)
  if (d.split('.').some(l => l.length > 63)) throw new ValidationError(field, 'has a label longer than 63 characters')
  for (const [suffix, why] of REFUSED_SUFFIXES) {
    if (d === suffix || d.endsWith(`.${suffix}`)) throw new ValidationError(field, `${d} ${why}`)
  }
  if (d === 'home.arpa' || d === 'arpa') throw new ValidationError(field, `${d} is shared by every home network; take a name under it, like ${LAN_DOMAIN}`)
  const first = d.split('.')[0] ?? ''
  if (RESERVED_NAMES.includes(first) && d.split('.').length > 2) {
    // `api.alice.example.org` as the cluster's domain would make the dashboard's host look like a service's.
    throw new ValidationError(field, `${d} starts with the reserved name ${first}; give the cluster its own name, like alice.example.org`)
  }
  return d
}

/** The domain in force: the one set, or the LAN default. */
export function clusterDomain (state: { domain?: string }): string {
  return state.domain ?? LAN_DOMAIN
}

/**
 * An app's reach at the front door (`dcloud app expose NAME lan|internet`).
 * `lan`: answered only for clients on private, shared (CGNAT) and
 * link-local addresses; `internet`: for everyone. A switch about the
 * network only: who may open the app (signed in, shared with) comes later.
 */
export type Reach = 'lan' | 'internet'
export const REACHES: readonly Reach[] = ['lan', 'internet']

export function decodeReach (raw: unknown, field = 'reach'): Reach {
  if (raw === 'lan' || raw === 'internet') return raw
  throw new ValidationError(field, `must be lan or internet${typeof raw === 'string' ? `, not ${JSON.stringify(raw.slice(0, 40))}` : ''} (lan: only clients on the home network; internet: anyone who reaches a node)`)
}

/** The reach in force for an app of the desired state: absent is `lan`. */
export function appReach (app: { reach?: 'internet' }): Reach {
  return app.reach === 'internet' ? 'internet' : 'lan'
}

/**
 * The client addresses a `lan` app (and the dashboard and API at the bare
 * DOMAIN) answers, as CIDRs:
 * - loopback, `127.0.0.0/8` and `::1`;
 * - RFC 1918, `10/8`, `172.16/12`, `192.168/16`: home and office LANs;
 * - link-local, `169.254/16` and `fe80::/10`: a device without DHCP, a cable between two machines;
 * - IPv6 unique local addresses, `fc00::/7`;
 * - RFC 6598's shared space, `100.64/10`: taken in. It is where an ISP's
 *   carrier-grade NAT puts its customers, but a connection from the internet
 *   to a home never arrives from it (the ISP's NAT rewrites it first, and a
 *   forwarded port shows the public address); what does arrive from it is a
 *   Tailscale or Headscale tailnet (100.64/10 is their address space), i.e.
 *   the owner's own devices away from home, which `lan` is meant to let in.
 *   On a VPS whose provider routes other customers' CGNAT space to it, use
 *   the firewall or keep apps off that node.
 * Not included: global IPv6 addresses, even those of the home's own prefix (a
 * LAN client reaching a node by its global IPv6 address is judged as from the
 * internet; names resolve to the nodes' IPv4 or ULA addresses).
 */
export const LAN_RANGES: readonly string[] = [
  '127.0.0.0/8', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '169.254.0.0/16', '100.64.0.0/10',
  '::1/128', 'fc00::/7', 'fe80::/10'
]
