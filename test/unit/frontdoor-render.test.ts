/**
 * The front door's configuration (agent/frontdoor/render.ts) and names
 * (proto/frontdoor.ts), pure: where each app's requests go from a node, the
 * Caddy JSON for each case, the cluster's domain as users give it, reserved
 * names refused by the replicated state's rules.
 */
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { HOP_HEADER, render, routeApps, type RenderInput } from '../../agent/frontdoor/render.ts'
import { LAN_DOMAIN, RESERVED_NAMES, appHost, appReach, clusterDomain, decodeClusterDomain, reservedNameReason } from '../../proto/frontdoor.ts'
import { decodeChange, decodeDesiredState } from '../../proto/cluster.ts'
import { hostPorts, withoutWebPort } from '../../proto/app.ts'
import type { DesiredApp } from '../../proto/plan.ts'
import { mockManifest } from '../builders.ts'
import { applyChange, EMPTY_STATE } from '../../agent/cluster/desired-store.ts'
import { RpcError } from '../../agent/mesh/rpc.ts'
import type { AppManifest } from '../../proto/app.ts'

const N1 = { id: '12D3KooW1' + 'a'.repeat(43), name: 'n1', address: '10.213.0.11' }
const N2 = { id: '12D3KooW2' + 'b'.repeat(43), name: 'n2', address: '10.213.0.12' }
const N3 = { id: '12D3KooW3' + 'c'.repeat(43), name: 'n3', address: '10.213.0.13' }
const ROOT_DER = Buffer.from('not really a certificate')

function input (over: Partial<RenderInput> = {}): RenderInput {
  return {
    domain: 'alice.example.org',
    self: N1,
    adminListen: 'unix//run/dcloud-caddy/admin.sock',
    listen: { https: [':443'], http: [':80'] },
    peerHttpsPort: 443,
    tls: { certPem: 'CERT', keyPem: 'KEY', rootPem: 'ROOT', rootDer: ROOT_DER },
    apps: [{ name: 'notes', web: { port: 8080 } }],
    nodes: [{ ...N1, apps: [] }, { ...N2, apps: ['notes'] }, { ...N3, apps: [] }],
    local: {},
    ...over
  }
}

type Route = { match?: Array<{ host?: string[] }>, handle: Array<Record<string, unknown>> }
const servers = (r: ReturnType<typeof render>): Record<string, { listen: string[], routes: Route[] }> => (r.config.apps as { http: { servers: Record<string, { listen: string[], routes: Route[] }> } }).http.servers
/** A 403 of the front door's own: the reach check ahead of a lan host's route. */
const isRefusal = (x: Route): boolean => x.handle[0]?.status_code === 403
/** The route that serves `host` (past its reach check). */
const routeFor = (r: ReturnType<typeof render>, host: string): Route | undefined => servers(r)['dcloud-https']?.routes.find(x => x.match?.[0]?.host?.includes(host) === true && !isRefusal(x))
/** The reach check ahead of `host`'s route, if any. */
const refusalFor = (r: ReturnType<typeof render>, host: string): Route | undefined => servers(r)['dcloud-https']?.routes.find(x => x.match?.[0]?.host?.includes(host) === true && isRefusal(x))

