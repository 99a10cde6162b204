/**
 * The first-boot files `dcloud flash` writes to a Raspberry Pi boot
 * partition. Pure: settings in, file names and contents out; the caller
 * copies them (and the agent bundle) onto the card.
 *
 * Everything the Pi needs is on the card, so the first boot installs the
 * agent without reaching anything but the Pi's own apt sources (for Docker
 * and restic):
 *
 *   user-data, meta-data, network-config   cloud-init images
 *   firstrun.sh + a hook in cmdline.txt    older (firstrun) images
 *   dcloud/firstboot.sh                    stages the install, moves the key off the card
 *   dcloud/cluster.key                     the secret; gone from the card after first boot
 *   dcloud/agent.env                       the agent's settings (/etc/dcloud/agent.env)
 *   dcloud/install.sh, dcloud/bundle.tar.gz  copied by the caller
 *
 * The Wi-Fi passphrase never reaches the card: like Raspberry Pi Imager we
 * write the WPA key derived from it (PBKDF2 of passphrase and SSID), which
 * NetworkManager and netplan accept in its place.
 */
import { createHash, pbkdf2Sync } from 'node:crypto'
import { BOOT_MOUNT, type FirstBootMethod } from './pi-boot.ts'

export interface WifiSettings {
  ssid: string
  /** A passphrase of 8 to 63 characters, or the 64-hex-digit WPA key itself. */
  password: string
  /** ISO 3166 country code; without one Raspberry Pi OS keeps the radio blocked. */
  country: string
  hidden?: boolean
}

export interface ProvisionSettings {
  method: FirstBootMethod
  hostname: string
  user: string
  /** authorized_keys lines. */
  sshKeys: string[]
  /** The cluster key file's text (already checked with parseClusterKey). */
  clusterKey: string
  wifi?: WifiSettings
  /** Extra `dcloud agent` arguments for this node, e.g. ['--label', 'ssd=true']. */
  agentArgs?: string[]
}

export interface ProvisionFile {
  /** Path on the boot partition, '/'-separated, relative to its root. */
  path: string
  content: string
  /** Holds a secret: the first boot moves or deletes it. */
  secret: boolean
}

export class ProvisionError extends Error {
  override name = 'ProvisionError'
  readonly hint: string | undefined

  constructor (message: string, hint?: string) {
    super(message)
    this.hint = hint
  }
}

/** Directory on the boot partition holding our files. */
export const DCLOUD_DIR = 'dcloud'
export const BUNDLE_NAME = `${DCLOUD_DIR}/bundle.tar.gz`
export const INSTALLER_NAME = `${DCLOUD_DIR}/install.sh`
export const FIRSTBOOT_NAME = `${DCLOUD_DIR}/firstboot.sh`

/** The groups Raspberry Pi OS gives its first user (as Raspberry Pi Imager does). */
const PI_GROUPS = 'users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo'
const RESERVED_USERS = new Set(['root', 'dcloud', 'daemon', 'bin', 'sys', 'sync', 'games', 'man', 'lp', 'mail', 'news', 'uucp', 'proxy', 'www-data', 'backup', 'list', 'irc', 'nobody', 'messagebus', 'sshd', 'systemd-network'])
const SSH_KEY = /^(ssh-ed25519|ssh-rsa|ssh-dss|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?$/

/** A YAML scalar that is exactly `s`: a JSON string is a valid YAML double-quoted scalar. */
export function yamlString (s: string): string {
  return JSON.stringify(s)
}

/** Shell single quoting. */
export function shQuote (s: string): string {
  return `'${s.replace(/'/g, `'"'"'`)}'`
}

export function checkHostname (name: string): string {
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(name)) {
    throw new ProvisionError(`--hostname '${name}' is not a valid host name`, 'use 1 to 63 lower-case letters, digits and inner dashes, e.g. pi-kitchen')
  }
  return name
}

export function checkUser (name: string): string {
  if (!/^[a-z_][a-z0-9_-]{0,31}$/.test(name) || RESERVED_USERS.has(name)) {
    throw new ProvisionError(`--user '${name}' is not a usable login name`, 'use lower-case letters, digits, - and _, starting with a letter, and not a system name (root, dcloud, ...)')
  }
  return name
}

