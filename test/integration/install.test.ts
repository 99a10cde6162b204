/**
 * scripts/install.sh on a clean Debian 12 (debootstrap minbase, in a chroot):
 * it installs Docker and restic from apt, the agent from a bundle, the key
 * and settings it is given, and a systemd unit that `systemd-analyze verify`
 * accepts; a second run changes nothing at all; the installed agent starts
 * as the dcloud user and answers `dcloud status`; --uninstall keeps the
 * user's data and --purge removes it.
 *
 * Needs root (chroot, unshare) and the network to Debian's mirror the first
 * time (the root file system and the downloaded packages are cached in
 * /var/cache/dcloud-test).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { createHash } from 'node:crypto'
import { createReadStream, existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs'
import { lstat, readdir, readlink, copyFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { freshRootfs, removeRootfs, inChroot, spawnInChroot } from './rootfs.ts'
import { buildBundle, PROJECT_ROOT } from './bundles.ts'
import { need } from './need.ts'
import { newClusterKey } from '../../agent/mesh/cluster-key.ts'

/** What the installer may touch; hashed with owner, mode and times to prove a rerun leaves it alone. */
const TOUCHED = ['/opt/dcloud', '/usr/local/bin/dcloud', '/etc/systemd/system', '/etc/dcloud', '/var/lib/dcloud', '/etc/passwd', '/etc/group', '/etc/shadow', '/etc/gshadow', '/var/lib/dpkg/status', '/usr/sbin/policy-rc.d']
/** Not part of the installed system: kernel views, scratch space and the bind-mounted apt cache. */
const NOT_SYSTEM = new Set(['/proc', '/sys', '/dev', '/run', '/tmp', '/var/tmp', '/var/log', '/var/cache/apt/archives'])

async function sha256 (path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const c of createReadStream(path)) h.update(c as Buffer)
  return h.digest('hex')
}

/** path -> "type mode uid:gid mtime ctime content-hash" for everything under the given paths. */
async function snapshot (root: string, paths: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  const visit = async (rel: string): Promise<void> => {
    const abs = join(root, rel)
    let st
    try { st = await lstat(abs, { bigint: true }) } catch { out.set(rel, 'absent'); return }
    const head = `${st.mode.toString(8)} ${st.uid}:${st.gid} m${st.mtimeNs} c${st.ctimeNs}`
    if (st.isSymbolicLink()) out.set(rel, `link ${head} -> ${await readlink(abs)}`)
    else if (st.isDirectory()) {
      out.set(rel, `dir ${head}`)
      for (const name of (await readdir(abs)).sort()) await visit(`${rel}/${name}`)
    } else out.set(rel, `file ${head} ${await sha256(abs)}`)
  }
  for (const p of paths) await visit(p)
  return out
}

/** Every file of the system whose inode changed (content, owner, mode, links) after `sinceNs`. */
async function changedSince (root: string, sinceNs: bigint): Promise<string[]> {
  const changed: string[] = []
  const walk = async (rel: string): Promise<void> => {
    for (const name of await readdir(join(root, rel))) {
      const r = `${rel}/${name}`
      if (NOT_SYSTEM.has(r)) continue
      const st = await lstat(join(root, r), { bigint: true })
      if (st.ctimeNs > sinceNs) changed.push(r)
      if (st.isDirectory()) await walk(r)
    }
  }
  await walk('')
  return changed
}

function diff (a: Map<string, string>, b: Map<string, string>): string[] {
  const keys = new Set([...a.keys(), ...b.keys()])
  return [...keys].filter(k => a.get(k) !== b.get(k)).map(k => `${k}: ${a.get(k) ?? 'absent'} => ${b.get(k) ?? 'absent'}`)
}

