import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { stringify } from 'yaml'
import { SERVICE_KEYS, TOP_LEVEL_KEYS } from '../../apps/compose-keys.ts'
import { CASAOS_KEYS } from '../../apps/importers/casaos.ts'
import { APP_INFO_KEYS, DYNAMIC_SERVICE_KEYS, RUNTIPI_VARIABLES } from '../../apps/importers/runtipi.ts'
import { loadApp, listCatalog } from '../../apps/catalog.ts'
import { interpolate } from '../../apps/interpolate.ts'
import { ManifestError, checkArchitecture, parseManifest, type ParsedApp } from '../../apps/manifest.ts'
import { splitShellWords, joinShellWords } from '../../apps/shell.ts'
import { formatDuration, parseBytes, parseDuration } from '../../apps/units.ts'
import { MAX_FILE_BYTES } from '../../apps/yaml.ts'
import { UserError } from '../../agent/util/errors.ts'
import { hostPorts, isStateful } from '../../proto/app.ts'
import { ValidationError } from '../../proto/validate.ts'

const ROOT = join(import.meta.dirname, '..', '..')
const HELLO = join(ROOT, 'apps', 'examples', 'hello', 'compose.yaml')

type Obj = Record<string, any>

/** A valid two-service app: a web front on 8080 and a database with a named volume. */
function base (): Obj {
  return {
    services: {
      web: { image: 'dcloud/busybox:lab', command: 'httpd -f -p 8080 -h /www', ports: ['8080'], depends_on: ['db'], restart: 'unless-stopped' },
      db: { image: 'postgres:16', volumes: ['data:/var/lib/postgresql/data'], environment: { POSTGRES_PASSWORD: 'secret' } }
    },
    volumes: { data: null },
    'x-dcloud': { id: 'demo', name: 'Demo', version: '1.0.0', requests: { memory: '256M', cpus: 0.5 }, web: { service: 'web', port: 8080 } }
  }
}

function parse (o: Obj | string, variables: Record<string, string> = {}): ParsedApp {
  return parseManifest(typeof o === 'string' ? o : stringify(o), 'demo.yaml', { variables })
}

function with_ (change: (o: Obj) => void): Obj {
  const o = base()
  change(o)
  return o
}

function failure (o: Obj | string, variables: Record<string, string> = {}): ManifestError {
  try {
    parse(o, variables)
  } catch (err) {
    expect(err).toBeInstanceOf(ManifestError)
    return err as ManifestError
  }
  throw new Error('expected the manifest to be refused')
}