/** The public keys of an authorized_keys or .pub file; refuses private keys and junk. */
export function parseSshPublicKeys (text: string, source: string): string[] {
  if (/PRIVATE KEY/.test(text)) throw new ProvisionError(`${source} is a private key`, 'give the public half, the .pub file (e.g. ~/.ssh/id_ed25519.pub); a private key must never leave your computer')
  const keys = text.split(/\r?\n/).map(l => l.trim()).filter(l => l !== '' && !l.startsWith('#'))
  if (keys.length === 0) throw new ProvisionError(`${source} holds no SSH public key`, 'make one with `ssh-keygen -t ed25519` and give ~/.ssh/id_ed25519.pub')
  for (const k of keys) {
    if (!SSH_KEY.test(k)) throw new ProvisionError(`${source}: '${k.slice(0, 40)}…' is not an SSH public key line`, 'expected lines like "ssh-ed25519 AAAA... you@laptop"')
  }
  return keys
}

/** The WPA key NetworkManager and wpa_supplicant derive from a passphrase (IEEE 802.11i, PBKDF2-SHA1, 4096 rounds). */
export function wpaPsk (ssid: string, password: string): string {
  if (/^[0-9a-fA-F]{64}$/.test(password)) return password.toLowerCase()
  return pbkdf2Sync(Buffer.from(password, 'utf8'), Buffer.from(ssid, 'utf8'), 4096, 32, 'sha1').toString('hex')
}

export function checkWifi (wifi: WifiSettings): WifiSettings {
  const ssidBytes = Buffer.byteLength(wifi.ssid, 'utf8')
  if (ssidBytes < 1 || ssidBytes > 32) throw new ProvisionError(`--wifi-ssid must be 1 to 32 bytes long (it is ${ssidBytes})`)
  if (/[\r\n\0]/.test(wifi.ssid)) throw new ProvisionError('--wifi-ssid may not contain line breaks or NUL')
  const isHex = /^[0-9a-fA-F]{64}$/.test(wifi.password)
  if (!isHex && !/^[\x20-\x7e]{8,63}$/.test(wifi.password)) {
    throw new ProvisionError('--wifi-password must be 8 to 63 printable ASCII characters (a WPA passphrase) or 64 hex digits (a WPA key)')
  }
  const country = wifi.country.toUpperCase()
  if (!/^[A-Z]{2}$/.test(country)) throw new ProvisionError(`--wifi-country '${wifi.country}' is not a two-letter country code`, 'e.g. GB, DE, US: Raspberry Pi OS keeps Wi-Fi off until it knows the country')
  return { ...wifi, country }
}

function digest (parts: string[]): string {
  const h = createHash('sha256')
  for (const p of parts) h.update(p).update('\0')
  return h.digest('hex')
}

/** The files for a boot partition, in a stable order. */
export function provisionFiles (input: ProvisionSettings): ProvisionFile[] {
  const hostname = checkHostname(input.hostname)
  const user = checkUser(input.user)
  if (input.sshKeys.length === 0) throw new ProvisionError('an SSH public key is needed (--ssh-key FILE)', 'without one nobody could log in: the user has no password')
  const wifi = input.wifi !== undefined ? checkWifi(input.wifi) : undefined
  const psk = wifi !== undefined ? wpaPsk(wifi.ssid, wifi.password) : undefined

  const agentEnv = [
    '# Settings of this node\'s Dentropy Cloud agent, written by `dcloud flash`.',
    '# The first boot installs them as /etc/dcloud/agent.env (see docs/install.md).',
    `DCLOUD_NAME=${hostname}`,
    `DCLOUD_AGENT_ARGS=${(input.agentArgs ?? []).map(a => /^[A-Za-z0-9_./:=@,+-]+$/.test(a) ? a : shQuote(a)).join(' ')}`,
    ''
  ].join('\n')

  const files: ProvisionFile[] = []
  if (input.method === 'cloud-init') {
    const userData = cloudInitUserData(hostname, user, input.sshKeys)
    const networkConfig = wifi !== undefined && psk !== undefined ? cloudInitNetworkConfig(wifi, psk) : undefined
    // A new instance-id is what makes cloud-init run its once-per-instance
    // modules again; derive it from everything we write so a re-flash with
    // other settings is applied and the same settings give the same files.
    const instanceId = `dcloud-${digest([userData, networkConfig ?? '', input.clusterKey, agentEnv]).slice(0, 16)}`
    files.push({ path: 'user-data', content: userData, secret: false })
    files.push({ path: 'meta-data', content: `instance-id: ${instanceId}\nlocal-hostname: ${hostname}\n`, secret: false })
    if (networkConfig !== undefined) files.push({ path: 'network-config', content: networkConfig, secret: true })
  } else {
    files.push({ path: 'firstrun.sh', content: firstrunScript(hostname, user, input.sshKeys, wifi, psk), secret: psk !== undefined })
  }
  files.push({ path: `${DCLOUD_DIR}/cluster.key`, content: input.clusterKey.endsWith('\n') ? input.clusterKey : input.clusterKey + '\n', secret: true })
  files.push({ path: `${DCLOUD_DIR}/agent.env`, content: agentEnv, secret: false })
  return files
}

