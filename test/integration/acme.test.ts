/**
 * The ACME issuer (agent/frontdoor/acme.ts) against Debian's real Pebble and
 * a real Caddy, on loopback, without a lab: the replicated state is the real
 * state machine (decodeChange, applyChange, decodeDesiredState, as a node
 * applies a committed entry), the secrets sealed with a cluster key, the
 * front door driven by the real driver. Pebble validates HTTP-01 at Caddy's
 * plain HTTP port (pebble-challtestsrv answers every name with 127.0.0.1).
 *
 * Shown: one certificate per host ordered and stored sealed; Caddy serves it
 * for its host, verified against Pebble's root only, the cluster CA's for a
 * host without one; nothing ordered again while the certificates are young;
 * the issuer's clock past two thirds of the lifetime: a renewal, the new
 * certificate served.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import { request as httpsRequest } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import { CaddyAdmin } from '../../agent/frontdoor/caddy-admin.ts'
import { ClusterTls } from '../../agent/frontdoor/ca.ts'
import { FrontDoor } from '../../agent/frontdoor/frontdoor.ts'
import { AcmeIssuer, PublicCertificates } from '../../agent/frontdoor/acme.ts'
import { ReplicatedSecrets } from '../../agent/secrets/secrets.ts'
import { EMPTY_STATE, applyChange } from '../../agent/cluster/desired-store.ts'
import { decodeChange, decodeDesiredState, type DesiredChange, type DesiredState } from '../../proto/cluster.ts'
import type { AppManifest } from '../../proto/app.ts'
import { mockManifest } from '../builders.ts'
import { createLogger } from '../../agent/util/log.ts'
import { need } from './need.ts'
import { freePort } from './ports.ts'

const DOMAIN = 'int.example.org'
const HOST = `notes.${DOMAIN}`
const SELF = { id: '12D3KooWA' + 'a'.repeat(43), name: 'na', address: '127.0.0.1' }
const secret = Buffer.alloc(32, 0x42)

let dir: string
let backend: Server
let caddy: ChildProcess | null = null
const procs: ChildProcess[] = []
let ports: Record<'https' | 'http' | 'acme' | 'mgmt' | 'dns' | 'dnsMgmt', number>
let state: DesiredState = EMPTY_STATE
let driver: FrontDoor
let issuer: AcmeIssuer
let makeIssuer: (now?: () => number) => AcmeIssuer
let pebbleRoot = ''
const lines: string[] = []

async function until<T> (check: () => Promise<T | undefined> | T | undefined, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms
  let last: unknown
  while (Date.now() < end) {
    try { const v = await check(); if (v !== undefined) return v } catch (err) { last = err }
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${last !== undefined ? `: ${String(last)}` : ''}`)
}

/** A committed change, as every node applies it: decoded from the wire, applied, the state decoded as from disk. */
async function commit (c: DesiredChange): Promise<{ revision: number, replicatedTo: number }> {
  const wire = decodeChange(JSON.parse(JSON.stringify(c)))
  state = decodeDesiredState(JSON.parse(JSON.stringify(applyChange(state, wire, { index: state.revision + 1, term: 1 }))))
  driver?.poke()
  return { revision: state.revision, replicatedTo: 1 }
}

/** An HTTPS request to Caddy for `host` (SNI and Host), trusting `ca` only: the status, body and the certificate's serial. */
async function get (host: string, ca: string): Promise<{ status: number, body: string, serial: string, issuer: string }> {
  return await new Promise((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port: ports.https, servername: host, headers: { Host: host }, ca, agent: false, signal: AbortSignal.timeout(10_000) }, res => {
      let body = ''
      const cert = (res.socket as TLSSocket).getPeerCertificate()
      res.setEncoding('utf8')
      res.on('data', (c: string) => { body += c })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body, serial: cert.serialNumber, issuer: String(cert.issuer.CN ?? '') }) })
    })
    req.on('error', reject)
    req.end()
  })
}

function run (cmd: string, args: string[], log: string, env: NodeJS.ProcessEnv = {}): ChildProcess {
  const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  const out: string[] = []
  p.stdout?.on('data', (c: Buffer) => { out.push(c.toString()) })
  p.stderr?.on('data', (c: Buffer) => { out.push(c.toString()) })
  p.on('exit', () => { void writeFile(join(dir, log), out.join('')).catch(() => {}) })
  procs.push(p)
  return p
}

