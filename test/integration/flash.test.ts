/**
 * `dcloud flash` on Raspberry Pi OS-like disk images made here: an MBR with a
 * FAT32 boot partition holding the files a Pi's has (sfdisk, mkfs.vfat
 * --offset and mtools: no loop device, no mount) and a "root" partition of
 * random bytes. What it writes must pass `cloud-init schema`, carry the key,
 * host name and SSH key, and change nothing else: every other file and every
 * byte outside the boot partition stay as they were. Wrong targets are
 * refused and left untouched.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFile } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, existsSync, mkdtempSync, readFileSync, writeFileSync, mkdirSync, openSync, writeSync, closeSync, readdirSync, statSync, cpSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { need } from './need.ts'
import { sh } from './rootfs.ts'
import { buildBundle, PROJECT_ROOT } from './bundles.ts'
import { newClusterKey } from '../../agent/mesh/cluster-key.ts'
import { wpaPsk } from '../../agent/flash/provision.ts'

const DCLOUD = join(PROJECT_ROOT, 'bin', 'dcloud')
const BOOT_START = 8192 // sectors, as on Raspberry Pi OS images
const BOOT_SECTORS = 128 * 2048 // 128 MiB: the agent bundle is about 45 MB
const ROOT_SECTORS = 8 * 2048
const OFFSET = BOOT_START * 512
const MT = { ...process.env, MTOOLS_SKIP_CHECK: '1' }
const SSH = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx3pWm5b1m2W6rOTZ7lS5W3M5Jq1e0bN0kY4s9cZ2xA me@laptop'

let dir = ''
let bundle = ''
let keyFile = ''
let sshFile = ''
let key = ''

async function ok (cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<string> {
  const r = await new Promise<{ code: number, out: string }>((resolve) => {
    execFile(cmd, args, { env: env ?? process.env, maxBuffer: 64 << 20, timeout: 300_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : (err as { code?: number }).code ?? 1, out: `${String(stdout)}${String(stderr)}` })
    })
  })
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.out}`)
  return r.out
}

/** The boot partition's files of a Bookworm image; `cloudInit` adds Trixie's commented-out seed files. */
function bootFiles (opts: { cloudInit: boolean, bits?: 32 | 64 }): Record<string, string | Buffer> {
  const files: Record<string, string | Buffer> = {
    'config.txt': '# For more options and information see\n# http://rptl.io/configtxt\ndtparam=audio=on\ncamera_auto_detect=1\ndisplay_auto_detect=1\nauto_initramfs=1\ndtoverlay=vc4-kms-v3d\nmax_framebuffers=2\ndisable_fw_kms_setup=1\narm_64bit=1\ndisable_overscan=1\narm_boost=1\n[all]\n',
    'cmdline.txt': 'console=serial0,115200 console=tty1 root=PARTUUID=2b3c4d5e-02 rootfstype=ext4 fsck.repair=yes rootwait quiet splash plymouth.ignore-serial-consoles\n',
    'issue.txt': `Raspberry Pi reference ${opts.cloudInit ? '2025-11-24' : '2024-11-19'}\nGenerated using pi-gen, https://github.com/RPi-Distro/pi-gen, 0000000, stage2\n`,
    'start4.elf': randomBytes(4096),
    'fixup4.dat': randomBytes(1024),
    'bcm2711-rpi-4-b.dtb': randomBytes(2048),
    'bcm2712-rpi-5-b.dtb': randomBytes(2048),
    'kernel8.img': randomBytes(8192),
    'overlays/README': 'overlays\n'
  }
  if (opts.bits === 32) {
    files['kernel7l.img'] = randomBytes(4096)
    files['kernel7.img'] = randomBytes(4096)
  }
  if (opts.cloudInit) {
    files['user-data'] = '#cloud-config\n# This is the user-data configuration file for cloud-init.\n#hostname: raspberrypi\n'
    files['meta-data'] = '# This is the meta-data configuration file for cloud-init.\n#instance-id: rpios-image\n'
    files['network-config'] = '# This is the network-config configuration file for cloud-init.\n#network:\n#  version: 2\n'
  }
  return files
}