describe('where an app\'s requests go', () => {
  it('to the container on this node, on its network, when its web container runs here', () => {
    expect(routeApps(input({ local: { notes: '172.18.0.2' } }))).toEqual([{ name: 'notes', host: 'notes.alice.example.org', kind: 'local', upstream: '172.18.0.2:8080', scheme: 'http' }])
  })

  it('to the front door of the node running it otherwise', () => {
    expect(routeApps(input())).toEqual([{ name: 'notes', host: 'notes.alice.example.org', kind: 'remote', node: N2.id, nodeName: 'n2', upstream: '10.213.0.12:443' }])
  })

  it('to the same node from every node while two copies run (a move): the first by id', () => {
    const nodes = [{ ...N1, apps: [] }, { ...N3, apps: ['notes'] }, { ...N2, apps: ['notes'] }]
    expect(routeApps(input({ nodes }))[0]).toMatchObject({ kind: 'remote', nodeName: 'n2' })
    expect(routeApps(input({ nodes, self: N3 }))[0]).toMatchObject({ kind: 'remote', nodeName: 'n2' })
  })

  it('prefers the copy on this node to another node\'s', () => {
    const nodes = [{ ...N1, apps: ['notes'] }, { ...N2, apps: ['notes'] }]
    expect(routeApps(input({ nodes, local: { notes: '172.18.0.9' } }))[0]).toMatchObject({ kind: 'local' })
  })

  it('nowhere, saying why, when it runs nowhere or on a node whose address is unknown', () => {
    expect(routeApps(input({ nodes: [{ ...N1, apps: [] }] }))[0]).toMatchObject({ kind: 'down', reason: 'it is not running on any node right now' })
    expect(routeApps(input({ nodes: [{ ...N2, address: null, apps: ['notes'] }] }))[0]).toMatchObject({ kind: 'down', reason: 'it runs on n2, whose address is not known yet' })
    // This node's report says it runs here, but no web container is up: not routed to itself.
    expect(routeApps(input({ nodes: [{ ...N1, apps: ['notes'] }] }))[0]).toMatchObject({ kind: 'down' })
  })

  it('skips apps without a web UI and names reserved by now', () => {
    const routes = routeApps(input({ apps: [{ name: 'db', web: null }, { name: 'auth', web: { port: 80 } }] }))
    expect(routes).toEqual([
      { name: 'auth', host: 'auth.alice.example.org', kind: 'skipped', reason: expect.stringMatching(/auth is reserved/) as unknown as string },
      { name: 'db', host: 'db.alice.example.org', kind: 'skipped', reason: 'it has no web UI (x-dcloud web)' }
    ])
  })

  it('brackets IPv6 addresses', () => {
    expect(routeApps(input({ nodes: [{ ...N2, address: 'fd00::12', apps: ['notes'] }] }))[0]).toMatchObject({ upstream: '[fd00::12]:443' })
    expect(routeApps(input({ local: { notes: 'fd00:18::2' } }))[0]).toMatchObject({ upstream: '[fd00:18::2]:8080' })
  })
})