describe('scripts/install.sh in a clean Debian 12 chroot', () => {
  let root = ''
  const key = new TextDecoder().decode(newClusterKey())
  const install = async (...args: string[]): Promise<{ code: number, out: string }> =>
    await inChroot(root, ['/bin/bash', '/tmp/in/install.sh', '--bundle', '/tmp/in/dcloud-amd64.tar.gz', '--no-start', ...args], { timeoutMs: 600_000 })

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error('the install test needs root: it debootstraps a Debian and installs into it with chroot')
    await need(['debootstrap', 'util-linux', 'iproute2'])
    root = await freshRootfs('install')
    mkdirSync(join(root, 'tmp', 'in'), { recursive: true })
    await buildBundle('amd64', join(root, 'tmp', 'in'))
    await copyFile(join(PROJECT_ROOT, 'scripts', 'install.sh'), join(root, 'tmp', 'in', 'install.sh'))
    writeFileSync(join(root, 'tmp', 'in', 'cluster.key'), key)
  }, 900_000)

  afterAll(async () => {
    if (root !== '') await removeRootfs(root)
  })

  it('installs Docker, restic, the agent, its key and config, and an enabled unit', async () => {
    expect(existsSync(join(root, 'usr/sbin/dockerd'))).toBe(false) // a clean system: the installer must bring it
    const r = await install('--key-file', '/tmp/in/cluster.key', '--name', 'srv-1', '--label', 'ssd=true')
    expect(r.code, r.out).toBe(0)
    expect(r.out).toContain('installing docker.io')
    expect(existsSync(join(root, 'usr/sbin/dockerd'))).toBe(true)
    expect(existsSync(join(root, 'usr/bin/restic'))).toBe(true)
    expect(existsSync(join(root, 'usr/sbin/policy-rc.d'))).toBe(false) // --no-start's guard is gone again

    const keyFile = join(root, 'var/lib/dcloud/cluster.key')
    expect(readFileSync(keyFile, 'utf8')).toBe(key)
    const passwd = readFileSync(join(root, 'etc/passwd'), 'utf8')
    const uid = Number(passwd.split('\n').find(l => l.startsWith('dcloud:'))?.split(':')[2])
    expect(uid).toBeGreaterThan(0)
    expect(uid).toBeLessThan(1000) // a system user
    const keyStat = await lstat(keyFile)
    expect(keyStat.mode & 0o777).toBe(0o600)
    expect(keyStat.uid).toBe(uid)
    expect((await lstat(join(root, 'var/lib/dcloud'))).mode & 0o777).toBe(0o700)
    const group = readFileSync(join(root, 'etc/group'), 'utf8').split('\n').find(l => l.startsWith('docker:'))
    expect(group?.split(':')[3]?.split(',')).toContain('dcloud')
    // The group that reaches the API socket, and how the admin lets a user in.
    expect(readFileSync(join(root, 'etc/group'), 'utf8')).toMatch(/^dcloud:x:\d+:/m)
    expect(r.out).toContain('usermod -aG dcloud USER')

    const env = readFileSync(join(root, 'etc/dcloud/agent.env'), 'utf8')
    expect(env).toMatch(/^DCLOUD_NAME=srv-1$/m)
    expect(env).toMatch(/^DCLOUD_AGENT_ARGS=--label ssd=true$/m)
    expect(await readlink(join(root, 'usr/local/bin/dcloud'))).toBe('/opt/dcloud/bin/dcloud')
    expect(await readlink(join(root, 'etc/systemd/system/multi-user.target.wants/dcloud.service'))).toBe('/etc/systemd/system/dcloud.service')
    expect(readFileSync(join(root, 'etc/systemd/system/dcloud.service'), 'utf8')).toBe(readFileSync(join(PROJECT_ROOT, 'scripts/systemd/dcloud.service'), 'utf8'))
    // The fencing watchdog: its own unit, enabled beside the agent's, and its own bundle.
    expect(await readlink(join(root, 'etc/systemd/system/multi-user.target.wants/dcloud-watchdog.service'))).toBe('/etc/systemd/system/dcloud-watchdog.service')
    expect(readFileSync(join(root, 'etc/systemd/system/dcloud-watchdog.service'), 'utf8')).toBe(readFileSync(join(PROJECT_ROOT, 'scripts/systemd/dcloud-watchdog.service'), 'utf8'))
    expect(existsSync(join(root, 'opt/dcloud/dist/watchdog.mjs'))).toBe(true)
    // The front door: Debian's Caddy, run by our unit; Debian's own caddy.service (its page on :80) masked.
    expect(existsSync(join(root, 'usr/bin/caddy'))).toBe(true)
    expect(await readlink(join(root, 'etc/systemd/system/multi-user.target.wants/dcloud-caddy.service'))).toBe('/etc/systemd/system/dcloud-caddy.service')
    expect(await readlink(join(root, 'etc/systemd/system/caddy.service'))).toBe('/dev/null')
    expect(await lstat(join(root, 'etc/systemd/system/multi-user.target.wants/caddy.service')).then(() => true, () => false)).toBe(false)
    expect(readFileSync(join(root, 'etc/systemd/system/dcloud-caddy.service'), 'utf8')).toMatch(/^CapabilityBoundingSet=CAP_NET_BIND_SERVICE$/m)
    expect(JSON.parse(readFileSync(join(root, 'opt/dcloud/scripts/systemd/dcloud-caddy.json'), 'utf8'))).toEqual({ admin: { listen: 'unix//run/dcloud-caddy/admin.sock', config: { persist: false } } })
    const help = await inChroot(root, ['/usr/local/bin/dcloud', 'watchdog', '--help'])
    expect(help.out).toMatch(/stops the node's stateful containers/)
    const version = await inChroot(root, ['/usr/local/bin/dcloud', 'version'])
    expect(version.out).toMatch(/^dcloud \d+\.\d+\.\d+/)
  }, 600_000)

  it('leaves units that systemd-analyze verify accepts (and one it rejects when broken)', async () => {
    const ok = await inChroot(root, ['systemd-analyze', 'verify', '/etc/systemd/system/dcloud.service', '/etc/systemd/system/dcloud-watchdog.service', '/etc/systemd/system/dcloud-caddy.service'])
    expect(ok.code, ok.out).toBe(0)
    expect(ok.out).not.toMatch(/dcloud(-watchdog|-caddy)?\.service/)
    // The check has teeth: the same unit pointing at a missing program fails it.
    const unit = readFileSync(join(root, 'etc/systemd/system/dcloud.service'), 'utf8')
    writeFileSync(join(root, 'tmp/broken.service'), unit.replace('/opt/dcloud/bin/dcloud', '/opt/dcloud/bin/missing'))
    const bad = await inChroot(root, ['systemd-analyze', 'verify', '/tmp/broken.service'])
    expect(bad.code).not.toBe(0)
  })

  it('changes nothing when run a second time', async () => {
    const before = await snapshot(root, TOUCHED)
    const since = BigInt(Date.now()) * 1_000_000n
    await sleep(100) // past the file system's coarse clock tick
    const r = await install('--key-file', '/tmp/in/cluster.key', '--name', 'srv-1', '--label', 'ssd=true', '--domain', 'alice.example.org')
    expect(r.code, r.out).toBe(0)
    expect(r.out).toContain('is up to date')
    // The domain is the cluster's: without a running agent it is only said how to set it, and nothing on disk changes.
    expect(r.out).toContain('once it runs, set the cluster\'s domain with: sudo dcloud domain set alice.example.org')
    expect(r.out).not.toMatch(/installing|installed|created|wrote|added|prepared|enabled/)
    const after = await snapshot(root, TOUCHED)
    expect(diff(before, after)).toEqual([])
    expect(await changedSince(root, since)).toEqual([])
  }, 300_000)

  it('refuses to replace the installed key with another one', async () => {
    writeFileSync(join(root, 'tmp/in/other.key'), newClusterKey())
    const r = await install('--key-file', '/tmp/in/other.key')
    expect(r.code).toBe(73)
    expect(r.out).toContain('--replace-key')
    expect(readFileSync(join(root, 'var/lib/dcloud/cluster.key'), 'utf8')).toBe(key)
  })

  it('runs: the installed agent starts as the dcloud user and answers dcloud status, to root and the dcloud group only', async () => {
    // The unit declares RuntimeDirectory=dcloud (0750): systemd makes /run/dcloud before the start; so do we.
    const unit = readFileSync(join(root, 'etc/systemd/system/dcloud.service'), 'utf8')
    expect(unit).toMatch(/^RuntimeDirectory=dcloud$/m)
    expect(unit).toMatch(/^RuntimeDirectoryMode=0750$/m)
    expect((await inChroot(root, ['install', '-d', '-o', 'dcloud', '-g', 'dcloud', '-m', '0750', '/run/dcloud'])).code).toBe(0)
    // As the unit runs it (user, environment file, data dir), minus mDNS and the TCP API,
    // in a network namespace of its own.
    const agent = spawnInChroot(root, ['setpriv', '--reuid=dcloud', '--regid=dcloud', '--init-groups', '--',
      'env', 'DCLOUD_DATA_DIR=/var/lib/dcloud', 'DCLOUD_NAME=srv-1', '/opt/dcloud/bin/dcloud', 'agent', '--no-mdns', '--api', 'off', '--listen', '/ip4/127.0.0.1/tcp/0'])
    let log = ''
    agent.stderr?.on('data', (c: Buffer) => { log += c.toString() })
    try {
      let status: { code: number, out: string } = { code: -1, out: '' }
      for (let i = 0; i < 60; i++) {
        await sleep(500)
        if (!existsSync(join(root, 'run/dcloud/api.sock'))) continue
        status = await inChroot(root, ['/usr/local/bin/dcloud', 'status', '--json'])
        if (status.code === 0) break
      }
      expect(status.code, `${status.out}\nagent log:\n${log}`).toBe(0)
      const body = JSON.parse(status.out) as { nodes: Array<{ name: string, self: boolean }> }
      expect(body.nodes.find(n => n.self)?.name).toBe('srv-1')
      // It made its identity in the data directory, as the dcloud user.
      const uid = (await lstat(join(root, 'var/lib/dcloud/cluster.key'))).uid
      expect((await lstat(join(root, 'var/lib/dcloud/node.key'))).uid).toBe(uid)
      // The socket: 0660, group dcloud. A member of the group (as the installer tells the admin
      // to make one) drives the node through it; anyone else cannot reach it.
      const sock = await lstat(join(root, 'run/dcloud/api.sock'))
      expect(sock.mode & 0o777).toBe(0o660)
      expect(sock.gid).toBe((await lstat(join(root, 'var/lib/dcloud'))).gid)
      expect((await inChroot(root, ['sh', '-c', 'useradd --create-home alice && usermod -aG dcloud alice && useradd --create-home mallory'])).code).toBe(0)
      const asAlice = await inChroot(root, ['setpriv', '--reuid=alice', '--regid=alice', '--init-groups', '--', 'env', 'HOME=/home/alice', '/usr/local/bin/dcloud', 'status', '--json'])
      expect(asAlice.code, asAlice.out).toBe(0)
      const asMallory = await inChroot(root, ['setpriv', '--reuid=mallory', '--regid=mallory', '--init-groups', '--', 'env', 'HOME=/home/mallory', '/usr/local/bin/dcloud', 'status', '--json'])
      expect(asMallory.code, asMallory.out).not.toBe(0)
      expect((await inChroot(root, ['sh', '-c', 'userdel -r alice && userdel -r mallory'])).code).toBe(0)
    } finally {
      if (agent.pid !== undefined) process.kill(agent.pid, 'SIGTERM')
      await new Promise<void>(resolve => { if (agent.exitCode !== null || agent.signalCode !== null) resolve(); else agent.once('exit', () => { resolve() }) })
    }
  }, 120_000)

  it('uninstalls the agent but keeps the data, and --purge removes it', async () => {
    const u = await install('--uninstall')
    expect(u.code, u.out).toBe(0)
    for (const gone of ['opt/dcloud', 'usr/local/bin/dcloud', 'etc/systemd/system/dcloud.service', 'etc/systemd/system/multi-user.target.wants/dcloud.service', 'etc/systemd/system/dcloud-watchdog.service', 'etc/systemd/system/multi-user.target.wants/dcloud-watchdog.service', 'etc/systemd/system/dcloud-caddy.service', 'etc/systemd/system/caddy.service']) {
      // lstat, not existsSync: a dangling symlink left behind must count as there.
      expect(await lstat(join(root, gone)).then(() => true, () => false), gone).toBe(false)
    }
    expect(readFileSync(join(root, 'var/lib/dcloud/cluster.key'), 'utf8')).toBe(key)
    expect(existsSync(join(root, 'etc/dcloud/agent.env'))).toBe(true)
    expect(existsSync(join(root, 'usr/sbin/dockerd'))).toBe(true) // Docker is the user's now

    const p = await install('--uninstall', '--purge')
    expect(p.code, p.out).toBe(0)
    expect(existsSync(join(root, 'var/lib/dcloud'))).toBe(false)
    expect(existsSync(join(root, 'etc/dcloud'))).toBe(false)
    expect(readFileSync(join(root, 'etc/passwd'), 'utf8')).not.toMatch(/^dcloud:/m)
  }, 120_000)

  it('creates a new cluster when given no key', async () => {
    const r = await install()
    expect(r.code, r.out).toBe(0)
    expect(r.out).toContain('created a NEW cluster')
    const made = readFileSync(join(root, 'var/lib/dcloud/cluster.key'), 'utf8')
    expect(made).toMatch(/^\/key\/swarm\/psk\/1\.0\.0\/\n\/base16\/\n[0-9a-f]{64}$/)
    expect(made).not.toBe(key)
  }, 300_000)
})
