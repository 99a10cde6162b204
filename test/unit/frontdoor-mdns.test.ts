/**
 * App names over mDNS (agent/frontdoor/mdns-names.ts), pure parts: the
 * names an app tries, what counts as another device holding one, which
 * questions are ours; and the `.local` route in the front door's
 * configuration (render.ts): plain HTTP only, with the app's own Host.
 */
import { describe, expect, it } from 'vitest'
import type { Answer } from 'dns-packet'
import { askedFor, foreignClaims, mdnsLabel, nextChoice, takeBack } from '../../agent/frontdoor/mdns-names.ts'
import { render, type RenderInput } from '../../agent/frontdoor/render.ts'

const CLUSTER = new Set(['10.213.0.11', '10.213.0.12'])
const a = (name: string, data: string): Answer => ({ name, type: 'A', ttl: 10, data })

describe('the names an app tries', () => {
  it('NAME, then NAME-2, NAME-3 ...', () => {
    expect([1, 2, 3].map(n => mdnsLabel('nextcloud', n))).toEqual(['nextcloud', 'nextcloud-2', 'nextcloud-3'])
  })

  it('skips a name another app of the cluster has as its own', () => {
    expect(nextChoice('web', 1, ['web', 'web-2'])).toBe(1)
    expect(nextChoice('web', 2, ['web', 'web-2', 'web-3'])).toBe(4)
    expect(nextChoice('web', 2, ['web'])).toBe(2)
  })
})

describe('another device holding a name', () => {
  it('is an address record for it that is none of the cluster\'s nodes\'', () => {
    expect(foreignClaims([a('web.local', '10.213.0.99')], 'web.local', CLUSTER)).toEqual(['10.213.0.99'])
    expect(foreignClaims([a('WEB.Local', '192.168.1.7'), a('web.local', '10.213.0.11')], 'web.local', CLUSTER)).toEqual(['192.168.1.7'])
  })

  it('is not another node of the cluster answering with its own address (shared records)', () => {
    expect(foreignClaims([a('web.local', '10.213.0.12'), a('web.local', '10.213.0.11')], 'web.local', CLUSTER)).toEqual([])
  })

  it('is not a record for another name, nor of another type', () => {
    expect(foreignClaims([a('web-2.local', '10.213.0.99')], 'web.local', CLUSTER)).toEqual([])
    expect(foreignClaims([{ name: 'web.local', type: 'TXT', ttl: 10, data: 'x' }], 'web.local', CLUSTER)).toEqual([])
  })

  it('gives a name back when what held it turns out to be a node of the cluster (heard before its status was)', () => {
    const yielded = [{ n: 1, addresses: ['10.213.0.12'] }, { n: 2, addresses: ['10.213.0.99'] }]
    expect(takeBack(yielded, new Set(['10.213.0.11']))).toBeNull()
    expect(takeBack(yielded, CLUSTER)).toBe(1)
    expect(takeBack([{ n: 1, addresses: ['10.213.0.99'] }], CLUSTER)).toBeNull()
  })
})

describe('questions that are ours', () => {
  it('asks for an announced name with A or ANY, whatever the case', () => {
    const names = new Set(['hello.local'])
    expect(askedFor([{ name: 'HELLO.local', type: 'A' }, { name: 'hello.local', type: 'ANY' as 'A' }, { name: 'hello.local', type: 'TXT' }, { name: 'other.local', type: 'A' }], names).map(q => q.type))
      .toEqual(['A', 'ANY'])
  })
})

describe('the .local route in the front door', () => {
  const input: RenderInput = {
    domain: 'dcloud.home.arpa',
    self: { id: '12D3KooW1' + 'a'.repeat(43), name: 'n1', address: '10.213.0.11' },
    adminListen: 'unix//run/dcloud-caddy/admin.sock',
    listen: { https: [':443'], http: [':80'] },
    peerHttpsPort: 443,
    tls: { certPem: 'CERT', keyPem: 'KEY', rootPem: 'ROOT', rootDer: Buffer.from('root') },
    apps: [{ name: 'hello', web: { port: 8080 } }, { name: 'notes', web: { port: 80 } }],
    nodes: [{ id: '12D3KooW1' + 'a'.repeat(43), name: 'n1', address: '10.213.0.11', apps: ['hello'] }],
    local: { hello: '172.18.0.2' },
    mdnsHosts: { hello: 'hello-2.local' }
  }
  type Server = { routes: Array<{ match?: Array<{ host?: string[] }>, handle: Array<Record<string, unknown>> }> }
  const servers = (r: ReturnType<typeof render>): Record<string, Server> => (r.config.apps as { http: { servers: Record<string, Server> } }).http.servers

  it('serves NAME.local on plain HTTP as NAME.DOMAIN (the Host set to it), before the CA routes and the redirect', () => {
    const http = servers(render(input))['dcloud-http']
    expect(http?.routes[0]?.match).toEqual([{ host: ['hello-2.local'] }])
    expect(http?.routes[0]?.handle[0]).toEqual({ handler: 'headers', request: { set: { Host: ['hello.dcloud.home.arpa'] } } })
    expect(http?.routes[0]?.handle[1]).toMatchObject({ handler: 'reverse_proxy', upstreams: [{ dial: '172.18.0.2:8080' }] })
    // Only the apps announced: notes has no .local host on this node.
    expect(http?.routes.filter(r => JSON.stringify(r.match ?? []).includes('.local'))).toHaveLength(1)
  })

  it('never on HTTPS: the cluster CA cannot vouch for .local', () => {
    expect(JSON.stringify(servers(render(input))['dcloud-https'])).not.toContain('.local')
  })

  it('changes the configuration\'s id with the name', () => {
    expect(render(input).id).not.toBe(render({ ...input, mdnsHosts: { hello: 'hello.local' } }).id)
    expect(render({ ...input, mdnsHosts: {} }).id).toBe(render({ ...input, mdnsHosts: undefined }).id)
  })
})