describe('the Caddy configuration', () => {
  it('proxies a local app to its container, dropping the hop header', () => {
    const r = render(input({ local: { notes: '172.18.0.2' } }))
    expect(routeFor(r, 'notes.alice.example.org')?.handle).toEqual([{ handler: 'reverse_proxy', upstreams: [{ dial: '172.18.0.2:8080' }], trusted_proxies: ['10.213.0.12/32', '10.213.0.13/32'], headers: { request: { delete: [HOP_HEADER] } } }])
    // Alone, it trusts nobody's X-Forwarded-For.
    expect(routeFor(render(input({ local: { notes: '172.18.0.2' }, nodes: [{ ...N1, apps: [] }] })), 'notes.alice.example.org')?.handle[0]).not.toHaveProperty('trusted_proxies')
  })

  it('proxies a remote app to the other front door over TLS checked against the cluster root, and cuts loops', () => {
    const r = render(input())
    const sub = routeFor(r, 'notes.alice.example.org')?.handle[0] as { handler: string, routes: Route[] & Array<{ match?: unknown }> }
    expect(sub.handler).toBe('subroute')
    expect(sub.routes[0]?.match).toEqual([{ header: { [HOP_HEADER]: [N1.id, `${N1.id},*`, `*, ${N1.id}`, `*, ${N1.id},*`] } }])
    expect(sub.routes[0]?.handle[0]).toMatchObject({ handler: 'static_response', status_code: 508 })
    expect(sub.routes[1]?.handle[0]).toEqual({
      handler: 'reverse_proxy',
      upstreams: [{ dial: '10.213.0.12:443' }],
      // Forwarded again (a stale view), the client stays first in X-Forwarded-For.
      trusted_proxies: ['10.213.0.12/32', '10.213.0.13/32'],
      headers: { request: { add: { [HOP_HEADER]: [N1.id] } } },
      transport: { protocol: 'http', tls: { root_ca_pool: [ROOT_DER.toString('base64')], server_name: 'dcloud.alice.example.org' } }
    })
  })

  it('answers a down app with 503 and the reason', () => {
    const r = render(input({ nodes: [] }))
    expect(routeFor(r, 'notes.alice.example.org')?.handle[0]).toMatchObject({ handler: 'static_response', status_code: 503, body: expect.stringMatching(/notes is not reachable: it is not running on any node right now\. `dcloud app why notes`/) as unknown as string })
  })

  it('keeps the admin endpoint on its Unix socket, loads the certificate, and leaves ACME to the agent', () => {
    const r = render(input())
    expect(r.config.admin).toEqual({ listen: 'unix//run/dcloud-caddy/admin.sock', config: { persist: false } })
    expect(r.config.apps).toMatchObject({ tls: { certificates: { load_pem: [{ certificate: 'CERT', key: 'KEY' }] } } })
    const https = servers(r)['dcloud-https'] as unknown as Record<string, unknown>
    expect(https.automatic_https).toEqual({ '@id': r.id, disable: true })
    expect(https.listen).toEqual([':443'])
  })

  it('refuses an admin endpoint on a network address', () => {
    expect(() => render(input({ adminListen: 'localhost:2019' }))).toThrow(/must be a Unix socket/)
  })

  it('is the same bytes and id for the same input, another id for any change', () => {
    const a = render(input())
    expect(render(input())).toEqual(a)
    expect(render(input({ local: { notes: '172.18.0.2' } })).id).not.toBe(a.id)
    expect(render(input({ domain: 'bob.example.org' })).id).not.toBe(a.id)
    expect(render(input({ tls: { ...input().tls, certPem: 'CERT2' } })).id).not.toBe(a.id)
  })

  it('serves the root at the bare domain and on plain HTTP, and redirects HTTP to HTTPS with the port', () => {
    const r = render(input({ listen: { https: ['127.0.0.1:18443'], http: ['127.0.0.1:18080'] } }))
    expect(JSON.stringify(routeFor(r, 'alice.example.org'))).toContain('/ca.pem')
    const http = servers(r)['dcloud-http']
    expect(http?.routes.at(-1)?.handle[0]).toMatchObject({ status_code: 308, headers: { Location: ['https://{http.request.host}:18443{http.request.uri}'] } })
    expect(render(input()).config.apps).toMatchObject({ http: { servers: { 'dcloud-http': { routes: expect.arrayContaining([expect.objectContaining({ handle: [expect.objectContaining({ headers: { Location: ['https://{http.request.host}{http.request.uri}'] } })] })]) } } } })
  })

  it('loads public certificates beside the cluster CA\'s, which front doors keep getting from each other under their own name', () => {
    const pub = [{ certPem: 'PUB-NOTES', keyPem: 'K2', names: ['notes.alice.example.org'] }, { certPem: 'PUB-BARE', keyPem: 'K1', names: ['alice.example.org'] }]
    const r = render(input({ tls: { ...input().tls, public: pub } }))
    expect(r.config.apps).toMatchObject({ tls: { certificates: { load_pem: [
      { certificate: 'CERT', key: 'KEY', tags: ['dcloud-cluster-ca'] },
      { certificate: 'PUB-BARE', key: 'K1', tags: ['dcloud-acme'] },
      { certificate: 'PUB-NOTES', key: 'K2', tags: ['dcloud-acme'] }
    ] } } })
    expect((servers(r)['dcloud-https'] as unknown as Record<string, unknown>).tls_connection_policies).toEqual([
      { match: { sni: ['dcloud.alice.example.org'] }, certificate_selection: { any_tag: ['dcloud-cluster-ca'] } },
      // The bare domain is named by the cluster CA's certificate too: the public one is chosen by tag.
      { match: { sni: ['alice.example.org', 'notes.alice.example.org'] }, certificate_selection: { any_tag: ['dcloud-acme'] } },
      {}
    ])
    expect((servers(render(input()))['dcloud-https'] as unknown as Record<string, unknown>).tls_connection_policies).toEqual([
      { match: { sni: ['dcloud.alice.example.org'] }, certificate_selection: { any_tag: ['dcloud-cluster-ca'] } }, {}
    ])
    // The same certificates in another order: the same configuration (every node renders alike).
    expect(render(input({ tls: { ...input().tls, public: [...pub].reverse() } })).id).toBe(r.id)
    expect(r.id).not.toBe(render(input()).id)
  })

  it('answers an open ACME order\'s HTTP-01 challenges on plain HTTP, ahead of the redirect', () => {
    const token = 'A'.repeat(43)
    const auth = `${token}.${'b'.repeat(43)}`
    const r = render(input({ challenges: { [token]: auth } }))
    const http = servers(r)['dcloud-http']
    expect(http?.routes[0]).toEqual({ match: [{ path: [`/.well-known/acme-challenge/${token}`] }], handle: [{ handler: 'static_response', status_code: 200, headers: { 'Content-Type': ['application/octet-stream'] }, body: auth }], terminal: true })
    expect(http?.routes.at(-1)?.handle[0]).toMatchObject({ status_code: 308 })
  })

  it('ends with a catch-all that names no app: an unknown name never reaches one', () => {
    const last = servers(render(input()))['dcloud-https']?.routes.at(-1)
    expect(last?.match).toBeUndefined()
    expect(last?.handle[0]).toMatchObject({ status_code: 404 })
  })
})

