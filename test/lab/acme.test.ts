/**
 * Public certificates from a real ACME CA on a 3-node lab of its own
 * (`tacme`): Debian's Pebble and pebble-challtestsrv run in the lab's hub
 * namespace (on the lab's bridge, at its 10.213.0.1), the DNS server
 * answering the cluster's names with the three nodes' addresses, so Pebble
 * validates HTTP-01 at whichever node's front door.
 *
 * What it shows: ACME set while the CA is down is reported (the leader's
 * error in `domain show` on every node) and the cluster CA's certificate keeps
 * serving; once Pebble is up the leader orders one certificate per host,
 * exactly once for the cluster; hello (on n2) answers at
 * https://hello.tacme.example.org through n1's, n2's and n3's Caddy with the
 * same certificate, verified against Pebble's root (from its management
 * API) only; front doors still reach each other under the cluster CA; the
 * leader killed, the new leader orders nothing and every survivor serves the
 * same certificate; a node added later serves it too, nothing ordered.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { openSync, closeSync } from 'node:fs'
import { X509Certificate } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LabHandle, dcloudOk, waitFor } from './harness.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { WITNESS_IP } from '../../scripts/lab/lab.ts'
import type { AppView, DomainView } from '../../proto/api.ts'

const lab = new LabHandle('tacme')
const HELLO = join(PROJECT_ROOT, 'apps', 'examples', 'hello')
const NODES = ['n1', 'n2', 'n3']
const DOMAIN = 'tacme.example.org'
const HOST = `hello.${DOMAIN}`
/** Pebble and its DNS server listen on the lab switch's own address, in the hub namespace. */
const HUB = WITNESS_IP
const DIRECTORY = `https://${HUB}:14000/dir`
let dir: string
let ips: Record<string, string>
const children: ChildProcess[] = []

/** A command in the lab's hub namespace (where Pebble runs), as the lab runs everything: nsenter --net. */
async function hub (cmd: string[]): Promise<string> {
  return await new Promise((resolve, reject) => {
    execFile('nsenter', [`--net=/run/netns/${lab.lab.hubNs}`, '--', ...cmd], { timeout: 15_000, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(`${cmd.join(' ')}: ${err.message}\n${stderr}`)); else resolve(stdout)
    })
  })
}

function startInHub (cmd: string[], log: string, env: NodeJS.ProcessEnv = {}): ChildProcess {
  const fd = openSync(log, 'a')
  const child = spawn('nsenter', [`--net=/run/netns/${lab.lab.hubNs}`, '--', ...cmd], { stdio: ['ignore', fd, fd], env: { ...process.env, ...env } })
  closeSync(fd)
  children.push(child)
  return child
}

async function domainView (node: string): Promise<DomainView> {
  return JSON.parse(await dcloudOk(['lab', '--lab', lab.name, 'exec', node, '--', 'dcloud', 'domain', '--json'])) as DomainView
}

/** The certificate `node`'s front door presents for `sni` (openssl s_client in `from`'s namespace), and whether it verifies for `sni` against `ca` only. */
async function presented (from: string, node: string, sni: string, ca: string): Promise<{ serial: string, issuer: string, verified: boolean, output: string }> {
  const r = await lab.exec(from, ['sh', '-c', `openssl s_client -connect ${ips[node] ?? '?'}:443 -servername ${sni} -verify_hostname ${sni} -CAfile ${ca} </dev/null 2>&1`])
  const pem = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/.exec(r.stdout)?.[0]
  const x = pem === undefined ? null : new X509Certificate(pem)
  return { serial: (x?.serialNumber ?? '').replace(/^0+/, ''), issuer: x?.issuer ?? '', verified: /Verify return code: 0 \(ok\)/.test(r.stdout), output: r.stdout.split('\n').filter(l => /verify|Verify|depth/.test(l)).join('\n') }
}

/** curl from `from`'s namespace to `node`'s front door for https://HOST/, trusting `ca` only. */
async function curl (from: string, node: string, ca: string): Promise<{ code: number, body: string }> {
  const r = await lab.exec(from, ['curl', '-sS', '--max-time', '5', '--resolve', `${HOST}:443:${ips[node] ?? '?'}`, '--cacert', ca, `https://${HOST}/`])
  return { code: r.code, body: r.stdout }
}

/** Certificates Pebble says it issued: its log's lines for them (the CA's own record). */
async function pebbleIssued (): Promise<number> {
  return ((await readFile(join(dir, 'pebble.log'), 'utf8')).match(/Issued certificate serial/g) ?? []).length
}

