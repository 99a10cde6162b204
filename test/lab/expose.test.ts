/**
 * Reach per app on a 2-node lab of its own (`texp`): `dcloud app expose NAME
 * lan|internet` and the web port no longer published on the node.
 *
 * The app `portal` runs on n2: a web page (its UI, behind the front door) and
 * a raw TCP service on 7000 (published on n2, as a game server or DNS would
 * be). Two clients that are not nodes, on the lab's bridge (`dcloud lab
 * client`): one on the LAN (10.213.0.250), one "from the internet"
 * (203.0.113.10). Both ask both nodes' front doors for https://portal.DOMAIN
 * (curl --resolve, trusting only the cluster's root): n2 serves it locally,
 * n1 forwards it to n2, which judges the request by the client n1 saw.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LabHandle, dcloud, dcloudOk, waitFor, type Run } from './harness.ts'
import { apiRequest } from '../../agent/cli/client.ts'
import type { AppView } from '../../proto/api.ts'

const lab = new LabHandle('texp')
const NODES = ['n1', 'n2']
const HOST = 'portal.dcloud.home.arpa'
let dir: string
let ca: string
let ips: Record<string, string>

/** A busybox httpd service serving `page` on `port`; `published`: the compose port entry. */
const httpd = (page: string, port: number, published: string): string => `
    image: dcloud/busybox:lab
    command:
      - sh
      - -c
      - |
        trap 'exit 0' TERM
        mkdir -p /www
        echo "${page}" > /www/index.html
        httpd -f -p ${port} -h /www &
        wait
    ports:
      - "${published}"
    restart: unless-stopped`

const COMPOSE = `
services:
  web:${httpd('portal page from $$(hostname)', 8080, '8080')}
  raw:${httpd('raw service', 7000, '7000:7000')}
x-dcloud:
  id: portal
  name: Portal
  version: "1.0.0"
  architectures: []
  requests:
    memory: 16M
    cpus: 0.05
  web:
    service: web
    port: 8080
`

async function apps (): Promise<AppView[]> {
  return JSON.parse(await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'ls', '--json'])) as AppView[]
}

/** curl from a lab client (the LAN one, or the public one) to `node`'s front door. */
async function fromClient (kind: 'lan' | 'public', node: string, host = HOST, headers: string[] = []): Promise<{ code: number, status: string, body: string }> {
  const r: Run = await dcloud(['lab', '--lab', lab.name, 'client', ...(kind === 'public' ? ['--public'] : []), '--',
    'curl', '-sS', '--max-time', '5', '--resolve', `${host}:443:${ips[node] ?? '?'}`, '--cacert', ca, ...headers.flatMap(h => ['-H', h]), '-w', '\n%{http_code}', `https://${host}/`])
  const lines = r.stdout.split('\n')
  return { code: r.code, status: lines.at(-1) ?? '', body: lines.slice(0, -1).join('\n') + r.stderr }
}

/**
 * In the client's namespace, asks `node`'s front door every 50 ms until the
 * page answers, and prints the wall clock (ms) it first did: timed where it
 * happens, not through a CLI's start-up.
 */
function pollUntilAnswered (kind: 'lan' | 'public', node: string): Promise<Run> {
  const script = `while :; do if curl -sS --max-time 2 --resolve ${HOST}:443:${ips[node] ?? '?'} --cacert ${ca} https://${HOST}/ 2>/dev/null | grep -q 'portal page from'; then date +%s%3N; exit 0; fi; sleep 0.05; done`
  return dcloud(['lab', '--lab', lab.name, 'client', ...(kind === 'public' ? ['--public'] : []), '--', 'timeout', '30', 'sh', '-c', script])
}

