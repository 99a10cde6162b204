/**
 * The front door against real Caddy (Debian's 2.6.2): two Caddy processes
 * stand for two nodes' front doors, each configured only through its admin
 * API on a Unix socket in a temp dir, listening on high loopback ports. Each
 * is driven by the real FrontDoor driver with configurations rendered from
 * inputs the test sets (the desired state and the nodes' reports, which in
 * the agent come from the replicated log and status gossip).
 *
 * Measured: an app's page over HTTPS, verified against the cluster CA's root
 * only, at the node running it and through the other node (Caddy to Caddy
 * over TLS checked against the same root); the same certificate on both; the
 * root on plain HTTP; redirects; a down app and an unknown host answered,
 * never misrouted; a forwarding loop cut; Caddy killed and restarted gets its
 * configuration back; a port another process holds is an error that names it,
 * and the previous configuration keeps serving.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { createServer as createTcpServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { X509Certificate } from 'node:crypto'
import type { PeerCertificate, TLSSocket } from 'node:tls'
import { CaddyAdmin } from '../../agent/frontdoor/caddy-admin.ts'
import { ClusterTls, type ClusterCa } from '../../agent/frontdoor/ca.ts'
import { FrontDoor, type FrontDoorInputs } from '../../agent/frontdoor/frontdoor.ts'
import { HOP_HEADER } from '../../agent/frontdoor/render.ts'
import { decodeCaddyAccess, type CaddyDecoded } from '../../agent/access/lines.ts'
import { createLogger } from '../../agent/util/log.ts'
import { need } from './need.ts'
import { freePort } from './ports.ts'

const DOMAIN = 'test.home.arpa'
const HOST = `notes.${DOMAIN}`
const A = { id: '12D3KooWA' + 'a'.repeat(43), name: 'na', address: '127.0.0.1' }
const B = { id: '12D3KooWB' + 'b'.repeat(43), name: 'nb', address: '127.0.0.1' }
const C = { id: '12D3KooWC' + 'c'.repeat(43), name: 'nc', address: '127.0.0.1' }
/** Where B forwards (the doors share one address, so each is told the next one's port); 0: A's. */
let bPeerPort = 0
const secret = Buffer.alloc(32, 0x5a)
const tls = new ClusterTls(secret)
let root: ClusterCa

let dir: string
let backend: Server
let backendPort: number
const seen: IncomingHttpHeaders[] = []

interface Door {
  name: string
  socket: string
  https: number
  http: number
  caddy: ChildProcess | null
  inputs: FrontDoorInputs
  driver: FrontDoor
  log: string[]
}

async function startCaddy (d: Door): Promise<void> {
  const boot = join(dir, `${d.name}-boot.json`)
  // Only the admin endpoint, on the Unix socket: what the lab and the systemd unit start Caddy with.
  await writeFile(boot, JSON.stringify({ admin: { listen: `unix/${d.socket}`, config: { persist: false } } }))
  const home = join(dir, `${d.name}-home`)
  const p = spawn('caddy', ['run', '--config', boot], { env: { PATH: process.env.PATH, HOME: home, XDG_DATA_HOME: join(home, 'data'), XDG_CONFIG_HOME: join(home, 'config') }, stdio: ['ignore', 'ignore', 'pipe'] })
  p.stderr?.on('data', (c: Buffer) => { d.log.push(c.toString()) })
  d.caddy = p
  await until(async () => { try { await new CaddyAdmin(d.socket).config(AbortSignal.timeout(1000)); return true } catch { return false } }, 10_000, `${d.name}'s Caddy to answer on ${d.socket}`)
}

async function stopCaddy (d: Door): Promise<void> {
  const p = d.caddy
  if (p === null || p.exitCode !== null) return
  const gone = new Promise(resolve => p.once('exit', resolve))
  p.kill('SIGKILL')
  await gone
  d.caddy = null
}

async function makeDoor (name: string, self: typeof A, peerHttpsPort: (() => number) | null): Promise<Door> {
  const lines: string[] = []
  const door: Door = {
    name,
    socket: join(dir, `${name}-admin.sock`),
    https: await freePort(),
    http: await freePort(),
    caddy: null,
    inputs: { domain: DOMAIN, apps: [], nodes: [], local: {} },
    driver: undefined as unknown as FrontDoor,
    log: lines
  }
  const log = createLogger(name, (line) => { lines.push(line) })
  door.driver = new FrontDoor({
    admin: new CaddyAdmin(door.socket),
    tls,
    listen: { https: [`127.0.0.1:${door.https}`], http: [`127.0.0.1:${door.http}`] },
    // Nodes of a cluster share one HTTPS port; here both doors are on one address, so A is told B's.
    get peerHttpsPort () { return peerHttpsPort?.() ?? door.https },
    accessLog: join(dir, `${name}-access.log`),
    self: () => self,
    gather: async () => door.inputs,
    log,
    intervalMs: 200
  })
  await startCaddy(door)
  return door
}