describe('public certificates from Pebble, ordered once for the cluster', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dcloud-tacme-'))
    await lab.up(3)
    ips = Object.fromEntries((await lab.lab.state()).nodes.map(n => [n.name, n.ip]))
    await waitFor(async () => (await Promise.all(NODES.map(async n => (await lab.status(n)).leader))).every(l => l !== null) ? true : undefined, 60_000, 'a leader')
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'install', HELLO, '--node', 'n2'])
    await waitFor(async () => (JSON.parse(await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'ls', '--json'])) as AppView[]).find(a => a.name === 'hello' && a.state === 'running'), 90_000, 'hello running')
    // Pebble's own HTTPS listener needs a certificate (the package ships none): one for the hub's address, which the agents trust through --acme-ca-root.
    await new Promise<void>((resolve, reject) => {
      execFile('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', '/CN=pebble in the lab', '-addext', `subjectAltName=IP:${HUB}`, '-keyout', join(dir, 'pebble-key.pem'), '-out', join(dir, 'pebble-tls.pem')], err => { if (err !== null) reject(err); else resolve() })
    })
    await writeFile(join(dir, 'pebble.json'), JSON.stringify({
      pebble: { listenAddress: `${HUB}:14000`, managementListenAddress: `${HUB}:15000`, certificate: join(dir, 'pebble-tls.pem'), privateKey: join(dir, 'pebble-key.pem'), httpPort: 80, tlsPort: 443, ocspResponderURL: '', externalAccountBindingRequired: false }
    }))
    // Its DNS: the cluster's names at the three nodes (no AAAA: the lab is IPv4), nothing else.
    startInHub(['pebble-challtestsrv', '-dns01', `${HUB}:8053`, '-http01', '', '-https01', '', '-tlsalpn01', '', '-management', `${HUB}:8055`, '-defaultIPv4', '', '-defaultIPv6', ''], join(dir, 'challtestsrv.log'))
    await waitFor(async () => { for (const host of [DOMAIN, HOST]) await hub(['curl', '-sS', '--fail', '-d', JSON.stringify({ host, addresses: NODES.map(n => ips[n]) }), `http://${HUB}:8055/add-a`]); return true }, 15_000, 'pebble-challtestsrv')
  }, 300_000)

  afterAll(async () => {
    for (const c of children) if (c.pid !== undefined && c.exitCode === null) process.kill(c.pid, 'SIGTERM')
    await lab.down()
    await rm(dir, { recursive: true, force: true })
  }, 120_000)

  it('reports a CA that does not answer, once, on every node, and keeps serving the cluster CA\'s certificate', async () => {
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'domain', 'set', DOMAIN, '--acme', DIRECTORY, '--email', `ops@${DOMAIN}`, '--acme-ca-root', join(dir, 'pebble-tls.pem')])
    for (const node of NODES) {
      const { value } = await waitFor(async () => { const d = await domainView(node); return d.acmeFailure != null ? d : undefined }, 30_000, `the failure on ${node}`)
      expect(value.acme).toEqual({ directory: DIRECTORY, email: `ops@${DOMAIN}`, customRoot: true })
      expect(value.acmeFailure?.message).toMatch(new RegExp(`^ordering a certificate for ${DOMAIN.replace(/\./g, '\\.')} from https://10\\.213\\.0\\.1:14000/dir: the ACME server is unreachable \\(ECONNREFUSED`))
      expect(value.certificates).toEqual([])
    }
    const show = await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n3', '--', 'dcloud', 'domain', 'show'])
    expect(show).toMatch(/no certificate yet: hosts are served the cluster CA's meanwhile/)
    expect(show).toMatch(/last error \(.*\): ordering a certificate for tacme\.example\.org .* unreachable/)
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'domain', 'ca', '-o', join(dir, 'cluster-ca.pem')])
    for (const node of NODES) {
      const { value } = await waitFor(async () => { const r = await curl('n1', node, join(dir, 'cluster-ca.pem')); return r.code === 0 && r.body.includes('hello from') ? r : undefined }, 20_000, `hello with the cluster CA through ${node}`)
      expect(value.body).toContain('hello from')
    }
  }, 120_000)

  it('orders one certificate per host once Pebble is up; every node serves it, verified against Pebble\'s root only', async () => {
    startInHub(['pebble', '-config', join(dir, 'pebble.json'), '-dnsserver', `${HUB}:8053`], join(dir, 'pebble.log'), { PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: '0' })
    await waitFor(async () => (await hub(['curl', '-sS', '--fail', '--cacert', join(dir, 'pebble-tls.pem'), `https://${HUB}:15000/roots/0`])).includes('BEGIN CERTIFICATE') ? true : undefined, 20_000, 'pebble')
    // The root Pebble issues under, from its management API: the only root the clients below trust.
    await writeFile(join(dir, 'pebble-root.pem'), await hub(['curl', '-sS', '--fail', '--cacert', join(dir, 'pebble-tls.pem'), `https://${HUB}:15000/roots/0`]))
    // The issuer retries after its backoff (30 s after the first failure).
    const { value: d, ms } = await waitFor(async () => { const v = await domainView('n2'); return v.certificates?.length === 2 && v.acmeFailure == null ? v : undefined }, 120_000, 'both certificates in the replicated state', 500)
    console.log(`certificates stored ${Math.round(ms)} ms after Pebble started`)
    expect(d.certificates?.map(c => c.host).sort()).toEqual([DOMAIN, HOST].sort())
    for (const c of d.certificates ?? []) {
      expect(c.issuer).toMatch(/Pebble Intermediate CA/)
      expect(c.renewAt).toBe(c.notBefore + Math.ceil((c.notAfter - c.notBefore) * 2 / 3))
    }
    expect(await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'domain', 'show'])).toMatch(new RegExp(`${HOST.replace(/\./g, '\\.')}: issued by .*Pebble Intermediate CA.*, expires \\d{4}-`))
    const serial = ((d.certificates ?? []).find(c => c.host === HOST)?.serial ?? '').replace(/^0+/, '')
    const root = join(dir, 'pebble-root.pem')
    for (const node of NODES) {
      const { value } = await waitFor(async () => { const r = await curl('n1', node, root); return r.code === 0 && r.body.includes('hello from') ? r : undefined }, 20_000, `hello with Pebble's certificate through ${node}`)
      expect(value.body, node).toContain('hello from')
      const p = await presented('n1', node, HOST, root)
      expect(p, `${node}: ${p.output}`).toMatchObject({ serial, verified: true })
      expect(p.issuer).toMatch(/Pebble Intermediate CA/)
    }
    // The bare domain's certificate is Pebble's too (the cluster CA's names it as well: chosen by tag).
    const bare = await presented('n1', 'n3', DOMAIN, root)
    expect(bare.verified, bare.output).toBe(true)
    expect(bare.issuer).toMatch(/Pebble Intermediate CA/)
    // The cluster CA's root no longer vouches for the name (it is Pebble's certificate now) ...
    expect((await curl('n1', 'n1', join(dir, 'cluster-ca.pem'))).code).toBe(60)
    // ... but front doors reach each other under dcloud.DOMAIN with the cluster CA's, which is how n1 and n3 forwarded above.
    const peer = await presented('n1', 'n3', `dcloud.${DOMAIN}`, join(dir, 'cluster-ca.pem'))
    expect(peer.verified, peer.output).toBe(true)
    expect(peer.issuer).toMatch(/Dentropy Cloud CA for tacme\.example\.org/)
    // Issued exactly once for the cluster: two orders by the leader (one per host), none by the others, two certificates by Pebble.
    const issued = await Promise.all(NODES.map(async n => (await lab.metrics(n)).acme))
    expect(issued.reduce((s, a) => s + (a?.issued ?? 0), 0)).toBe(2)
    expect(issued.filter(a => (a?.orders ?? 0) > 0)).toHaveLength(1)
    expect(await pebbleIssued()).toBe(2)
  }, 240_000)

  it('kills the leader: the new leader orders nothing, every survivor serves the same certificate', async () => {
    const status = await lab.status('n1')
    const leader = status.nodes.find(n => n.id === status.leader)?.name ?? ''
    expect(NODES).toContain(leader)
    const before = (await domainView('n1')).certificates?.find(c => c.host === HOST)?.serial.replace(/^0+/, '')
    await lab.cmd('kill', leader)
    const survivors = NODES.filter(n => n !== leader)
    const { value: next } = await waitFor(async () => {
      const s = await lab.status(survivors[0] ?? '')
      const name = s.nodes.find(n => n.id === s.leader)?.name
      return name !== undefined && name !== leader ? name : undefined
    }, 60_000, 'a new leader')
    // The new leader's issuer has looked at every host and keeps each certificate (a plan of its own, not an empty one).
    const { value: plan } = await waitFor(async () => { const p = (await lab.metrics(next)).acme?.plan ?? []; return p.length === 2 ? p : undefined }, 30_000, 'the new leader\'s certificate plan')
    expect(plan.map(p => [p.host, p.action])).toEqual([[DOMAIN, 'keep'], [HOST, 'keep']])
    const root = join(dir, 'pebble-root.pem')
    for (const node of survivors) {
      await waitFor(async () => { const r = await curl(survivors.find(n => n !== node) ?? node, node, root); return r.code === 0 && r.body.includes('hello from') ? r : undefined }, 120_000, `hello through ${node} after the leader died`)
      const p = await presented(survivors[0] ?? '', node, HOST, root)
      expect(p, `${node}: ${p.output}`).toMatchObject({ serial: before, verified: true })
    }
    expect((await lab.metrics(next)).acme).toMatchObject({ orders: 0, issued: 0 })
    expect(await pebbleIssued()).toBe(2)
  }, 300_000)

  it('a node that joins serves the same certificate at once, and nothing is ordered for it', async () => {
    const added = (await lab.cmd('add', '--no-images')).trim()
    ips = Object.fromEntries((await lab.lab.state()).nodes.map(n => [n.name, n.ip]))
    const serial = (await domainView('n2')).certificates?.find(c => c.host === HOST)?.serial.replace(/^0+/, '')
    const root = join(dir, 'pebble-root.pem')
    const { value, ms } = await waitFor(async () => { const p = await presented(added, added, HOST, root); return p.serial === serial && p.verified ? p : undefined }, 90_000, `${added} serving Pebble's certificate`, 500)
    console.log(`${added} served the cluster's certificate ${Math.round(ms)} ms after it was added`)
    expect(value.issuer).toMatch(/Pebble Intermediate CA/)
    expect(await pebbleIssued()).toBe(2)
    expect((await lab.metrics(added)).acme).toMatchObject({ orders: 0, issued: 0 })
  }, 240_000)
})
