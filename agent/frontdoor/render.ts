/**
 * The front door's whole Caddy configuration, rendered from the replicated
 * desired state and where apps run. Pure: no I/O, no clock; the same input
 * gives the same bytes, and the configuration's `@id` is a digest of them,
 * so the driver (frontdoor.ts) can ask Caddy whether it runs exactly this.
 *
 * Where a request for NAME.DOMAIN goes, decided per app by `routeApps`:
 * - the app's web container runs on this node: straight to it, on its
 *   Docker network (`IP:PORT`; the host reaches the bridge it created);
 * - it runs on another node: to that node's front door over HTTPS, the
 *   certificate checked against the cluster CA (ca.ts), the Host kept, and
 *   this node's id added to a hop header: a node whose view is stale (a move
 *   gossiped a second ago) forwards once more, and a request that comes back
 *   to a node it went through ends in a 508 instead of circling;
 * - it runs nowhere (or is reserved): an answer that says so.
 */
import { createHash } from 'node:crypto'
import { appHost, reservedNameReason } from '../../proto/frontdoor.ts'

/** Each front door that forwards adds its node id; one that finds its own id there has seen the request before (a loop). */
export const HOP_HEADER = 'X-Dcloud-Hop'

export interface RenderApp {
  name: string
  /** The manifest's web UI (x-dcloud web), or null: no route. */
  web: { port: number, scheme?: 'http' | 'https', path?: string } | null
}

export interface RenderNode {
  id: string
  name: string
  /** Where other nodes reach it (its status `address`), or null while unknown. */
  address: string | null
}

export interface RenderInput {
  domain: string
  /** This node. */
  self: RenderNode
  /** Caddy's admin endpoint, kept in every configuration loaded: `unix//run/dcloud-caddy/admin.sock`. A network address is refused. */
  adminListen: string
  /** Addresses Caddy listens on: `:443` on a node, `127.0.0.1:18443` in a test. */
  listen: { https: string[], http: string[] }
  /** The HTTPS port of other nodes' front doors (the same across a cluster). */
  peerHttpsPort: number
  tls: { certPem: string, keyPem: string, rootPem: string, rootDer: Buffer }
  apps: RenderApp[]
  /** Live nodes (this one included) and the apps running on each, from their status reports. */
  nodes: Array<RenderNode & { apps: string[] }>
  /** Apps whose web container runs here, by name: its address on the app's network. */
  local: Record<string, string>
  /**
   * The `.local` host this node announces for each app over mDNS
   * (mdns-names.ts): served on plain HTTP only (the cluster CA is
   * name-constrained to the domain), as if asked for NAME.DOMAIN.
   */
  mdnsHosts?: Record<string, string>
}

export type RouteDecision =
  | { name: string, host: string, kind: 'local', upstream: string, scheme: 'http' | 'https' }
  | { name: string, host: string, kind: 'remote', node: string, nodeName: string, upstream: string }
  | { name: string, host: string, kind: 'down', reason: string }
  | { name: string, host: string, kind: 'skipped', reason: string }

/** Where each app's requests go from this node. */
export function routeApps (input: Pick<RenderInput, 'domain' | 'self' | 'peerHttpsPort' | 'apps' | 'nodes' | 'local'>): RouteDecision[] {
  const nodes = [...input.nodes].sort((a, b) => a.id.localeCompare(b.id))
  return [...input.apps].sort((a, b) => a.name.localeCompare(b.name)).map((app): RouteDecision => {
    const host = appHost(app.name, input.domain)
    const reserved = reservedNameReason(app.name)
    // Installed before the name was reserved: never shadows the cluster's own host.
    if (reserved !== null) return { name: app.name, host, kind: 'skipped', reason: reserved }
    if (app.web === null) return { name: app.name, host, kind: 'skipped', reason: 'it has no web UI (x-dcloud web)' }
    const ip = input.local[app.name]
    if (ip !== undefined) return { name: app.name, host, kind: 'local', upstream: hostPort(ip, app.web.port), scheme: app.web.scheme ?? 'http' }
    // Another node's copy: the first by id, so every node picks the same one while two copies run (a move).
    const there = nodes.filter(n => n.id !== input.self.id && n.apps.includes(app.name))
    const reachable = there.find(n => n.address !== null)
    if (reachable?.address != null) return { name: app.name, host, kind: 'remote', node: reachable.id, nodeName: reachable.name, upstream: hostPort(reachable.address, input.peerHttpsPort) }
    if (there.length > 0) return { name: app.name, host, kind: 'down', reason: `it runs on ${there.map(n => n.name).join(', ')}, whose address is not known yet` }
    return { name: app.name, host, kind: 'down', reason: 'it is not running on any node right now' }
  })
}