describe('the cluster\'s domain', () => {
  it('defaults to the LAN domain under home.arpa', () => {
    expect(LAN_DOMAIN).toBe('dcloud.home.arpa')
    expect(clusterDomain({})).toBe('dcloud.home.arpa')
    expect(clusterDomain({ domain: 'alice.example.org' })).toBe('alice.example.org')
    expect(appHost('notes', 'alice.example.org')).toBe('notes.alice.example.org')
  })

  it('accepts DNS names, lowercased, a trailing dot dropped', () => {
    expect(decodeClusterDomain('alice.example.org')).toBe('alice.example.org')
    expect(decodeClusterDomain('Alice.Example.ORG.')).toBe('alice.example.org')
    expect(decodeClusterDomain('lab.home.arpa')).toBe('lab.home.arpa')
    expect(decodeClusterDomain('x-1.b.co')).toBe('x-1.b.co')
  })

  it.each([
    ['one label', 'localdomain', /not a domain name/],
    ['a space', 'alice example.org', /not a domain name/],
    ['an underscore', 'a_b.example.org', /not a domain name/],
    ['a leading dash', '-a.example.org', /not a domain name/],
    ['an empty label', 'a..org', /not a domain name/],
    ['a numeric top-level label', 'a.b.123', /not a domain name/],
    ['a label over 63', `${'a'.repeat(64)}.org`, /not a domain name|longer than 63/],
    ['too long for NAME.DOMAIN', `${'a.'.repeat(100)}org`, /at most 200/],
    ['.local', 'cluster.local', /mDNS/],
    ['localhost', 'x.localhost', /this machine/],
    ['home.arpa itself', 'home.arpa', /take a name under it/],
    ['reverse zones', '1.168.192.in-addr.arpa', /reverse-lookup/],
    ['a reserved first label', 'api.alice.example.org', /reserved name api/],
    ['not a string', 42, /domain/]
  ])('refuses %s', (_what, raw, why) => {
    expect(() => decodeClusterDomain(raw)).toThrow(why)
  })

  it('names the field in its refusals', () => {
    expect(() => decodeClusterDomain('x', 'change.domain')).toThrow(/^change\.domain: /)
  })

  it('changes in the replicated state, and back to the default with null; a change to the same is refused', () => {
    const set = applyChange(EMPTY_STATE, { kind: 'domain', domain: 'alice.example.org' }, { index: 1, term: 1 })
    expect(set).toMatchObject({ domain: 'alice.example.org', revision: 1 })
    expect(() => applyChange(set, { kind: 'domain', domain: 'alice.example.org' }, { index: 2, term: 1 })).toThrow(/already: nothing to change/)
    const back = applyChange(set, { kind: 'domain', domain: null }, { index: 2, term: 1 })
    expect('domain' in back).toBe(false)
    expect(clusterDomain(back)).toBe(LAN_DOMAIN)
  })
})