async function until (check: () => Promise<boolean> | boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await check()) return
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`)
}

interface Answer { status: number, body: string, headers: IncomingHttpHeaders, cert: PeerCertificate | null }

/** An HTTPS request for `host` at a door's port, trusting only `ca` (the cluster's root unless given). */
async function get (port: number, host: string, opts: { ca?: string | null, path?: string, headers?: Record<string, string>, from?: string } = {}): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const req = httpsRequest({
      host: '127.0.0.1', port, path: opts.path ?? '/', servername: host, headers: { Host: host, ...opts.headers },
      ...(opts.from !== undefined ? { localAddress: opts.from } : {}),
      ...(opts.ca === null ? {} : { ca: opts.ca ?? root.rootPem }),
      agent: false,
      signal: AbortSignal.timeout(10_000)
    }, res => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { body += c })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body, headers: res.headers, cert: (res.socket as TLSSocket).getPeerCertificate?.() ?? null }) })
    })
    req.on('error', reject)
    req.end()
  })
}

async function plainGet (port: number, host: string, path: string): Promise<Answer> {
  return await new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, headers: { Host: host }, agent: false, signal: AbortSignal.timeout(10_000) }, res => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { body += c })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body, headers: res.headers, cert: null }) })
    })
    req.on('error', reject)
    req.end()
  })
}

let a: Door
let b: Door
const notes = { name: 'notes', web: { port: 0 } }

beforeAll(async () => {
  await need(['caddy'])
  root = await tls.root(DOMAIN)
  dir = await mkdtemp(join(tmpdir(), 'dcloud-frontdoor-'))
  backend = createServer((req, res) => {
    seen.push(req.headers)
    res.setHeader('Content-Type', 'text/plain')
    res.end(`notes page for ${req.headers.host ?? '?'} ${req.url ?? ''}`)
  })
  await new Promise<void>(resolve => backend.listen(0, '127.0.0.1', resolve))
  backendPort = (backend.address() as AddressInfo).port
  notes.web.port = backendPort
  b = await makeDoor('nb', B, () => bPeerPort || a.https)
  a = await makeDoor('na', A, () => b.https)
  // The app runs on B: B's web container is "at" 127.0.0.1 (its network address, here loopback).
  const nodes = [{ ...A, apps: [] }, { ...B, apps: ['notes'] }]
  b.inputs = { domain: DOMAIN, apps: [notes], nodes, local: { notes: '127.0.0.1' } }
  a.inputs = { domain: DOMAIN, apps: [notes], nodes, local: {} }
  a.driver.start()
  b.driver.start()
  await until(() => a.driver.status.loaded !== null && b.driver.status.loaded !== null, 15_000, 'both configurations to load')
}, 120_000)

afterAll(async () => {
  await a?.driver.stop()
  await b?.driver.stop()
  for (const d of [a, b]) if (d !== undefined) await stopCaddy(d)
  await new Promise(resolve => backend?.close(resolve))
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
})

describe('the front door on real Caddy', () => {
  it('serves the app at its name over HTTPS at the node running it, verified against the cluster root only', async () => {
    const r = await get(b.https, HOST)
    expect(r.status, r.body).toBe(200)
    expect(r.body).toBe(`notes page for ${HOST} /`)
    expect(b.driver.status.routes).toEqual([{ name: 'notes', host: HOST, kind: 'local', upstream: `127.0.0.1:${backendPort}`, scheme: 'http' }])
    // Without the cluster's root, the certificate is not trusted: the check above is real.
    await expect(get(b.https, HOST, { ca: null })).rejects.toThrow(/self.signed|unable to get local issuer|unable to verify/i)
  })

  it('reaches it through another node: Caddy to Caddy over TLS checked against the same root', async () => {
    seen.length = 0
    const r = await get(a.https, HOST, { path: '/cgi-bin/notes?x=1' })
    expect(r.status, r.body).toBe(200)
    expect(r.body).toBe(`notes page for ${HOST} /cgi-bin/notes?x=1`)
    expect(a.driver.status.routes[0]).toMatchObject({ kind: 'remote', node: B.id, upstream: `127.0.0.1:${b.https}` })
    // The app never sees the hop header; it sees who asked.
    expect(seen.at(-1)?.[HOP_HEADER.toLowerCase()]).toBeUndefined()
    expect(seen.at(-1)?.['x-forwarded-for']).toContain('127.0.0.1')
  })

  it('tells the app the real client through another node, and believes no client\'s own X-Forwarded-For', async () => {
    // The client at 127.0.0.3; the front doors at 127.0.0.1, which each trusts as the other node's address.
    await get(a.https, HOST, { from: '127.0.0.3', headers: { 'X-Forwarded-For': '203.0.113.66' } })
    expect(seen.at(-1)?.['x-forwarded-for']).toBe('127.0.0.3, 127.0.0.1')
    await get(b.https, HOST, { from: '127.0.0.3', headers: { 'X-Forwarded-For': '203.0.113.66' } })
    expect(seen.at(-1)?.['x-forwarded-for']).toBe('127.0.0.3')
  })

  it('logs each request once, as JSON, at the door the client reached (the access log, from Caddy\'s own lines)', async () => {
    // Both doors are at 127.0.0.1: to each, that is the other node's address.
    const decoded = async (d: Door): Promise<CaddyDecoded[]> => (await readFile(join(dir, `${d.name}-access.log`), 'utf8').catch(() => '')).split('\n').filter(l => l.includes('/log/') || l.includes('nothing.')).map(l => decodeCaddyAccess(l, d === a ? A.id : B.id, new Set(['127.0.0.1'])))
    const through = await get(a.https, HOST, { from: '127.0.0.3', path: '/log/through-a?token=x' })
    const direct = await get(b.https, HOST, { from: '127.0.0.4', path: '/log/at-b', headers: { [HOP_HEADER]: 'a client sending it' } })
    await get(a.https, `nothing.${DOMAIN}`, { from: '127.0.0.3' })
    await until(async () => (await decoded(a)).length >= 1 && (await decoded(b)).length >= 2, 5000, 'the access log lines')
    expect(await decoded(a)).toEqual([{ kind: 'line', line: expect.objectContaining({ node: A.id, app: 'notes', client: '127.0.0.3', method: 'GET', host: HOST, path: '/log/through-a', status: 200, bytes: Buffer.byteLength(through.body), user: null }) }])
    // B saw the forwarded one too, from A's address with the hop header: left to A. The client's own header does not hide it.
    expect(await decoded(b)).toEqual([{ kind: 'forwarded' }, { kind: 'line', line: expect.objectContaining({ node: B.id, client: '127.0.0.4', path: '/log/at-b', status: 200, bytes: Buffer.byteLength(direct.body) }) }])
  })

  it('serves the same certificate on every node, issued by the root for *.DOMAIN', async () => {
    const ra = await get(a.https, HOST)
    const rb = await get(b.https, HOST)
    expect(ra.cert?.fingerprint256).toBe(rb.cert?.fingerprint256)
    const leaf = new X509Certificate(ra.cert?.raw ?? Buffer.alloc(0))
    expect(leaf.checkIssued(new X509Certificate(root.rootPem))).toBe(true)
    expect(leaf.subjectAltName).toBe(`DNS:${DOMAIN}, DNS:*.${DOMAIN}`)
  })

  it('hands out the root on plain HTTP, and redirects everything else to HTTPS', async () => {
    const pem = await plainGet(a.http, `anything.${DOMAIN}`, '/ca.pem')
    expect(pem.status).toBe(200)
    expect(pem.body).toBe(root.rootPem)
    expect(pem.headers['content-type']).toBe('application/x-pem-file')
    const crt = await plainGet(a.http, DOMAIN, '/ca.crt')
    expect(crt.headers['content-type']).toBe('application/x-x509-ca-cert')
    const redirect = await plainGet(a.http, HOST, '/x?y=1')
    expect(redirect.status).toBe(308)
    expect(redirect.headers.location).toBe(`https://${HOST}:${a.https}/x?y=1`)
    const bare = await get(a.https, DOMAIN, { path: '/ca.pem' })
    expect(bare.body).toBe(root.rootPem)
  })

  it('answers a down app and an unknown name with what is wrong, never another app', async () => {
    const down = { name: 'photos', web: { port: 80 } }
    a.inputs = { ...a.inputs, apps: [notes, down] }
    await until(async () => (await get(a.https, `photos.${DOMAIN}`)).status === 503, 5000, 'the photos route')
    const r = await get(a.https, `photos.${DOMAIN}`)
    expect(r.body).toMatch(/photos is not reachable: it is not running on any node right now/)
    const unknown = await get(a.https, `nothing.${DOMAIN}`)
    expect(unknown.status).toBe(404)
    expect(unknown.body).toMatch(/No app answers at nothing\.test\.home\.arpa/)
    a.inputs = { ...a.inputs, apps: [notes] }
  })

  it('cuts a loop between two nodes whose views disagree (508, once the request is back where it started), and routes again once they agree', async () => {
    // B now believes notes runs on A, A that it runs on B.
    const nodesB = [{ ...A, apps: ['notes'] }, { ...B, apps: [] }]
    b.inputs = { ...b.inputs, nodes: nodesB, local: {} }
    await until(() => b.driver.status.routes[0]?.kind === 'remote', 5000, 'B to route notes away')
    const r = await get(a.https, HOST)
    expect(r.status).toBe(508)
    expect(r.body).toMatch(/^notes: the request came back to na \(it would go to nb again\)/)
    b.inputs = { ...b.inputs, nodes: [{ ...A, apps: [] }, { ...B, apps: ['notes'] }], local: { notes: '127.0.0.1' } }
    await until(async () => (await get(a.https, HOST)).status === 200, 5000, 'notes through A again')
  })

  it('forwards once more from a node whose view is stale (a move it has not heard of), without an error', async () => {
    // A third node, C, now runs notes; B has heard of it, A not yet: A -> B -> C.
    const c = await makeDoor('nc', C, null)
    try {
      const nodes = [{ ...A, apps: [] }, { ...B, apps: [] }, { ...C, apps: ['notes'] }]
      c.inputs = { domain: DOMAIN, apps: [notes], nodes, local: { notes: '127.0.0.1' } }
      c.driver.start()
      bPeerPort = c.https
      b.inputs = { ...b.inputs, nodes, local: {} }
      await until(() => c.driver.status.loaded !== null && b.driver.status.routes[0]?.kind === 'remote' && (b.driver.status.routes[0] as { node?: string }).node === C.id, 5000, 'C serving, B routing to C')
      seen.length = 0
      const r = await get(a.https, HOST, { from: '127.0.0.3' })
      expect(r.status, r.body).toBe(200)
      expect(seen.at(-1)?.[HOP_HEADER.toLowerCase()]).toBeUndefined()
      expect(a.driver.status.routes[0]).toMatchObject({ kind: 'remote', node: B.id })
    } finally {
      bPeerPort = 0
      b.inputs = { ...b.inputs, nodes: [{ ...A, apps: [] }, { ...B, apps: ['notes'] }], local: { notes: '127.0.0.1' } }
      await c.driver.stop()
      await stopCaddy(c)
    }
    await until(async () => (await get(a.https, HOST)).status === 200 && b.driver.status.routes[0]?.kind === 'local', 5000, 'notes on B again')
  })

  it('gives a Caddy that was killed and started again its configuration back', async () => {
    await until(async () => b.driver.status.routes[0]?.kind === 'local' && (await get(b.https, HOST)).status === 200, 5000, 'B settled')
    const before = b.driver.status.reloadsAfterLoss
    await stopCaddy(b)
    await expect(get(b.https, HOST)).rejects.toThrow(/ECONNREFUSED/)
    await startCaddy(b)
    const started = Date.now()
    await until(async () => { try { return (await get(b.https, HOST)).status === 200 } catch { return false } }, 5000, 'B to serve notes again')
    expect(b.driver.status.reloadsAfterLoss).toBe(before + 1)
    expect(Date.now() - started).toBeLessThan(3000)
    expect(b.log.join('')).toMatch(/no longer runs the front door's configuration/)
  })

  it('reports a port another process holds, naming it, and keeps serving the configuration it had', async () => {
    const squatter = createTcpServer()
    await new Promise<void>(resolve => squatter.listen(0, '127.0.0.1', resolve))
    const taken = (squatter.address() as AddressInfo).port
    const loaded = b.driver.status.loaded
    const driver = new FrontDoor({
      admin: new CaddyAdmin(b.socket), tls, listen: { https: [`127.0.0.1:${taken}`], http: [] }, peerHttpsPort: 443,
      self: () => B, gather: async () => b.inputs, log: createLogger('quiet', () => {})
    })
    await b.driver.stop()
    await driver.sync()
    expect(driver.status.loaded).toBeNull()
    expect(driver.status.lastError).toMatch(new RegExp(`Caddy refused POST /load \\(400\\).*127\\.0\\.0\\.1:${taken}.*address already in use`))
    // Caddy kept the last good configuration.
    expect((await get(b.https, HOST)).status).toBe(200)
    expect(await new CaddyAdmin(b.socket).has(loaded ?? '', AbortSignal.timeout(2000))).toBe(true)
    await new Promise(resolve => squatter.close(resolve))
  })

  it('reports a Caddy that is not there without throwing', async () => {
    const driver = new FrontDoor({
      admin: new CaddyAdmin(join(dir, 'missing.sock')), tls, listen: { https: ['127.0.0.1:1'], http: [] }, peerHttpsPort: 443,
      self: () => A, gather: async () => a.inputs, log: createLogger('quiet', () => {})
    })
    await driver.sync()
    expect(driver.status.lastError).toMatch(/cannot reach Caddy's admin socket .*missing\.sock: ENOENT/)
  })
})
