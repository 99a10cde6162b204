/**
 * App permissions on real engines (issue 11), a 2-node lab of its own
 * (`tperm`): an app asking for NET_ADMIN and a host path is refused without
 * a grant (by the CLI, and by the agent through the API whatever the client
 * sends), installed with `--grant`, and `docker inspect` shows exactly those
 * powers; revoking NET_ADMIN redeploys it without. An app asking for a device
 * lands only on the node that has it.
 *
 * Lab nodes share this machine's /dev, so each is given its own devices list
 * (`lab up --devices`): n1 none, n2 /dev/fuse. /dev/fuse because this machine
 * has no /dev/dri (a device Docker maps must exist on the machine); the
 * scheduler's rule is the same for any device.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LabHandle, dcloud, dcloudOk, waitFor } from './harness.ts'
import { apiRequest, ApiCallError } from '../../agent/cli/client.ts'
import { loadApp } from '../../apps/catalog.ts'
import { containerName } from '../../agent/runtime/apps.ts'
import type { AppView } from '../../proto/api.ts'

const lab = new LabHandle('tperm')
const SHARE = '/srv/dcloud-tperm-share'
const BUSYBOX = 'dcloud/busybox:lab'
let dir: string

const app = (id: string, extra: string): string => `services:
  main:
    image: ${BUSYBOX}
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
${extra}
x-dcloud:
  id: ${id}
`
const NETADM = app('netadm', `    cap_add: [NET_ADMIN]
    volumes: ["${SHARE}:/share:ro"]`)
const FUSE = app('fuser', '    devices: ["/dev/fuse:/dev/fuse"]')
const NEEDED = `net_admin,path:${SHARE}:ro`

async function apps (): Promise<AppView[]> {
  return JSON.parse(await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'ls', '--json'])) as AppView[]
}

async function inspect (node: string, name: string): Promise<{ HostConfig: Record<string, unknown>, Id: string }> {
  const r = await lab.exec(node, ['docker', 'inspect', name])
  if (r.code !== 0) throw new Error(`docker inspect ${name} on ${node}: ${r.stderr}`)
  return (JSON.parse(r.stdout) as Array<{ HostConfig: Record<string, unknown>, Id: string }>)[0]!
}

async function running (name: string): Promise<AppView> {
  return (await waitFor(async () => (await apps()).find(a => a.name === name && a.state === 'running'), 90_000, `${name} running`)).value
}

describe('app permissions on a 2-node lab', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dcloud-tperm-'))
    await mkdir(SHARE, { recursive: true })
    await writeFile(join(dir, 'netadm.yaml'), NETADM)
    await writeFile(join(dir, 'fuser.yaml'), FUSE)
    await dcloud(['lab', '--lab', lab.name, 'down'])
    await dcloudOk(['lab', '--lab', lab.name, 'up', '--nodes', '2', '--devices', 'n1=none', '--devices', 'n2=/dev/fuse'])
    // The API refuses changes while no leader is elected: wait for one, as both nodes see it.
    await waitFor(async () => (await Promise.all(['n1', 'n2'].map(async n => (await lab.status(n)).leader))).every(l => l !== null) ? true : undefined, 60_000, 'a leader')
  }, 300_000)

  afterAll(async () => {
    await lab.down()
    await rm(dir, { recursive: true, force: true })
    await rm(SHARE, { recursive: true, force: true })
  }, 120_000)

  it('refuses an app whose powers are not granted: the CLI names the --grant, the API refuses whatever the client sends', async () => {
    const cli = await lab.exec('n1', ['dcloud', 'app', 'install', join(dir, 'netadm.yaml'), '--yes', '--no-wait'])
    expect(cli.code).not.toBe(0)
    expect(cli.stderr).toMatch(/asks for permissions that were not granted/)
    expect(cli.stderr).toMatch(/manage the node's network \(NET_ADMIN\)/)
    expect(cli.stderr).toContain(`--grant ${NEEDED}`)

    const { manifest } = await loadApp(join(dir, 'netadm.yaml'))
    const socket = { socketPath: lab.lab.agentSocket('n2'), describe: 'n2' }
    const refused = async (body: unknown): Promise<ApiCallError> => {
      try {
        await apiRequest('POST', '/v1/apps', body, socket, 30_000)
      } catch (err) {
        if (err instanceof ApiCallError) return err
        throw err
      }
      throw new Error('installed')
    }
    // No grants at all, half of them, one the app did not ask for, a name that is none, a path through "..".
    expect((await refused({ name: 'netadm', manifest, pinnedNode: null })).message).toMatch(/grants: not granted: net_admin .*path:\/srv\/dcloud-tperm-share:ro/)
    expect((await refused({ name: 'netadm', manifest, pinnedNode: null, grants: ['net_admin'] })).message).toMatch(/not granted: path:\/srv\/dcloud-tperm-share:ro/)
    expect((await refused({ name: 'netadm', manifest, pinnedNode: null, grants: NEEDED.split(',').concat('sys_module') })).message).toMatch(/grants\[2\]: the app does not ask for sys_module/)
    expect((await refused({ name: 'netadm', manifest, pinnedNode: null, grants: ['net-admin'] })).message).toMatch(/change\.app\.grants\[0\]: "net-admin" is not a permission/)
    expect((await refused({ name: 'netadm', manifest, pinnedNode: null, grants: ['path:/srv/../etc:ro'] })).message).toMatch(/grants\[0\]: .*must be absolute and plain/)
    expect(await apps()).toEqual([])
  }, 120_000)

  it('installs with --grant; docker inspect shows exactly those powers; a revoke redeploys without NET_ADMIN', async () => {
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'install', join(dir, 'netadm.yaml'), '--grant', NEEDED], { timeoutMs: 180_000 })
    const view = await running('netadm')
    expect(view.grants).toEqual(NEEDED.split(',').sort())
    const before = await inspect(view.node!, containerName('netadm', 'main'))
    expect(before.HostConfig.CapAdd).toEqual(['NET_ADMIN'])
    expect(before.HostConfig.Binds).toEqual([`${SHARE}:/share:ro`])
    expect(before.HostConfig.Privileged).toBe(false)
    expect(before.HostConfig.Devices ?? []).toEqual([])
    expect(before.HostConfig.Sysctls ?? {}).toEqual({})
    expect(before.HostConfig.NetworkMode).not.toBe('host')

    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'revoke', 'netadm', 'net_admin'])
    const after = (await waitFor(async () => {
      const v = (await apps()).find(a => a.name === 'netadm')
      if (v?.state !== 'running' || v.node === null) return undefined
      const c = await inspect(v.node, containerName('netadm', 'main')).catch(() => undefined)
      return c !== undefined && c.Id !== before.Id ? c : undefined
    }, 90_000, 'netadm redeployed after the revoke')).value
    expect(after.HostConfig.CapAdd ?? []).toEqual([])
    expect(after.HostConfig.Binds).toEqual([`${SHARE}:/share:ro`])
    const why = await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'why', 'netadm'])
    expect(why).toMatch(/asks for but not granted \(runs without\): net_admin/)
    // Revoked twice: nothing to change, said so.
    const again = await lab.exec('n1', ['dcloud', 'app', 'revoke', 'netadm', 'net_admin'])
    expect(again.code).not.toBe(0)
    expect(again.stderr).toMatch(/already runs with net_admin not granted: nothing to change/)
  }, 300_000)

  it('places an app granted a device only on the node that has it, and says why not on the other', async () => {
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'install', join(dir, 'fuser.yaml'), '--grant', 'all'], { timeoutMs: 180_000 })
    const view = await running('fuser')
    expect(view.node).toBe('n2')
    const c = await inspect('n2', containerName('fuser', 'main'))
    expect(c.HostConfig.Devices).toEqual([{ PathOnHost: '/dev/fuse', PathInContainer: '/dev/fuse', CgroupPermissions: 'rwm' }])
    // Pinned to n1, which lacks the device: it is placed nowhere, and why says so.
    await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'install', join(dir, 'fuser.yaml'), '--name', 'fuser2', '--node', 'n1', '--grant', 'all', '--no-wait'])
    const why = (await waitFor(async () => {
      const w = await dcloudOk(['lab', '--lab', lab.name, 'exec', 'n1', '--', 'dcloud', 'app', 'why', 'fuser2'])
      return /n1: needs the device \/dev\/fuse, which the node does not have/.test(w) ? w : undefined
    }, 60_000, 'app why naming the missing device')).value
    expect(why).toMatch(/n2: pinned to n1/)
    expect((await apps()).find(a => a.name === 'fuser2')?.node).toBe(null)
  }, 300_000)
})