function cloudInitUserData (hostname: string, user: string, keys: string[]): string {
  return [
    '#cloud-config',
    '# Written by `dcloud flash` (Dentropy Cloud). cloud-init applies it once, on this',
    '# card\'s first boot; /var/log/cloud-init-output.log on the Pi tells how it went.',
    `hostname: ${yamlString(hostname)}`,
    'manage_etc_hosts: true',
    'users:',
    `  - name: ${yamlString(user)}`,
    `    groups: ${yamlString(PI_GROUPS)}`,
    '    shell: /bin/bash',
    '    lock_passwd: true',
    '    sudo: "ALL=(ALL) NOPASSWD:ALL"',
    '    ssh_authorized_keys:',
    ...keys.map(k => `      - ${yamlString(k)}`),
    'ssh_pwauth: false',
    // Raspberry Pi OS's own key for "start sshd"; the runcmd below does the same on any image.
    'enable_ssh: true',
    'runcmd:',
    '  - [systemctl, enable, --now, ssh]',
    `  - [sh, ${BOOT_MOUNT}/dcloud/firstboot.sh, stage, --start]`,
    ''
  ].join('\n')
}

function cloudInitNetworkConfig (wifi: WifiSettings, psk: string): string {
  return [
    '# Written by `dcloud flash`. cloud-init turns it into NetworkManager connections',
    '# (root-only files) on first boot; the first boot also makes this partition root-only.',
    'network:',
    '  version: 2',
    '  ethernets:',
    '    eth0:',
    '      dhcp4: true',
    '      optional: true',
    '  wifis:',
    '    wlan0:',
    '      dhcp4: true',
    '      optional: true',
    `      regulatory-domain: ${yamlString(wifi.country)}`,
    '      access-points:',
    `        ${yamlString(wifi.ssid)}:`,
    `          password: ${yamlString(psk)}`,
    ...(wifi.hidden === true ? ['          hidden: true'] : []),
    ''
  ].join('\n')
}

/**
 * For images without cloud-init: run once by systemd from cmdline.txt, with
 * the helpers Raspberry Pi OS ships for Raspberry Pi Imager (imager_custom,
 * userconf), and plain commands where they are missing. It holds the WPA key,
 * so it deletes itself, and its hook in cmdline.txt, before the Pi reboots.
 */
