/**
 * The front door on a 3-node lab of its own (`tfront`): each node runs Debian's
 * Caddy in its namespace, configured by its agent through the admin socket
 * only. The hello app runs on n2; a client in n1's namespace asks every
 * node's front door for `https://hello.DOMAIN` (curl --resolve to the node's
 * address, trusting only the cluster CA's root from `dcloud domain ca`):
 * each answers with the page of hello's one container, on n2. After
 * `app move hello n3` the name follows to the new container; after
 * `domain set` the name under the new domain answers with the new root;
 * a Caddy killed and started again gets its configuration back; a reserved
 * name is refused; its node killed, the name follows within about a second of
 * the app running again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LabHandle, dcloud, dcloudOk, waitFor } from './harness.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import type { AppView, DomainView } from '../../proto/api.ts'

const lab = new LabHandle('tfront')
const HELLO = join(PROJECT_ROOT, 'apps', 'examples', 'hello')
const NODES = ['n1', 'n2', 'n3']
let dir: string
let ips: Record<string, string>

async function apps (): Promise<AppView[]> {
  return JSON.parse(await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'ls', '--json'])) as AppView[]
}

/** The hostname of hello's container on `node` (Docker sets it to the short container id): what its page names. */
async function helloContainer (node: string): Promise<string> {
  const r = await lab.exec(node, ['docker', 'ps', '--filter', 'label=dcloud.app=hello', '--format', '{{.ID}}'])
  return r.stdout.trim()
}

/** curl from n1's namespace to `node`'s front door, for https://NAME.DOMAIN, trusting `ca` only. */
async function curl (node: string, host: string, ca: string | null): Promise<{ code: number, body: string, stderr: string }> {
  const r = await lab.exec('n1', ['curl', '-sS', '--max-time', '5', '--resolve', `${host}:443:${ips[node] ?? '?'}`, ...(ca !== null ? ['--cacert', ca] : []), `https://${host}/`])
  return { code: r.code, body: r.stdout, stderr: r.stderr }
}