beforeAll(async () => {
  await need(['caddy', 'pebble', 'openssl'])
  dir = await mkdtemp(join(tmpdir(), 'dcloud-acme-'))
  ports = { https: await freePort(), http: await freePort(), acme: await freePort(), mgmt: await freePort(), dns: await freePort(), dnsMgmt: await freePort() }
  backend = createServer((req, res) => { res.end(`notes page for ${req.headers.host ?? '?'}`) })
  await new Promise<void>(resolve => backend.listen(0, '127.0.0.1', resolve))

  // Pebble's own HTTPS (the package ships no certificate), its config: HTTP-01 at Caddy's plain HTTP port.
  await new Promise<void>((resolve, reject) => {
    execFile('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=pebble', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'pebble-key.pem'), '-out', join(dir, 'pebble-tls.pem')], err => { if (err !== null) reject(err); else resolve() })
  })
  await writeFile(join(dir, 'pebble.json'), JSON.stringify({ pebble: { listenAddress: `127.0.0.1:${ports.acme}`, managementListenAddress: `127.0.0.1:${ports.mgmt}`, certificate: join(dir, 'pebble-tls.pem'), privateKey: join(dir, 'pebble-key.pem'), httpPort: ports.http, tlsPort: ports.https, ocspResponderURL: '', externalAccountBindingRequired: false } }))
  run('pebble-challtestsrv', ['-dns01', `127.0.0.1:${ports.dns}`, '-http01', '', '-https01', '', '-tlsalpn01', '', '-management', `127.0.0.1:${ports.dnsMgmt}`, '-defaultIPv4', '127.0.0.1', '-defaultIPv6', ''], 'challtestsrv.log')
  run('pebble', ['-config', join(dir, 'pebble.json'), '-dnsserver', `127.0.0.1:${ports.dns}`], 'pebble.log', { PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: '0' })
  const tlsRoot = await readFile(join(dir, 'pebble-tls.pem'), 'utf8')
  pebbleRoot = await until(async () => await new Promise<string | undefined>((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port: ports.mgmt, path: '/roots/0', ca: tlsRoot, agent: false }, res => {
      let body = ''
      res.on('data', (c: Buffer) => { body += c.toString() })
      res.on('end', () => { resolve(res.statusCode === 200 ? body : undefined) })
    })
    req.on('error', reject)
    req.end()
  }), 20_000, 'Pebble\'s management API')

  // Caddy with only its admin socket, as the lab and the systemd unit start it.
  const socket = join(dir, 'admin.sock')
  await writeFile(join(dir, 'boot.json'), JSON.stringify({ admin: { listen: `unix/${socket}`, config: { persist: false } } }))
  caddy = run('caddy', ['run', '--config', join(dir, 'boot.json')], 'caddy.log', { HOME: join(dir, 'home'), XDG_DATA_HOME: join(dir, 'home', 'data'), XDG_CONFIG_HOME: join(dir, 'home', 'config') })
  await until(async () => { await new CaddyAdmin(socket).config(AbortSignal.timeout(1000)); return true }, 10_000, 'Caddy')

  const log = createLogger('acme-it', (line) => { lines.push(line) })
  const secrets = new ReplicatedSecrets({ clusterSecret: secret, state: () => state, change: commit })
  const certificates = new PublicCertificates(secrets, log)
  const manifest: AppManifest = { ...mockManifest('notes'), web: { service: 'main', port: (backend.address() as AddressInfo).port } }
  await commit({ kind: 'domain', domain: DOMAIN })
  state = { ...state, apps: [{ name: 'notes', manifest, pinnedNode: null, revision: state.revision }] }
  driver = new FrontDoor({
    admin: new CaddyAdmin(socket),
    tls: new ClusterTls(secret),
    listen: { https: [`127.0.0.1:${ports.https}`], http: [`127.0.0.1:${ports.http}`] },
    peerHttpsPort: ports.https,
    self: () => SELF,
    gather: async () => ({
      domain: DOMAIN,
      apps: [{ name: 'notes', web: { port: manifest.web?.port ?? 0 } }],
      nodes: [{ ...SELF, apps: ['notes'] }],
      local: { notes: '127.0.0.1' },
      public: certificates.serving(state, Date.now()).map(c => ({ certPem: c.certPem, keyPem: c.keyPem, names: c.names })),
      ...(state.challenges !== undefined ? { challenges: state.challenges } : {})
    }),
    log,
    intervalMs: 200
  })
  driver.start()
  makeIssuer = (now) => new AcmeIssuer({ secrets, certificates, state: () => state, isLeader: () => true, change: commit, frontDoors: () => ['127.0.0.1'], httpPort: ports.http, log, intervalMs: 300, ...(now !== undefined ? { now } : {}) })
  issuer = makeIssuer()
}, 120_000)

