/**
 * The first boot of a card `dcloud flash` wrote, short of a Pi: a clean
 * Debian 12 chroot gets the files flash puts on the boot partition in
 * /boot/firmware (an amd64 bundle standing in for the Pi's arm64 one), then
 * runs what cloud-init's runcmd runs (`firstboot.sh stage`) and what
 * dcloud-firstboot.service runs once the network is up (`firstboot.sh
 * install`). The key must leave the card at once and end up root-only (the
 * agent's user), the boot partition must become root-only when it holds a
 * Wi-Fi key, and the agent must be installed with the card's settings.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { existsSync, mkdirSync, readFileSync, writeFileSync, copyFileSync, readdirSync } from 'node:fs'
import { lstat, readlink } from 'node:fs/promises'
import { join } from 'node:path'
import { freshRootfs, removeRootfs, inChroot } from './rootfs.ts'
import { buildBundle, PROJECT_ROOT } from './bundles.ts'
import { need } from './need.ts'
import { newClusterKey } from '../../agent/mesh/cluster-key.ts'
import { provisionFiles } from '../../agent/flash/provision.ts'

/** Exists, without following symlinks (their targets are inside the chroot, not here). */
async function present (path: string): Promise<boolean> {
  try { await lstat(path); return true } catch { return false }
}

const SSH = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx3pWm5b1m2W6rOTZ7lS5W3M5Jq1e0bN0kY4s9cZ2xA me@laptop'

describe('first boot of a flashed card (in a Debian 12 chroot)', () => {
  let root = ''
  const key = new TextDecoder().decode(newClusterKey())
  const boot = (): string => join(root, 'boot/firmware')

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error('the first-boot test needs root: it installs into a chroot')
    await need(['debootstrap', 'util-linux'])
    root = await freshRootfs('firstboot')
    const card = join(boot(), 'dcloud')
    mkdirSync(card, { recursive: true })
    // What flash writes for a cloud-init card with Wi-Fi, from the same pure code.
    for (const f of provisionFiles({ method: 'cloud-init', hostname: 'pi-test', user: 'pi', sshKeys: [SSH], clusterKey: key, wifi: { ssid: 'Home', password: 'correct horse', country: 'GB' }, agentArgs: ['--label', 'room=kitchen'] })) {
      writeFileSync(join(boot(), f.path), f.content)
    }
    copyFileSync(join(PROJECT_ROOT, 'scripts/firstboot/firstboot.sh'), join(card, 'firstboot.sh'))
    copyFileSync(join(PROJECT_ROOT, 'scripts/firstboot/dcloud-firstboot.service'), join(card, 'dcloud-firstboot.service'))
    const bundle = await buildBundle('amd64', card)
    copyFileSync(bundle, join(card, 'bundle.tar.gz'))
    // Raspberry Pi OS mounts its boot partition like this.
    writeFileSync(join(root, 'etc/fstab'), 'proc            /proc           proc    defaults          0       0\nPARTUUID=2b3c4d5e-01  /boot/firmware  vfat    defaults          0       2\nPARTUUID=2b3c4d5e-02  /               ext4    defaults,noatime  0       1\n')
  }, 900_000)

  afterAll(async () => {
    if (root !== '') await removeRootfs(root)
  })

  it('stage: takes the key off the card, keeps everything root-only, enables the installer', async () => {
    const r = await inChroot(root, ['sh', '/boot/firmware/dcloud/firstboot.sh', 'stage', '--start'])
    expect(r.code, r.out).toBe(0)
    expect(existsSync(join(boot(), 'dcloud'))).toBe(false) // nothing of ours left on the card
    expect(readdirSync(boot()).sort()).toEqual(['meta-data', 'network-config', 'user-data'])

    const stage = join(root, 'var/lib/dcloud-firstboot')
    expect((await lstat(stage)).mode & 0o777).toBe(0o700)
    expect((await lstat(join(stage, 'cluster.key'))).mode & 0o777).toBe(0o600)
    expect(readFileSync(join(stage, 'cluster.key'), 'utf8')).toBe(key + '\n')
    expect(await readlink(join(root, 'etc/systemd/system/multi-user.target.wants/dcloud-firstboot.service'))).toBe('/etc/systemd/system/dcloud-firstboot.service')
    const verify = await inChroot(root, ['systemd-analyze', 'verify', '/etc/systemd/system/dcloud-firstboot.service'])
    expect(verify.code, verify.out).toBe(0)

    // The card still holds the Wi-Fi key, so the partition is mounted root-only from now on.
    expect(readFileSync(join(root, 'etc/fstab'), 'utf8')).toMatch(/^PARTUUID=2b3c4d5e-01\t\/boot\/firmware\tvfat\tdefaults,fmask=0077,dmask=0077\t0\t2$/m)
    expect(readFileSync(join(root, 'etc/fstab'), 'utf8')).toMatch(/^PARTUUID=2b3c4d5e-02\s+\/\s+ext4\s+defaults,noatime/m)
  })

  it('install: what dcloud-firstboot.service runs installs the agent with the card\'s key and settings, then removes itself', async () => {
    const unit = readFileSync(join(root, 'etc/systemd/system/dcloud-firstboot.service'), 'utf8')
    const exec = unit.match(/^ExecStart=(.*)$/m)?.[1]?.split(' ')
    expect(exec).toEqual(['/bin/sh', '/var/lib/dcloud-firstboot/firstboot.sh', 'install'])
    // --no-start: a chroot has no systemd to start Docker or the agent under.
    const r = await inChroot(root, ['env', 'DCLOUD_INSTALL_ARGS=--no-start', ...exec!], { timeoutMs: 600_000 })
    expect(r.code, r.out).toBe(0)

    expect(readFileSync(join(root, 'var/lib/dcloud/cluster.key'), 'utf8')).toBe(key)
    const keyStat = await lstat(join(root, 'var/lib/dcloud/cluster.key'))
    expect(keyStat.mode & 0o777).toBe(0o600)
    expect(keyStat.uid).not.toBe(0) // the dcloud user's, and nobody else's
    const env = readFileSync(join(root, 'etc/dcloud/agent.env'), 'utf8')
    expect(env).toMatch(/^DCLOUD_NAME=pi-test$/m)
    expect(env).toMatch(/^DCLOUD_AGENT_ARGS=--label room=kitchen$/m)
    expect(await present(join(root, 'etc/systemd/system/multi-user.target.wants/dcloud.service'))).toBe(true)
    expect(existsSync(join(root, 'usr/sbin/dockerd'))).toBe(true)

    expect(existsSync(join(root, 'var/lib/dcloud-firstboot'))).toBe(false)
    expect(await present(join(root, 'etc/systemd/system/dcloud-firstboot.service'))).toBe(false)
    expect(await present(join(root, 'etc/systemd/system/multi-user.target.wants/dcloud-firstboot.service'))).toBe(false)
  }, 600_000)
})