/** A disk image: MBR, FAT32 boot partition at 4 MiB holding `files`, root partition of random bytes. */
async function makeImage (path: string, files: Record<string, string | Buffer>): Promise<void> {
  const size = (BOOT_START + BOOT_SECTORS + ROOT_SECTORS) * 512
  await ok('truncate', ['-s', String(size), path])
  const table = `label: dos\nlabel-id: 0x2b3c4d5e\nstart=${BOOT_START}, size=${BOOT_SECTORS}, type=c\nstart=${BOOT_START + BOOT_SECTORS}, size=${ROOT_SECTORS}, type=83\n`
  const tableFile = `${path}.sfdisk`
  writeFileSync(tableFile, table)
  await ok('sh', ['-c', 'sfdisk -q "$1" <"$2"', 'sh', path, tableFile])
  await ok('mkfs.vfat', ['-F', '32', '-n', 'bootfs', `--offset=${BOOT_START}`, path, String(BOOT_SECTORS / 2)])
  const fd = openSync(path, 'r+')
  writeSync(fd, randomBytes(ROOT_SECTORS * 512), 0, ROOT_SECTORS * 512, (BOOT_START + BOOT_SECTORS) * 512)
  closeSync(fd)
  const staging = mkdtempSync(join(dir, 'files-'))
  for (const [name, content] of Object.entries(files)) {
    mkdirSync(join(staging, name, '..'), { recursive: true })
    writeFileSync(join(staging, name), content)
  }
  await ok('sh', ['-c', 'cd "$2" && mcopy -s -i "$1@@$3" ./* ::/', 'sh', path, staging, String(OFFSET)], MT)
}

/** All files of the FAT file system at OFFSET in `img`: path -> sha256. */
async function fatFiles (img: string): Promise<Map<string, string>> {
  const out = mkdtempSync(join(dir, 'read-'))
  await ok('mcopy', ['-s', '-n', '-i', `${img}@@${OFFSET}`, '::/', out], MT)
  const files = new Map<string, string>()
  const walk = (d: string, rel: string): void => {
    for (const name of readdirSync(d)) {
      const p = join(d, name)
      const r = rel === '' ? name : `${rel}/${name}`
      if (statSync(p).isDirectory()) walk(p, r)
      else files.set(r, createHash('sha256').update(readFileSync(p)).digest('hex'))
    }
  }
  walk(out, '')
  return files
}

async function readFat (img: string, path: string): Promise<string> {
  return await ok('mtype', ['-i', `${img}@@${OFFSET}`, `::/${path}`], MT)
}

/** sha256 of the bytes outside the boot partition: the MBR, the gap before it, and the root partition. */
async function outsideBoot (img: string): Promise<string> {
  const h = createHash('sha256')
  for await (const c of createReadStream(img, { start: 0, end: OFFSET - 1 })) h.update(c as Buffer)
  for await (const c of createReadStream(img, { start: OFFSET + BOOT_SECTORS * 512 })) h.update(c as Buffer)
  return h.digest('hex')
}

async function fileHash (path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const c of createReadStream(path)) h.update(c as Buffer)
  return h.digest('hex')
}

async function dcloudFlash (args: string[]): Promise<{ code: number, out: string }> {
  return await sh(DCLOUD, ['flash', '--hostname', 'pi-test', '--key-file', keyFile, '--ssh-key', sshFile, '--bundle', bundle, ...args], 300_000)
}

function changes (before: Map<string, string>, after: Map<string, string>): string[] {
  return [...new Set([...before.keys(), ...after.keys()])].filter(k => before.get(k) !== after.get(k)).sort()
}

async function schemaCheck (file: string): Promise<{ code: number, out: string }> {
  return await sh('cloud-init', ['schema', '--config-file', file])
}

beforeAll(async () => {
  await need(['cloud-init', 'mtools', 'dosfstools', 'fdisk', 'xz-utils', 'e2fsprogs'])
  dir = mkdtempSync(join(tmpdir(), 'dcloud-flash-test-'))
  key = new TextDecoder().decode(newClusterKey())
  keyFile = join(dir, 'cluster.key')
  writeFileSync(keyFile, key)
  sshFile = join(dir, 'id_ed25519.pub')
  writeFileSync(sshFile, SSH + '\n')
  bundle = await buildBundle('arm64', dir)
}, 600_000)

afterAll(async () => {
  if (dir !== '') await rm(dir, { recursive: true, force: true })
})

