import { describe, it, expect } from 'vitest'
import { recognisePiBoot, withFirstrunHook, hasFirstrunHook, NotAPiBootPartitionError } from '../../agent/flash/pi-boot.ts'
import { provisionFiles, parseSshPublicKeys, wpaPsk, checkWifi, yamlString, shQuote, ProvisionError, type ProvisionSettings } from '../../agent/flash/provision.ts'
import { parseProcMounts, parseProcSwaps, usesOf } from '../../agent/flash/mounts.ts'

/** Root of a Raspberry Pi OS Bookworm (arm64) boot partition, abridged. */
const BOOKWORM = ['bcm2710-rpi-3-b.dtb', 'bcm2711-rpi-4-b.dtb', 'bcm2712-rpi-5-b.dtb', 'bootcode.bin', 'cmdline.txt', 'config.txt', 'fixup4.dat', 'initramfs8', 'issue.txt', 'kernel8.img', 'kernel_2712.img', 'overlays', 'start4.elf']
const TRIXIE = [...BOOKWORM, 'meta-data', 'network-config', 'user-data']
const ISSUE = 'Raspberry Pi reference 2024-11-19\nGenerated using pi-gen, https://github.com/RPi-Distro/pi-gen, 891df1e, stage2\n'
const KEY = '/key/swarm/psk/1.0.0/\n/base16/\n' + 'ab'.repeat(32)
const SSH = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx3pWm5b1m2W6rOTZ7lS5W3M5Jq1e0bN0kY4s9cZ2xA me@laptop'

describe('recognisePiBoot', () => {
  it('recognises a Bookworm boot partition: firstrun.sh, arm64, its release', () => {
    expect(recognisePiBoot(BOOKWORM, ISSUE)).toEqual({ method: 'firstrun', userland: 'arm64', release: '2024-11-19' })
  })

  it('recognises a cloud-init image by its seed files, whatever their case', () => {
    expect(recognisePiBoot(TRIXIE.map(n => n.toUpperCase())).method).toBe('cloud-init')
  })

  it('tells a 32-bit image by its kernel7*.img', () => {
    expect(recognisePiBoot([...BOOKWORM, 'kernel7l.img', 'kernel7.img']).userland).toBe('armhf')
  })

  it.each([
    ['an empty FAT file system', []],
    ['a PC\'s EFI partition', ['EFI', 'System Volume Information']],
    ['a card without firmware or device trees', ['config.txt', 'cmdline.txt', 'kernel8.img']],
    ['firmware without cmdline.txt', ['config.txt', 'start4.elf']]
  ])('refuses %s', (_, names) => {
    expect(() => recognisePiBoot(names)).toThrow(NotAPiBootPartitionError)
  })
})

describe('the firstrun.sh hook in cmdline.txt', () => {
  const CMDLINE = 'console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n'

  it('is appended last, on the one line', () => {
    const out = withFirstrunHook(CMDLINE)
    expect(out.split('\n')).toHaveLength(2)
    expect(out).toMatch(/rootwait quiet init=\S+ systemd\.run=\/boot\/firmware\/firstrun\.sh systemd\.run_success_action=reboot systemd\.unit=kernel-command-line\.target\n$/)
    expect(hasFirstrunHook(out)).toBe(true)
  })

  it('replaces an earlier hook instead of doubling it (a second flash)', () => {
    const twice = withFirstrunHook(withFirstrunHook(CMDLINE))
    expect(twice).toBe(withFirstrunHook(CMDLINE))
    expect(twice.match(/systemd\.run=/g)).toHaveLength(1)
  })

  it('comes off cleanly with the sed line firstrun.sh runs', () => {
    const hooked = withFirstrunHook(CMDLINE)
    expect(hooked.replace(/ systemd\.run.*/g, '')).toBe(CMDLINE)
  })
})

