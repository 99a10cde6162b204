import { requestedPermissions, pathPermission } from '../../proto/permissions.ts'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { stringify } from 'yaml'
import { loadApp } from '../../apps/catalog.ts'
import { importCasaOS, importCasaOSText } from '../../apps/importers/casaos.ts'
import { importRuntipi, importRuntipiFiles, type RuntipiFiles, type RuntipiOptions } from '../../apps/importers/runtipi.ts'
import { ManifestError, type ParsedApp } from '../../apps/manifest.ts'
import { isStateful } from '../../proto/app.ts'
import { ValidationError } from '../../proto/validate.ts'

/** The shared fixtures, read in place: ../shared/fixtures from the repository root. */
const FIXTURES = join(import.meta.dirname, '..', '..', '..', 'shared', 'fixtures')
const CASAOS = join(FIXTURES, 'casaos-appstore', 'Apps')
const RUNTIPI = join(FIXTURES, 'runtipi-appstore', 'apps')

type Outcome = { ok: string } | { refused: string[] }
const ok = (summary: string): Outcome => ({ ok: summary })
const refused = (...fields: string[]): Outcome => ({ refused: fields })

/** "web service:port[path] | named volumes[ | asks: permissions]": what an import is pinned to. */
function summary ({ manifest: m }: ParsedApp): string {
  const web = m.web === null ? 'no web' : `${m.web.service}:${m.web.port}${m.web.path ?? ''}`
  const asks = requestedPermissions(m).map(p => p.name)
  return `${web} | ${Object.keys(m.compose.volumes).join(' ') || 'stateless'}${asks.length > 0 ? ` | asks: ${asks.join(' ')}` : ''}`
}

async function outcome (run: () => Promise<ParsedApp>): Promise<Outcome> {
  try {
    const app = await run()
    checkPortable(app)
    return ok(summary(app))
  } catch (err) {
    if (!(err instanceof ManifestError)) throw err
    return refused(...err.refusals.map(r => r.field))
  }
}

/** An imported app keeps no host path but the node's time files unless it asks for it as a permission (in the summary), and its volumes are all used. */
function checkPortable ({ manifest: m }: ParsedApp): void {
  const asks = new Set(requestedPermissions(m).map(p => p.name))
  for (const [name, s] of Object.entries(m.compose.services)) {
    for (const v of s.volumes) {
      if (v.kind === 'bind') expect(['/etc/localtime', '/etc/timezone'].includes(v.source) || asks.has(pathPermission(v.source, v.readOnly) ?? ''), `${m.id}/${name} binds ${v.source}`).toBe(true)
    }
  }
  expect(m.requests.memoryBytes).toBeGreaterThan(0)
  if (m.web !== null) expect(m.compose.services[m.web.service]?.ports.some(p => p.container === m.web?.port && p.host === null)).toBe(true)
}

function dirs (root: string): string[] {
  return readdirSync(root).filter(d => statSync(join(root, d)).isDirectory()).sort()
}

/**
 * Every CasaOS fixture, pinned: its web UI and volumes when it imports, the
 * fields it is refused for when not. A new fixture fails until pinned here.
 */
const CASAOS_EXPECTED: Record<string, Outcome> = {
  AdGuardHome: ok('adguard-home:3000 | opt-adguardhome-work opt-adguardhome-conf'),
  Audiobookshelf: ok('audiobookshelf:80 | media-audiobooks media-podcasts config metadata'),
  Etherpad: ok('etherpad:9001 | var'),
  FreshRSS: ok('freshrss:80 | data extensions'),
  Gitea: ok('gitea:3000 | data'),
  // Host networking, full privileges and the host's D-Bus (below /run: a dangerous path): permissions now, asked at install.
  HomeAssistant: ok('no web | config | asks: dangerous_path:/run/dbus:ro host_network privileged'),
  Immich: ok('immich-server:2283 | gallery-immich model-cache pgdata'),
  // Raspberry Pi video devices and the host's /opt/vc/lib for hardware transcoding: permissions now.
  Jellyfin: ok('jellyfin:8096 | config media | asks: device:/dev/dri device:/dev/vchiq device:/dev/vcsm device:/dev/video10 device:/dev/video11 device:/dev/video12 path:/opt/vc/lib:rw'),
  MariaDB: ok('no web | config'),
  Memos: ok('memos:5230 | memos'),
  N8n: ok('n8n:5678 | data'),
  Navidrome: ok('navidrome:4533 | data media-music'),
  Nextcloud: ok('nextcloud:80 | var-www-html'),
  'Node-RED': ok('node-red:1880 | data | asks: host_network'),
  Pihole: ok('pihole:80/admin | etc-pihole | asks: net_admin'),
  PostgreSQL: ok('no web | data'),
  Syncthing: ok('syncthing:8384 | config data'),
  UptimeKuma: ok('uptimekuma:3001 | app-data'),
  Vaultwarden: ok('vaultwarden:80 | data'),
  WireGuardEasy: ok('wg-easy:51821 | wireguard | asks: net_admin sys_module sysctl:net.ipv4.conf.all.src_valid_mark sysctl:net.ipv4.ip_forward')
}