/** The other nodes' addresses, as CIDRs: the only proxies whose X-Forwarded-For is believed. */
function peerRanges (input: RenderInput): string[] {
  const peers = new Set(input.nodes.filter(n => n.id !== input.self.id && n.address !== null).map(n => n.address as string))
  return [...peers].sort().map(a => a.includes(':') ? `${a}/128` : `${a}/32`)
}

function hostPort (address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json }

/** A plain-text answer of the front door itself; never sniffed as HTML (the 404's body echoes the Host asked for). */
const text = (status: number, body: string, headers: Record<string, string[]> = {}): Json => ({
  handler: 'static_response',
  status_code: status,
  headers: { 'Content-Type': ['text/plain; charset=utf-8'], 'X-Content-Type-Options': ['nosniff'], ...headers },
  body
})

function handlersFor (d: RouteDecision, input: RenderInput): Json[] {
  switch (d.kind) {
    case 'local': return [{
      handler: 'reverse_proxy',
      upstreams: [{ dial: d.upstream }],
      // Other nodes' front doors forward with the client's address in X-Forwarded-For: believed from
      // them only (Caddy replaces a client's own at the first front door), so the app, and later the
      // lan/internet check and access logs, see the real client whichever node it came in by.
      ...(peerRanges(input).length > 0 ? { trusted_proxies: peerRanges(input) } : {}),
      // The hop header is ours; the app never sees it.
      headers: { request: { delete: [HOP_HEADER] } },
      // An app that serves HTTPS itself does so with its own certificate, on a
      // Docker network only this node reaches: the name cannot be checked.
      ...(d.scheme === 'https' ? { transport: { protocol: 'http', tls: { insecure_skip_verify: true } } } : {})
    }]
    case 'remote': return [{
      handler: 'subroute',
      routes: [
        // Its own id among the hops (one header line each; also as a comma-joined list, should a proxy between join them).
        { match: [{ header: { [HOP_HEADER]: [input.self.id, `${input.self.id},*`, `*, ${input.self.id}`, `*, ${input.self.id},*`] } }], handle: [text(508, `${d.name}: the request came back to ${input.self.name} (it would go to ${d.nodeName} again); the nodes' views of where ${d.name} runs disagree for a moment: retry\n`)] },
        {
          handle: [{
            handler: 'reverse_proxy',
            upstreams: [{ dial: d.upstream }],
            headers: { request: { add: { [HOP_HEADER]: [input.self.id] } } },
            // The other node's front door serves the same certificate, checked against the cluster CA only.
            transport: { protocol: 'http', tls: { root_ca_pool: [input.tls.rootDer.toString('base64')], server_name: d.host } }
          }]
        }
      ]
    }]
    case 'down': return [text(503, `${d.name} is not reachable: ${d.reason}. \`dcloud app why ${d.name}\` tells more.\n`, { 'Retry-After': ['5'] })]
    case 'skipped': return [text(404, `${d.name} has no page here: ${d.reason}\n`)]
  }
}