describe('reserved app names', () => {
  const manifest = { id: 'x', web: null, compose: { services: {}, volumes: {} } } as unknown as AppManifest

  it('lists the hosts the cluster needs', () => {
    for (const n of ['api', 'auth', 'ca', 'www', 'dashboard']) expect(RESERVED_NAMES).toContain(n)
    expect(reservedNameReason('notes')).toBeNull()
    expect(reservedNameReason('auth')).toMatch(/auth is reserved for the cluster itself .*pick another --name/)
  })

  it('are refused by the leader\'s rules at install, naming the field', () => {
    let err: unknown
    try { applyChange(EMPTY_STATE, { kind: 'install', app: { name: 'api', manifest, pinnedNode: null } }, { index: 1, term: 1 }) } catch (e) { err = e }
    expect(err).toBeInstanceOf(RpcError)
    expect((err as RpcError).code).toBe('bad_request')
    expect((err as Error).message).toMatch(/^change\.app\.name: api is reserved/)
  })

  it('are replayed, not skipped, from an entry committed before they were reserved', () => {
    const s = applyChange(EMPTY_STATE, { kind: 'install', app: { name: 'api', manifest, pinnedNode: null } }, { index: 1, term: 1 }, { committed: true })
    expect(s.apps.map(a => a.name)).toEqual(['api'])
  })
})

describe('properties of the rendering (fast-check)', () => {
  const nodeArb = fc.record({ id: fc.constantFrom(N1.id, N2.id, N3.id), apps: fc.subarray(['notes', 'hello', 'photos', 'auth']) })
  const inputArb = fc.record({
    apps: fc.uniqueArray(fc.record({ name: fc.constantFrom('notes', 'hello', 'photos', 'auth', 'db'), web: fc.option(fc.record({ port: fc.integer({ min: 1, max: 65535 }) }), { nil: null }), reach: fc.constantFrom('lan' as const, 'internet' as const, undefined) }), { selector: a => a.name }),
    nodes: fc.uniqueArray(nodeArb, { selector: n => n.id }),
    local: fc.dictionary(fc.constantFrom('notes', 'hello', 'photos'), fc.ipV4()),
    self: fc.constantFrom(N1, N2, N3)
  })
  const byId = Object.fromEntries([N1, N2, N3].map(n => [n.id, n]))

  it('gives every app exactly one route, whatever order the apps and nodes come in (every node renders alike)', () => {
    fc.assert(fc.property(inputArb, fc.boolean(), (x, reverse) => {
      const nodes = x.nodes.map(n => ({ ...byId[n.id] ?? N1, apps: n.apps }))
      const i = input({ apps: x.apps, nodes, local: x.local, self: x.self })
      const shuffled = input({ apps: reverse ? [...x.apps].reverse() : x.apps, nodes: reverse ? [...nodes].reverse() : nodes, local: x.local, self: x.self })
      const a = render(i)
      expect(render(shuffled)).toEqual(a)
      expect(a.routes.map(r => r.name)).toEqual(x.apps.map(p => p.name).sort())
      const hosts = servers(a)['dcloud-https']?.routes.filter(r => !isRefusal(r)).flatMap(r => r.match?.[0]?.host ?? []) ?? []
      expect(new Set(hosts).size).toBe(hosts.length)
      // Exactly one reach check ahead of each lan app's route, none for an internet app.
      const all = servers(a)['dcloud-https']?.routes ?? []
      for (const app of x.apps) {
        const host = `${app.name}.alice.example.org`
        const refusals = all.filter(r => isRefusal(r) && r.match?.[0]?.host?.includes(host) === true)
        expect(refusals.length, host).toBe(app.reach === 'internet' ? 0 : 1)
        if (refusals[0] !== undefined) expect(all.indexOf(refusals[0])).toBeLessThan(all.indexOf(routeFor(a, host) as Route))
      }
      for (const r of a.routes) {
        // Never forwarded to itself, and never to a node that does not report the app.
        if (r.kind === 'remote') expect(r.node !== x.self.id && nodes.some(n => n.id === r.node && n.apps.includes(r.name))).toBe(true)
        if (r.kind === 'local') expect(x.local[r.name]).toBeDefined()
      }
    }), { numRuns: 300 })
  })
})

