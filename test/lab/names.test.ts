/**
 * Names in the home on a 2-node lab of its own (`tdns2`): each node runs the
 * private DNS responder (`dcloud dns-server`, port 53 of its namespace) from
 * the zone its agent writes, and announces the apps over mDNS.
 *
 * From another node's namespace: `dig` (the real one) resolves
 * hello.DOMAIN to both nodes' addresses, and an HTTPS request to the name,
 * at an address dig gave, trusting only the cluster CA's root, is answered by
 * hello; a name outside the zone is REFUSED, an unknown app NXDOMAIN; after
 * an install and a remove the answer follows (measured). Over mDNS, a query
 * for hello.local (as a phone asks, and as a one-shot resolver asks) gets the
 * nodes' addresses, and plain HTTP to the name there reaches hello; a name
 * another device holds makes the app NAME-2.local. A killed node's
 * responder dies with it, and the other node stops giving its address. A
 * client from outside the home (a 203.0.113.0/24 address) gets no answer. A
 * third node added with --no-mdns answers DNS but announces nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LabHandle, dcloudOk, waitFor, type Run } from './harness.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { isRunning } from '../../scripts/lab/lab.ts'
import type { AppView } from '../../proto/api.ts'

const lab = new LabHandle('tdns2')
const HELLO = join(PROJECT_ROOT, 'apps', 'examples', 'hello')
const MDNS_TOOL = join(PROJECT_ROOT, 'test', 'lab', 'mdns-tool.ts')
const DOMAIN = 'dcloud.home.arpa'
let dir: string
let ips: Record<string, string>
const started: ChildProcess[] = []

/** A command run from the test itself (root, the machine's namespace). */
async function sh (cmd: string[], timeoutMs = 15_000): Promise<Run> {
  return await new Promise((resolve) => {
    execFile(cmd[0] ?? '', cmd.slice(1), { timeout: timeoutMs }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout: String(stdout), stderr: String(stderr) })
    })
  })
}

/** A program run in `node`'s namespace directly (nsenter: no CLI start-up between polls). */
async function inNode (node: string, cmd: string[], timeoutMs = 10_000): Promise<Run> {
  return await sh(['nsenter', `--net=/run/netns/${lab.lab.nodeNs(node)}`, '--', ...cmd], timeoutMs)
}

/** dig from `from`'s namespace to `server`'s responder: the status and the addresses answered. */
async function dig (from: string, server: string, name: string, extra: string[] = []): Promise<{ status: string, addresses: string[], text: string }> {
  const r = await inNode(from, ['dig', '+tries=1', '+timeout=2', `@${ips[server] ?? '?'}`, name, 'A', ...extra])
  const status = /status: ([A-Z]+)/.exec(r.stdout)?.[1] ?? `no answer (exit ${r.code}): ${r.stdout}${r.stderr}`
  const answer = r.stdout.split(';; ANSWER SECTION:\n')[1]?.split('\n\n')[0] ?? ''
  const addresses = answer.split('\n').map(l => l.split(/\s+/)).filter(f => f[3] === 'A').map(f => f[4] ?? '').sort()
  return { status, addresses, text: r.stdout }
}

interface Heard { from: string, address: string, ttl: number, id?: number, port?: number }

/** An mDNS query for `name` from `from`'s namespace (mdns-tool.ts): the A records heard. */
async function mdns (from: string, mode: 'query' | 'oneshot', name: string): Promise<Heard[]> {
  const r = await inNode(from, [process.execPath, MDNS_TOOL, mode, name, ips[from] ?? '?'])
  if (r.code !== 0) throw new Error(`mdns-tool ${mode} ${name}: exit ${r.code}: ${r.stderr}`)
  return r.stdout.split('\n').filter(l => l !== '').map(l => JSON.parse(l) as Heard)
}

async function apps (): Promise<AppView[]> {
  return JSON.parse(await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'ls', '--json'])) as AppView[]
}

/** Polls every 50 ms: how long until `check` holds, from now. */
async function timeUntil (check: () => Promise<boolean>, what: string): Promise<number> {
  return (await waitFor(async () => (await check()) ? true : undefined, 10_000, what, 50)).ms
}