/** Every Runtipi fixture, read from docker-compose.json and from the legacy docker-compose.yml. */
const RUNTIPI_EXPECTED: Record<string, [json: Outcome, yaml: Outcome]> = {
  bookstack: [ok('bookstack:80 | config db'), refused('services.bookstack.dns')],
  freshrss: [ok('freshrss:80 | freshrss'), ok('freshrss:80 | freshrss')],
  gitea: [ok('gitea:3000 | gitea postgres'), ok('gitea:3000 | gitea postgres')],
  gotosocial: [ok('gotosocial:8080 | gotosocial db'), ok('gotosocial:8080 | gotosocial db')],
  'homeassistant-1': [ok('homeassistant-1:8123 | config'), ok('homeassistant-1:8123 | config')],
  immich: [ok('immich:2283 | media-images-immich immich-ml-cache db'), ok('immich:2283 | media-images-immich immich-ml-cache db')],
  jellyfin: [ok('jellyfin:8096 | config media'), ok('jellyfin:8096 | config media')],
  // shm_size (PostgreSQL's shared memory) is honoured now.
  mastodon: [ok('mastodon:443 | mastodon-config postgres redis'), ok('mastodon:443 | mastodon-config postgres redis')],
  // The JSON mounts ./nginx from the app folder; the YAML builds an image from it.
  'matrix-conduit': [refused('services.matrix-conduit-well-known.volumes[0]'), refused('services.matrix-conduit-well-known.build', 'services.matrix-conduit-well-known.image')],
  mstream: [ok('mstream:3000 | mstream-config media-music'), ok('mstream:3000 | mstream-config media-music')],
  navidrome: [ok('navidrome:4533 | navidrome-data media-music'), ok('navidrome:4533 | navidrome-data media-music')],
  nextcloud: [ok('nextcloud:80 | nextcloud db redis'), ok('nextcloud:80 | nextcloud db redis')],
  'paperless-ngx': [ok('paperless-ngx:8000 | paperless_data paperless_media paperless_export paperless_consume redis postgres'), ok('paperless-ngx:8000 | paperless_data paperless_media paperless_export paperless_consume redis postgres')],
  // NET_ADMIN is a permission now; the YAML's dns: is still refused (no field for it).
  pihole: [ok('pihole:80/admin | pihole dnsmasq | asks: net_admin'), refused('services.pihole.dns')],
  'stalwart-mail': [ok('stalwart-mail:8080 | data'), ok('stalwart-mail:8080 | data')],
  syncthing: [ok('syncthing:8384 | data media-syncthing'), ok('syncthing:8384 | data media-syncthing')],
  // The Docker socket is a (dangerous) permission now; the YAML's dns: is still refused.
  'uptime-kuma': [ok('uptime-kuma:3001 | data | asks: docker_socket'), refused('services.uptime-kuma.dns')],
  vaultwarden: [ok('vaultwarden:80 | data'), ok('vaultwarden:80 | data')],
  whoami: [ok('whoami:80 | stateless'), ok('whoami:80 | stateless')],
  wordpress: [ok('wordpress:80 | wordpress mariadb'), ok('wordpress:80 | wordpress mariadb')]
}

/** What a user would type into Runtipi's install form for the app's required fields. */
function formValues (dir: string): Record<string, string> {
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { form_fields?: Array<Record<string, any>> }
  const values: Record<string, string> = {}
  for (const f of config.form_fields ?? []) {
    if (f.required !== true || f.type === 'random' || f.default !== undefined) continue
    values[f.env_variable] = f.options?.[0]?.value ?? ({ email: 'admin@example.com', url: 'https://example.com', number: String(f.min ?? 1), boolean: 'false', ip: '192.168.1.10', fqdn: 'example.com', fqdnip: 'example.com' } as Record<string, string>)[f.type] ?? 'x'.repeat(Math.max(f.min ?? 12, 12)).slice(0, f.max ?? 64)
  }
  return values
}