describe('dcloud flash on a cloud-init image (Raspberry Pi OS Trixie)', () => {
  it('writes user-data that cloud-init accepts, with the key, host name and SSH key, and changes nothing else', async () => {
    const img = join(dir, 'trixie.img')
    await makeImage(img, bootFiles({ cloudInit: true }))
    const before = await fatFiles(img)
    const outside = await outsideBoot(img)

    const r = await dcloudFlash(['--image', img, '--wifi-ssid', 'Home "5G"', '--wifi-password', 'correct horse battery', '--wifi-country', 'GB', '--label', 'room=kitchen'])
    expect(r.code, r.out).toBe(0)
    expect(r.out).toContain('first boot by cloud-init')

    const after = await fatFiles(img)
    expect(changes(before, after)).toEqual(['dcloud/agent.env', 'dcloud/bundle.tar.gz', 'dcloud/cluster.key', 'dcloud/dcloud-firstboot.service', 'dcloud/firstboot.sh', 'meta-data', 'network-config', 'user-data'])
    expect(await outsideBoot(img)).toBe(outside)
    expect(after.get('dcloud/bundle.tar.gz')).toBe(await fileHash(bundle))
    expect(after.get('dcloud/firstboot.sh')).toBe(await fileHash(join(PROJECT_ROOT, 'scripts/firstboot/firstboot.sh')))

    const userData = await readFat(img, 'user-data')
    const file = join(dir, 'user-data')
    writeFileSync(file, userData)
    const schema = await schemaCheck(file)
    expect(schema.code, schema.out).toBe(0)
    expect(schema.out).toMatch(/Valid cloud-config/)
    expect(userData).toContain('hostname: "pi-test"')
    expect(userData).toContain(SSH)
    expect(await readFat(img, 'meta-data')).toMatch(/^instance-id: dcloud-[0-9a-f]{16}\nlocal-hostname: pi-test\n$/)
    expect(await readFat(img, 'dcloud/cluster.key')).toBe(key + '\n')
    expect(await readFat(img, 'dcloud/agent.env')).toMatch(/^DCLOUD_NAME=pi-test$[\s\S]*^DCLOUD_AGENT_ARGS=--label room=kitchen$/m)

    // network-config: cloud-init reads it (its own converter renders it to netplan) as Wi-Fi on
    // wlan0 with the WPA key, quoting and all; the passphrase itself is not on the card.
    const net = await readFat(img, 'network-config')
    expect(net).not.toContain('correct horse battery')
    writeFileSync(join(dir, 'network-config'), net)
    const rendered = join(dir, 'netplan')
    const conv = await sh('cloud-init', ['devel', 'net-convert', '-p', join(dir, 'network-config'), '-k', 'yaml', '-D', 'debian', '-O', 'netplan', '-d', rendered])
    expect(conv.code, conv.out).toBe(0)
    const plan = readFileSync(join(rendered, 'etc/netplan/50-cloud-init.yaml'), 'utf8')
    expect(plan).toMatch(/wifis:\n\s+wlan0:\n\s+access-points:\n\s+'?Home "5G"'?:\n\s+password: ([0-9a-f]{64})\n/)
    expect(plan).toContain(`password: ${wpaPsk('Home "5G"', 'correct horse battery')}`)
    expect(plan).toContain('regulatory-domain: GB')
  }, 300_000)

  it('the schema check it relies on rejects a broken user-data', async () => {
    const file = join(dir, 'bad-user-data')
    writeFileSync(file, '#cloud-config\nusers: 5\nssh_pwauth: maybe\n')
    expect((await schemaCheck(file)).code).not.toBe(0)
  })
})

