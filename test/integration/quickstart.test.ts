/**
 * The README's quick start on this machine's own Docker engine: `setup.sh
 * --docker` (what `npm start` runs) leaves the example apps' image in the
 * engine, a one-node agent starts on its defaults (here with its data, its
 * runtime directory and its ports moved aside, and no mDNS: multicast stays
 * off this machine's interfaces), and `dcloud app install apps/examples/hello`
 * answers at the address it prints (reached on loopback, the port the node
 * published).
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

let dir: string
let agent: ChildProcess | null = null
let env: NodeJS.ProcessEnv

describe('the quick start', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dcloud-quickstart-'))
    env = { ...process.env, DCLOUD_DATA_DIR: join(dir, 'data'), DCLOUD_RUNTIME_DIR: join(dir, 'run'), DCLOUD_API: `unix:${join(dir, 'run', 'api.sock')}` }
    const setup = await sh(join(PROJECT_ROOT, 'scripts', 'setup.sh'), ['--docker'], { timeoutMs: 600_000 })
    expect(setup.code, setup.stderr).toBe(0)
    agent = spawn(join(PROJECT_ROOT, 'bin', 'dcloud'), ['agent', '--no-mdns', '--name', 'qs', '--data-dir', join(dir, 'data'), '--listen', '/ip4/0.0.0.0/tcp/17470', '--api', 'off'], { env, stdio: ['ignore', 'ignore', 'pipe'] })
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

  it('installs the example app, which answers at the address printed', async () => {
    const r = await dcloud(['app', 'install', join(PROJECT_ROOT, 'apps', 'examples', 'hello'), '--name', 'qshello'], { env, timeoutMs: 120_000 })
    expect(r.code, r.stderr).toBe(0)
    const m = /qshello is running on qs at http:\/\/[^:]+:(\d+)/.exec(r.stdout)
    expect(m, r.stdout).not.toBeNull()
    const res = await fetch(`http://127.0.0.1:${m![1] as string}/`)
    expect(res.status).toBe(200)
    expect(await res.text()).toMatch(/<h1>hello from [0-9a-f]{12}<\/h1><p>Served by Dentropy Cloud\.<\/p>/)
  }, 180_000)
})