describe('CasaOS store fixtures', () => {
  it('has a pinned outcome for every app folder', () => {
    expect(dirs(CASAOS)).toEqual(Object.keys(CASAOS_EXPECTED).sort())
  })

  it.each(dirs(CASAOS))('%s', async (app) => {
    expect(await outcome(async () => await importCasaOS(join(CASAOS, app)))).toEqual(CASAOS_EXPECTED[app])
  })

  it('maps AppData bind mounts to named volumes and says so', async () => {
    const { manifest, warnings } = await importCasaOS(join(CASAOS, 'Nextcloud'))
    expect(manifest).toMatchObject({ id: 'nextcloud', name: 'Nextcloud', version: '33.0.3', category: 'productivity', architectures: ['amd64', 'arm', 'arm64', '386', 'ppc64le', 's390x'] })
    expect(manifest.requests.memoryBytes).toBe(512 * 2 ** 20)
    expect(manifest.compose.services.nextcloud?.volumes).toEqual([{ source: 'var-www-html', target: '/var/www/html', kind: 'volume', readOnly: false }])
    expect(isStateful(manifest)).toBe(true)
    expect(warnings).toContain('services.nextcloud.volumes[0]: /DATA/AppData/nextcloud/var/www/html became the named volume "var-www-html": the app\'s data is snapshotted and moves with it')
    // The UI's fixed host port (10081) gives way to one the node picks; the HTTPS port stays as published.
    expect(manifest.compose.services.nextcloud?.ports).toEqual([{ host: null, container: 80, protocol: 'tcp' }, { host: 10443, container: 443, protocol: 'tcp' }])
    expect(warnings.join('\n')).toMatch(/ports\[0\]: the web UI's host port 10081 is not kept/)
  })

  it('supplies $PUID, $PGID and $TZ, and takes the user\'s values over them', async () => {
    const { manifest } = await importCasaOS(join(CASAOS, 'Jellyfin', '..', 'Memos'), { tz: 'Europe/Paris', uid: 1001 })
    expect(manifest.compose.services.memos?.environment).toEqual({ PGID: '1000', PUID: '1001', TZ: 'Europe/Paris' })
    const set = await importCasaOS(join(CASAOS, 'Memos'), { values: { TZ: 'Asia/Tokyo' } })
    expect(set.manifest.compose.services.memos?.environment.TZ).toBe('Asia/Tokyo')
  })

  it('reads the web UI\'s path and scheme (index, scheme)', async () => {
    const pihole = readFileSync(join(CASAOS, 'Pihole', 'docker-compose.yml'), 'utf8').replace(/\n    cap_add:\n      - NET_ADMIN/, '').replace('scheme: http\n', '')
    const { manifest } = importCasaOSText(pihole.replace('  index: /admin', '  index: /admin\n  scheme: https'), 'Pihole.yml')
    expect(manifest.web).toEqual({ service: 'pihole', port: 80, path: '/admin', scheme: 'https' })
    expect(manifest.compose.services.pihole?.ports).toContainEqual({ host: 53, container: 53, protocol: 'udp' })
  })

  it('refuses an unset variable by name', () => {
    const text = stringify({ name: 'demo', services: { demo: { image: 'x', environment: { TOKEN: '$API_TOKEN' } } }, 'x-casaos': { main: 'demo' } })
    expect(() => importCasaOSText(text, 'demo.yml')).toThrow(/demo\.yml: services\.demo\.environment\.TOKEN: variable API_TOKEN is not set: give it a value \(--set API_TOKEN=/)
    expect(importCasaOSText(text, 'demo.yml', { values: { API_TOKEN: '' } }).manifest.compose.services.demo?.environment.TOKEN).toBe('')
  })

  it('keeps host paths other than its data folders as binds the app asks permission for, the Docker socket among them', () => {
    const text = stringify({
      name: 'demo',
      services: { demo: { image: 'x', volumes: ['/var/run/docker.sock:/var/run/docker.sock', '/DATA/AppData/$AppID/db:/db', '/srv/media:/media', '/etc/localtime:/etc/localtime:ro'] } },
      'x-casaos': { main: 'demo' }
    })
    const { manifest, warnings } = importCasaOSText(text, 'demo.yml')
    expect(requestedPermissions(manifest).map(p => [p.name, p.fields])).toEqual([
      ['docker_socket', ['services.demo.volumes[0]']],
      ['path:/srv/media:rw', ['services.demo.volumes[2]']]
    ])
    expect(warnings.join('\n')).toMatch(/volumes\[2\]: binds the host path \/srv\/media: the app only finds its files on a node that has them/)
  })

  it('refuses nested app-data folders but only warns about nested user folders', () => {
    const app = (volumes: string[]): string => stringify({ name: 'demo', services: { demo: { image: 'x', volumes } }, 'x-casaos': { main: 'demo' } })
    expect(() => importCasaOSText(app(['/DATA/AppData/$AppID:/config', '/DATA/AppData/$AppID/tv:/tv']), 'a.yml')).toThrow(/volumes\[1\]: \/DATA\/AppData\/demo\/tv and \/DATA\/AppData\/demo are nested app-data folders/)
    const { warnings } = importCasaOSText(app(['/DATA/Downloads:/downloads', '/DATA/Downloads/watch:/watch']), 'b.yml')
    expect(warnings.join('\n')).toMatch(/volumes\[1\]: \/DATA\/Downloads\/watch and \/DATA\/Downloads are nested on the host but become separate volumes/)
  })

  it('is what loadApp reads from a CasaOS folder or file', async () => {
    const app = await loadApp(join(CASAOS, 'Gitea'))
    expect(app.format).toBe('casaos')
    expect(app.manifest.id).toBe('gitea')
    expect((await loadApp(join(CASAOS, 'Gitea', 'docker-compose.yml'))).manifest).toEqual(app.manifest)
  })
})

describe('Runtipi store fixtures', () => {
  it('has a pinned outcome for every app folder', () => {
    expect(dirs(RUNTIPI)).toEqual(Object.keys(RUNTIPI_EXPECTED).sort())
  })

  it.each(dirs(RUNTIPI))('%s (docker-compose.json, then docker-compose.yml)', async (app) => {
    const dir = join(RUNTIPI, app)
    const values = formValues(dir)
    const json = await outcome(async () => await importRuntipi(dir, { values }))
    const yaml = await outcome(async () => await importRuntipi(dir, { values, prefer: 'yaml' }))
    expect([json, yaml]).toEqual(RUNTIPI_EXPECTED[app])
  })

  it('maps config.json, the main service and ${APP_DATA_DIR} folders', async () => {
    const { manifest, warnings } = await importRuntipi(join(RUNTIPI, 'nextcloud'), { values: { NEXTCLOUD_ADMIN_USER: 'admin', NEXTCLOUD_ADMIN_PASSWORD: 'correct horse' }, domain: 'home.example' })
    expect(manifest).toMatchObject({ id: 'nextcloud', name: 'Nextcloud', version: '33-apache', category: 'data', architectures: ['arm64', 'amd64'], web: { service: 'nextcloud', port: 80 } })
    expect(manifest.description).toBe('Productivity platform that keeps you in control')
    const web = manifest.compose.services.nextcloud
    expect(web?.environment).toMatchObject({ NEXTCLOUD_ADMIN_USER: 'admin', NEXTCLOUD_TRUSTED_DOMAINS: 'nextcloud.home.example', OVERWRITEPROTOCOL: 'https' })
    // The app server and its cron share one folder in Runtipi, and so one volume here.
    expect(web?.volumes[0]?.source).toBe('nextcloud')
    expect(manifest.compose.services.cron?.volumes[0]?.source).toBe('nextcloud')
    expect(manifest.compose.services.cron?.entrypoint).toEqual(['/cron.sh'])
    expect(warnings).toContain('services.db-nextcloud.volumes[0]: ${APP_DATA_DIR}/data/db became the named volume "db": the app\'s data is snapshotted and moves with it')
  })

  it('refuses a required form field without a value, naming its variable', async () => {
    await expect(importRuntipi(join(RUNTIPI, 'nextcloud'))).rejects.toThrow(/config\.json: config\.form_fields\[0\] \(NEXTCLOUD_ADMIN_USER\): "Username" is required: give it a value \(--set NEXTCLOUD_ADMIN_USER=…\); also required: NEXTCLOUD_ADMIN_PASSWORD/)
    await expect(importRuntipi(join(RUNTIPI, 'nextcloud'), { values: { NEXTCLOUD_ADMIN_USER: 'ab', NEXTCLOUD_ADMIN_PASSWORD: 'correct horse' } })).rejects.toThrow(/\(NEXTCLOUD_ADMIN_USER\): "ab" is shorter than 3 characters/)
  })

  it('generates random fields with their length and encoding', async () => {
    let n = 0
    const random = (bytes: number): Uint8Array => Uint8Array.from({ length: bytes }, () => n++ % 256)
    const { manifest } = await importRuntipi(join(RUNTIPI, 'bookstack'), { random })
    const env = manifest.compose.services.bookstack?.environment ?? {}
    expect(env.APP_KEY).toMatch(/^base64:[A-Za-z0-9+/]{43}=$/) // 32 random bytes, base64
    expect(env.DB_PASSWORD).toMatch(/^[0-9a-f]{32}$/)
    expect(manifest.compose.services['bookstack-db']?.environment.MYSQL_PASSWORD).toBe(env.DB_PASSWORD) // one value per variable
    expect(env.TZ).toBe('Etc/UTC')
  })

  it('names the app\'s host NAME.DOMAIN as the front door serves it: the cluster\'s domain and the name it is installed under', async () => {
    const app = await importRuntipi(join(RUNTIPI, 'gotosocial'), { values: { GTS_ACCOUNTS_REGISTRATION_OPEN: 'false' }, domain: 'alice.example.org', name: 'social' })
    expect(app.manifest.compose.services.gotosocial?.environment.GTS_HOST).toBe('social.alice.example.org')
  })

  it('uses optional fields\' defaults, and "" for a bare ${VAR} of an unset optional field', async () => {
    const app = await importRuntipi(join(RUNTIPI, 'gotosocial'), { values: { GTS_ACCOUNTS_REGISTRATION_OPEN: 'false' } })
    expect(app.manifest.compose.services.gotosocial?.environment).toMatchObject({ GTS_SMTP_HOST: '', GTS_ACCOUNTS_REGISTRATION_OPEN: 'false', GTS_HOST: 'gotosocial.dcloud.home.arpa' })
    await expect(importRuntipi(join(RUNTIPI, 'gotosocial'), { values: { GTS_ACCOUNTS_REGISTRATION_OPEN: 'maybe' } })).rejects.toThrow(/"maybe" is not one of true, false/)
  })

  it('is what loadApp reads from a Runtipi folder, or from one of its compose files', async () => {
    const dir = join(RUNTIPI, 'whoami')
    expect(await loadApp(dir)).toMatchObject({ format: 'runtipi', source: dir, manifest: { id: 'whoami', web: { service: 'whoami', port: 80 } } })
    const legacy = await loadApp(join(dir, 'docker-compose.yml'))
    expect(legacy.format).toBe('runtipi')
    expect(legacy.warnings.join('\n')).toMatch(/Traefik/) // read from the YAML, as asked
  })

  it('drops Traefik routing labels and Runtipi\'s shared network from a legacy compose file', async () => {
    const { manifest, warnings } = await importRuntipi(join(RUNTIPI, 'whoami'), { prefer: 'yaml' })
    expect(manifest.compose.services.whoami?.labels).toEqual({})
    expect(manifest.compose.services.whoami?.ports).toEqual([{ host: null, container: 80, protocol: 'tcp' }])
    expect(warnings.join('\n')).toMatch(/services\.whoami\.labels: 20 Traefik\/Runtipi routing label\(s\) dropped/)
    expect(warnings.join('\n')).toMatch(/\$\{APP_PORT\}, where Runtipi publishes the UI, is not kept/)
  })
})

/** A Runtipi app in memory: config.json fields and the compose part. */
function runtipiApp (config: Record<string, unknown>, compose: { json?: unknown, yaml?: unknown }, opts: RuntipiOptions = {}): ParsedApp {
  const files: RuntipiFiles = { config: JSON.stringify({ id: 'demo', name: 'Demo', available: true, port: 8123, supported_architectures: ['arm64', 'amd64'], ...config }) }
  if (compose.json !== undefined) files.composeJson = JSON.stringify(compose.json)
  if (compose.yaml !== undefined) files.composeYaml = stringify(compose.yaml)
  return importRuntipiFiles(files, '/apps/demo', opts)
}

describe('Runtipi formats beyond the fixtures', () => {
  it('reads the YAML format with x-runtipi blocks', () => {
    const { manifest } = runtipiApp({}, { yaml: { services: { demo: { image: 'demo:1', 'x-runtipi': { internal_port: 8000, is_main: true } }, worker: { image: 'demo:1', 'x-runtipi': { internal_port: 9000 } } }, 'x-runtipi': { schema_version: 2 } } })
    expect(manifest.web).toEqual({ service: 'demo', port: 8000 })
    expect(manifest.compose.services.demo?.ports).toEqual([{ host: null, container: 8000, protocol: 'tcp' }])
  })

  it('maps addPorts, healthCheck, dependsOn and deploy, and names refusals by the store\'s keys', () => {
    const services = [
      { name: 'demo', image: 'demo:1', isMain: true, internalPort: '${APP_PORT}', addPorts: [{ hostPort: 53, containerPort: 53, tcp: true, udp: true, interface: '${NETWORK_INTERFACE:-0.0.0.0}' }], dependsOn: { db: { condition: 'service_healthy' } }, deploy: { resources: { limits: { memory: '512M', cpus: '1.5' } } } },
      { name: 'db', image: 'postgres:16', healthCheck: { test: 'pg_isready', interval: '10s', startPeriod: '30s', retries: 5 }, environment: { POSTGRES_PASSWORD: '${DB_PASSWORD}' } }
    ]
    const { manifest, warnings } = runtipiApp({ form_fields: [{ type: 'random', label: 'DB', env_variable: 'DB_PASSWORD', min: 40 }] }, { json: { services } })
    expect(manifest.web).toEqual({ service: 'demo', port: 8123 })
    expect(manifest.compose.services.demo?.ports).toEqual([{ host: 53, container: 53, protocol: 'tcp' }, { host: 53, container: 53, protocol: 'udp' }, { host: null, container: 8123, protocol: 'tcp' }])
    expect(manifest.compose.services.db?.healthcheck).toEqual({ test: ['CMD-SHELL', 'pg_isready'], intervalMs: 10_000, timeoutMs: 30_000, retries: 5, startPeriodMs: 30_000 })
    expect(manifest.compose.services.db?.environment.POSTGRES_PASSWORD).toMatch(/^[0-9a-f]{40}$/)
    expect(manifest.requests.memoryBytes).toBe(512 * 2 ** 20 + 64 * 2 ** 20)
    expect(warnings.join('\n')).toMatch(/services\.demo\.depends_on\.db\.condition: service_healthy is not waited for/)

    const bad = [{ ...services[0], addPorts: [{ hostPort: 53, containerPort: 53, interface: '192.168.1.2' }], capAdd: ['NET_ADMIN'], pid: 'host', healthCheck: { test: 'true', startInterval: 'soon' } }, services[1]]
    const err = (() => { try { runtipiApp({ form_fields: [{ type: 'random', label: 'DB', env_variable: 'DB_PASSWORD' }] }, { json: { services: bad } }) } catch (e) { return e as ManifestError } throw new Error('accepted') })()
    // capAdd is a permission the app asks for; pid is still refused, by the store's key.
    expect(err.message).toMatch(/^\/apps\/demo\/docker-compose\.json: services\.demo\.pid: not supported/)
    const again = (() => { try { runtipiApp({ form_fields: [{ type: 'random', label: 'DB', env_variable: 'DB_PASSWORD' }] }, { json: { services: [{ ...bad[0], pid: undefined }, services[1]] } }) } catch (e) { return e as ManifestError } throw new Error('accepted') })()
    expect(again.field).toBe('services.demo.addPorts[0]')
    expect(again.message).toMatch(/binding to the address 192\.168\.1\.2 is not supported/)
  })

  it('limits the architectures when an override swaps an image', () => {
    const { manifest, warnings } = runtipiApp({}, { json: { services: [{ name: 'demo', image: 'demo:1', isMain: true, internalPort: 80 }], overrides: [{ architecture: 'arm64', services: [{ name: 'demo', image: 'demo:1-arm64' }] }] } })
    expect(manifest.architectures).toEqual(['amd64'])
    expect(warnings.join('\n')).toMatch(/overrides\[0\]: arm64 replaces demo \(a different image\)/)
  })

  it('generates VAPID keys when asked, and refuses ${APP_DATA_DIR} outside a volume', () => {
    const services = [{ name: 'demo', image: 'demo:1', isMain: true, internalPort: 80, environment: [{ key: 'PUB', value: '${VAPID_PUBLIC_KEY}' }, { key: 'PRIV', value: '${VAPID_PRIVATE_KEY}' }] }]
    const env = runtipiApp({ generate_vapid_keys: true }, { json: { services } }).manifest.compose.services.demo?.environment ?? {}
    expect(Buffer.from(env.PUB ?? '', 'base64url')).toHaveLength(65) // an uncompressed P-256 point
    expect(Buffer.from(env.PRIV ?? '', 'base64url')).toHaveLength(32)
    const stacks = [{ name: 'demo', image: 'demo:1', isMain: true, internalPort: 80, environment: [{ key: 'STACKS', value: '${APP_DATA_DIR}/stacks' }] }]
    expect(() => runtipiApp({}, { json: { services: stacks } })).toThrow(/services\.demo\.environment\.STACKS: uses \$\{APP_DATA_DIR\} or \$\{ROOT_FOLDER_HOST\} outside a volume's host path/)
  })

  it('ships a seeded single-file mount as a config, and refuses another app\'s data', () => {
    const services = [{ name: 'demo', image: 'demo:1', isMain: true, internalPort: 80, volumes: [{ hostPath: '${APP_DATA_DIR}/data/app.conf', containerPath: '/etc/app/app.conf' }, { hostPath: '${APP_DATA_DIR}/data/db', containerPath: '/db' }] }]
    const seeds = { files: new Set(['data/app.conf']), dirs: new Set<string>(), read: (p: string) => Buffer.from(`listen = 80 # ${p}\n`) }
    const files: RuntipiFiles = { config: JSON.stringify({ id: 'demo', name: 'Demo', port: 80 }), composeJson: JSON.stringify({ services }), seeds }
    const { manifest, warnings } = importRuntipiFiles(files, '/apps/demo')
    expect(manifest.compose.configs).toEqual({ 'app.conf': { content: 'listen = 80 # data/app.conf\n' } })
    expect(manifest.compose.services.demo?.configs).toEqual([{ source: 'app.conf', target: '/etc/app/app.conf', mode: 0o444 }])
    expect(manifest.compose.services.demo?.volumes).toEqual([{ source: 'db', target: '/db', kind: 'volume', readOnly: false }])
    expect(warnings).toContain('services.demo.volumes[0]: ${APP_DATA_DIR}/data/app.conf, seeded from the app folder, is shipped with the app as the config "app.conf" and mounted read-only: the app cannot change it')

    // An error after the entry that left is named by the entry's index in the store's file.
    const twice = [{ ...services[0], volumes: [...services[0]!.volumes, { hostPath: '${APP_DATA_DIR}/data/db2', containerPath: '/db' }] }]
    const dup = (() => { try { importRuntipiFiles({ ...files, composeJson: JSON.stringify({ services: twice }) }, '/apps/demo') } catch (e) { return e as ManifestError } throw new Error('accepted') })()
    expect(dup.message).toBe('/apps/demo/docker-compose.json: services.demo.volumes[2]: /db is mounted twice (also services.demo.volumes[1])')

    const other = [{ ...services[0], volumes: [{ hostPath: '${ROOT_FOLDER_HOST}/app-data/other/data', containerPath: '/other' }] }]
    const err = (() => { try { importRuntipiFiles({ ...files, composeJson: JSON.stringify({ services: other }) }, '/apps/demo') } catch (e) { return e as ManifestError } throw new Error('accepted') })()
    expect(err.refusals.map(r => `${r.field}: ${r.problem}`)).toEqual([expect.stringMatching(/^services\.demo\.volumes\[0\]: binds \$\{ROOT_FOLDER_HOST\}\/app-data\/other\/data, Runtipi's own folders/)])
  })

  it.each<[string, (p: string) => Uint8Array, RegExp]>([
    ['too large', () => { throw new ValidationError('data/app.conf', 'is 300000 bytes, more than the 262144 a config shipped with the app may hold') }, /volumes\[0\]: binds \$\{APP_DATA_DIR\}\/data\/app\.conf, which is 300000 bytes, more than the 262144/],
    ['not text', () => Uint8Array.from([0xff, 0xfe, 0x00]), /volumes\[0\]: binds \$\{APP_DATA_DIR\}\/data\/app\.conf, which is not text \(UTF-8\)/],
    ['unreadable', () => { throw Object.assign(new Error('gone'), { code: 'ENOENT' }) }, /which cannot be read: ENOENT/]
  ])('refuses a seeded file that is %s, naming the volume entry', (_what, read, message) => {
    const services = [{ name: 'demo', image: 'demo:1', isMain: true, internalPort: 80, volumes: [{ hostPath: '${APP_DATA_DIR}/data/app.conf', containerPath: '/etc/app.conf' }] }]
    const files: RuntipiFiles = { config: JSON.stringify({ id: 'demo', name: 'Demo', port: 80 }), composeJson: JSON.stringify({ services }), seeds: { files: new Set(['data/app.conf']), dirs: new Set(), read } }
    expect(() => importRuntipiFiles(files, '/apps/demo')).toThrow(message)
  })

  it('reads a seeded file from the app folder on disk, refusing one over the cap before reading it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'runtipi-seed-'))
    mkdirSync(join(dir, 'data'))
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ id: 'demo', name: 'Demo', port: 80 }))
    writeFileSync(join(dir, 'docker-compose.json'), JSON.stringify({ services: [{ name: 'demo', image: 'demo:1', isMain: true, internalPort: 80, volumes: [{ hostPath: '${APP_DATA_DIR}/data/nginx.conf', containerPath: '/etc/nginx/nginx.conf', readOnly: true }] }] }))
    writeFileSync(join(dir, 'data', 'nginx.conf'), 'events {}\n')
    expect((await importRuntipi(dir)).manifest.compose.configs).toEqual({ 'nginx.conf': { content: 'events {}\n' } })
    writeFileSync(join(dir, 'data', 'nginx.conf'), 'x'.repeat(256 * 1024 + 1))
    await expect(importRuntipi(dir)).rejects.toThrow(/volumes\[0\]: binds \$\{APP_DATA_DIR\}\/data\/nginx\.conf, which is 262145 bytes, more than the 262144/)
    rmSync(dir, { recursive: true, force: true })
  })

  it('shows the user\'s own ${APP_DATA_DIR} in a refusal, never the importer\'s placeholder', () => {
    const yaml = { services: { demo: { image: 'demo:1', volumes: [{ type: 'volume', source: '${APP_DATA_DIR}/data', target: '/d' }, '${APP_DATA_DIR}/data/x.conf:/etc/x.conf'] } } }
    const err = (() => { try { runtipiApp({}, { yaml }) } catch (e) { return e as ManifestError } throw new Error('accepted') })()
    expect(err.message).not.toMatch(/\u0001/)
    expect(err.message).toMatch(/services\.demo\.volumes\[0\]: "\$\{APP_DATA_DIR\}\/data" is not a volume name/)
    const file = (() => { try { runtipiApp({}, { yaml: { services: { demo: { image: 'demo:1', volumes: ['${APP_DATA_DIR}/data/x.conf:/etc/x.conf'] } } } }) } catch (e) { return e as ManifestError } throw new Error('accepted') })()
    expect(file.message).toMatch(/volumes\[0\]: binds the single file \$\{APP_DATA_DIR\}\/data\/x\.conf: a named volume is a directory/)
  })

  it('keeps Runtipi\'s unless-stopped for dynamic compose services, and a legacy file\'s own policy', () => {
    const { manifest } = runtipiApp({}, { json: { services: [{ name: 'demo', image: 'demo:1', isMain: true, internalPort: 80 }] } })
    expect(manifest.compose.services.demo?.restart).toBe('unless-stopped')
    const legacy = runtipiApp({}, { yaml: { services: { demo: { image: 'demo:1', ports: ['${APP_PORT}:80'] }, worker: { image: 'demo:1', restart: 'always' } } } })
    expect(legacy.manifest.compose.services.demo?.restart).toBe('no') // as docker compose runs the file
    expect(legacy.manifest.compose.services.worker?.restart).toBe('always')
  })

  it('warns about ${APP_PORT} left in an environment value, as for ${INTERNAL_IP}', () => {
    const json = runtipiApp({}, { json: { services: [{ name: 'demo', image: 'demo:1', isMain: true, internalPort: 80, environment: [{ key: 'BASE_URL', value: 'http://${APP_DOMAIN}:${APP_PORT}' }, { key: 'PORT', value: '80' }] }] } })
    expect(json.warnings.filter(w => w.includes('APP_PORT'))).toEqual([expect.stringMatching(/^services\.demo\.environment\.BASE_URL: \$\{APP_PORT\} is config\.json's port/)])
    expect(json.manifest.compose.services.demo?.environment.BASE_URL).toBe('http://demo.dcloud.home.arpa:8123')
    const yaml = runtipiApp({}, { yaml: { services: { demo: { image: 'demo:1', ports: ['${APP_PORT}:80'], environment: ['URL=http://x:$APP_PORT/'] } } } })
    expect(yaml.warnings.join('\n')).toMatch(/services\.demo\.environment\.URL: \$\{APP_PORT\} is config\.json's port/)
  })

  it('keeps a healthcheck\'s $? as docker compose does', () => {
    const { manifest } = runtipiApp({}, { json: { services: [{ name: 'demo', image: 'demo:1', isMain: true, internalPort: 80, healthCheck: { test: 'curl -f http://localhost/ || exit $?' } }] } })
    expect(manifest.compose.services.demo?.healthcheck?.test).toEqual(['CMD-SHELL', 'curl -f http://localhost/ || exit $?'])
  })

  it('honours the dynamic compose keys that add no power, and names a bad one by the store\'s key', () => {
    const svc = { name: 'demo', image: 'demo:1', isMain: true, internalPort: 80, tty: true, stdinOpen: true, workingDir: '/app', shmSize: '128mb', readOnly: true, capDrop: ['ALL'], ulimits: { nofile: { soft: 1024, hard: 2048 } }, extraHosts: ['host.docker.internal:host-gateway'], securityOpt: ['no-new-privileges:true'] }
    const { manifest } = runtipiApp({}, { json: { services: [svc] } })
    expect(manifest.compose.services.demo).toMatchObject({ tty: true, stdinOpen: true, workingDir: '/app', shmSizeBytes: 128 * 2 ** 20, readOnly: true, capDrop: ['ALL'], ulimits: { nofile: { soft: 1024, hard: 2048 } }, extraHosts: [{ host: 'host.docker.internal', address: 'host-gateway' }], noNewPrivileges: true })
    expect(() => runtipiApp({}, { json: { services: [{ ...svc, extraHosts: ['nohost'] }] } })).toThrow(/services\.demo\.extraHosts\[0\]: "nohost" is not HOST:IP/)
    expect(() => runtipiApp({}, { json: { services: [{ ...svc, securityOpt: ['seccomp=unconfined'] }] } })).toThrow(/services\.demo\.securityOpt\[0\]: "seccomp=unconfined" is not supported/)
  })

  it('rejects keys outside Runtipi\'s schemas by name', () => {
    expect(() => runtipiApp({}, { json: { services: [{ name: 'demo', image: 'demo:1', isMain: true, internalPort: 80, gpu: true }] } })).toThrow(/services\.demo\.gpu: not a key of Runtipi's dynamic compose schema/)
    expect(() => runtipiApp({ form_fields: [{ type: 'colour', label: 'C', env_variable: 'C' }] }, { json: { services: [] } })).toThrow(/config\.form_fields\[0\]\.type: must be one of text, password/)
    const { warnings } = runtipiApp({ requirements: { ports: [25] }, mystery: 1 }, { json: { services: [{ name: 'demo', image: 'demo:1', isMain: true, internalPort: 80 }] } })
    expect(warnings).toContain('config.mystery: not in Runtipi\'s app-info schema; ignored')
    expect(warnings.join('\n')).not.toMatch(/config\.requirements/)
  })
})