describe('reach (dcloud app expose)', () => {
  const LAN = ['127.0.0.0/8', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '169.254.0.0/16', '100.64.0.0/10', '::1/128', 'fc00::/7', 'fe80::/10']

  it('puts a lan app behind a 403 for clients off the LAN, judging a forwarded request by the client the other node saw', () => {
    const r = render(input({ local: { notes: '172.18.0.2' } }))
    const refusal = refusalFor(r, 'notes.alice.example.org') as Route & { match: unknown[], terminal: boolean }
    expect(refusal.match).toEqual([
      // Straight from a client: neither on the LAN nor another node.
      { host: ['notes.alice.example.org'], not: [{ remote_ip: { ranges: LAN } }, { remote_ip: { ranges: ['10.213.0.12/32', '10.213.0.13/32'] } }] },
      // From another node: the first X-Forwarded-For entry, which that node set.
      { host: ['notes.alice.example.org'], remote_ip: { ranges: ['10.213.0.12/32', '10.213.0.13/32'] }, not: [{ remote_ip: { ranges: LAN, forwarded: true } }] }
    ])
    expect(refusal.terminal).toBe(true)
    expect(refusal.handle).toEqual([expect.objectContaining({ handler: 'static_response', status_code: 403, body: expect.stringMatching(/notes answers on the LAN only.*`dcloud app expose notes internet`/) as unknown as string })])
    // Ahead of the app's own route.
    const routes = servers(r)['dcloud-https']?.routes ?? []
    expect(routes.indexOf(refusal)).toBeLessThan(routes.indexOf(routeFor(r, 'notes.alice.example.org') as Route))
    // Alone, no node's header is believed: only the connection's address.
    expect((refusalFor(render(input({ nodes: [{ ...N1, apps: [] }] })), 'notes.alice.example.org') as Route & { match: unknown[] }).match).toEqual([{ host: ['notes.alice.example.org'], not: [{ remote_ip: { ranges: LAN } }] }])
  })

  it('refuses off the LAN whatever the route: a down app\'s 503 tells nothing to the internet either', () => {
    expect(refusalFor(render(input({ nodes: [] })), 'notes.alice.example.org')).toBeDefined()
  })

  it('leaves an internet app open, and only it', () => {
    const r = render(input({ apps: [{ name: 'notes', web: { port: 8080 }, reach: 'internet' }, { name: 'hello', web: { port: 8080 } }] }))
    expect(refusalFor(r, 'notes.alice.example.org')).toBeUndefined()
    expect(refusalFor(r, 'hello.alice.example.org')).toBeDefined()
    expect(render(input({ apps: [{ name: 'notes', web: { port: 8080 }, reach: 'lan' }] })).id).toBe(render(input()).id)
    expect(render(input({ apps: [{ name: 'notes', web: { port: 8080 }, reach: 'internet' }] })).id).not.toBe(render(input()).id)
  })

  it('keeps the dashboard and the API at the bare domain on the LAN', () => {
    expect(refusalFor(render(input({ apps: [{ name: 'notes', web: { port: 8080 }, reach: 'internet' }] })), 'alice.example.org')?.handle[0]).toMatchObject({ status_code: 403, body: expect.stringMatching(/dashboard and the API of alice\.example\.org answer on the LAN only/) as unknown as string })
  })

  it('is a change of the replicated state: decoded, refused for an unknown app or value, applied without touching the app\'s revision', () => {
    expect(decodeChange({ kind: 'expose', name: 'notes', reach: 'internet' })).toEqual({ kind: 'expose', name: 'notes', reach: 'internet' })
    expect(() => decodeChange({ kind: 'expose', name: 'notes', reach: 'public' })).toThrow(/change.reach: must be lan or internet, not "public"/)
    expect(() => decodeChange({ kind: 'expose', name: 'notes' })).toThrow(/change.reach: must be lan or internet/)
    expect(() => decodeChange({ kind: 'expose', name: 'No Such', reach: 'lan' })).toThrow(/change.name/)
    const installed = applyChange(EMPTY_STATE, { kind: 'install', app: { name: 'notes', manifest: mockManifest('notes'), pinnedNode: null } }, { index: 1, term: 1 })
    expect(appReach(installed.apps[0] as DesiredApp)).toBe('lan')
    const open = applyChange(installed, { kind: 'expose', name: 'notes', reach: 'internet' }, { index: 2, term: 1 })
    expect(open.apps[0]).toMatchObject({ reach: 'internet', revision: 1 })
    expect(open.revision).toBe(2)
    // It survives the trip through the wire and a new leader's copy of the state.
    expect(decodeDesiredState(JSON.parse(JSON.stringify(open))).apps[0]?.reach).toBe('internet')
    expect(() => applyChange(open, { kind: 'expose', name: 'notes', reach: 'internet' }, { index: 3, term: 1 })).toThrow(/notes is reachable from the internet already/)
    expect(() => applyChange(open, { kind: 'expose', name: 'other', reach: 'lan' }, { index: 3, term: 1 })).toThrow(RpcError)
    const back = applyChange(open, { kind: 'expose', name: 'notes', reach: 'lan' }, { index: 3, term: 1 })
    expect(back.apps[0]).not.toHaveProperty('reach')
    expect(() => decodeDesiredState({ ...back, apps: [{ ...back.apps[0], reach: 'everyone' }] })).toThrow(/desired.apps\[0\].reach: must be lan or internet/)
  })
})