describe('dcloud flash on a firstrun.sh image (Raspberry Pi OS Bookworm), compressed', () => {
  it('decompresses beside the .xz, writes firstrun.sh and hooks it into cmdline.txt', async () => {
    const raw = join(dir, 'bookworm.img')
    await makeImage(raw, bootFiles({ cloudInit: false }))
    const before = await fatFiles(raw)
    const cmdline = await readFat(raw, 'cmdline.txt')
    const outside = await outsideBoot(raw)
    await ok('xz', ['-T0', '-1', raw]) // leaves bookworm.img.xz only
    const xz = `${raw}.xz`
    const xzHash = await fileHash(xz)

    const r = await dcloudFlash(['--image', xz])
    expect(r.code, r.out).toBe(0)
    expect(r.out).toContain(`write ${raw} to the card`)
    expect(await fileHash(xz)).toBe(xzHash) // the download is kept as it was

    const after = await fatFiles(raw)
    expect(changes(before, after)).toEqual(['cmdline.txt', 'dcloud/agent.env', 'dcloud/bundle.tar.gz', 'dcloud/cluster.key', 'dcloud/dcloud-firstboot.service', 'dcloud/firstboot.sh', 'firstrun.sh'])
    expect(await outsideBoot(raw)).toBe(outside)
    const hooked = await readFat(raw, 'cmdline.txt')
    expect(hooked).toBe(cmdline.trimEnd() + ' systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n')
    const firstrun = await readFat(raw, 'firstrun.sh')
    expect(firstrun).toContain("NEW_HOSTNAME='pi-test'")
    expect(firstrun).toContain(SSH)
    writeFileSync(join(dir, 'firstrun.sh'), firstrun)
    expect((await sh('bash', ['-n', join(dir, 'firstrun.sh')])).code).toBe(0)
    expect(await readFat(raw, 'dcloud/cluster.key')).toBe(key + '\n')

    // Again from the .xz: the .img it would make exists, so nothing is overwritten.
    const imgHash = await fileHash(raw)
    const again = await dcloudFlash(['--image', xz])
    expect(again.code).toBe(73)
    expect(again.out).toContain('already exists')
    expect(await fileHash(raw)).toBe(imgHash)
  }, 300_000)
})

describe('dcloud flash --boot on a mounted boot partition', () => {
  it('writes the same provisioning into the directory', async () => {
    const boot = join(dir, 'bootfs')
    for (const [name, content] of Object.entries(bootFiles({ cloudInit: true }))) {
      mkdirSync(join(boot, name, '..'), { recursive: true })
      writeFileSync(join(boot, name), content)
    }
    const r = await dcloudFlash(['--boot', boot])
    expect(r.code, r.out).toBe(0)
    expect(readFileSync(join(boot, 'dcloud/cluster.key'), 'utf8')).toBe(key + '\n')
    expect(readFileSync(join(boot, 'user-data'), 'utf8')).toContain('hostname: "pi-test"')
    expect(readdirSync(boot).filter(n => n.includes('dcloud-tmp'))).toEqual([])
  }, 120_000)
})

describe('dcloud flash refuses what it does not recognise, and writes nothing', () => {
  it('a FAT image that is not a Raspberry Pi boot partition', async () => {
    const img = join(dir, 'stick.img')
    await makeImage(img, { 'EFI/BOOT/BOOTX64.EFI': randomBytes(1024), 'notes.txt': 'hello\n' })
    const hash = await fileHash(img)
    const r = await dcloudFlash(['--image', img])
    expect(r.code).toBe(65)
    expect(r.out).toMatch(/not a Raspberry Pi boot partition/)
    expect(await fileHash(img)).toBe(hash)
  }, 120_000)

  it('a file that is no disk image at all', async () => {
    const junk = join(dir, 'photo.img')
    writeFileSync(junk, randomBytes(1 << 20))
    const hash = await fileHash(junk)
    const r = await dcloudFlash(['--image', junk])
    expect(r.code).toBe(65)
    expect(r.out).toMatch(/not a Raspberry Pi OS image/)
    expect(await fileHash(junk)).toBe(hash)
  })

  it('a 32-bit Raspberry Pi OS image', async () => {
    const img = join(dir, 'armhf.img')
    await makeImage(img, bootFiles({ cloudInit: false, bits: 32 }))
    const hash = await fileHash(img)
    const r = await dcloudFlash(['--image', img])
    expect(r.code).toBe(65)
    expect(r.out).toMatch(/32-bit/)
    expect(await fileHash(img)).toBe(hash)
  }, 120_000)

  it('a directory that is not a boot partition, and an amd64 bundle', async () => {
    const home = join(dir, 'home')
    mkdirSync(home)
    writeFileSync(join(home, 'notes.txt'), 'x')
    const r = await dcloudFlash(['--boot', home])
    expect(r.code).toBe(65)
    expect(readdirSync(home)).toEqual(['notes.txt'])

    const boot = join(dir, 'bootfs2')
    cpSync(join(dir, 'bootfs'), boot, { recursive: true })
    const fake = join(dir, 'amd64.tar.gz')
    const stage = mkdtempSync(join(dir, 'fake-'))
    mkdirSync(join(stage, 'dcloud'))
    writeFileSync(join(stage, 'dcloud', 'BUNDLE'), 'name=dentropy-cloud\nversion=0.1.0\narch=amd64\nnode=24.21.0\n')
    await ok('tar', ['-czf', fake, '-C', stage, 'dcloud'])
    const wrongArch = await sh(DCLOUD, ['flash', '--hostname', 'pi-test', '--key-file', keyFile, '--ssh-key', sshFile, '--bundle', fake, '--boot', boot])
    expect(wrongArch.code).toBe(65)
    expect(wrongArch.out).toMatch(/arm64 bundle/)
  }, 120_000)

  it('bad settings, before touching the image', async () => {
    const img = join(dir, 'trixie.img')
    const hash = await fileHash(img)
    const priv = join(dir, 'id_ed25519')
    writeFileSync(priv, '-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n')
    const cases: Array<[string[], number, RegExp]> = [
      [['--image', img, '--hostname', 'Not_Valid'], 64, /host name/],
      [['--image', img, '--ssh-key', priv], 64, /private key/],
      [['--image', img, '--wifi-ssid', 'Home', '--wifi-password', 'correct horse'], 64, /--wifi-country/],
      [['--image', img, '--key-file', sshFile], 78, /not a cluster key/],
      [['--image', img, '--boot', dir], 64, /exactly one/]
    ]
    for (const [args, code, message] of cases) {
      const r = await dcloudFlash(args)
      expect(r.code, `${args.join(' ')}: ${r.out}`).toBe(code)
      expect(r.out).toMatch(message)
    }
    expect(await fileHash(img)).toBe(hash)
  }, 120_000)
})