describe('the hello example', () => {
  it('parses into a stateless one-service app with its web UI on 8080', () => {
    const { manifest, warnings } = parseManifest(readFileSync(HELLO, 'utf8'), HELLO)
    expect(warnings).toEqual([])
    expect(manifest).toMatchObject({ id: 'hello', version: '1.0.0', architectures: [], requests: { memoryBytes: 16 * 1024 * 1024, cpus: 0.05 }, web: { service: 'web', port: 8080 } })
    const web = manifest.compose.services.web
    expect(web?.image).toBe('dcloud/busybox:lab')
    expect(web?.command?.[2]).toContain('$(hostname)') // "$$" in the file is a literal "$" for the shell
    expect(web?.command?.[2]).toContain('$GREETING')
    expect(web?.environment.GREETING).toBeTruthy()
    expect(web?.ports).toEqual([{ host: null, container: 8080, protocol: 'tcp' }])
    expect(isStateful(manifest)).toBe(false)
    expect(checkArchitecture(manifest, 'arm')).toBeNull()
  })

  it('is found by id in the catalog, and by path', async () => {
    expect((await listCatalog()).map(a => a.id)).toContain('hello')
    const byId = await loadApp('hello')
    expect(byId.format).toBe('dcloud')
    expect(byId.source).toBe(HELLO)
    expect((await loadApp(join(ROOT, 'apps', 'examples', 'hello'))).manifest).toEqual(byId.manifest)
    await expect(loadApp('no-such-app')).rejects.toThrow(/no app "no-such-app" in the catalog \(it has .*hello/)
    await expect(loadApp('./no/such/file.yaml')).rejects.toThrow(/no such file/)
  })
})

describe('compose syntaxes', () => {
  it.each<[string, (o: Obj) => void, (m: ParsedApp) => void]>([
    ['short ports with protocol, host address and ranges', o => { o.services.web.ports = ['8080', '0.0.0.0:2222:22/tcp', '53:53/udp', '7000-7001:8000-8001', 9000] }, ({ manifest: m }) => {
      expect(m.compose.services.web?.ports).toEqual([
        { host: null, container: 8080, protocol: 'tcp' }, { host: 2222, container: 22, protocol: 'tcp' }, { host: 53, container: 53, protocol: 'udp' },
        { host: 7000, container: 8000, protocol: 'tcp' }, { host: 7001, container: 8001, protocol: 'tcp' }, { host: null, container: 9000, protocol: 'tcp' }])
    }],
    ['long ports', o => { o.services.web.ports = [{ target: 8080, published: '18080', protocol: 'tcp', mode: 'host' }, { target: 53, protocol: 'UDP' }] }, ({ manifest: m }) => {
      expect(m.compose.services.web?.ports).toEqual([{ host: 18080, container: 8080, protocol: 'tcp' }, { host: null, container: 53, protocol: 'udp' }])
    }],
    ['environment as a list, values of any scalar type', o => { o.services.db.environment = ['A=1', 'B=x=y', 'EMPTY=']; o.services.web.environment = { N: 1.5, T: true, S: 'str' } }, ({ manifest: m }) => {
      expect(m.compose.services.db?.environment).toEqual({ A: '1', B: 'x=y', EMPTY: '' })
      expect(m.compose.services.web?.environment).toEqual({ N: '1.5', T: 'true', S: 'str' })
    }],
    ['command as a string is split like a shell, without one', o => { o.services.web.command = `sh -c 'echo "a b" && exit 0' --flag="x y" plain\\ word` }, ({ manifest: m }) => {
      expect(m.compose.services.web?.command).toEqual(['sh', '-c', 'echo "a b" && exit 0', '--flag=x y', 'plain word'])
    }],
    ['command and entrypoint as lists', o => { o.services.web.command = ['httpd', '-p', 8080]; o.services.web.entrypoint = [] }, ({ manifest: m }) => {
      expect(m.compose.services.web?.command).toEqual(['httpd', '-p', '8080'])
      expect(m.compose.services.web?.entrypoint).toEqual([])
    }],
    ['volumes: short read-only, long volume and long bind', o => {
      o.services.db.volumes = ['data:/var/lib/postgresql/data:ro', { type: 'volume', source: 'logs', target: '/logs' }, { type: 'bind', source: '/etc/localtime', target: '/etc/localtime', read_only: true }]
      o.volumes.logs = { labels: { 'org.example.backup': 'daily' } }
    }, ({ manifest: m, warnings }) => {
      expect(m.compose.services.db?.volumes).toEqual([
        { source: 'data', target: '/var/lib/postgresql/data', kind: 'volume', readOnly: true },
        { source: 'logs', target: '/logs', kind: 'volume', readOnly: false },
        { source: '/etc/localtime', target: '/etc/localtime', kind: 'bind', readOnly: true }])
      expect(m.compose.volumes.logs).toEqual({ labels: { 'org.example.backup': 'daily' } })
      expect(warnings).toEqual([]) // the node's time zone file is benign
    }],
    ['healthcheck as a string, with Go durations', o => { o.services.web.healthcheck = { test: 'wget -qO- localhost:8080', interval: '1m30s', timeout: '500ms', retries: 5, start_period: '1h2m3s' } }, ({ manifest: m }) => {
      expect(m.compose.services.web?.healthcheck).toEqual({ test: ['CMD-SHELL', 'wget -qO- localhost:8080'], intervalMs: 90_000, timeoutMs: 500, retries: 5, startPeriodMs: 3_723_000 })
    }],
    ['healthcheck defaults, CMD lists and disable', o => { o.services.web.healthcheck = { test: ['CMD', 'true'] }; o.services.db.healthcheck = { disable: true } }, ({ manifest: m }) => {
      expect(m.compose.services.web?.healthcheck).toEqual({ test: ['CMD', 'true'], intervalMs: 30_000, timeoutMs: 30_000, retries: 3, startPeriodMs: 0 })
      expect(m.compose.services.db?.healthcheck?.test).toEqual(['NONE'])
    }],
    ['depends_on as a map with conditions', o => { o.services.web.depends_on = { db: { condition: 'service_healthy' } } }, ({ manifest: m, warnings }) => {
      expect(m.compose.services.web?.dependsOn).toEqual(['db'])
      expect(warnings.join('\n')).toMatch(/services\.web\.depends_on\.db\.condition: service_healthy is not waited for/)
    }],
    ['deploy reservations as requests when x-dcloud has none', o => {
      delete o['x-dcloud'].requests
      o.services.web.deploy = { resources: { reservations: { memory: '128M', cpus: '0.25' } } }
      o.services.db.deploy = { resources: { limits: { memory: '1g' } } }
    }, ({ manifest: m, warnings }) => {
      expect(m.requests.memoryBytes).toBe(128 * 2 ** 20 + 2 ** 30)
      expect(m.requests.cpus).toBe(0.35)
      expect(warnings.join('\n')).toMatch(/services\.db: resource limits are taken as the service's request/)
      expect(warnings.join('\n')).toMatch(/x-dcloud\.requests: .*no cpus request from db \(0\.1 assumed/)
    }],
    ['YAML anchors and merge keys', () => {}, () => {}],
    ['restart policies and labels as a list', o => { o.services.db.restart = 'on-failure'; o.services.db.labels = ['org.example.tier=data'] }, ({ manifest: m }) => {
      expect(m.compose.services.db?.restart).toBe('on-failure')
      expect(m.compose.services.db?.labels).toEqual({ 'org.example.tier': 'data' })
      expect(m.compose.services.web?.restart).toBe('unless-stopped')
    }],
    ['platform narrows the architectures', o => { o.services.db.platform = 'linux/arm64'; o['x-dcloud'].architectures = ['amd64', 'aarch64'] }, ({ manifest: m }) => {
      expect(m.architectures).toEqual(['arm64'])
    }],
    ['web path and scheme', o => { o['x-dcloud'].web = { service: 'web', port: '8080', path: '/admin', scheme: 'https' } }, ({ manifest: m }) => {
      expect(m.web).toEqual({ service: 'web', port: 8080, path: '/admin', scheme: 'https' })
    }],
    ['constraints and expose', o => { o['x-dcloud'].constraints = { ssd: true, zone: 'attic' }; o.services.web.ports = []; o.services.web.expose = ['8080'] }, ({ manifest: m }) => {
      expect(m.constraints).toEqual({ ssd: 'true', zone: 'attic' })
      expect(m.compose.services.web?.ports).toEqual([])
      expect(m.web?.port).toBe(8080)
    }]
  ])('accepts %s', (_name, change, check) => {
    check(parse(with_(change)))
  })

  it('follows YAML anchors and merge keys', () => {
    const { manifest } = parse(`
x-common: &common
  image: dcloud/busybox:lab
  restart: always
  environment: &env
    LEVEL: info
services:
  a:
    <<: *common
    ports: ["8080"]
  b:
    <<: *common
    restart: "no"
    environment:
      <<: *env
      EXTRA: "1"
x-dcloud: { id: anchors, requests: { memory: 32M }, web: { service: a, port: 8080 } }
`)
    expect(manifest.compose.services.a).toMatchObject({ image: 'dcloud/busybox:lab', restart: 'always', environment: { LEVEL: 'info' } })
    expect(manifest.compose.services.b).toMatchObject({ restart: 'no', environment: { LEVEL: 'info', EXTRA: '1' } })
  })

  it('interpolates variables as compose does, and refuses an unset one by name', () => {
    const o = with_(o => { o.services.web.environment = { URL: 'https://${DOMAIN:-example.org}/$PATH_PART', LITERAL: 'pa$$word', EMPTY: '${NOPE-}' } })
    expect(parse(o, { PATH_PART: 'app' }).manifest.compose.services.web?.environment).toEqual({ URL: 'https://example.org/app', LITERAL: 'pa$word', EMPTY: '' })
    const err = failure(o)
    expect(err.field).toBe('services.web.environment.URL')
    expect(err.variable).toBe('PATH_PART')
    expect(err.message).toMatch(/variable PATH_PART is not set: give it a value \(--set PATH_PART=/)
  })

  it('warns about what it accepts but does not honour as written', () => {
    const { warnings } = parse(with_(o => {
      o.services.web.container_name = 'my-web'
      o.services.web.cpu_shares = 512
      o.services.db.volumes.push('/srv/backups:/backups')
      o.services.web.command = 'echo hi && echo there'
    }))
    expect(warnings).toEqual(expect.arrayContaining([
      expect.stringMatching(/^services\.web\.container_name: ignored: the runtime names containers itself/),
      expect.stringMatching(/^services\.web\.cpu_shares: ignored/),
      expect.stringMatching(/^services\.db\.volumes\[1\]: binds the host path \/srv\/backups: .*not snapshotted/),
      expect.stringMatching(/^services\.web\.command: "&&" is passed to the program as a plain argument/)
    ]))
  })

  it('leaves out services with profiles, as compose does by default', () => {
    const { manifest, warnings } = parse(with_(o => { o.services.debug = { image: 'busybox', profiles: ['debug'] } }))
    expect(Object.keys(manifest.compose.services)).toEqual(['web', 'db'])
    expect(warnings.join('\n')).toMatch(/services\.debug\.profiles: .*left out/)
  })
})

describe('bad manifests are refused, naming the field', () => {
  it.each<[string, Obj | string, string, RegExp]>([
    ['an unknown top-level key', with_(o => { o.servics = {} }), 'servics', /unknown top-level key \(did you mean services\?\)/],
    ['an unknown service key', with_(o => { o.services.web.imagee = 'x' }), 'services.web.imagee', /unknown service key \(did you mean image\?\)/],
    ['a missing image', with_(o => { delete o.services.db.image }), 'services.db.image', /missing: every service needs an image/],
    ['no services', with_(o => { o.services = {} }), 'services', /at least one service/],
    ['a host port published twice in the app', with_(o => { o.services.db.ports = ['5432', '0.0.0.0:80:8080'] ; o.services.web.ports = ['80:8080'] }), 'services.db.ports[1]', /host port 80\/tcp is published twice \(also services\.web\.ports\[0\]\)/],
    ['a host port clash inside a range', with_(o => { o.services.web.ports = ['8080', '9000-9002:9000-9002', '9001:7000'] }), 'services.web.ports[2]', /host port 9001\/tcp is published twice \(also services\.web\.ports\[1\]\)/],
    ['a named volume used but not declared', with_(o => { o.volumes = {} }), 'services.db.volumes[0]', /named volume "data" is used but not declared/],
    ['an anonymous volume', with_(o => { o.services.db.volumes = ['/var/lib/postgresql/data'] }), 'services.db.volumes[0]', /anonymous volume .*name it/],
    ['a relative bind mount', with_(o => { o.services.web.volumes = ['./site:/www'] }), 'services.web.volumes[0]', /relative bind mount "\.\/site" needs files from the app's folder/],
    ['depends_on naming an unknown service', with_(o => { o.services.web.depends_on = ['db', 'cache'] }), 'services.web.depends_on[1]', /service "cache" is not defined \(services: web, db\)/],
    ['a depends_on cycle', with_(o => { o.services.db.depends_on = { web: { condition: 'service_started' } } }), 'services.web.depends_on', /dependency cycle: web → db → web/],
    ['an invalid id', with_(o => { o['x-dcloud'].id = 'My_App' }), 'x-dcloud.id', /"My_App" is not an app id/],
    ['a missing x-dcloud block', with_(o => { delete o['x-dcloud'] }), 'x-dcloud', /missing: the app's metadata/],
    ['an unknown x-dcloud key', with_(o => { o['x-dcloud'].ports = 1 }), 'x-dcloud.ports', /unknown key/],
    ['web.service that is not a service', with_(o => { o['x-dcloud'].web.service = 'front' }), 'x-dcloud.web.service', /"front" is not a service of the app \(services: web, db\)/],
    ['web.port the service does not expose', with_(o => { o['x-dcloud'].web.port = 80 }), 'x-dcloud.web.port', /80 is not exposed by service "web" \(it exposes 8080\/tcp\)/],
    ['a web port exposed only over udp', with_(o => { o.services.web.ports = ['8080/udp'] }), 'x-dcloud.web.port', /8080 is not exposed by service "web" \(it exposes 8080\/udp\)/],
    ['pid: host', with_(o => { o.services.web.pid = 'host' }), 'services.web.pid', /not supported: widens what the container may do on the node/],
    ['network_mode: none', with_(o => { o.services.web.network_mode = 'none' }), 'services.web.network_mode', /"none" is not supported/],
    ['gpus', with_(o => { o.services.web.gpus = 'all' }), 'services.web.gpus', /not supported: .*hardware/],
    ['userns_mode', with_(o => { o.services.web.userns_mode = 'host' }), 'services.web.userns_mode', /not supported/],
    ['build instead of an image', with_(o => { o.services.web.build = '.' }), 'services.web.build', /nodes never build/],
    ['env_file', with_(o => { o.services.web.env_file = ['.env'] }), 'services.web.env_file', /write the variables into environment/],
    ['top-level secrets', with_(o => { o.secrets = { key: { file: './key' } } }), 'secrets', /not shipped to nodes/],
    ['an external volume', with_(o => { o.volumes.data = { external: true } }), 'volumes.data.external', /an app owns its volumes/],
    ['a port bound to one address', with_(o => { o.services.web.ports = ['127.0.0.1:8080:8080'] }), 'services.web.ports[0]', /binding to the address 127\.0\.0\.1 is not supported/],
    ['a port out of range', with_(o => { o.services.web.ports = ['70000:8080'] }), 'services.web.ports[0]', /not a port number/],
    ['a bad duration', with_(o => { o.services.web.healthcheck = { test: 'true', interval: '30 seconds' } }), 'services.web.healthcheck.interval', /is not a duration/],
    ['a bad size', with_(o => { o['x-dcloud'].requests.memory = 'lots' }), 'x-dcloud.requests.memory', /is not a size/],
    ['an unknown architecture', with_(o => { o['x-dcloud'].architectures = ['amd64', 'mips'] }), 'x-dcloud.architectures[1]', /"mips" is not a known architecture/],
    ['a version YAML reads as a number', with_(o => { o['x-dcloud'].version = 1.1 }), 'x-dcloud.version', /quote it/],
    ['a dcloud.* label', with_(o => { o.services.web.labels = { 'dcloud.app': 'other' } }), 'services.web.labels.dcloud.app', /the runtime's own/],
    ['a second network alias', with_(o => { o.networks = { front: null }; o.services.web.networks = { front: { aliases: ['www'] } } }), 'services.web.networks.front.aliases', /not supported/],
    ['an unknown restart policy', with_(o => { o.services.web.restart = 'sometimes' }), 'services.web.restart', /not a restart policy/],
    ['replicas', with_(o => { o.services.web.deploy = { replicas: 3 } }), 'services.web.deploy.replicas', /only 1/],
    ['a GPU reservation', with_(o => { o.services.web.deploy = { resources: { reservations: { devices: [{ capabilities: ['gpu'] }] } } } }), 'services.web.deploy.resources.reservations.devices', /GPUs/],
    ['an invalid interpolation', with_(o => { o.services.web.command = 'echo ${(date)}' }), 'services.web.command', /invalid interpolation "\$\{\(date\)\}"/],
    ['an unterminated quote', with_(o => { o.services.web.command = 'sh -c "echo' }), 'services.web.command', /unterminated " quote/],
    ['a platform no listed architecture matches', with_(o => { o.services.db.platform = 'linux/arm64'; o['x-dcloud'].architectures = ['amd64'] }), 'x-dcloud.architectures', /none of amd64 matches the platform arm64/],
    ['duplicate keys', 'services:\n  a:\n    image: x\n    image: y\n', 'demo.yaml', /Map keys must be unique/],
    ['a compose override tag', 'services:\n  a:\n    image: x\n    ports: !reset []\n', 'demo.yaml', /Unresolved tag: !reset/],
    ['a file that is not a map', '- just\n- a list\n', 'demo.yaml', /must be a compose file/]
  ])('%s', (_name, input, field, message) => {
    const err = failure(input)
    expect(err.field).toBe(field)
    expect(err.message).toMatch(message)
    expect(err.message.startsWith('demo.yaml: ')).toBe(true)
  })

  it('lists every field the runtime cannot honour at once', () => {
    const err = failure(with_(o => {
      o.services.web.pid = 'host'
      o.services.web.network_mode = 'none'
      o.services.db.ipc = 'host'
      o.services.db.volumes.push('./init.sql:/docker-entrypoint-initdb.d/init.sql')
    }))
    expect(err.refusals.map(r => r.field)).toEqual(['services.web.pid', 'services.web.network_mode', 'services.db.ipc', 'services.db.volumes[1]'])
    expect(err.message.split('\n')).toHaveLength(4)
    expect(err.message).toMatch(/\n {2}also services\.db\.ipc: not supported/)
  })

  it('accepts the harmless default values of refused keys', () => {
    expect(() => parse(with_(o => { o.services.web.privileged = false; o.services.web.cap_add = []; o.services.web.tty = false }))).not.toThrow()
  })

  it('refuses a YAML alias bomb before expanding it', () => {
    const bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for (const [x, y] of [['b', 'a'], ['c', 'b'], ['d', 'c'], ['e', 'd'], ['f', 'e'], ['g', 'f'], ['h', 'g'], ['i', 'h']]) bomb.push(`${x}: &${x} [*${y},*${y},*${y},*${y},*${y},*${y},*${y},*${y},*${y}]`)
    const started = performance.now()
    const err = failure(`${bomb.join('\n')}\nservices: *i\n`)
    expect(err.field).toBe('demo.yaml')
    expect(err.message).toMatch(/expands more than \d+ YAML aliases/)
    expect(performance.now() - started).toBeLessThan(1000)
  })

  it('refuses a file over 1 MiB without parsing it', () => {
    const big = `services:\n  a:\n    image: x\n# ${'x'.repeat(MAX_FILE_BYTES)}\n`
    const err = failure(big)
    expect(err.message).toMatch(/more than the limit of 1048576/)
  })
})

describe('keys that add no power', () => {
  const svc = (m: ParsedApp): Obj => m.manifest.compose.services.web as Obj

  it('reads every form of them into the service', () => {
    const m = parse(with_(o => {
      Object.assign(o.services.web, {
        working_dir: '/srv', tty: true, stdin_open: 'true', shm_size: '256mb', read_only: true,
        tmpfs: ['/run', '/tmp:size=64m,mode=1777,noexec'],
        volumes: [{ type: 'tmpfs', target: '/cache', tmpfs: { size: 1048576, mode: 0o700 } }],
        cap_drop: ['net_raw', 'CAP_MKNOD', 'NET_RAW'],
        ulimits: { nofile: { soft: 1024, hard: 4096 }, nproc: 512, memlock: -1 },
        extra_hosts: ['db.lan:10.0.0.5', 'v6=[::1]', 'gw:host-gateway', 'plain6:::2'],
        security_opt: ['no-new-privileges:true'],
        configs: ['app_conf', { source: 'app_conf', target: 'etc/app.ini', mode: '0440' }]
      })
      o.configs = { app_conf: { content: 'port = ${PORT:-8080}\n' } }
    }))
    expect(svc(m)).toMatchObject({
      workingDir: '/srv', tty: true, stdinOpen: true, shmSizeBytes: 256 * 1024 * 1024, readOnly: true,
      tmpfs: [{ target: '/cache', options: ['size=1048576', 'mode=700'] }, { target: '/run', options: [] }, { target: '/tmp', options: ['size=67108864', 'mode=1777', 'noexec'] }],
      capDrop: ['NET_RAW', 'MKNOD'],
      ulimits: { nofile: { soft: 1024, hard: 4096 }, nproc: { soft: 512, hard: 512 }, memlock: { soft: -1, hard: -1 } },
      extraHosts: [{ host: 'db.lan', address: '10.0.0.5' }, { host: 'v6', address: '::1' }, { host: 'gw', address: 'host-gateway' }, { host: 'plain6', address: '::2' }],
      noNewPrivileges: true,
      configs: [{ source: 'app_conf', target: '/app_conf', mode: 0o444 }, { source: 'app_conf', target: '/etc/app.ini', mode: 0o440 }]
    })
    // Interpolated like any value; carried in the manifest.
    expect(m.manifest.compose.configs).toEqual({ app_conf: { content: 'port = 8080\n' } })
    expect(m.manifest.compose.services.db?.configs).toEqual([])
  })

  it('reads a map of extra hosts, a single tmpfs path, and a mode written as YAML 1.1 octal', () => {
    const text = stringify(with_(o => {
      o.services.web.extra_hosts = { 'a.lan': '10.0.0.1', multi: ['10.0.0.2', '10.0.0.3'] }
      o.services.web.tmpfs = '/run'
      o.services.web.configs = [{ source: 'c', target: '/c', mode: 'MODE' }]
      o.configs = { c: { content: 'x' } }
    })).replace("'MODE'", '0440').replace('MODE', '0440')
    const web = svc(parse(text))
    expect(web.extraHosts).toEqual([{ host: 'a.lan', address: '10.0.0.1' }, { host: 'multi', address: '10.0.0.2' }, { host: 'multi', address: '10.0.0.3' }])
    expect(web.tmpfs).toEqual([{ target: '/run', options: [] }])
    expect(web.configs[0].mode).toBe(0o440)
  })

  it('keeps their defaults when absent, and treats no-new-privileges:false as asking for nothing', () => {
    const web = svc(parse(with_(o => { o.services.web.security_opt = ['no-new-privileges=false'] })))
    expect(web).toMatchObject({ workingDir: null, tty: false, stdinOpen: false, shmSizeBytes: null, tmpfs: [], readOnly: false, capDrop: [], ulimits: {}, extraHosts: [], noNewPrivileges: false, configs: [] })
    expect(svc(parse(with_(o => { o.services.web.security_opt = ['no-new-privileges'] }))).noNewPrivileges).toBe(true)
  })

  it.each<[string, (o: Obj) => void, string, RegExp]>([
    ['a relative working_dir', o => { o.services.web.working_dir = 'srv' }, 'services.web.working_dir', /"srv" must be an absolute path/],
    ['a tty that is not a boolean', o => { o.services.web.tty = 'yes' }, 'services.web.tty', /must be true or false/],
    ['a bad shm_size', o => { o.services.web.shm_size = 'big' }, 'services.web.shm_size', /is not a size/],
    ['an unknown tmpfs option', o => { o.services.web.tmpfs = ['/run:sizeish'] }, 'services.web.tmpfs[0]', /"sizeish" is not a tmpfs option/],
    ['a tmpfs mode that is not octal', o => { o.services.web.tmpfs = ['/run:mode=999'] }, 'services.web.tmpfs[0]', /not an octal file mode/],
    ['a tmpfs at a relative path', o => { o.services.web.tmpfs = ['run'] }, 'services.web.tmpfs[0]', /must be an absolute path/],
    ['a tmpfs where a volume is', o => { o.services.db.tmpfs = ['/var/lib/postgresql/data'] }, 'services.db.tmpfs[0]', /mounted twice \(also services\.db\.volumes\[0\]\)/],
    ['an unknown long tmpfs key', o => { o.services.web.volumes = [{ type: 'tmpfs', target: '/t', tmpfs: { sise: 1 } }] }, 'services.web.volumes[0].tmpfs.sise', /unknown tmpfs key/],
    ['read_only that is not a boolean', o => { o.services.web.read_only = 1 }, 'services.web.read_only', /must be true or false/],
    ['an unknown capability', o => { o.services.web.cap_drop = ['NET_RAWW'] }, 'services.web.cap_drop[0]', /"NET_RAWW" is not a Linux capability/],
    ['an unknown ulimit', o => { o.services.web.ulimits = { nofiles: 10 } }, 'services.web.ulimits.nofiles', /unknown limit \(did you mean nofile\?\)/],
    ['a soft limit above the hard one', o => { o.services.web.ulimits = { nofile: { soft: 10, hard: 5 } } }, 'services.web.ulimits.nofile', /the soft limit 10 is above the hard limit 5/],
    ['a limit that is not a number', o => { o.services.web.ulimits = { nofile: 'many' } }, 'services.web.ulimits.nofile', /is not a limit/],
    ['half a limit', o => { o.services.web.ulimits = { nofile: { soft: 10 } } }, 'services.web.ulimits.nofile', /needs both soft and hard/],
    ['an extra host without an address', o => { o.services.web.extra_hosts = ['db.lan'] }, 'services.web.extra_hosts[0]', /is not HOST:IP or HOST=IP/],
    ['an extra host with a name for address', o => { o.services.web.extra_hosts = ['db.lan:server'] }, 'services.web.extra_hosts[0]', /"server" is not an IP address \(or host-gateway/],
    ['an extra host with a bad name', o => { o.services.web.extra_hosts = { 'bad name': '10.0.0.1' } }, 'services.web.extra_hosts.bad name', /"bad name" is not a host name/],
    ['a config not declared', o => { o.services.web.configs = ['nope'] }, 'services.web.configs[0]', /config "nope" is not declared under the top-level configs/],
    ['a config without content', o => { o.configs = { c: {} }; o.services.web.configs = ['c'] }, 'configs.c', /needs content:/],
    ['an unknown config key', o => { o.configs = { c: { contnet: 'x' } } }, 'configs.c.contnet', /unknown config key \(did you mean content\?\)/],
    ['a config mode that is not one', o => { o.configs = { c: { content: 'x' } }; o.services.web.configs = [{ source: 'c', mode: 'rw' }] }, 'services.web.configs[0].mode', /"rw" is not a file mode/],
    ['a config target that is a folder', o => { o.configs = { c: { content: 'x' } }; o.services.web.configs = [{ source: 'c', target: '/etc/' }] }, 'services.web.configs[0].target', /must name a file/],
    ['a config too large to carry', o => { o.configs = { c: { content: 'x'.repeat(256 * 1024 + 1) } } }, 'configs.c.content', /more than 262144: configs travel with the app/],
  ])('refuses %s, naming the field', (_name, change, field, message) => {
    const err = failure(with_(change))
    expect(err.field).toBe(field)
    expect(err.message).toMatch(message)
  })

  it('refuses configs larger than 1 MiB together (a file of 1 MiB can reach it through aliases)', () => {
    const text = `services:\n  a:\n    image: x\nconfigs:\n  c0: { content: &big "${'x'.repeat(250 * 1024)}" }\n${[1, 2, 3, 4].map(i => `  c${i}: { content: *big }`).join('\n')}\nx-dcloud: { id: demo }\n`
    const err = failure(text)
    expect(err.field).toBe('configs')
    expect(err.message).toMatch(/hold 1280000 bytes, more than 1048576/)
  })

  it.each<[string, (o: Obj) => void, string, RegExp]>([
    ['seccomp unconfined', o => { o.services.web.security_opt = ['no-new-privileges:true', 'seccomp:unconfined'] }, 'services.web.security_opt[1]', /"seccomp:unconfined" is not supported: only no-new-privileges is \(it takes power away\); any other security option widens what the container may do on the node/],
    ['apparmor unconfined', o => { o.services.web.security_opt = ['apparmor=unconfined'] }, 'services.web.security_opt[0]', /"apparmor=unconfined" is not supported/],
    ['an SELinux label', o => { o.services.web.security_opt = ['label:disable'] }, 'services.web.security_opt[0]', /"label:disable" is not supported/],
    ['a tmpfs with suid', o => { o.services.web.tmpfs = ['/run:suid'] }, 'services.web.tmpfs[0]', /tmpfs option "suid" is not supported: widens/],
    ['a file config', o => { o.configs = { c: { file: './c.conf' } }; o.services.web.configs = ['c'] }, 'configs.c.file', /the file next to the compose file is not shipped to nodes; put its text under content:/],
    ['an environment config', o => { o.configs = { c: { environment: 'C' } } }, 'configs.c.environment', /the variable would come from the machine running compose/],
    ['an external config', o => { o.configs = { c: { external: true } } }, 'configs.c.external', /an app carries its own configs/],
    ['a config owned by a uid', o => { o.configs = { c: { content: 'x' } }; o.services.web.configs = [{ source: 'c', uid: '1000' }] }, 'services.web.configs[0].uid', /the file is owned by root/],
    ['secrets', o => { o.services.web.secrets = ['s'] }, 'services.web.secrets', /neither|not shipped to nodes; Dentropy has no secret store yet/]
  ])('refuses %s as adding power or needing what a node lacks', (_name, change, field, message) => {
    const err = failure(with_(change))
    expect(err.refusals.map(r => r.field)).toEqual([field])
    expect(err.message).toMatch(message)
  })

  it('keeps a $ that starts no variable, as the compose spec does', () => {
    const m = parse(with_(o => { o.services.web.healthcheck = { test: 'wget -q localhost:8080 || exit $?' }; o.services.web.environment = { PRICE: '$5', ESCAPED: '$$HOME' } }))
    expect(svc(m).healthcheck.test).toEqual(['CMD-SHELL', 'wget -q localhost:8080 || exit $?'])
    expect(svc(m).environment).toEqual({ PRICE: '$5', ESCAPED: '$HOME' })
    expect(interpolate('a $ b $', () => undefined, 'f')).toBe('a $ b $')
  })
})

describe('docs/apps.md', () => {
  it('says what happens to every key the code knows', () => {
    const doc = readFileSync(join(ROOT, 'docs', 'apps.md'), 'utf8')
    const keys = [...Object.keys(SERVICE_KEYS), ...Object.keys(TOP_LEVEL_KEYS), ...Object.keys(CASAOS_KEYS), ...Object.keys(APP_INFO_KEYS), ...Object.keys(DYNAMIC_SERVICE_KEYS)]
    expect(keys.filter(k => !doc.includes(`\`${k}\``))).toEqual([])
    expect(Object.keys(RUNTIPI_VARIABLES).filter(v => !doc.includes(`\`\${${v}}\``))).toEqual([])
  })
})

describe('checkArchitecture', () => {
  it('accepts any node for an app without architectures, and names the mismatch otherwise', () => {
    const any = parse(base()).manifest
    expect(checkArchitecture(any, 'riscv64')).toBeNull()
    const two = parse(with_(o => { o['x-dcloud'].architectures = ['amd64', 'arm64'] })).manifest
    expect(checkArchitecture(two, 'arm64')).toBeNull()
    expect(checkArchitecture(two, 'aarch64')).toBeNull() // uname's name for arm64
    expect(checkArchitecture(two, 'arm')).toBe('app "demo" has images for amd64, arm64 only; this node is arm')
  })
})

describe('building blocks', () => {
  it.each([
    ['${A}', 'a'], ['$A-$B', 'a-'], ['${UNSET:-d}', 'd'], ['${EMPTY:-d}', 'd'], ['${EMPTY-d}', ''], ['${UNSET-d}', 'd'],
    ['${A:+alt}', 'alt'], ['${EMPTY:+alt}', ''], ['${EMPTY+alt}', 'alt'], ['${UNSET:-${A}x}', 'ax'], ['$$A', '$A'], ['a$${b}', 'a${b}'], ['${UNSET:-${UNSET2:-deep}}', 'deep']
  ])('interpolates %s as %s', (text, expected) => {
    const vars: Record<string, string> = { A: 'a', B: '', EMPTY: '' }
    expect(interpolate(text, n => vars[n], 'f')).toBe(expected)
  })

  it('reports required variables with their message', () => {
    expect(() => interpolate('${TOKEN:?set a token}', () => undefined, 'env.T')).toThrow('env.T: variable TOKEN is required: set a token')
    expect(() => interpolate('${A:-${MISSING}}', n => (n === 'A' ? 'set' : undefined), 'f')).not.toThrow()
  })

  it('splits words as a shell would, and joins them back', () => {
    fc.assert(fc.property(fc.array(fc.string({ maxLength: 12 }), { maxLength: 6 }), words => {
      expect(splitShellWords(joinShellWords(words), 'f').words).toEqual(words)
    }))
  })

  it('reads sizes and durations', () => {
    expect(parseBytes('512mb', 'f')).toBe(512 * 2 ** 20)
    expect(parseBytes('1.5G', 'f')).toBe(1.5 * 2 ** 30)
    expect(parseBytes(1024, 'f')).toBe(1024)
    expect(() => parseBytes('-1M', 'f')).toThrow(ValidationError)
    fc.assert(fc.property(fc.integer({ min: 0, max: 86_400_000 }), ms => parseDuration(formatDuration(ms), 'f') === ms))
  })
})

/** Values of the kinds compose files hold, for the fuzzer. */
const scalar = fc.oneof(fc.string({ maxLength: 20 }), fc.integer(), fc.boolean(), fc.constant(null), fc.double(), fc.constantFrom('8080:80', '/data', 'data:/data', '30s', '128M', 'host', '$$', '${X:-y}', '$X', '${', 'CMD'))
const value = fc.letrec<{ v: unknown }>(tie => ({ v: fc.oneof({ depthSize: 'small' }, scalar, fc.array(tie('v'), { maxLength: 4 }), fc.dictionary(fc.string({ maxLength: 8 }), tie('v'), { maxKeys: 4 })) })).v
const serviceKey = fc.constantFrom(...Object.keys(SERVICE_KEYS), 'x-extra', 'bogus')
/** Plausible values for the keys that matter most, so some documents pass and the invariants get checked. */
const plausible = fc.record({
  image: fc.constantFrom('busybox', 'postgres:16', 'ghcr.io/a/b@sha256:00'),
  ports: fc.constantFrom([], ['8080'], ['80:80'], ['8080', '80:8080/tcp'], [{ target: 8080, published: 80 }], ['53:53/udp', '53:53']),
  volumes: fc.constantFrom([], ['data:/data'], ['data:/data:ro', '/etc/localtime:/etc/localtime:ro'], [{ type: 'volume', source: 'data', target: '/d' }]),
  depends_on: fc.constantFrom([], [], [], ['web'], ['db'], { db: { condition: 'service_healthy' } }),
  environment: fc.dictionary(fc.constantFrom('A', 'B', 'URL'), fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom('${X:-y}', '$$HOME', 1, true)), { maxKeys: 3 }),
  command: fc.oneof(fc.constant(undefined), fc.string({ maxLength: 20 }), fc.array(fc.string({ maxLength: 5 }), { maxLength: 3 })),
  healthcheck: fc.constantFrom(undefined, { test: 'true' }, { test: ['CMD', 'true'], interval: '10s' }, { disable: true })
}, { requiredKeys: ['image'] })
const service = fc.tuple(plausible, fc.dictionary(serviceKey, value, { maxKeys: 2 }), fc.integer({ min: 0, max: 3 })).map(([p, wild, n]) => n > 0 ? p : { ...p, ...wild })
const composeish = fc.record({
  services: fc.dictionary(fc.constantFrom('web', 'db', 'a', 'B_1', 'bad name'), service, { minKeys: 1, maxKeys: 3 }),
  volumes: fc.oneof({ arbitrary: fc.constant({ data: null }), weight: 4 }, { arbitrary: fc.constant(undefined), weight: 1 }, { arbitrary: value, weight: 1 }),
  'x-dcloud': fc.oneof(
    { arbitrary: fc.constantFrom({ id: 'fuzz' }, { id: 'fuzz', web: { service: 'web', port: 8080 } }, { id: 'fuzz', requests: { memory: '64M' }, architectures: ['arm64'] }), weight: 4 },
    { arbitrary: fc.dictionary(fc.constantFrom('id', 'web', 'requests', 'architectures', 'version', 'nope'), value, { maxKeys: 4 }), weight: 1 })
}, { requiredKeys: ['services'] })

describe('parseManifest on hostile input', () => {
  const onlyValidationErrors = (text: string): boolean => {
    let parsed: ParsedApp
    try {
      parsed = parseManifest(text, 'fuzz.yaml', { variables: { X: 'x' } })
    } catch (err) {
      if (err instanceof ValidationError || err instanceof UserError) return true
      throw err
    }
    // Whatever is accepted keeps the invariants the rest of the system relies on.
    const m = parsed.manifest
    const ports = hostPorts(m)
    expect(new Set(ports).size).toBe(ports.length)
    if (m.web !== null) expect(m.compose.services[m.web.service]).toBeDefined()
    for (const s of Object.values(m.compose.services)) {
      for (const v of s.volumes) if (v.kind === 'volume') expect(m.compose.volumes[v.source]).toBeDefined()
      for (const d of s.dependsOn) expect(m.compose.services[d]).toBeDefined()
    }
    return true
  }

  it('throws nothing but ValidationError on random text', () => {
    fc.assert(fc.property(fc.string({ maxLength: 300 }), onlyValidationErrors), { numRuns: 300 })
  })

  it('throws nothing but ValidationError on random YAML documents', () => {
    fc.assert(fc.property(value, v => onlyValidationErrors(stringify(v))), { numRuns: 300 })
  })

  it('throws nothing but ValidationError on compose-shaped documents', () => {
    fc.assert(fc.property(composeish, v => onlyValidationErrors(stringify(v))), { numRuns: 500 })
  })

  it('throws nothing but ValidationError on mangled versions of a good file', () => {
    const good = stringify(base())
    fc.assert(fc.property(fc.integer({ min: 0, max: good.length }), fc.integer({ min: 0, max: 20 }), fc.string({ maxLength: 10 }), (at, cut, insert) => {
      return onlyValidationErrors(good.slice(0, at) + insert + good.slice(at + cut))
    }), { numRuns: 500 })
  })
})