/** The routes that hand out the CA's root, on HTTP too: a phone fetches it before it trusts anything. */
function caRoutes (input: RenderInput): Json[] {
  return [
    { match: [{ path: ['/ca.pem'] }], handle: [{ handler: 'static_response', status_code: 200, headers: { 'Content-Type': ['application/x-pem-file'], 'Content-Disposition': [`attachment; filename="${input.domain}-ca.pem"`] }, body: input.tls.rootPem }], terminal: true },
    // The type Android and iOS open as "install a certificate" (PEM content is accepted under it).
    { match: [{ path: ['/ca.crt'] }], handle: [{ handler: 'static_response', status_code: 200, headers: { 'Content-Type': ['application/x-x509-ca-cert'], 'Content-Disposition': [`attachment; filename="${input.domain}-ca.crt"`] }, body: input.tls.rootPem }], terminal: true }
  ]
}

export interface Rendered {
  /** The whole configuration for POST /load. */
  config: Record<string, Json>
  /** The digest in its `@id`: Caddy runs exactly this configuration when GET /id/ID answers. */
  id: string
  routes: RouteDecision[]
}

export function render (input: RenderInput): Rendered {
  if (!input.adminListen.startsWith('unix//')) throw new Error(`Caddy's admin endpoint must be a Unix socket (unix//PATH), not ${input.adminListen}: on a network address any local user could reconfigure the front door`)
  const routes = routeApps(input)
  const domain = input.domain
  const httpsPort = Number(input.listen.https[0]?.split(':').pop() ?? 443)
  const appRoutes: Json[] = routes.map(d => ({ match: [{ host: [d.host] }], handle: handlersFor(d, input), terminal: true }))
  const https: Record<string, Json> = {
    listen: input.listen.https,
    // Certificates come from the agent (the cluster CA now, ACME later), never from Caddy's own ACME client.
    automatic_https: { disable: true },
    tls_connection_policies: [{}],
    routes: [
      ...appRoutes,
      // The bare domain is the dashboard's and the API's (not built yet); the CA's root is there already.
      { match: [{ host: [domain] }], handle: [{ handler: 'subroute', routes: [...caRoutes(input), { handle: [text(404, `This is the front door of ${domain}. The dashboard is not built yet; apps are at https://NAME.${domain}/.\n`)] }] }], terminal: true },
      { handle: [text(404, `No app answers at {http.request.host}. Apps are at https://NAME.${domain}/; \`dcloud app ls\` lists them.\n`)] }
    ]
  }
  // NAME.local goes where NAME.DOMAIN goes, with the Host the app and the other front doors know it by.
  const mdnsRoutes: Json[] = routes.filter(d => input.mdnsHosts?.[d.name] !== undefined).map(d => ({
    match: [{ host: [input.mdnsHosts?.[d.name] ?? ''] }],
    handle: [{ handler: 'headers', request: { set: { Host: [d.host] } } }, ...handlersFor(d, input)],
    terminal: true
  }))
  const http: Record<string, Json> = {
    listen: input.listen.http,
    automatic_https: { disable: true },
    routes: [
      ...mdnsRoutes,
      ...caRoutes(input),
      // Plain HTTP serves nothing else: to HTTPS, same host and path.
      { handle: [{ handler: 'static_response', status_code: 308, headers: { Location: [`https://{http.request.host}${httpsPort === 443 ? '' : `:${httpsPort}`}{http.request.uri}`] } }] }
    ]
  }
  const body: Record<string, Json> = {
    // Kept in every configuration: a /load without it would move the admin endpoint to Caddy's default, localhost:2019.
    admin: { listen: input.adminListen, config: { persist: false } },
    apps: {
      tls: { certificates: { load_pem: [{ certificate: input.tls.certPem, key: input.tls.keyPem, tags: ['dcloud-cluster-ca'] }] } },
      http: { servers: { 'dcloud-https': https, ...(input.listen.http.length > 0 ? { 'dcloud-http': http } : {}) } }
    }
  }
  const id = `dcloud-${createHash('sha256').update(JSON.stringify(body)).digest('hex').slice(0, 16)}`
  // On the smallest object of the configuration: the driver's check every second (GET /id/ID) reads it back.
  https.automatic_https = { '@id': id, disable: true }
  return { config: body, id, routes }
}