/** The CA root for `domain` as n3 derives it, once n3 has applied the domain (a committed change reaches followers a moment later). */
async function rootPem (file: string, domain: string): Promise<string> {
  await waitFor(async () => (JSON.parse(await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n3', '--', 'dcloud', 'domain', '--json'])) as DomainView).domain === domain ? true : undefined, 10_000, `n3 to apply the domain ${domain}`)
  await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n3', '--', 'dcloud', 'domain', 'ca', '-o', file])
  return file
}

describe('the front door on a 3-node lab', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dcloud-tfront-'))
    await lab.up(3)
    ips = Object.fromEntries((await lab.lab.state()).nodes.map(n => [n.name, n.ip]))
    await waitFor(async () => (await Promise.all(NODES.map(async n => (await lab.status(n)).leader))).every(l => l !== null) ? true : undefined, 60_000, 'a leader')
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'install', HELLO, '--node', 'n2'])
    await waitFor(async () => (await apps()).find(a => a.name === 'hello' && a.state === 'running' && a.node === 'n2'), 90_000, 'hello running on n2')
  }, 300_000)

  afterAll(async () => {
    await lab.down()
    await rm(dir, { recursive: true, force: true })
  }, 120_000)

  it('serves hello at https://hello.dcloud.home.arpa through every node\'s Caddy, verified against the cluster CA', async () => {
    const ca = await rootPem(join(dir, 'root.pem'), 'dcloud.home.arpa')
    expect(await readFile(ca, 'utf8')).toMatch(/^-----BEGIN CERTIFICATE-----\n/)
    const container = await helloContainer('n2')
    expect(container).toMatch(/^[0-9a-f]{12}$/)
    for (const node of NODES) {
      const { value } = await waitFor(async () => { const r = await curl(node, 'hello.dcloud.home.arpa', ca); return r.code === 0 && r.body.includes('hello from') ? r : undefined }, 20_000, `hello through ${node}`)
      expect(value.body, node).toContain(`hello from ${container}`)
    }
    // Without the root, curl refuses the certificate (exit 60): the check above is real.
    const untrusted = await curl('n1', 'hello.dcloud.home.arpa', null)
    expect(untrusted.code).toBe(60)
    // Every node's front door: hello is local on n2, forwarded to n2 elsewhere.
    for (const node of NODES) {
      const routes = (await lab.metrics(node)).frontDoor?.routes
      expect(routes, node).toEqual([node === 'n2' ? { name: 'hello', host: 'hello.dcloud.home.arpa', kind: 'local' } : { name: 'hello', host: 'hello.dcloud.home.arpa', kind: 'remote', node: 'n2' }])
    }
  }, 120_000)

  it('lists the app by its URL first', async () => {
    const out = await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n3', '--', 'dcloud', 'app', 'ls'])
    expect(out.split('\n')[0]).toMatch(/^URL\s+APP\s+NODE/)
    expect(out).toMatch(/^https:\/\/hello\.dcloud\.home\.arpa\/\s+hello 1\.0\.0\s+n2\s+running/m)
  })

  it('follows the app when it moves: every node\'s front door answers with the new container, the old node\'s without a failed request', async () => {
    const before = await helloContainer('n2')
    // A client at the old node's front door throughout the move: its copy stops only once requests go to the new one.
    const ca0 = join(dir, 'root.pem')
    let moving = true
    const answers: string[] = []
    const poller = (async () => {
      while (moving) {
        const r = await curl('n2', 'hello.dcloud.home.arpa', ca0)
        answers.push(r.code === 0 && r.body.includes('hello from') ? 'ok' : `curl ${r.code}: ${r.body.slice(0, 80)}${r.stderr.slice(0, 80)}`)
      }
    })()
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'move', 'hello', 'n3'], { timeoutMs: 180_000 })
    await waitFor(async () => (await helloContainer('n2')) === '' ? true : undefined, 30_000, 'the old copy gone from n2')
    moving = false
    await poller
    process.stderr.write(`stateless move: ${answers.length} requests at n2's front door during the move, ${answers.filter(a => a !== 'ok').length} failed\n`)
    expect(answers.length).toBeGreaterThan(2)
    expect(answers.filter(a => a !== 'ok')).toEqual([])
    await waitFor(async () => (await apps()).find(a => a.name === 'hello' && a.state === 'running' && a.node === 'n3'), 90_000, 'hello running on n3')
    const after = await helloContainer('n3')
    expect(after).toMatch(/^[0-9a-f]{12}$/)
    expect(after).not.toBe(before)
    const ca = join(dir, 'root.pem')
    for (const node of NODES) {
      const { ms } = await waitFor(async () => { const r = await curl(node, 'hello.dcloud.home.arpa', ca); return r.body.includes(`hello from ${after}`) ? true : undefined }, 20_000, `hello on n3 through ${node}`)
      expect(ms, node).toBeLessThan(20_000)
    }
  }, 240_000)

  it('changes domain on every node: the new name answers, verified against the new root', async () => {
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n2', '--', 'dcloud', 'domain', 'set', 'tfront.home.arpa'])
    const ca = await rootPem(join(dir, 'root2.pem'), 'tfront.home.arpa')
    for (const node of NODES) {
      await waitFor(async () => { const r = await curl(node, 'hello.tfront.home.arpa', ca); return r.code === 0 && r.body.includes('hello from') ? true : undefined }, 20_000, `hello.tfront.home.arpa through ${node}`)
    }
    // The old root does not vouch for the new name (it is name-constrained to the old domain).
    expect((await curl('n1', 'hello.tfront.home.arpa', join(dir, 'root.pem'))).code).not.toBe(0)
  }, 120_000)

  it('gives a killed Caddy its configuration back once it is started again', async () => {
    const before = (await lab.metrics('n1')).frontDoor?.reloadsAfterLoss ?? 0
    await lab.cmd('caddy', 'n1', '--kill')
    const ca = join(dir, 'root2.pem')
    expect((await curl('n1', 'hello.tfront.home.arpa', ca)).code).not.toBe(0)
    await lab.cmd('caddy', 'n1', '--start')
    const { ms } = await waitFor(async () => { const r = await curl('n1', 'hello.tfront.home.arpa', ca); return r.code === 0 && r.body.includes('hello from') ? true : undefined }, 15_000, 'n1 serving again')
    expect(ms).toBeLessThan(15_000)
    expect((await lab.metrics('n1')).frontDoor?.reloadsAfterLoss).toBeGreaterThan(before)
  }, 60_000)

  it('refuses an app name that would shadow a host of the cluster', async () => {
    const r = await dcloud(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'install', HELLO, '--name', 'auth', '--no-wait'])
    expect(r.code).not.toBe(0)
    expect(r.stderr).toMatch(/auth is reserved for the cluster itself/)
    expect((await apps()).map(a => a.name)).toEqual(['hello'])
  }, 60_000)

  // Last: it kills the node hello runs on (n3, since the move).
  it('follows the app when its node dies: the gap a client sees at the name is the app\'s own downtime, plus about a second', async () => {
    const host = 'hello.tfront.home.arpa'
    const ca = join(dir, 'root2.pem')
    const before = await helloContainer('n3')
    expect((await curl('n1', host, ca)).body).toContain(`hello from ${before}`)
    const killedAt = Date.now()
    await lab.cmd('kill', 'n3')
    // A client at n1's front door, as a browser would keep asking.
    const { value: answered } = await waitFor(async () => {
      const r = await curl('n1', host, ca)
      const m = /hello from ([0-9a-f]{12})/.exec(r.body)
      return m !== null && m[1] !== before ? { at: Date.now(), container: m[1] as string } : undefined
    }, 120_000, 'hello answering again at its name', 100)
    // The app's own downtime: until its new container started, by the Docker that runs it (asked of
    // both survivors: a view of the cluster may still list the dead node's copy for a few seconds).
    // Ready means its own healthcheck passed (hello's runs every second): the first passing probe's end, by Docker.
    const found = await Promise.all(['n1', 'n2'].map(async n => ({ n, r: await lab.exec(n, ['docker', 'inspect', '--format', '{{json .State.Health.Log}}', answered.container]) })))
    const where = found.filter(f => f.r.code === 0)
    expect(where.map(f => f.n)).toHaveLength(1)
    const node = where[0]?.n as string
    const probes = JSON.parse(where[0]?.r.stdout.trim() ?? '[]') as Array<{ End: string, ExitCode: number }>
    const started = Date.parse(probes.find(p => p.ExitCode === 0)?.End ?? '')
    const downtime = started - killedAt
    const gap = answered.at - killedAt
    process.stderr.write(`hello's node killed: the app was ready again (healthy) on ${node} after ${downtime} ms; a client at n1's front door got it after ${gap} ms (${gap - downtime} ms more)\n`)
    expect(downtime).toBeGreaterThan(0)
    // The name follows within gossip's beat and a render: the client waits for the app, not for the front door.
    expect(gap - downtime).toBeLessThan(2500)
  }, 180_000)
})