afterAll(async () => {
  await issuer?.stop()
  await driver?.stop()
  for (const p of procs) if (p.exitCode === null) p.kill('SIGTERM')
  await new Promise(resolve => backend?.close(resolve))
  if (dir !== undefined) await rm(dir, { recursive: true, force: true, maxRetries: 5 })
})

describe('the ACME issuer against Pebble and Caddy', () => {
  it('orders one certificate per host, stores them sealed, and Caddy serves each for its host', async () => {
    const clusterRoot = (await new ClusterTls(secret).root(DOMAIN)).rootPem
    // Before ACME: the cluster CA's certificate.
    const before = await until(async () => { const r = await get(HOST, clusterRoot); return r.status === 200 ? r : undefined }, 15_000, 'notes with the cluster CA')
    expect(before.issuer).toBe(`Dentropy Cloud CA for ${DOMAIN}`)
    await commit({ kind: 'acme', acme: { directory: `https://127.0.0.1:${ports.acme}/dir`, email: `ops@${DOMAIN}`, caRootPem: await readFile(join(dir, 'pebble-tls.pem'), 'utf8') } })
    issuer.start()
    await until(() => issuer.status.issued === 2 ? true : undefined, 60_000, `two certificates (last error: ${issuer.status.lastError ?? 'none'})`)
    expect(Object.keys(state.secrets ?? {}).sort()).toEqual(['acme/account-key', `tls/${DOMAIN}`, `tls/${HOST}`])
    expect(JSON.stringify(state)).not.toMatch(/PRIVATE KEY/)
    expect(state.challenges).toBeUndefined()
    const r = await until(async () => { const x = await get(HOST, pebbleRoot); return x.status === 200 ? x : undefined }, 15_000, 'notes with Pebble\'s certificate')
    expect(r.body).toBe(`notes page for ${HOST}`)
    expect(r.issuer).toMatch(/^Pebble Intermediate CA/)
    // The bare domain too, though the cluster CA's certificate names it as well (chosen by tag).
    expect((await get(DOMAIN, pebbleRoot)).issuer).toMatch(/^Pebble Intermediate CA/)
    // A host without a public certificate keeps the cluster CA's.
    expect((await get(`other.${DOMAIN}`, clusterRoot)).issuer).toBe(`Dentropy Cloud CA for ${DOMAIN}`)
    await expect(get(HOST, clusterRoot)).rejects.toThrow(/unable to get local issuer certificate|self.signed|unable to verify/)
  }, 120_000)

  it('orders nothing while the certificates are young, renews past two thirds of the lifetime, and Caddy serves the new one', async () => {
    await issuer.stop()
    const first = await get(DOMAIN, pebbleRoot)
    const held = new PublicCertificates(new ReplicatedSecrets({ clusterSecret: secret, state: () => state, change: commit }), createLogger('t', () => {})).all(state).get(DOMAIN)
    if (held === undefined) throw new Error('no certificate held')
    expect(first.serial.replace(/^0+/, '')).toBe(held.serial.replace(/^0+/, ''))
    // Rounds run by hand, with the issuer's clock set; a round orders at most one host.
    let clock = held.notBefore + (held.notAfter - held.notBefore) * 0.6
    const manual = makeIssuer(() => clock)
    expect(await manual.tick()).toBe(false)
    expect(manual.status.plan.map(p => p.action)).toEqual(['keep', 'keep'])
    clock = held.notBefore + (held.notAfter - held.notBefore) * 0.67
    expect(await manual.tick()).toBe(true)
    expect(manual.status).toMatchObject({ orders: 1, issued: 1, failures: 0, lastError: null })
    const renewed = await until(async () => { const x = await get(DOMAIN, pebbleRoot); return x.serial !== first.serial ? x : undefined }, 15_000, 'the renewed certificate served')
    expect(renewed.issuer).toMatch(/^Pebble Intermediate CA/)
    // Back to the real time: the new certificate is young, the other still is: nothing to order.
    clock = Date.now()
    expect(await manual.tick()).toBe(false)
    expect(manual.status.plan.map(p => p.action)).toEqual(['keep', 'keep'])
    expect(manual.status.orders).toBe(1)
  }, 120_000)
})
