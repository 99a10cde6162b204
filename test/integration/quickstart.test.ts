/**
 * The README's quick start on this machine's own Docker engine: `npm start`
 * (scripts/start.sh) leaves the example apps' image in the engine and runs a
 * front door (Caddy, admin on a Unix socket) and a one-node agent on its
 * defaults (here with its data, its runtime directory, Caddy's socket and the
 * HTTPS port moved aside, and no mDNS: multicast stays off this machine's
 * interfaces); `dcloud app install apps/examples/hello` answers at the URL it
 * prints, https://qshello.dcloud.home.arpa/, through the front door (reached
 * on loopback, trusting only the cluster's root), and its web port is not
 * published on the machine.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { dcloud, waitFor, type Run } from '../lab/harness.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'

async function sh (cmd: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<Run> {
  return await new Promise((resolve) => {
    execFile(cmd, args, { timeout: opts.timeoutMs ?? 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : 1, stdout: String(stdout), stderr: String(stderr) })
    })
  })
}

/** The front door's HTTPS port, moved aside from 443 (the machine's own). */
const HTTPS_PORT = 18000 + (process.pid % 1000)
let dir: string
let agent: ChildProcess | null = null
let env: NodeJS.ProcessEnv

describe('the quick start', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dcloud-quickstart-'))
    env = { ...process.env, DCLOUD_DATA_DIR: join(dir, 'data'), DCLOUD_RUNTIME_DIR: join(dir, 'run'), DCLOUD_API: `unix:${join(dir, 'run', 'api.sock')}` }
    const setup = await sh(join(PROJECT_ROOT, 'scripts', 'setup.sh'), ['--docker'], { timeoutMs: 600_000 })
    expect(setup.code, setup.stderr).toBe(0)
    env.DCLOUD_CADDY_ADMIN = join(dir, 'caddy', 'admin.sock')
    agent = spawn(join(PROJECT_ROOT, 'scripts', 'start.sh'), ['--no-mdns', '--name', 'qs', '--data-dir', join(dir, 'data'), '--listen', '/ip4/0.0.0.0/tcp/17470', '--api', 'off', '--https-port', String(HTTPS_PORT), '--http-port', 'off'], { env, stdio: ['ignore', 'ignore', 'pipe'] })
    await waitFor(async () => {
      const r = await dcloud(['status', '--json'], { env })
      return r.code === 0 && (JSON.parse(r.stdout) as { leader: string | null }).leader !== null ? true : undefined
    }, 60_000, 'the one-node cluster to elect itself', 500)
  }, 900_000)

  afterAll(async () => {
    await dcloud(['app', 'rm', 'qshello'], { env }).catch(() => null)
    if (agent?.pid !== undefined && agent.exitCode === null) {
      agent.kill('SIGTERM')
      await new Promise(resolve => { agent?.once('exit', resolve); setTimeout(resolve, 10_000) })
    }
    // The containers the test made: labelled with the app's name by the runtime.
    const left = await sh('docker', ['ps', '-aq', '--filter', 'label=dcloud.app=qshello'])
    if (left.stdout.trim() !== '') await sh('docker', ['rm', '-f', ...left.stdout.trim().split('\n')])
    await rm(dir, { recursive: true, force: true })
  }, 60_000)

  it('installs the example app, which answers at the URL printed, through the front door only', async () => {
    const r = await dcloud(['app', 'install', join(PROJECT_ROOT, 'apps', 'examples', 'hello'), '--name', 'qshello'], { env, timeoutMs: 120_000 })
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toMatch(/^qshello is running on qs: https:\/\/qshello\.dcloud\.home\.arpa\/$/m)
    const ca = join(dir, 'root.pem')
    const got = await dcloud(['domain', 'ca', '-o', ca], { env })
    expect(got.code, got.stderr).toBe(0)
    // The front door loads the new route within a second or two of the app starting.
    const { value: page } = await waitFor(async () => {
      const c = await sh('curl', ['-sS', '--max-time', '3', '--resolve', `qshello.dcloud.home.arpa:${HTTPS_PORT}:127.0.0.1`, '--cacert', ca, `https://qshello.dcloud.home.arpa:${HTTPS_PORT}/`])
      return c.code === 0 && c.stdout.includes('hello from') ? c.stdout : undefined
    }, 20_000, 'hello through the front door', 200)
    expect(page).toMatch(/<h1>hello from [0-9a-f]{12}<\/h1><p>Served by Dentropy Cloud\.<\/p>/)
    // Its web port is not published on the machine: the front door is the way in.
    const ports = await sh('docker', ['ps', '--filter', 'label=dcloud.app=qshello', '--format', '{{.Ports}}'])
    expect(ports.stdout.trim()).toBe('')
  }, 180_000)
})