describe('the web port is not published on the node', () => {
  const svc = (ports: Array<{ container: number, host: number | null, protocol: 'tcp' | 'udp' }>, networkMode?: 'host'): AppManifest['compose']['services'][string] => ({ ports, ...(networkMode !== undefined ? { networkMode } : {}) }) as unknown as AppManifest['compose']['services'][string]
  const app = (web: AppManifest['web'], services: AppManifest['compose']['services']): AppManifest => ({ web, compose: { services, volumes: {}, configs: {} } }) as unknown as AppManifest

  it('takes the web UI\'s port out of what the node publishes, keeping raw TCP/UDP ports', () => {
    const m = app({ service: 'web', port: 8080 }, { web: svc([{ container: 8080, host: null, protocol: 'tcp' }, { container: 53, host: 53, protocol: 'udp' }, { container: 53, host: 53, protocol: 'tcp' }]), db: svc([{ container: 8080, host: 18080, protocol: 'tcp' }]) })
    expect(withoutWebPort(m).compose.services.web?.ports).toEqual([{ container: 53, host: 53, protocol: 'udp' }, { container: 53, host: 53, protocol: 'tcp' }])
    expect(withoutWebPort(m).compose.services.db).toBe(m.compose.services.db)
    expect(hostPorts(app({ service: 'web', port: 8080 }, { web: svc([{ container: 8080, host: 80, protocol: 'tcp' }, { container: 53, host: 53, protocol: 'udp' }]) }))).toEqual(['53/udp'])
  })

  it('leaves an app without a web UI, and a web service on the host\'s network, as they are', () => {
    const none = app(null, { dns: svc([{ container: 53, host: 53, protocol: 'udp' }]) })
    expect(withoutWebPort(none)).toBe(none)
    const host = app({ service: 'web', port: 8080 }, { web: svc([{ container: 8080, host: null, protocol: 'tcp' }], 'host') })
    expect(withoutWebPort(host)).toBe(host)
    expect(hostPorts(host)).toEqual(['8080/tcp'])
  })
})