function firstrunScript (hostname: string, user: string, keys: string[], wifi: WifiSettings | undefined, psk: string | undefined): string {
  const lines = [
    '#!/bin/bash',
    '# Written by `dcloud flash` (Dentropy Cloud). Raspberry Pi OS runs it once, on the',
    '# first boot (systemd.run= in cmdline.txt); it removes itself and that hook, then the',
    '# Pi reboots and dcloud-firstboot.service installs the agent.',
    'set +e',
    `BOOT=${BOOT_MOUNT}`,
    '[ -f "$BOOT/cmdline.txt" ] || BOOT=/boot',
    `NEW_HOSTNAME=${shQuote(hostname)}`,
    `NEW_USER=${shQuote(user)}`,
    'IMAGER=/usr/lib/raspberrypi-sys-mods/imager_custom',
    'CURRENT_HOSTNAME=$(tr -d " \\t\\n\\r" </etc/hostname)',
    'if [ -x "$IMAGER" ]; then',
    '  "$IMAGER" set_hostname "$NEW_HOSTNAME"',
    'else',
    '  echo "$NEW_HOSTNAME" >/etc/hostname',
    '  sed -i "s/127.0.1.1.*$CURRENT_HOSTNAME/127.0.1.1\\t$NEW_HOSTNAME/g" /etc/hosts',
    'fi',
    '# The image\'s first user (uid 1000) becomes ours; it has no password, only the key.',
    'if [ -x /usr/lib/userconf-pi/userconf ]; then',
    '  /usr/lib/userconf-pi/userconf "$NEW_USER" ""',
    'else',
    '  FIRSTUSER=$(getent passwd 1000 | cut -d: -f1)',
    '  if [ -z "$FIRSTUSER" ]; then',
    `    useradd -m -s /bin/bash -G ${PI_GROUPS.split(',').filter(g => g !== 'users').join(',')} "$NEW_USER" 2>/dev/null || useradd -m -s /bin/bash "$NEW_USER"`,
    '  elif [ "$FIRSTUSER" != "$NEW_USER" ]; then',
    '    usermod -l "$NEW_USER" "$FIRSTUSER" && usermod -m -d "/home/$NEW_USER" "$NEW_USER" && groupmod -n "$NEW_USER" "$FIRSTUSER"',
    '  fi',
    'fi',
    'passwd -l "$NEW_USER" >/dev/null',
    'echo "$NEW_USER ALL=(ALL) NOPASSWD:ALL" >/etc/sudoers.d/010_dcloud-nopasswd && chmod 0440 /etc/sudoers.d/010_dcloud-nopasswd',
    'HOME_DIR=$(getent passwd "$NEW_USER" | cut -d: -f6)',
    'install -o "$NEW_USER" -g "$NEW_USER" -m 700 -d "$HOME_DIR/.ssh"',
    'cat >"$HOME_DIR/.ssh/authorized_keys" <<\'DCLOUD_KEYS\'',
    ...keys,
    'DCLOUD_KEYS',
    'chown "$NEW_USER:$NEW_USER" "$HOME_DIR/.ssh/authorized_keys"',
    'chmod 600 "$HOME_DIR/.ssh/authorized_keys"',
    'if [ -d /etc/ssh/sshd_config.d ]; then',
    '  printf "PasswordAuthentication no\\n" >/etc/ssh/sshd_config.d/10-dcloud.conf',
    'fi',
    'systemctl enable ssh'
  ]
  if (wifi !== undefined && psk !== undefined) {
    lines.push(
      `WIFI_SSID=${shQuote(wifi.ssid)}`,
      `WIFI_PSK=${shQuote(psk)}`,
      `WIFI_COUNTRY=${shQuote(wifi.country)}`,
      'if [ -x "$IMAGER" ]; then',
      `  "$IMAGER" set_wlan ${wifi.hidden === true ? '-h ' : ''}"$WIFI_SSID" "$WIFI_PSK" "$WIFI_COUNTRY"`,
      'else',
      '  CONN=/etc/NetworkManager/system-connections/dcloud-wifi.nmconnection',
      '  umask 077',
      '  printf "[connection]\\nid=dcloud-wifi\\ntype=wifi\\n[wifi]\\nmode=infrastructure\\nssid=%s\\nhidden=%s\\n[wifi-security]\\nkey-mgmt=wpa-psk\\npsk=%s\\n[ipv4]\\nmethod=auto\\n[ipv6]\\nmethod=auto\\n" \\',
      `    "$WIFI_SSID" ${wifi.hidden === true ? 'true' : 'false'} "$WIFI_PSK" >"$CONN"`,
      '  raspi-config nonint do_wifi_country "$WIFI_COUNTRY" 2>/dev/null',
      '  rfkill unblock wifi',
      'fi'
    )
  }
  lines.push(
    'sh "$BOOT/dcloud/firstboot.sh" stage',
    'rm -f "$BOOT/firstrun.sh"',
    'sed -i "s| systemd.run.*||g" "$BOOT/cmdline.txt"',
    'exit 0',
    ''
  )
  return lines.join('\n')
}
