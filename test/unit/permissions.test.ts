import { mkdtempSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { parseManifest } from '../../apps/manifest.ts'
import { applyChange, EMPTY_STATE } from '../../agent/cluster/desired-store.ts'
import { checkHostPaths, checkStoragePath } from '../../agent/runtime/host-paths.ts'
import { parseDeviceList, readDevices } from '../../agent/status/devices.ts'
import { decodeChange, decodeDesiredApp } from '../../proto/cluster.ts'
import { checkGrants, describePermission, effectiveManifest, requestedPermissions } from '../../proto/permissions.ts'
import type { AppManifest } from '../../proto/app.ts'
import type { DesiredApp } from '../../proto/plan.ts'
import { feasible } from '../../scheduler/feasible.ts'
import { usageOf } from '../../scheduler/usage.ts'
import { plan } from '../../scheduler/plan.ts'
import { mockApp, mockInput, mockNode, mockPlacement } from '../builders.ts'

/** A compose file asking for every kind of power, as people write them. */
const POWERFUL = `
services:
  web:
    image: busybox
    cap_add: [NET_ADMIN, cap_sys_time]
    devices: ["/dev/dri:/dev/dri", "/dev/ttyUSB0:/dev/ttyACM0:rw"]
    network_mode: host
    sysctls: { net.ipv4.ip_forward: "1" }
    volumes:
      - /srv/music/:/music:ro
      - /srv/./downloads:/downloads
      - /var/run/docker.sock:/var/run/docker.sock
      - /etc:/host-etc:ro
      - /etc/localtime:/etc/localtime:ro
  db:
    image: busybox
    privileged: true
    cap_add: [NET_ADMIN]
x-dcloud:
  id: powerful
  name: Powerful
`

function manifestOf (text: string): AppManifest {
  return parseManifest(text, 'powerful.yaml').manifest
}

describe('what a manifest requests', () => {
  const m = manifestOf(POWERFUL)

  it('derives one named permission per power, each with the fields asking for it', () => {
    expect(requestedPermissions(m).map(p => [p.name, p.dangerous, p.fields])).toEqual([
      ['dangerous_path:/etc:ro', true, ['services.web.volumes[3]']],
      ['device:/dev/dri', false, ['services.web.devices[0]']],
      ['device:/dev/ttyUSB0', false, ['services.web.devices[1]']],
      ['docker_socket', true, ['services.web.volumes[2]']],
      ['host_network', false, ['services.web.network_mode']],
      ['net_admin', false, ['services.web.cap_add[0]', 'services.db.cap_add[0]']],
      ['path:/srv/downloads:rw', false, ['services.web.volumes[1]']],
      ['path:/srv/music:ro', false, ['services.web.volumes[0]']],
      ['privileged', true, ['services.db.privileged']],
      ['sys_time', false, ['services.web.cap_add[1]']],
      ['sysctl:net.ipv4.ip_forward', false, ['services.web.sysctls.net.ipv4.ip_forward']]
    ])
  })

  it('says each in plain words', () => {
    const words = Object.fromEntries(requestedPermissions(m).map(p => [p.name, p.description]))
    expect(words.net_admin).toBe('manage the node\'s network (NET_ADMIN)')
    expect(words['path:/srv/music:ro']).toBe('read the node\'s files at /srv/music')
    expect(words['dangerous_path:/etc:ro']).toMatch(/DANGEROUS/)
    expect(words['device:/dev/dri']).toBe('use the node\'s device /dev/dri')
  })

  it('asks nothing of an app with only volumes and the time-zone files', () => {
    expect(requestedPermissions(manifestOf('services: {web: {image: busybox, volumes: ["/etc/localtime:/etc/localtime:ro"]}}\nx-dcloud: {id: plain}\n'))).toEqual([])
  })

  it.each([
    ['/', 'dangerous_path:/:rw'],
    ['/var', 'dangerous_path:/var:rw'], // holds /var/lib/dcloud and /var/lib/docker
    ['/var/lib/docker/volumes', 'dangerous_path:/var/lib/docker/volumes:rw'],
    ['/run/docker.sock', 'docker_socket'],
    ['/opt/dcloud', 'dangerous_path:/opt/dcloud:rw'],
    ['/srv', 'path:/srv:rw'],
    ['/home/me/music', 'path:/home/me/music:rw']
  ])('binding %s asks for %s', (source, name) => {
    expect(requestedPermissions(manifestOf(`services: {web: {image: busybox, volumes: ["${source}:/x"]}}\nx-dcloud: {id: p}\n`)).map(p => p.name)).toEqual([name])
  })

  it('refuses a host path with ".." or a device outside /dev, naming the field', () => {
    expect(() => manifestOf('services: {web: {image: busybox, volumes: ["/srv/../etc:/x"]}}\nx-dcloud: {id: p}\n')).toThrow(/services\.web\.volumes\[0\]: the host path "\/srv\/\.\.\/etc" must be plain/)
    expect(() => manifestOf('services: {web: {image: busybox, devices: ["/etc/passwd"]}}\nx-dcloud: {id: p}\n')).toThrow(/services\.web\.devices\[0\]: the device "\/etc\/passwd" must be a plain path below \/dev/)
    expect(() => manifestOf('services: {web: {image: busybox, cap_add: [ALL]}}\nx-dcloud: {id: p}\n')).toThrow(/services\.web\.cap_add\[0\]: ALL is every capability/)
  })
})

describe('permission names', () => {
  it.each([
    ['net-admin', /"net-admin" is not a permission: permissions are/],
    ['path:/srv/../etc:ro', /must be absolute and plain/],
    ['path:/etc:ro', /holds the node itself; its permission is dangerous_path:\/etc:ro/],
    ['dangerous_path:/srv:ro', /an ordinary path; its permission is path:\/srv:ro/],
    ['device:/etc/passwd', /a device is a path below \/dev/],
    ['sysctl:', /is not a permission/],
    ['path:/srv:rx', /is not a permission/]
  ])('%s is refused', (name, problem) => {
    expect(() => describePermission(name, 'grants[0]')).toThrow(problem)
  })
})

describe('grants', () => {
  const m = manifestOf(POWERFUL)
  const all = requestedPermissions(m).map(p => p.name)

  it('installs only with every permission granted, naming what is missing and the --grant that gives it', () => {
    expect(() => { checkGrants(m, all) }).not.toThrow()
    expect(() => { checkGrants(m, all.filter(n => n !== 'net_admin')) }).toThrow(/grants: not granted: net_admin \(services\.web\.cap_add\[0\], services\.db\.cap_add\[0\]: manage the node's network \(NET_ADMIN\)\); grant them with --grant net_admin/)
  })

  it('refuses an unknown name and a grant the app did not ask for, naming the field', () => {
    expect(() => { checkGrants(m, [...all, 'sys_module']) }).toThrow(/grants\[11\]: the app does not ask for sys_module/)
    expect(() => { checkGrants(m, ['bogus']) }).toThrow(/grants\[0\]: "bogus" is not a permission/)
  })

  it('runs the app with exactly what was granted', () => {
    const granted = effectiveManifest(m, ['net_admin', 'path:/srv/music:ro', 'device:/dev/dri'])
    const web = granted.compose.services.web!
    expect(web.capAdd).toEqual(['NET_ADMIN'])
    expect(web.devices.map(d => d.host)).toEqual(['/dev/dri'])
    expect(web.networkMode).toBe('bridge')
    expect(web.sysctls).toEqual({})
    expect(web.volumes.map(v => v.source)).toEqual(['/srv/music', '/etc/localtime'])
    expect(granted.compose.services.db!.privileged).toBe(false)
    expect(effectiveManifest(m, all)).toEqual(m)
  })
})

describe('grants in the replicated state', () => {
  const m = manifestOf(POWERFUL)
  const all = requestedPermissions(m).map(p => p.name)
  const install = (grants?: string[]): DesiredApp[] => applyChange(EMPTY_STATE, { kind: 'install', app: { name: 'p', manifest: m, pinnedNode: null, ...(grants !== undefined ? { grants } : {}) } }, { index: 1, term: 1 }).apps

  it('refuses an install with powers not granted, whatever the client did; nothing is installed', () => {
    expect(() => install()).toThrow(/grants: not granted: dangerous_path:\/etc:ro/)
    expect(install(all)[0]?.grants).toEqual(all)
  })

  it('replays a committed install from before permissions (no grants) with its plain host paths granted, never skips it', () => {
    const replayed = applyChange(EMPTY_STATE, { kind: 'install', app: { name: 'p', manifest: m, pinnedNode: null } }, { index: 1, term: 1 }, { committed: true })
    expect(replayed.apps.map(a => [a.name, a.grants])).toEqual([['p', ['path:/srv/downloads:rw', 'path:/srv/music:ro']]])
  })

  it('grants and revokes on an installed app, with a new revision', () => {
    const state = { ...EMPTY_STATE, apps: install(all) }
    const after = applyChange(state, { kind: 'grants', name: 'p', grant: [], revoke: ['net_admin'] }, { index: 2, term: 1 })
    expect(after.apps[0]?.grants).toEqual(all.filter(n => n !== 'net_admin'))
    expect(after.apps[0]).toMatchObject({ revision: 2, grantsRevision: 2 })
    expect(() => applyChange(after, { kind: 'grants', name: 'p', grant: [], revoke: ['net_admin'] }, { index: 3, term: 1 })).toThrow(/p already runs with net_admin not granted: nothing to change/)
    expect(() => applyChange(state, { kind: 'grants', name: 'p', grant: ['sys_module'], revoke: [] }, { index: 2, term: 1 })).toThrow(/grant\[0\]: the app does not ask for sys_module/)
  })

  it('decodes state from before permissions with its plain host paths granted, nothing that gives the node away; refuses an unknown name in the change', () => {
    const app = { name: 'p', manifest: m, pinnedNode: null, revision: 1 }
    // Then a bind ran with a warning: an upgrade keeps /srv/music and /srv/downloads, not the Docker socket or /etc.
    expect(decodeDesiredApp(JSON.parse(JSON.stringify(app))).grants).toEqual(['path:/srv/downloads:rw', 'path:/srv/music:ro'])
    expect(decodeDesiredApp(JSON.parse(JSON.stringify({ ...app, grants: [] }))).grants).toEqual([])
    expect(() => decodeChange({ kind: 'install', app: { ...app, grants: ['net-admin'] } })).toThrow(/change\.app\.grants\[0\]: "net-admin" is not a permission/)
    expect(decodeChange({ kind: 'grants', name: 'p', revoke: ['net_admin'] })).toEqual({ kind: 'grants', name: 'p', grant: [], revoke: ['net_admin'] })
  })
})

describe('host paths on the node', () => {
  it('refuses a granted path that leads, through a symlink, into the node\'s own files; nothing else', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dcloud-perm-'))
    try {
      mkdirSync(join(dir, 'music'))
      symlinkSync('/etc', join(dir, 'escape'))
      const bind = (source: string): AppManifest => manifestOf(`services: {web: {image: busybox, volumes: ["${source}:/x:ro"]}}\nx-dcloud: {id: p}\n`)
      await expect(checkHostPaths(bind(`${dir}/music`), [`path:${dir}/music:ro`])).resolves.toBeUndefined()
      await expect(checkHostPaths(bind(`${dir}/escape`), [`path:${dir}/escape:ro`])).rejects.toThrow(new RegExp(`services\\.web\\.volumes\\[0\\]: the host path ${dir}/escape \\(through a symlink, it is /etc\\) holds the node itself`))
      // Not there yet (Docker makes it): judged through its nearest existing ancestor.
      await expect(checkHostPaths(bind(`${dir}/escape/new`), [`path:${dir}/escape/new:ro`])).rejects.toThrow(/it is \/etc\/new/)
      // The agent's own data directory, wherever it is.
      await expect(checkHostPaths(bind(`${dir}/music`), [`path:${dir}/music:ro`], [`${dir}/music/agent`])).rejects.toThrow(/holds the node itself/)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe('devices that are the node itself', () => {
  it.each([
    ['/dev/sda', true], ['/dev/sda1', true], ['/dev/nvme0n1p2', true], ['/dev/mmcblk0', true], ['/dev/mmcblk0p1', true], ['/dev/mem', true], ['/dev/loop3', true], ['/dev/mapper/root', true], ['/dev/disk/by-uuid/x', true],
    ['/dev/dri', false], ['/dev/ttyUSB0', false], ['/dev/net/tun', false], ['/dev/fuse', false], ['/dev/snd', false], ['/dev/video0', false]
  ])('%s: dangerous %s', (path, dangerous) => {
    expect(describePermission(`device:${path}`).dangerous).toBe(dangerous)
  })
})

describe('an app\'s storage directory (restore --data-dir) is a permission', () => {
  const m = manifestOf('services: {web: {image: busybox}}\nvolumes: {data: {}}\nx-dcloud: {id: notes}\n')

  it('is asked for as a read-write path, loudly when it holds the node', () => {
    expect(requestedPermissions(m, { hostPath: '/srv/notes' }).map(p => [p.name, p.fields])).toEqual([['path:/srv/notes:rw', ['storage.hostPath']]])
    expect(requestedPermissions(m, { hostPath: '/var/lib/dcloud/x' })[0]).toMatchObject({ name: 'dangerous_path:/var/lib/dcloud/x:rw', dangerous: true })
    expect(requestedPermissions(m, null)).toEqual([])
  })

  it('an install or restore with it not granted is refused, nothing installed; granted, the app keeps it and it cannot be revoked', () => {
    const app = { name: 'n', manifest: m, pinnedNode: null, storage: { hostPath: '/srv/notes' } }
    expect(() => applyChange(EMPTY_STATE, { kind: 'install', app }, { index: 1, term: 1 })).toThrow(/grants: not granted: path:\/srv\/notes:rw \(storage\.hostPath/)
    const state = applyChange(EMPTY_STATE, { kind: 'install', app: { ...app, grants: ['path:/srv/notes:rw'] } }, { index: 1, term: 1 })
    expect(state.apps[0]?.grants).toEqual(['path:/srv/notes:rw'])
    expect(() => applyChange(state, { kind: 'grants', name: 'n', grant: [], revoke: ['path:/srv/notes:rw'] }, { index: 2, term: 1 })).toThrow(/keeps its data in \/srv\/notes; path:\/srv\/notes:rw cannot be revoked/)
    // From before permissions: a plain directory stays granted.
    expect(decodeDesiredApp(JSON.parse(JSON.stringify({ ...app, revision: 1 }))).grants).toEqual(['path:/srv/notes:rw'])
  })

  it('the node refuses to write the data into it unless granted, or when a symlink leads it into the node\'s files', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dcloud-store-'))
    try {
      symlinkSync('/etc', join(dir, 'escape'))
      await expect(checkStoragePath({ hostPath: `${dir}/data` }, [`path:${dir}/data:rw`])).resolves.toBeUndefined()
      await expect(checkStoragePath({ hostPath: `${dir}/data` }, [])).rejects.toThrow(/storage\.hostPath: the app keeps its data in .*, which is not granted/)
      await expect(checkStoragePath({ hostPath: `${dir}/escape/x` }, [`path:${dir}/escape/x:rw`])).rejects.toThrow(/storage\.hostPath: .* \(through a symlink, \/etc\/x\) holds the node itself/)
      await expect(checkStoragePath(null, [])).resolves.toBeUndefined()
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe('devices and placement', () => {
  const withDevice = (grants: string[]): DesiredApp => {
    const app = mockApp('jelly')
    app.manifest.compose.services.main!.devices = [{ host: '/dev/dri', container: '/dev/dri', permissions: 'rwm' }]
    return { ...app, grants }
  }
  const u = (devices?: string[]) => usageOf({ nodes: [mockNode({ id: 'n1', ...(devices !== undefined ? { devices } : {}) })], desired: [], actual: [] }).byId.get('n1')!

  it.each([
    ['a node with the device', ['/dev/dri/renderD128', '/dev/fuse'], null],
    ['a node without it', ['/dev/fuse'], 'needs the device /dev/dri, which the node does not have'],
    ['a node that reports no devices (an older agent)', undefined, 'needs the device /dev/dri; the node does not report its devices']
  ])('an app granted /dev/dri on %s', (_, devices, reason) => {
    expect(feasible(withDevice(['device:/dev/dri']), u(devices as string[] | undefined))).toBe(reason)
  })

  it('a revoked device no longer ties the app to nodes that have it', () => {
    expect(feasible(withDevice([]), u(['/dev/fuse']))).toBe(null)
  })

  it('a host-network app holds its ports on the node: another app publishing one is refused there', () => {
    const dns = mockApp('dns', { hostPorts: ['53/udp'] })
    dns.manifest.compose.services.main!.networkMode = 'host'
    dns.manifest.compose.services.main!.ports = [{ host: null, container: 53, protocol: 'udp' }]
    const other = mockApp('other', { hostPorts: ['53/udp'] })
    const usage = usageOf({ nodes: [mockNode({ id: 'n1' })], desired: [dns], actual: [mockPlacement('dns', 'n1')] }).byId.get('n1')!
    expect(feasible(other, usage)).toBe('host port 53/udp used by app dns')
  })

  it('a grant or revoke redeploys the app where it runs; another change of revision (a pin) does not', () => {
    const nodes = [mockNode({ id: 'n1' }), mockNode({ id: 'n2' })]
    const changed = plan(mockInput({ nodes, desired: [{ ...mockApp('a', { revision: 3 }), grantsRevision: 3 }], actual: [mockPlacement('a', 'n1', 'running', 2)] }))
    expect(changed.operations).toEqual([{ op: 'place', app: 'a', node: 'n1', reason: 'restart: its permissions changed since it started (revision 2, now 3)' }])
    expect(plan(mockInput({ nodes, desired: [{ ...mockApp('a', { revision: 4 }), grantsRevision: 3 }], actual: [mockPlacement('a', 'n1', 'running', 3)] })).operations).toEqual([])
  })

  it('reads the node\'s devices from /sys, and a given list', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dcloud-sys-'))
    try {
      for (const [n, name] of [['226:0', 'dri/card0'], ['4:1', 'tty1'], ['10:229', 'fuse']] as const) {
        mkdirSync(join(dir, 'dev', 'char', n), { recursive: true })
        writeFileSync(join(dir, 'dev', 'char', n, 'uevent'), `MAJOR=1\nDEVNAME=${name}\n`)
      }
      expect(await readDevices(dir)).toEqual(['/dev/dri/card0', '/dev/fuse'])
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
    expect(parseDeviceList('/dev/fuse,/dev/dri', '--devices')).toEqual(['/dev/dri', '/dev/fuse'])
    expect(parseDeviceList('none', '--devices')).toEqual([])
    expect(() => parseDeviceList('/dev/../etc', '--devices')).toThrow(/--devices: "\/dev\/\.\.\/etc" is not a device path/)
  })
})