// A whole disk is reached through a loop device here; without loop support (some containers) this part is skipped.
const loopWorks = existsSync('/dev/loop-control') && process.getuid?.() === 0

describe.skipIf(!loopWorks)('dcloud flash on a block device', () => {
  const loops: string[] = []
  const mounts: string[] = []
  afterAll(async () => {
    for (const m of mounts) await sh('umount', [m])
    for (const l of loops) await sh('losetup', ['-d', l])
  })
  const attach = async (img: string): Promise<string> => {
    const r = await sh('losetup', ['--find', '--show', img])
    expect(r.code, r.out).toBe(0)
    loops.push(r.out.trim())
    return r.out.trim()
  }

  it('refuses a disk that is mounted', async () => {
    // A disk holding one file system and no partition table, mounted as a whole.
    const img = join(dir, 'mounted.img')
    await ok('truncate', ['-s', '16M', img])
    await ok('mkfs.ext4', ['-q', '-F', img])
    const loop = await attach(img)
    const mnt = mkdtempSync(join(dir, 'mnt-'))
    const m = await sh('mount', ['-o', 'ro', loop, mnt])
    expect(m.code, m.out).toBe(0)
    mounts.push(mnt)
    const hash = await fileHash(img)
    const r = await dcloudFlash(['--image', loop])
    expect(r.code, r.out).toBe(75)
    expect(r.out).toContain(`${loop} is in use: ${loop} on ${mnt}`)
    expect(await fileHash(img)).toBe(hash)
  }, 120_000)

  it('writes a whole card that nothing has mounted, through mtools at the partition\'s offset', async () => {
    const img = join(dir, 'card.img')
    await makeImage(img, bootFiles({ cloudInit: true }))
    const outside = await outsideBoot(img)
    const loop = await attach(img)
    const r = await dcloudFlash(['--image', loop])
    expect(r.code, r.out).toBe(0)
    expect(r.out).toContain(`${loop} partition 1`)
    await ok('sync', [])
    expect(await readFat(img, 'dcloud/cluster.key')).toBe(key + '\n')
    expect(await outsideBoot(img)).toBe(outside)
    // Where the kernel shows the card's partitions (udev, partscan), a partition is refused too.
    const part = `${loop}p1`
    if (existsSync(part)) {
      const p = await dcloudFlash(['--image', part])
      expect(p.code).toBe(64)
      expect(p.out).toMatch(/is a partition/)
    }
  }, 300_000)
})