describe('provisionFiles', () => {
  const base: ProvisionSettings = { method: 'cloud-init', hostname: 'pi-1', user: 'pi', sshKeys: [SSH], clusterKey: KEY }

  it('writes cloud-init user-data with host name, user, key, and the first-boot step', () => {
    const files = provisionFiles(base)
    expect(files.map(f => f.path)).toEqual(['user-data', 'meta-data', 'dcloud/cluster.key', 'dcloud/agent.env'])
    const userData = files[0]!.content
    expect(userData.startsWith('#cloud-config\n')).toBe(true)
    expect(userData).toContain('hostname: "pi-1"')
    expect(userData).toContain('  - name: "pi"')
    expect(userData).toContain(`      - ${JSON.stringify(SSH)}`)
    expect(userData).toContain('lock_passwd: true')
    expect(userData).toContain('ssh_pwauth: false')
    expect(userData).toContain('[sh, /boot/firmware/dcloud/firstboot.sh, stage, --start]')
    expect(userData).not.toContain('ab'.repeat(32)) // the key stays out of cloud-init's copy
    expect(files.find(f => f.path === 'dcloud/cluster.key')).toEqual({ path: 'dcloud/cluster.key', content: KEY + '\n', secret: true })
    expect(files.find(f => f.path === 'dcloud/agent.env')?.content).toMatch(/^DCLOUD_NAME=pi-1$/m)
  })

  it('gives the same files for the same settings, and a new instance-id for other ones', () => {
    const a = provisionFiles(base)
    expect(provisionFiles(base)).toEqual(a)
    const id = (fs: ReturnType<typeof provisionFiles>): string => fs.find(f => f.path === 'meta-data')!.content.match(/instance-id: (\S+)/)![1]!
    expect(id(provisionFiles({ ...base, hostname: 'pi-2' }))).not.toBe(id(a))
    expect(id(provisionFiles({ ...base, clusterKey: KEY.replace(/ab/g, 'cd') }))).not.toBe(id(a))
  })

  it('puts Wi-Fi in network-config as the WPA key, never the passphrase', () => {
    const files = provisionFiles({ ...base, wifi: { ssid: 'Home "5G"', password: 'correct horse', country: 'gb' } })
    const net = files.find(f => f.path === 'network-config')!
    expect(net.secret).toBe(true)
    expect(net.content).toContain('"Home \\"5G\\"":')
    expect(net.content).toContain(`password: "${wpaPsk('Home "5G"', 'correct horse')}"`)
    expect(net.content).toContain('regulatory-domain: "GB"')
    expect(net.content).not.toContain('correct horse')
  })

  it('writes firstrun.sh for older images, which removes itself and its hook', () => {
    const files = provisionFiles({ ...base, method: 'firstrun', wifi: { ssid: 'Home', password: 'correct horse', country: 'DE' } })
    expect(files.map(f => f.path)).toEqual(['firstrun.sh', 'dcloud/cluster.key', 'dcloud/agent.env'])
    const script = files[0]!.content
    expect(script.startsWith('#!/bin/bash\n')).toBe(true)
    expect(script).toContain("NEW_HOSTNAME='pi-1'")
    expect(script).toContain(SSH)
    expect(script).toContain(`WIFI_PSK='${wpaPsk('Home', 'correct horse')}'`)
    expect(script).not.toContain('correct horse')
    expect(script).toContain('sh "$BOOT/dcloud/firstboot.sh" stage')
    expect(script.indexOf('rm -f "$BOOT/firstrun.sh"')).toBeGreaterThan(script.indexOf('firstboot.sh" stage'))
    expect(files[0]!.secret).toBe(true)
  })

  it('quotes agent arguments for the environment file', () => {
    const env = provisionFiles({ ...base, agentArgs: ['--label', 'ssd=true', '--peer', '/ip4/192.0.2.1/tcp/7370'] }).find(f => f.path === 'dcloud/agent.env')!.content
    expect(env).toMatch(/^DCLOUD_AGENT_ARGS=--label ssd=true --peer \/ip4\/192.0.2.1\/tcp\/7370$/m)
  })

  it.each([
    ['an upper-case host name', { hostname: 'Pi-1' }, /host name/],
    ['a host name ending in a dash', { hostname: 'pi-' }, /host name/],
    ['root as the user', { user: 'root' }, /login name/],
    ['the service account as the user', { user: 'dcloud' }, /login name/],
    ['no SSH key', { sshKeys: [] }, /SSH public key/]
  ])('refuses %s', (_, change, message) => {
    expect(() => provisionFiles({ ...base, ...change })).toThrow(ProvisionError)
    expect(() => provisionFiles({ ...base, ...change })).toThrow(message)
  })
})

