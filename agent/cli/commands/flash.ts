/** `dcloud flash`: first-boot provisioning for a Raspberry Pi's SD card (see agent/flash/flash.ts). */
import { parseCommand } from '../args.ts'
import { flash } from '../../flash/flash.ts'
import { FIRST_BOOT_METHODS, type FirstBootMethod } from '../../flash/pi-boot.ts'
import { UsageError } from '../../util/errors.ts'

export const flashHelp = `dcloud flash (--image FILE | --boot DIR) --hostname NAME --key-file F --ssh-key FILE [options]
  Makes a Raspberry Pi OS (64-bit) card come up as a node of your cluster: at its
  first boot it gets its host name, a user who logs in with your SSH key, Wi-Fi,
  the cluster key, and installs the agent (bundled on the card; Docker and
  restic come from the Pi's apt). Nothing is written to a target that is not a
  Raspberry Pi OS boot partition, nor to a disk that has anything mounted.

  --image FILE          a Raspberry Pi OS .img, or .img.xz (decompressed to a new .img
                        beside it, which is then the file to write to the card), or the
                        SD card's whole disk (e.g. /dev/sdb) after writing the image to it
  --boot DIR            or: the card's boot partition, mounted (e.g. /media/$USER/bootfs)
  --hostname NAME       the Pi's host name, also its node name
  --key-file F          the cluster key (\`dcloud init --key-file F\` makes one)
  --ssh-key FILE        your SSH public key(s) (e.g. ~/.ssh/id_ed25519.pub)
  --user NAME           the login user (default pi); no password, SSH key only
  --wifi-ssid S         a Wi-Fi network to join
  --wifi-password P     its passphrase (only the WPA key derived from it is written)
  --wifi-country CC     its country, e.g. GB (needed with --wifi-ssid)
  --wifi-hidden         the network does not broadcast its name
  --label KEY=VALUE     a label for this node (repeatable)
  --peer MULTIADDR      a node to dial where mDNS does not reach (repeatable)
  --bundle FILE         the arm64 agent bundle (default: made from this installation)
  --method cloud-init|firstrun   override what the card says it reads at first boot
  --dry-run             check everything and print what would be written
  --json                print the result as JSON`

export async function flashCommand (argv: string[]): Promise<number> {
  const { values } = parseCommand(argv, {
    usage: 'dcloud flash (--image FILE | --boot DIR) --hostname NAME --key-file F --ssh-key FILE [options]',
    options: {
      image: { type: 'string' },
      boot: { type: 'string' },
      hostname: { type: 'string' },
      'key-file': { type: 'string' },
      'ssh-key': { type: 'string' },
      user: { type: 'string', default: 'pi' },
      'wifi-ssid': { type: 'string' },
      'wifi-password': { type: 'string' },
      'wifi-country': { type: 'string' },
      'wifi-hidden': { type: 'boolean', default: false },
      label: { type: 'string', multiple: true, default: [] },
      peer: { type: 'string', multiple: true, default: [] },
      bundle: { type: 'string' },
      method: { type: 'string' },
      'dry-run': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false }
    }
  })
  const required = (name: 'hostname' | 'key-file' | 'ssh-key'): string => {
    const v = values[name]
    if (v === undefined || v === '') throw new UsageError(`--${name} is required`, 'see `dcloud flash --help`')
    return v
  }
  const hostname = required('hostname')
  const keyFile = required('key-file')
  const sshKeyFile = required('ssh-key')
  const ssid = values['wifi-ssid']
  if (ssid === undefined && (values['wifi-password'] !== undefined || values['wifi-country'] !== undefined)) throw new UsageError('--wifi-password and --wifi-country go with --wifi-ssid')
  if (ssid !== undefined && values['wifi-password'] === undefined) throw new UsageError('--wifi-ssid needs --wifi-password')
  if (ssid !== undefined && values['wifi-country'] === undefined) throw new UsageError('--wifi-ssid needs --wifi-country', 'e.g. --wifi-country GB: Raspberry Pi OS keeps Wi-Fi off until it knows the country')
  const method = values.method
  if (method !== undefined && !FIRST_BOOT_METHODS.includes(method as FirstBootMethod)) throw new UsageError(`--method ${method}: expected ${FIRST_BOOT_METHODS.join(' or ')}`)
  const agentArgs: string[] = []
  for (const l of values.label ?? []) {
    if (!/^[^=\s]+=\S*$/.test(l)) throw new UsageError(`--label ${l}: expected KEY=VALUE without spaces`)
    agentArgs.push('--label', l)
  }
  for (const p of values.peer ?? []) {
    if (!/^\/\S+$/.test(p)) throw new UsageError(`--peer ${p}: expected a multiaddr such as /ip4/192.0.2.10/tcp/7370`)
    agentArgs.push('--peer', p)
  }

  const report = await flash({
    image: values.image,
    boot: values.boot,
    hostname,
    user: values.user ?? 'pi',
    sshKeyFile,
    keyFile,
    wifi: ssid !== undefined ? { ssid, password: values['wifi-password'] ?? '', country: values['wifi-country'] ?? '', hidden: values['wifi-hidden'] } : undefined,
    bundle: values.bundle,
    method: method as FirstBootMethod | undefined,
    agentArgs,
    dryRun: values['dry-run'],
    progress: values.json === true ? undefined : (l) => { process.stderr.write(`flash: ${l}\n`) }
  })

  if (values.json === true) {
    process.stdout.write(JSON.stringify({ ...report, dryRun: values['dry-run'] }, null, 2) + '\n')
    return 0
  }
  const p = report.partition
  const lines = [
    `${values['dry-run'] === true ? 'would write' : 'wrote'} to ${report.target}: Raspberry Pi OS${p.release !== null ? ` of ${p.release}` : ''}, first boot by ${report.method}`,
    ...report.files.map(f => `  ${f}`),
    `agent bundle: ${report.bundle.name} ${report.bundle.version} (${report.bundle.arch}, Node ${report.bundle.node})`
  ]
  if (values['dry-run'] !== true) {
    if (report.decompressedTo !== null) lines.push('', `write ${report.decompressedTo} to the card (Raspberry Pi Imager "Use custom", or dd/bmaptool), without further customisation.`)
    else if (values.boot !== undefined) lines.push('', 'eject the card before you pull it out (sync first).')
    lines.push(
      `boot the Pi; in a few minutes \`ssh ${values.user ?? 'pi'}@${hostname}.local\` works and \`sudo dcloud status\` there lists the cluster.`,
      'keep the card safe until then: its FAT partition holds the cluster key (moved off it at first boot).'
    )
  }
  process.stdout.write(lines.join('\n') + '\n')
  return 0
}