describe('names in the home on a 2-node lab (a third added at the end)', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dcloud-tdns2-'))
    await lab.up(2)
    ips = Object.fromEntries((await lab.lab.state()).nodes.map(n => [n.name, n.ip]))
    await waitFor(async () => (await Promise.all(['n1', 'n2'].map(async n => (await lab.status(n)).leader))).every(l => l !== null) ? true : undefined, 60_000, 'a leader')
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'install', HELLO, '--node', 'n2'])
    await waitFor(async () => (await apps()).find(a => a.name === 'hello' && a.state === 'running'), 90_000, 'hello running')
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'domain', 'ca', '-o', join(dir, 'root.pem')])
  }, 300_000)

  afterAll(async () => {
    for (const c of started) if (c.pid !== undefined && c.exitCode === null) { try { process.kill(c.pid, 'SIGTERM') } catch {} }
    await lab.down()
    await rm(dir, { recursive: true, force: true })
  }, 120_000)

  it('resolves hello.DOMAIN through either node\'s DNS to both nodes, and HTTPS to an address it gave reaches hello', async () => {
    for (const [from, server] of [['n1', 'n2'], ['n2', 'n1']] as const) {
      const r = await dig(from, server, `hello.${DOMAIN}`)
      expect(r.status, r.text).toBe('NOERROR')
      expect(r.addresses).toEqual([ips.n1, ips.n2].sort())
      expect(r.text).toMatch(/flags: qr aa/)
    }
    // Any address answered reaches hello (the first front door forwards when hello is on the other node).
    for (const address of (await dig('n1', 'n2', `hello.${DOMAIN}`)).addresses) {
      const r = await inNode('n1', ['curl', '-sS', '--max-time', '5', '--cacert', join(dir, 'root.pem'), '--resolve', `hello.${DOMAIN}:443:${address}`, `https://hello.${DOMAIN}/`])
      expect(r.code, r.stderr).toBe(0)
      expect(r.stdout).toMatch(/hello from [0-9a-f]{12}/)
    }
    // Case-insensitive, over TCP too; the bare domain and its SOA.
    expect((await dig('n1', 'n2', `HeLLo.${DOMAIN.toUpperCase()}`, ['+tcp'])).addresses).toEqual([ips.n1, ips.n2].sort())
    expect((await dig('n1', 'n2', DOMAIN)).addresses).toEqual([ips.n1, ips.n2].sort())
    expect((await inNode('n1', ['dig', '+short', `@${ips.n2}`, DOMAIN, 'SOA'])).stdout).toMatch(new RegExp(`^ns\\.${DOMAIN.replace(/\./g, '\\.')}\\. hostmaster\\.`))
  }, 60_000)

  it('refuses names outside the zone and answers NXDOMAIN for an app that does not exist', async () => {
    for (const name of ['example.org', 'home.arpa', `x${DOMAIN}`]) expect((await dig('n1', 'n2', name)).status, name).toBe('REFUSED')
    for (const name of [`nothere.${DOMAIN}`, `auth.${DOMAIN}`, `a.hello.${DOMAIN}`]) {
      const r = await dig('n1', 'n2', name)
      expect(r.status, name).toBe('NXDOMAIN')
      expect(r.text).toMatch(/AUTHORITY: 1/)
    }
  }, 60_000)

  it('gives no answer to a client from outside the home (203.0.113.7 on the lab\'s switch), whose other requests get through', async () => {
    // A "public" client: a namespace of its own on the lab's switch, with a documentation address;
    // n2 gets a route back to it, so that only the responder's own check can keep the answer from it.
    const pub = `dcl-${lab.name}-pub`
    const ip = async (...args: string[]): Promise<void> => { const r = await sh(['ip', ...args]); if (r.code !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`) }
    await ip('netns', 'add', pub)
    try {
      await ip('-n', pub, 'link', 'set', 'lo', 'up')
      await ip('link', 'add', 'eth0', 'netns', pub, 'type', 'veth', 'peer', 'name', 'pub', 'netns', lab.lab.hubNs)
      await ip('-n', lab.lab.hubNs, 'link', 'set', 'pub', 'master', 'br0', 'up')
      await ip('-n', pub, 'addr', 'add', '203.0.113.7/24', 'dev', 'eth0')
      await ip('-n', pub, 'link', 'set', 'eth0', 'up')
      await ip('-n', pub, 'route', 'add', '10.213.0.0/24', 'dev', 'eth0')
      // The lab gives every node this route already (its public client, `lab client --public`); replace keeps it either way.
      await ip('-n', lab.lab.nodeNs('n2'), 'route', 'replace', '203.0.113.0/24', 'dev', 'eth0')
      const fromPub = async (cmd: string[]): Promise<Run> => await sh(['nsenter', `--net=/run/netns/${pub}`, '--', ...cmd])
      // The path works both ways: n2's front door answers it.
      const ca = await fromPub(['curl', '-sS', '--max-time', '5', '-o', '/dev/null', '-w', '%{http_code}', `http://${ips.n2 ?? '?'}/ca.pem`])
      expect(ca.stdout, ca.stderr).toBe('200')
      // Its DNS does not, over UDP or TCP.
      for (const extra of [[], ['+tcp']]) {
        const r = await fromPub(['dig', '+tries=1', '+timeout=2', `@${ips.n2 ?? '?'}`, `hello.${DOMAIN}`, 'A', ...extra])
        expect(r.stdout, extra.join()).not.toMatch(/status:/)
        expect(r.code).not.toBe(0)
      }
      // While a client at home still gets its answer.
      expect((await dig('n1', 'n2', `hello.${DOMAIN}`)).status).toBe('NOERROR')
    } finally {
      await sh(['ip', 'netns', 'del', pub])
    }
  }, 60_000)

  it('follows an install and a remove within a second or two on every node', async () => {
    const name = `greet.${DOMAIN}`
    expect((await dig('n1', 'n1', name)).status).toBe('NXDOMAIN')
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'install', HELLO, '--name', 'greet', '--no-wait'])
    // From the moment the install is committed (the command returned) until both nodes answer.
    const installed = await Promise.all(['n1', 'n2'].map(async server => await timeUntil(async () => (await dig(server === 'n1' ? 'n2' : 'n1', server, name)).status === 'NOERROR', `${name} on ${server}`)))
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n2', '--', 'dcloud', 'app', 'rm', 'greet'])
    const removed = await Promise.all(['n1', 'n2'].map(async server => await timeUntil(async () => (await dig(server === 'n1' ? 'n2' : 'n1', server, name)).status === 'NXDOMAIN', `${name} gone on ${server}`)))
    process.stdout.write(`private DNS follows: install ${installed.map(ms => `${Math.round(ms)} ms`).join(', ')}; remove ${removed.map(ms => `${Math.round(ms)} ms`).join(', ')} (n1, n2)\n`)
    for (const ms of [...installed, ...removed]) expect(ms).toBeLessThan(2000)
  }, 90_000)

  it('answers hello.local over mDNS with the nodes\' addresses, and plain HTTP to the name there reaches hello', async () => {
    const heard = await waitFor(async () => { const h = await mdns('n1', 'query', 'hello.local'); return new Set(h.map(x => x.from)).size >= 2 ? h : undefined }, 15_000, 'hello.local from both nodes')
    expect([...new Set(heard.value.map(h => h.address))].sort()).toEqual([ips.n1, ips.n2].sort())
    // Each node answers with its own address.
    for (const h of heard.value) expect(h.address).toBe(h.from)
    // A one-shot resolver (from another port than 5353) gets unicast answers with its query's id.
    const oneshot = await mdns('n2', 'oneshot', 'HELLO.local')
    expect(oneshot.map(h => h.address).sort()).toEqual([ips.n1, ips.n2].sort())
    for (const h of oneshot) expect(h.id).toBe(4711)
    for (const h of heard.value) {
      const r = await inNode('n2', ['curl', '-sS', '--max-time', '5', '--resolve', `hello.local:80:${h.address}`, 'http://hello.local/'])
      expect(r.code, r.stderr).toBe(0)
      expect(r.stdout).toMatch(/hello from [0-9a-f]{12}/)
    }
  }, 60_000)

  it('takes NAME-2.local when another device holds NAME.local', async () => {
    // Another device on the LAN (its own process and address, in n1's namespace) holds web.local.
    const device = spawn('nsenter', [`--net=/run/netns/${lab.lab.nodeNs('n1')}`, '--', process.execPath, MDNS_TOOL, 'claim', 'web.local', '10.213.0.99', ips.n1 ?? '?'], { stdio: ['ignore', 'pipe', 'inherit'] })
    started.push(device)
    await new Promise<void>((resolve, reject) => {
      device.stdout?.on('data', (d: Buffer) => { if (d.toString().includes('ready')) resolve() })
      device.once('exit', (code) => { reject(new Error(`mdns-tool claim exited ${code}`)) })
    })
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'install', HELLO, '--name', 'web', '--no-wait'])
    // Announcements heard during the query count too: the addresses, once each.
    const addresses = async (name: string): Promise<string[]> => [...new Set((await mdns('n2', 'query', name)).map(h => h.address))].sort()
    const { value, ms } = await waitFor(async () => { const a = await addresses('web-2.local'); return a.length >= 2 ? a : undefined }, 20_000, 'web-2.local from both nodes')
    process.stdout.write(`web-2.local answered by both nodes ${Math.round(ms)} ms after the install returned\n`)
    expect(value).toEqual([ips.n1, ips.n2].sort())
    // web.local stays the other device's: no node answers for it.
    expect(await addresses('web.local')).toEqual(['10.213.0.99'])
    for (const node of ['n1', 'n2']) expect((await lab.metrics(node)).names?.mdns, node).toEqual({ hello: 'hello.local', web: 'web-2.local' })
    await waitFor(async () => (await apps()).find(a => a.name === 'web' && a.state === 'running'), 60_000, 'web running')
    const r = await waitFor(async () => { const c = await inNode('n2', ['curl', '-sS', '--max-time', '5', '--resolve', `web-2.local:80:${ips.n2 ?? '?'}`, 'http://web-2.local/']); return /hello from/.test(c.stdout) ? c : undefined }, 20_000, 'http://web-2.local/ served')
    expect(r.value.stdout).toMatch(/hello from [0-9a-f]{12}/)
    if (device.pid !== undefined) process.kill(device.pid, 'SIGTERM')
  }, 120_000)

  it('drops a killed node from the answers (its responder dies with it) and takes it back when it returns', async () => {
    const pid = (await lab.lab.node('n2')).dnsPid ?? null
    expect(pid).not.toBeNull()
    const killedAt = performance.now()
    await lab.cmd('kill', 'n2')
    const killMs = performance.now() - killedAt
    await waitFor(async () => isRunning(pid ?? 0) ? undefined : true, 5000, 'n2\'s responder to be gone')
    expect((await dig('n1', 'n2', `hello.${DOMAIN}`)).status).toMatch(/^no answer/)
    // Asked in n1's own namespace: n2's, the other client so far, is down with it.
    await timeUntil(async () => { const r = await dig('n1', 'n1', `hello.${DOMAIN}`); return r.status === 'NOERROR' && r.addresses.join() === ips.n1 }, 'n2 out of n1\'s answers')
    // n2 is silent from the moment its link goes down, inside `lab kill` (which also starts a CLI and unmounts: seconds
    // on a busy machine). n1 stops giving its address once it is suspect (2.5 heartbeats of 1 s after the last one
    // heard) and the zone is written (at most 1 s later): under 4.5 s after the kill returned.
    const dropped = performance.now() - killedAt
    process.stdout.write(`a killed node left the answers ${Math.round(dropped)} ms after the kill began, ${Math.round(dropped - killMs)} ms after it returned\n`)
    expect(dropped - killMs).toBeLessThan(4500)
    await lab.cmd('start', 'n2')
    await waitFor(async () => { const r = await dig('n1', 'n2', `hello.${DOMAIN}`); return r.addresses.join() === [ips.n1, ips.n2].sort().join() ? true : undefined }, 30_000, 'n2 answering with both nodes again')
  }, 120_000)

  it('announces nothing over mDNS from a node whose agent runs with --no-mdns, while its DNS answers', async () => {
    // n3 finds the cluster through --peer, as a node without mDNS must (one per node: it dials only those).
    const n3 = (await lab.cmd('add', '--no-images', '--', '--no-mdns', '--peer', `/ip4/${ips.n1 ?? '?'}/tcp/7370`, '--peer', `/ip4/${ips.n2 ?? '?'}/tcp/7370`)).trim().split('\n').pop() ?? ''
    expect(n3).toBe('n3')
    ips = Object.fromEntries((await lab.lab.state()).nodes.map(n => [n.name, n.ip]))
    // n3 knows hello (its zone has it, with all three nodes): it could announce it, and does not.
    const all = [ips.n1, ips.n2, ips.n3].sort().join()
    await waitFor(async () => (await dig('n1', 'n3', `hello.${DOMAIN}`)).addresses.join() === all ? true : undefined, 60_000, 'n3 answering hello with the three nodes')
    await waitFor(async () => (await dig('n3', 'n1', `hello.${DOMAIN}`)).addresses.join() === all ? true : undefined, 30_000, 'n1 answering hello with the three nodes')
    const from = new Set<string>()
    for (let i = 0; i < 3; i++) for (const h of await mdns('n3', 'query', 'hello.local')) from.add(h.from)
    expect([...from].sort()).toEqual([ips.n1, ips.n2].sort())
  }, 180_000)
})