describe('SSH keys, Wi-Fi and quoting', () => {
  it('reads an authorized_keys file, skipping comments and blank lines', () => {
    expect(parseSshPublicKeys(`# mine\n\n${SSH}\r\n`, 'k')).toEqual([SSH])
  })

  it('refuses a private key with a hint to use the .pub', () => {
    expect(() => parseSshPublicKeys('-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n', 'id_ed25519')).toThrow(/private key/)
  })

  it('refuses junk and empty files', () => {
    expect(() => parseSshPublicKeys('hello world', 'k')).toThrow(/not an SSH public key/)
    expect(() => parseSshPublicKeys('\n# nothing\n', 'k')).toThrow(/no SSH public key/)
  })

  it('derives the WPA key of IEEE 802.11i (test vector) and keeps a given 64-hex key', () => {
    expect(wpaPsk('IEEE', 'password')).toBe('f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e')
    expect(wpaPsk('x', 'AB'.repeat(32))).toBe('ab'.repeat(32))
  })

  it('checks Wi-Fi settings', () => {
    expect(() => checkWifi({ ssid: 'x', password: 'short', country: 'GB' })).toThrow(/8 to 63/)
    expect(() => checkWifi({ ssid: 'x'.repeat(33), password: 'longenough', country: 'GB' })).toThrow(/1 to 32 bytes/)
    expect(() => checkWifi({ ssid: 'x', password: 'longenough', country: 'GBR' })).toThrow(/country/)
    expect(checkWifi({ ssid: 'x', password: 'longenough', country: 'de' }).country).toBe('DE')
  })

  it('quotes for YAML and the shell', () => {
    expect(yamlString('a "b"\n')).toBe('"a \\"b\\"\\n"')
    expect(shQuote("it's")).toBe(`'it'"'"'s'`)
  })
})

describe('mounts', () => {
  const MOUNTS = [
    '/dev/vda1 / ext4 rw,relatime 0 0',
    'proc /proc proc rw 0 0',
    '/dev/sdb1 /media/me/boot\\040fs vfat rw 0 0',
    '/dev/disk/by-uuid/x /mnt/root ext4 rw 0 0'
  ].join('\n')
  const devs: Record<string, string> = { '/dev/vda1': '253:1', '/dev/sdb1': '8:17', '/dev/disk/by-uuid/x': '8:18', '/dev/sdc2': '8:34' }

  it('parses /proc/mounts, octal escapes included', () => {
    expect(parseProcMounts(MOUNTS)[2]).toEqual({ source: '/dev/sdb1', target: '/media/me/boot fs', fstype: 'vfat' })
  })

  it('finds every mounted partition of a disk, by device number whatever the path', () => {
    const used = usesOf(parseProcMounts(MOUNTS), [], new Set(['8:16', '8:17', '8:18']), p => devs[p] ?? null)
    expect(used.map(u => u.target)).toEqual(['/media/me/boot fs', '/mnt/root'])
  })

  it('counts swap as use', () => {
    const swaps = parseProcSwaps('Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/sdc2 partition 1 0 -2\n')
    expect(usesOf([], swaps, new Set(['8:34']), p => devs[p] ?? null)).toEqual([{ source: '/dev/sdc2', target: '[swap]', fstype: 'swap' }])
  })

  it('finds nothing for a disk that is not in use', () => {
    expect(usesOf(parseProcMounts(MOUNTS), [], new Set(['8:48', '8:49']), p => devs[p] ?? null)).toEqual([])
  })
})