describe('reach per app on a 2-node lab', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dcloud-texp-'))
    await mkdir(join(dir, 'portal'))
    await writeFile(join(dir, 'portal', 'compose.yaml'), COMPOSE)
    await lab.up(2)
    ips = Object.fromEntries((await lab.lab.state()).nodes.map(n => [n.name, n.ip]))
    await waitFor(async () => (await Promise.all(NODES.map(async n => (await lab.status(n)).leader))).every(l => l !== null) ? true : undefined, 60_000, 'a leader')
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'install', join(dir, 'portal'), '--node', 'n2', '--yes'])
    await waitFor(async () => (await apps()).find(a => a.name === 'portal' && a.state === 'running' && a.node === 'n2'), 90_000, 'portal running on n2')
    ca = join(dir, 'root.pem')
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'domain', 'ca', '-o', ca])
  }, 300_000)

  afterAll(async () => {
    await lab.down()
    await rm(dir, { recursive: true, force: true })
  }, 120_000)

  it('lists the app as lan by default, with its raw port as its only endpoint', async () => {
    const portal = (await apps()).find(a => a.name === 'portal')
    expect(portal).toMatchObject({ reach: 'lan', url: `https://${HOST}/`, endpoints: [`tcp://${ips.n2 ?? '?'}:7000`] })
    const table = await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n2', '--', 'dcloud', 'app', 'ls'])
    expect(table.split('\n')[0]).toMatch(/^URL\s+APP\s+NODE\s+STATE\s+REACH\s+STATEFUL\s+ENDPOINTS/)
    expect(table).toMatch(new RegExp(`^https://${HOST.replace(/\./g, '\\.')}/\\s+portal 1\\.0\\.0\\s+n2\\s+running\\s+lan\\s+no\\s+tcp://${(ips.n2 ?? '').replace(/\./g, '\\.')}:7000`, 'm'))
    const why = await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'why', 'portal'])
    expect(why).toContain(`at https://${HOST}/, for clients on the LAN only`)
    expect(why).toContain(`raw ports on n2: tcp://${ips.n2 ?? '?'}:7000`)
  }, 60_000)

  it('publishes the raw port on n2 and not the web port: the page is reached through the front door only', async () => {
    const published = await lab.exec('n2', ['docker', 'ps', '--filter', 'label=dcloud.app=portal', '--format', '{{.Names}} {{.Ports}}'])
    const lines = published.stdout.trim().split('\n').sort()
    expect(lines[0]).toMatch(/^dcloud-portal-raw .*:7000->7000\/tcp/)
    expect(lines[1]).toMatch(/^dcloud-portal-web\s*$/)
    // The raw service answers on the node's address; the web port is closed there.
    const raw = await dcloud(['lab', '--lab', lab.name, 'client', '--', 'curl', '-sS', '--max-time', '5', `http://${ips.n2 ?? '?'}:7000/`])
    expect(raw.stdout).toContain('raw service')
    const web = await dcloud(['lab', '--lab', lab.name, 'client', '--', 'curl', '-sS', '--max-time', '5', `http://${ips.n2 ?? '?'}:8080/`])
    expect(web.code).toBe(7)
  }, 60_000)

  it('answers a LAN client through every node, and refuses a public client with a 403 that says how to open it, however the request came in', async () => {
    for (const node of NODES) {
      const lan = await waitFor(async () => { const r = await fromClient('lan', node); return r.status === '200' ? r : undefined }, 20_000, `portal for the LAN client through ${node}`)
      expect(lan.value.body, node).toMatch(/^portal page from [0-9a-f]{12}/)
      const pub = await fromClient('public', node)
      expect(pub.status, node).toBe('403')
      expect(pub.body, node).toContain('portal answers on the LAN only')
      expect(pub.body, node).toContain('`dcloud app expose portal internet`')
      // A client's own X-Forwarded-For naming a LAN address is not believed, directly (n2) or forwarded (n1).
      const spoofed = await fromClient('public', node, HOST, ['X-Forwarded-For: 192.168.1.5'])
      expect(spoofed.status, `${node} spoofed`).toBe('403')
      // The dashboard's and the API's host is the LAN's only.
      const bare = await fromClient('public', node, 'dcloud.home.arpa')
      expect(bare.status, `${node} bare domain`).toBe('403')
      expect(bare.body).toContain('answer on the LAN only')
      expect((await fromClient('lan', node, 'dcloud.home.arpa')).status).not.toBe('403')
    }
  }, 120_000)

  it('judges a request another node forwarded by the client that node saw, and believes the header from nodes only', async () => {
    // n1's namespace is a node's address: n2 reads the client from its X-Forwarded-For, as from n1's front door.
    const viaN1 = async (xff: string | null): Promise<string> => (await lab.exec('n1', ['curl', '-sS', '--max-time', '5', '-o', '/dev/null', '-w', '%{http_code}', '--resolve', `${HOST}:443:${ips.n2 ?? '?'}`, '--cacert', ca, ...(xff !== null ? ['-H', `X-Forwarded-For: ${xff}`] : []), `https://${HOST}/`])).stdout
    expect(await viaN1('203.0.113.7')).toBe('403')
    expect(await viaN1('10.213.0.250')).toBe('200')
    expect(await viaN1(null)).toBe('200')
    // From a client that is not a node, the header is not believed either way.
    const lanClaimsPublic = await fromClient('lan', 'n2', HOST, ['X-Forwarded-For: 203.0.113.7'])
    expect(lanClaimsPublic.status).toBe('200')
  }, 60_000)

  it('answers both clients on every node within about a second of `expose internet`', async () => {
    const polls = NODES.map(n => pollUntilAnswered('public', n))
    // The pollers are running (each CLI starts in its own time): wait until their namespace has a curl in flight.
    await new Promise(resolve => setTimeout(resolve, 3000))
    expect((await fromClient('public', 'n1')).status).toBe('403')
    const t0 = Date.now()
    const res = await apiRequest<{ revision: number }>('POST', '/v1/apps/portal/expose', { reach: 'internet' }, { socketPath: lab.lab.agentSocket('n1'), describe: 'n1' }, 30_000)
    const committed = Date.now()
    expect(res.revision).toBeGreaterThan(0)
    const done = await Promise.all(polls)
    const ms = done.map((r, i) => { expect(r.code, `${NODES[i] ?? ''}: ${r.stderr}`).toBe(0); return Number(r.stdout.trim()) - t0 })
    console.log(`expose internet: committed in ${committed - t0} ms; answered for the public client by ${NODES.map((n, i) => `${n} after ${ms[i] ?? '?'} ms`).join(', ')}`)
    // After the change (a poller that answered before it would print an earlier time), and within about a second.
    for (const m of ms) { expect(m).toBeGreaterThan(0); expect(m).toBeLessThan(3000) }
    for (const node of NODES) {
      expect((await fromClient('public', node)).status, node).toBe('200')
      expect((await fromClient('lan', node)).status, node).toBe('200')
      // The dashboard stays on the LAN whatever the apps' reach.
      expect((await fromClient('public', node, 'dcloud.home.arpa')).status, node).toBe('403')
    }
    expect((await apps()).find(a => a.name === 'portal')?.reach).toBe('internet')
    const onN2 = JSON.parse(await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n2', '--', 'dcloud', 'app', 'ls', '--json'])) as AppView[]
    expect(onN2.find(a => a.name === 'portal')?.reach).toBe('internet')
  }, 120_000)

  it('goes back to the LAN with `expose lan`', async () => {
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n2', '--', 'dcloud', 'app', 'expose', 'portal', 'lan'])
    for (const node of NODES) {
      await waitFor(async () => (await fromClient('public', node)).status === '403' ? true : undefined, 10_000, `portal refused again through ${node}`)
      expect((await fromClient('lan', node)).status).toBe('200')
    }
  }, 60_000)

  it('refuses an unknown app and a wrong value, saying why, with an exit code', async () => {
    const unknown = await dcloud(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'expose', 'nosuch', 'internet'])
    expect(unknown.code).toBe(66)
    expect(unknown.stderr).toMatch(/no app named nosuch/)
    const wrong = await dcloud(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'expose', 'portal', 'public'])
    expect(wrong.code).toBe(64)
    expect(wrong.stderr).toMatch(/'public' is not a reach: lan .* or internet/)
    const missing = await dcloud(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'expose', 'portal'])
    expect(missing.code).toBe(64)
    const same = await dcloud(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'expose', 'portal', 'lan'])
    expect(same.code).not.toBe(0)
    expect(same.stderr).toMatch(/portal is reachable from the LAN only already: nothing to change/)
    // Through the API, a wrong value is a 400 naming the field.
    await expect(apiRequest('POST', '/v1/apps/portal/expose', { reach: 'everyone' }, { socketPath: lab.lab.agentSocket('n1'), describe: 'n1' }, 10_000)).rejects.toThrow(/change\.reach: must be lan or internet, not "everyone"/)
  }, 60_000)
})
