/**
 * The API's guards, tested two ways: the pure pieces (credentials, client
 * address, rate limit, Host, Origin, refusal logging) by table, and the real
 * `ApiServer` with the real route table (`apiRoutes`) in-process, over TCP on
 * 127.0.0.1 and over a Unix socket. The routes get `GuardTestBackend`, an
 * in-memory stand-in for the agent: what is under test is what happens
 * before a handler runs, and whether it runs at all.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'node:http'
import { Readable } from 'node:stream'
import { createHash } from 'node:crypto'
import { ApiServer, StreamResponse, contentDisposition } from '../../agent/api/server.ts'
import { BackupFiles } from '../../agent/snapshots/backup-files.ts'
import { apiRoutes, type ApiBackend, type ClusterApi } from '../../agent/api/routes.ts'
import { FailureLimiter, TrustedProxies, apiTokenVerifier, authenticate, bearerToken } from '../../agent/api/auth.ts'
import { HostPolicy, RefusalRecorder, originRefusal, parseHostHeader } from '../../agent/api/guards.ts'
import { ApiCallError, apiGet, apiRequest, resolveApi } from '../../agent/cli/client.ts'
import { createLogger } from '../../agent/util/log.ts'
import { EXIT, NoSpaceError, UserError } from '../../agent/util/errors.ts'
import { RpcError, rpcErrorOf, rpcFailureOf } from '../../agent/mesh/rpc.ts'
import { loadApp } from '../../apps/catalog.ts'
import { backupCommand } from '../../agent/cli/commands/snapshot.ts'
import { PROJECT_ROOT, paths } from '../../agent/config.ts'
import { writeFile, mkdir } from 'node:fs/promises'
import type { MetricsResponse } from '../../proto/api.ts'

const TOKEN = 's3cret-token'

describe('credentials', () => {
  const verifiers = [apiTokenVerifier(TOKEN)]
  const verdict = async (transport: 'unix' | 'tcp', authorization?: string): Promise<string> => {
    const v = await authenticate({ transport, client: '127.0.0.1', headers: authorization === undefined ? {} : { authorization } }, verifiers)
    return v.ok ? v.principal.kind : v.code
  }

  it.each([
    ['unix', undefined, 'admin-socket'], // file permissions decide
    ['unix', 'Bearer wrong', 'admin-socket'],
    ['tcp', undefined, 'unauthorized'], // loopback included: the address is not asked at all
    ['tcp', 'Basic abc', 'unauthorized'],
    ['tcp', 'Bearer', 'unauthorized'],
    ['tcp', 'Bearer wrong', 'forbidden'],
    ['tcp', `Bearer ${TOKEN}X`, 'forbidden'],
    ['tcp', `Bearer ${TOKEN.slice(0, -1)}`, 'forbidden'],
    ['tcp', `Bearer ${TOKEN}`, 'token'],
    ['tcp', `bearer  ${TOKEN} `, 'token']
  ] as const)('%s with %s: %s', async (transport, authorization, expected) => {
    expect(await verdict(transport, authorization)).toBe(expected)
  })

  it('asks further verifiers (future user sessions) in order; the first that recognises a credential decides', async () => {
    const session = { kind: 'session', verify: ({ headers }: { headers: { cookie?: string } }) => headers.cookie === 'sid=ok' ? { ok: true as const, principal: { kind: 'anonymous' as const } } : null }
    const v = await authenticate({ transport: 'tcp', client: 'x', headers: { cookie: 'sid=ok' } }, [...verifiers, session])
    expect(v.ok).toBe(true)
    expect(bearerToken('Bearer a b')).toBeNull()
  })
})

describe('client address behind trusted proxies', () => {
  const proxies = new TrustedProxies(['127.0.0.1', '10.1.0.0/16'])
  it.each([
    ['10.9.9.9', '1.2.3.4', '10.9.9.9'], // not a proxy: its header is ignored
    ['127.0.0.1', undefined, '127.0.0.1'],
    ['127.0.0.1', '1.2.3.4', '1.2.3.4'],
    ['::ffff:127.0.0.1', '1.2.3.4', '1.2.3.4'],
    ['127.0.0.1', '6.6.6.6, 1.2.3.4', '1.2.3.4'], // the left one is the client's own claim
    ['127.0.0.1', '6.6.6.6, 1.2.3.4, 10.1.2.3', '1.2.3.4'], // a chain of trusted proxies is walked
    ['127.0.0.1', ['6.6.6.6', '1.2.3.4'], '1.2.3.4'],
    ['127.0.0.1', '10.1.0.5, 10.1.0.6', '10.1.0.5'], // all trusted: the farthest
    ['127.0.0.1', 'garbage', '127.0.0.1'],
    ['127.0.0.1', '2001:db8::1', '2001:db8::1']
  ] as const)('peer %s, X-Forwarded-For %j: %s', (peer, xff, expected) => {
    expect(proxies.clientAddress(peer, xff as string | string[] | undefined)).toBe(expected)
  })

  it('believes no one by default, and refuses nonsense entries', () => {
    expect(new TrustedProxies([]).clientAddress('127.0.0.1', '1.2.3.4')).toBe('127.0.0.1')
    expect(() => new TrustedProxies(['example.org'])).toThrow(/IP address or CIDR/)
    expect(() => new TrustedProxies(['10.0.0.0/33'])).toThrow(/prefix/)
  })
})

describe('failed-credential limiter', () => {
  it('blocks after 5 failures in a window, each block twice as long, and forgets in time', () => {
    let now = 0
    const l = new FailureLimiter({ maxFailures: 5, windowMs: 60_000, blockMs: 30_000, maxBlockMs: 120_000, now: () => now })
    for (let i = 0; i < 4; i++) expect(l.fail('a')).toBe(0)
    expect(l.fail('a')).toBe(30_000)
    expect(l.blockedFor('a')).toBe(30_000)
    expect(l.blockedFor('b')).toBe(0) // per address
    now += 30_000
    expect(l.blockedFor('a')).toBe(0)
    for (let i = 0; i < 4; i++) l.fail('a')
    expect(l.fail('a')).toBe(60_000)
    now += 60_000
    for (let i = 0; i < 5; i++) l.fail('a')
    expect(l.blockedFor('a')).toBe(120_000)
    now += 120_000
    for (let i = 0; i < 5; i++) l.fail('a')
    expect(l.blockedFor('a')).toBe(120_000) // capped
    now += 10 * 60_000
    for (let i = 0; i < 5; i++) l.fail('a')
    expect(l.blockedFor('a')).toBe(30_000) // quiet long enough: strikes forgotten
  })

  it('spreads failures over windows without blocking', () => {
    let now = 0
    const l = new FailureLimiter({ now: () => now })
    for (let i = 0; i < 20; i++) { l.fail('a'); now += 20_000 }
    expect(l.blockedFor('a')).toBe(0)
  })

  it('keeps its table bounded, dropping the stalest addresses', () => {
    let now = 0
    const l = new FailureLimiter({ maxEntries: 100, now: () => now })
    for (let i = 0; i < 1000; i++) { l.fail(`10.0.${i >> 8}.${i & 255}`); now++ }
    expect(l.size).toBeLessThanOrEqual(100)
  })
})

describe('Host and Origin', () => {
  it.each([
    ['localhost:7371', { host: 'localhost', port: 7371 }],
    ['LOCALHOST', { host: 'localhost', port: null }],
    ['[::1]:7371', { host: '::1', port: 7371 }],
    ['node1.local.:80', { host: 'node1.local', port: 80 }],
    ['a b', null], ['x:y', null], ['::1', null], ['[::1', null], ['', null], [undefined, null]
  ])('parses Host %j', (value, expected) => {
    expect(parseHostHeader(value)).toEqual(expected)
  })

  it('serves loopback names, the bind, the node\'s names and addresses and --api-host, nothing else', () => {
    const p = new HostPolicy({ bindHost: '10.213.0.11', names: ['cloud.example.org'], nodeName: 'n1', hostname: () => 'pi.lan', interfaces: () => ['192.168.1.20', 'fe80::1'] })
    for (const ok of ['localhost:7371', '127.0.0.1:7371', '[::1]:7371', '10.213.0.11:7371', 'n1', 'n1.local:7371', 'pi.lan', 'pi', 'pi.local', 'cloud.example.org', '192.168.1.20:7371', '[fe80::1]:7371']) expect(p.allows(ok), ok).toBe(true)
    for (const bad of ['evil.example:7371', '127.0.0.2:7371', 'localhost.evil.example', undefined, '']) expect(p.allows(bad), String(bad)).toBe(false)
    expect(new HostPolicy({ bindHost: '0.0.0.0', hostname: () => 'h', interfaces: () => [] }).allows('0.0.0.0')).toBe(false)
  })

  it.each([
    [undefined, 'localhost:7371', null],
    ['http://localhost:7371', 'localhost:7371', null],
    ['http://127.0.0.1:7371', '127.0.0.1:7371', null],
    ['http://[::1]:7371', '[::1]:7371', null],
    ['null', 'localhost:7371', /null/],
    ['http://evil.example', 'localhost:7371', /not this API/],
    ['http://127.0.0.1:8080', '127.0.0.1:7371', /not this API/], // another local port is another origin
    ['http://localhost:7371', '127.0.0.1:7371', /not this API/],
    ['https://127.0.0.1:7371', '127.0.0.1:7371', /scheme/],
    ['file://', 'localhost:7371', /scheme/]
  ])('Origin %s with Host %s', (origin, host, expected) => {
    const r = originRefusal(origin, host, { httpsAllowed: false })
    if (expected === null) expect(r).toBeNull()
    else expect(r).toMatch(expected)
  })

  it('allows https origins only behind a trusted proxy (the front door terminates TLS)', () => {
    expect(originRefusal('https://cloud.example.org', 'cloud.example.org', { httpsAllowed: true })).toBeNull()
  })
})

describe('refusal log', () => {
  it('counts every refusal but logs only the first ones of a kind per minute', () => {
    let now = 0
    const lines: string[] = []
    const r = new RefusalRecorder({ log: createLogger('t', (l) => { lines.push(l) }), perMinute: 3, now: () => now })
    const who = { client: '127.0.0.1', method: 'POST', path: '/v1/apps', userAgent: 'x'.repeat(500) }
    for (let i = 0; i < 100; i++) r.record('badOrigin', who, 'Origin http://evil.example')
    r.record('badHost', who, 'Host evil')
    expect(lines).toHaveLength(4)
    expect(lines[0]).toMatch(/kind=badOrigin .*client=127\.0\.0\.1 method=POST path=\/v1\/apps/)
    expect((lines[0] ?? '').length).toBeLessThan(400) // the user agent is cut
    now += 60_000
    r.record('badOrigin', who, 'again')
    expect(lines[4]).toMatch(/notLoggedBefore=97/)
    expect(r.metrics()).toEqual({ refused: expect.objectContaining({ badOrigin: 101, badHost: 1 }), refusalsNotLogged: 97 })
  })

  it('names downloads safely', () => {
    expect(contentDisposition('notes 2026-01-01.dcloud')).toBe('attachment; filename="notes 2026-01-01.dcloud"; filename*=UTF-8\'\'notes%202026-01-01.dcloud')
    expect(contentDisposition('é"\\.tar')).toBe('attachment; filename="___.tar"; filename*=UTF-8\'\'%C3%A9%22%5C.tar')
  })
})

describe('where the socket is, and what the CLI sends', () => {
  it('has one rule for the socket: DCLOUD_RUNTIME_DIR, /run/dcloud for the system data dir, else the data dir', () => {
    expect(paths('/var/lib/dcloud', {}).socket).toBe('/run/dcloud/api.sock')
    expect(paths('/var/lib/dcloud/', {}).socket).toBe('/run/dcloud/api.sock')
    expect(paths('/home/u/.local/share/dcloud', {}).socket).toBe('/home/u/.local/share/dcloud/api.sock')
    expect(paths('/var/lib/dcloud-lab/l/n1/agent', { DCLOUD_RUNTIME_DIR: '/run/dcloud-lab/l/n1/api' }).socket).toBe('/run/dcloud-lab/l/n1/api/api.sock')
    expect(paths('/x', { DCLOUD_RUNTIME_DIR: '/r' }).token).toBe('/x/api.token') // the token stays in the data dir
  })

  it('sends the local token file only to an agent on this machine', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'dcloud-cli-'))
    await mkdir(dataDir, { recursive: true })
    await writeFile(join(dataDir, 'api.token'), 'local-token\n')
    const saved = process.env.DCLOUD_DATA_DIR
    process.env.DCLOUD_DATA_DIR = dataDir
    try {
      const env = { DCLOUD_DATA_DIR: dataDir, DCLOUD_RUNTIME_DIR: join(dataDir, 'no-socket-here') }
      expect(resolveApi({ ...env, DCLOUD_API: 'http://127.0.0.1:7371' }).token).toBe('local-token')
      expect(resolveApi({ ...env, DCLOUD_API: 'http://[::1]:7371' }).token).toBe('local-token')
      expect(resolveApi({ ...env, DCLOUD_API: 'http://10.0.0.5:7371' }).token).toBeUndefined()
      expect(resolveApi({ ...env, DCLOUD_API: 'http://10.0.0.5:7371', DCLOUD_TOKEN: 'given' }).token).toBe('given')
      expect(resolveApi({ ...env, DCLOUD_API: 'unix:/tmp/x.sock' })).toEqual({ socketPath: '/tmp/x.sock', describe: 'unix:/tmp/x.sock' })
    } finally {
      if (saved === undefined) delete process.env.DCLOUD_DATA_DIR
      else process.env.DCLOUD_DATA_DIR = saved
      await rm(dataDir, { recursive: true, force: true })
    }
  })
})

/** The in-memory stand-in for the agent behind the real route table; it records what reached it. */
class GuardTestBackend implements ApiBackend {
  readonly installs: unknown[] = []
  status (): ReturnType<ApiBackend['status']> { return { self: 'self', leader: null, nodes: [] } }
  metrics (): ReturnType<ApiBackend['metrics']> {
    return { peerId: 'self', name: 'testnode', startedAt: 0, listeningAt: null, firstHeardAt: {}, statusPublished: 0, statusAccepted: 0, statusDropped: {} as never, dialFailures: 0, lastDialError: null, connections: 0, term: 0, leader: null, ops: { opsExecuted: 0, opsRefused: 0, opsFailed: 0, plans: 0 }, state: { revision: 0, term: 0, lastIndex: 0, commitIndex: 0, digest: '' }, replication: null, rpc: { served: 0, rejected: 0, failed: 0 }, backups: { uploads: 0, uploadsRefused: 0, downloads: 0, downloadsFailed: 0 }, rssBytes: 0, heapUsedBytes: 0, externalBytes: 0, cpuSeconds: 0, frontDoor: null }
  }

  cluster (): ClusterApi {
    const installs = this.installs
    return {
      apps: () => [],
      change: async (change: { kind: string }) => { installs.push(change); return { revision: installs.length, replicatedTo: 1 } }
    } as unknown as ClusterApi
  }

  /** Never started here: the backup routes are test/unit/backup-stream.test.ts's. */
  readonly backups = new BackupFiles(join(tmpdir(), 'dcloud-api-test-unused'))

  async names (): ReturnType<NonNullable<ApiBackend['names']>> {
    return { domain: 'dcloud.home.arpa', isDefault: true, rootPem: '-----BEGIN CERTIFICATE-----\nROOT\n-----END CERTIFICATE-----\n', fingerprint: 'AA:BB' }
  }
}

interface Reply { status: number, headers: Record<string, string | string[] | undefined>, text: string, json: any }

describe('API server through the real route table', () => {
  let dir: string
  let socketPath: string
  let server: ApiServer
  let proxied: ApiServer
  let port: number
  let proxiedPort: number
  let now = 1_000_000
  const backend = new GuardTestBackend()
  const proxiedBackend = new GuardTestBackend()
  let installBody: string
  let uploaded: { bytes: number, sha: string } | null = null

  const call = async (o: { method?: string, path?: string, headers?: Record<string, string>, body?: string | Buffer, socket?: boolean, port?: number }): Promise<Reply> => {
    return await new Promise<Reply>((resolve, reject) => {
      const headers: Record<string, string> = { ...(o.body !== undefined ? { 'content-length': String(Buffer.byteLength(o.body)) } : {}), ...o.headers }
      const req = request({ ...(o.socket === true ? { socketPath } : { host: '127.0.0.1', port: o.port ?? port }), method: o.method ?? 'GET', path: o.path ?? '/v1/status', headers }, (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('error', reject)
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          let json: unknown
          try { json = JSON.parse(text) } catch {}
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json })
        })
      })
      req.on('error', reject)
      req.end(o.body)
    })
  }
  const auth = { authorization: `Bearer ${TOKEN}` }
  const json = { 'content-type': 'application/json' }
  const metrics = async (): Promise<MetricsResponse> => (await call({ socket: true, path: '/v1/metrics' })).json as MetricsResponse

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dcloud-api-'))
    socketPath = join(dir, 'run', 'api.sock')
    const { manifest } = await loadApp(join(PROJECT_ROOT, 'apps', 'examples', 'notes'))
    installBody = JSON.stringify({ name: 'notes', manifest, pinnedNode: null })
    const log = createLogger('test', () => {})
    const testRoutes = {
      // Dummy stream routes: the mechanism backup upload and download use.
      'POST /v1/test/upload': {
        rawBody: ['application/octet-stream'],
        handler: async ({ req }: { req: NodeJS.ReadableStream }) => {
          const h = createHash('sha256')
          let bytes = 0
          for await (const c of req) { h.update(c as Buffer); bytes += (c as Buffer).length }
          uploaded = { bytes, sha: h.digest('hex') }
          return uploaded
        }
      },
      'GET /v1/test/download': () => new StreamResponse(Readable.from((function * () { for (let i = 0; i < 64; i++) yield Buffer.alloc(64 * 1024, i) })()), { contentType: 'application/octet-stream', length: 64 * 64 * 1024, filename: 'notes.dcloud' }),
      'GET /v1/test/broken': () => new StreamResponse(Readable.from((async function * () { yield Buffer.alloc(1024, 1); await new Promise(resolve => setTimeout(resolve, 20)); throw new Error('disk went away') })()), { contentType: 'application/octet-stream', length: 1 << 20 })
    }
    server = new ApiServer({
      socketPath,
      socketGroup: 'dcloud-no-such-group',
      tcp: '127.0.0.1:0',
      token: TOKEN,
      nodeName: 'testnode',
      hostNames: ['cloud.example.org'],
      interfaces: () => ['127.0.0.1', '10.9.8.7'],
      now: () => now,
      log,
      routes: { ...apiRoutes(backend, () => server.metrics()), ...testRoutes }
    })
    proxied = new ApiServer({
      socketPath: null,
      tcp: '127.0.0.1:0',
      token: TOKEN,
      trustedProxies: ['127.0.0.1'],
      now: () => now,
      log,
      routes: apiRoutes(proxiedBackend, () => proxied.metrics())
    })
    await server.start()
    await server.start() // starting twice is safe
    await proxied.start()
    port = server.tcpPort as number
    proxiedPort = proxied.tcpPort as number
  })
  afterAll(async () => {
    await server.stop()
    await server.stop() // stopping twice is safe
    await proxied.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('puts the socket in a directory it creates 0750, the socket 0660', async () => {
    expect((await stat(join(dir, 'run'))).mode & 0o777).toBe(0o750)
    expect((await stat(socketPath)).mode & 0o777).toBe(0o660)
  })

  it('needs a credential over TCP, loopback included; the socket needs none', async () => {
    expect((await call({})).status).toBe(401)
    expect((await call({})).json.error.code).toBe('unauthorized')
    expect((await call({ headers: auth })).status).toBe(200)
    expect((await call({ socket: true })).status).toBe(200)
    expect((await call({ socket: true, headers: { host: 'evil.example' } })).status).toBe(200) // any Host on the socket
    expect((await call({ path: '/v1/health' })).json).toEqual({ ok: true }) // open
    expect((await call({ path: '/v1/ca.pem' })).text).toMatch(/^-----BEGIN CERTIFICATE-----\nROOT\n/) // open: the CA's root is public
    expect((await call({ path: '/v1/domain' })).status).toBe(401)
    expect((await call({ path: '/v1/nope' })).status).toBe(401) // unknown paths are not told apart without a credential
    expect((await call({ path: '/v1/nope', headers: auth })).status).toBe(404)
    expect((await call({ path: '/v1/status', method: 'PUT', headers: auth })).status).toBe(405)
  })

  it('shows the cluster\'s names, and takes a new domain as a change, refusing a bad one by field', async () => {
    const view = (await call({ path: '/v1/domain', headers: auth })).json
    expect(view).toEqual({ domain: 'dcloud.home.arpa', isDefault: true, url: 'https://dcloud.home.arpa/', apps: 'https://NAME.dcloud.home.arpa/', caFingerprint: 'AA:BB', caUrl: 'http://dcloud.home.arpa/ca.pem', acme: null, certificates: [], acmeFailure: null })
    const pem = await call({ path: '/v1/ca.pem' })
    expect(pem.headers['content-type']).toBe('application/x-pem-file')
    const before = backend.installs.length
    const bad = await call({ path: '/v1/domain', method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ domain: 'nas.local' }) })
    expect(bad.status).toBe(400)
    expect(bad.json.error.message).toMatch(/^change\.domain: nas\.local is mDNS's/)
    const ok = await call({ path: '/v1/domain', method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ domain: 'Alice.Example.org' }) })
    expect(ok.status).toBe(200)
    expect(backend.installs.slice(before)).toEqual([{ kind: 'domain', domain: 'alice.example.org' }])
    // With --acme: the CA as a change of its own (the domain too, when it is another), checked by field.
    const acme = { directory: 'https://acme.example.org/dir', email: 'me@example.org', caRootPem: null }
    const badAcme = await call({ path: '/v1/domain', method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ domain: 'bob.example.org', acme: { ...acme, directory: 'http://acme.example.org/dir' } }) })
    expect(badAcme.status).toBe(400)
    expect(badAcme.json.error.message).toMatch(/^change\.acme\.directory: must be an https:\/\/ URL/)
    const withAcme = await call({ path: '/v1/domain', method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ domain: 'bob.example.org', acme }) })
    expect(withAcme.status).toBe(200)
    expect(backend.installs.slice(before + 1)).toEqual([{ kind: 'domain', domain: 'bob.example.org' }, { kind: 'acme', acme }])
  })

  it('refuses a wrong token, then blocks the address with Retry-After; a good token does not lift it', async () => {
    const wrong = { authorization: 'Bearer guess' }
    for (let i = 0; i < 4; i++) {
      const r = await call({ headers: wrong })
      expect(r.status).toBe(403)
      expect(r.json.error.code).toBe('forbidden')
    }
    const fifth = await call({ headers: wrong })
    expect(fifth.status).toBe(429)
    expect(fifth.headers['retry-after']).toBe('30')
    const blocked = await call({ headers: auth })
    expect(blocked.status).toBe(429)
    expect(blocked.json.error).toEqual({ code: 'too_many_attempts', message: expect.stringMatching(/try again in 30 s/) })
    expect((await call({ socket: true })).status).toBe(200) // the socket is not rate limited
    now += 31_000
    expect((await call({ headers: auth })).status).toBe(200)
    for (let i = 0; i < 5; i++) await call({ headers: wrong })
    expect((await call({ headers: auth })).headers['retry-after']).toBe('60') // the next block is longer
    now += 61_000
  })

  it('refuses a body that is not JSON with 415, before the handler runs', async () => {
    const before = backend.installs.length
    const r = await call({ method: 'POST', path: '/v1/apps', headers: { ...auth, 'content-type': 'text/plain' }, body: installBody })
    expect(r.status).toBe(415)
    expect(r.json.error).toEqual({ code: 'unsupported_media_type', message: expect.stringMatching(/Content-Type: application\/json \(got text\/plain\)/) })
    expect((await call({ method: 'POST', path: '/v1/apps', headers: { ...auth, 'content-type': 'application/x-www-form-urlencoded' }, body: installBody })).status).toBe(415)
    expect((await call({ method: 'POST', path: '/v1/apps', headers: { ...auth }, body: installBody })).status).toBe(415) // no type at all
    expect((await call({ socket: true, method: 'POST', path: '/v1/apps', headers: { 'content-type': 'text/plain' }, body: installBody })).status).toBe(415) // the socket too
    expect(backend.installs.length).toBe(before)
    const ok = await call({ method: 'POST', path: '/v1/apps', headers: { ...auth, 'content-type': 'application/json; charset=utf-8' }, body: installBody })
    expect(ok.status).toBe(200)
    expect(backend.installs.length).toBe(before + 1)
    // No body: no type needed.
    expect((await call({ method: 'POST', path: '/v1/apps/notes/move', headers: { ...auth, 'content-length': '0' } })).status).toBe(400) // the handler's own check (node missing)
  })

  it('refuses malformed and oversized JSON', async () => {
    const bad = await call({ method: 'POST', path: '/v1/apps', headers: { ...auth, ...json }, body: '{"name": ' })
    expect(bad.status).toBe(400)
    expect(bad.json.error.message).toMatch(/not valid JSON/)
    const big = await call({ method: 'POST', path: '/v1/apps', headers: { ...auth, ...json }, body: Buffer.alloc(5 * 1024 * 1024, 0x20) })
    expect(big.status).toBe(413)
    expect(big.json.error.code).toBe('payload_too_large')
    // Without a declared length (chunked), the cap holds while reading.
    const chunked = await new Promise<number>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/apps', headers: { ...auth, ...json } }, (res) => { res.resume(); resolve(res.statusCode ?? 0) })
      req.on('error', reject)
      for (let i = 0; i < 5; i++) req.write(Buffer.alloc(1024 * 1024, 0x20))
      req.end()
    })
    expect(chunked).toBe(413)
  })

  it('refuses Host names it does not serve (DNS rebinding), on GET and POST', async () => {
    for (const method of ['GET', 'POST']) {
      const r = await call({ method, path: method === 'GET' ? '/v1/status' : '/v1/apps', headers: { ...auth, ...json, host: 'evil.example:7371' }, ...(method === 'POST' ? { body: installBody } : {}) })
      expect(r.status).toBe(421)
      expect(r.json.error.code).toBe('misdirected')
      expect(r.json.error.message).toMatch(/--api-host/)
    }
    for (const host of [`localhost:${port}`, `[::1]:${port}`, 'testnode.local', '10.9.8.7', 'cloud.example.org']) {
      expect((await call({ headers: { ...auth, host } })).status, host).toBe(200)
    }
  })

  it('refuses state changes from another origin, and sends no CORS headers', async () => {
    const before = backend.installs.length
    for (const origin of ['http://evil.example', `http://127.0.0.1:${port + 1}`, 'null']) {
      const r = await call({ method: 'POST', path: '/v1/apps', headers: { ...auth, ...json, origin }, body: installBody })
      expect(r.status, origin).toBe(403)
      expect(r.json.error.code).toBe('bad_origin')
    }
    expect((await call({ method: 'DELETE', path: '/v1/apps/notes', headers: { ...auth, origin: 'http://evil.example' } })).status).toBe(403)
    expect(backend.installs.length).toBe(before)
    const same = await call({ method: 'POST', path: '/v1/apps', headers: { ...auth, ...json, origin: `http://127.0.0.1:${port}` }, body: installBody })
    expect(same.status).toBe(200)
    const read = await call({ headers: { ...auth, origin: 'http://evil.example' } })
    expect(read.status).toBe(200) // a GET is served, but the browser may not show it to the page:
    expect(Object.keys(read.headers).filter(h => h.startsWith('access-control-'))).toEqual([])
  })

  it('believes X-Forwarded-For only from the trusted proxy', async () => {
    const wrong = { authorization: 'Bearer guess' }
    // Through the trusted proxy (127.0.0.1 here): each forwarded client has its own count.
    for (let i = 0; i < 5; i++) await call({ port: proxiedPort, headers: { ...wrong, 'x-forwarded-for': '203.0.113.7' } })
    expect((await call({ port: proxiedPort, headers: { ...auth, 'x-forwarded-for': '203.0.113.7' } })).status).toBe(429)
    expect((await call({ port: proxiedPort, headers: { ...auth, 'x-forwarded-for': '203.0.113.8' } })).status).toBe(200)
    // A client cannot escape by claiming another address on the left.
    expect((await call({ port: proxiedPort, headers: { ...auth, 'x-forwarded-for': '198.51.100.1, 203.0.113.7' } })).status).toBe(429)
    // Where the peer is not a trusted proxy (the main server trusts none), the header means nothing.
    for (let i = 0; i < 5; i++) await call({ headers: { ...wrong, 'x-forwarded-for': `198.51.100.${i}` } })
    expect((await call({ headers: { ...auth, 'x-forwarded-for': '198.51.100.99' } })).status).toBe(429)
    now += 60 * 60_000 // past every block, for the tests below
  })

  it('passes a raw body to a stream route unread and uncapped, and refuses other types', async () => {
    const payload = Buffer.alloc(6 * 1024 * 1024, 7) // over the JSON cap
    const r = await call({ method: 'POST', path: '/v1/test/upload', headers: { ...auth, 'content-type': 'application/octet-stream' }, body: payload })
    expect(r.status).toBe(200)
    expect(r.json).toEqual({ bytes: payload.length, sha: createHash('sha256').update(payload).digest('hex') })
    uploaded = null
    expect((await call({ method: 'POST', path: '/v1/test/upload', headers: { ...auth, ...json }, body: '{}' })).status).toBe(415)
    expect(uploaded).toBeNull()
  })

  it('streams a response with its type, length and file name', async () => {
    const r = await new Promise<{ status: number, headers: Record<string, unknown>, bytes: Buffer }>((resolve, reject) => {
      request({ host: '127.0.0.1', port, path: '/v1/test/download', headers: auth }, (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => { resolve({ status: res.statusCode ?? 0, headers: res.headers, bytes: Buffer.concat(chunks) }) })
      }).on('error', reject).end()
    })
    expect(r.status).toBe(200)
    expect(r.headers['content-type']).toBe('application/octet-stream')
    expect(r.headers['content-length']).toBe(String(64 * 64 * 1024))
    expect(r.headers['content-disposition']).toMatch(/^attachment; filename="notes\.dcloud"/)
    expect(r.bytes.length).toBe(64 * 64 * 1024)
    expect(r.bytes[64 * 1024 * 63]).toBe(63)
  })

  it('cuts a stream that fails midway, and keeps serving', async () => {
    const outcome = await new Promise<string>((resolve) => {
      request({ host: '127.0.0.1', port, path: '/v1/test/broken', headers: auth }, (res) => {
        let bytes = 0
        res.on('data', (c: Buffer) => { bytes += c.length })
        res.on('end', () => { resolve(`complete ${bytes}`) })
        res.on('error', () => { resolve(`cut after ${bytes}`) })
        res.on('aborted', () => { resolve(`cut after ${bytes}`) })
      }).on('error', (e) => { resolve(`cut: ${e.message}`) }).end()
    })
    expect(outcome).toMatch(/^cut/)
    expect((await call({ headers: auth })).status).toBe(200)
  })

  it('counts every refusal by kind in /v1/metrics', async () => {
    const m = await metrics()
    expect(m.api.refused).toEqual({
      unauthorized: expect.any(Number),
      forbidden: expect.any(Number),
      rateLimited: expect.any(Number),
      badHost: 2,
      badOrigin: 4,
      badContentType: 5,
      tooLarge: 2,
      badJson: 1
    })
    expect(m.api.refused.unauthorized).toBeGreaterThanOrEqual(3)
    expect(m.api.refused.forbidden).toBe(3 * 4) // three series of five wrong tokens: the 5th of each is a 429
    expect(m.api.refused.rateLimited).toBeGreaterThanOrEqual(4)
    expect(m.name).toBe('testnode')
  })

  it('lets the CLI client speak to it over both listeners', async () => {
    expect(await apiGet('/v1/health', { socketPath, describe: 'test' })).toEqual({ ok: true })
    expect(await apiGet('/v1/status', { host: '127.0.0.1', port, token: TOKEN, describe: 'test' })).toMatchObject({ self: 'self' })
    const err = await apiGet('/v1/status', { host: '127.0.0.1', port, describe: `http://127.0.0.1:${port}` }).catch(e => e)
    expect(err).toBeInstanceOf(UserError)
    expect((err as UserError).exitCode).toBe(77)
    expect((await apiRequest('POST', '/v1/apps', JSON.parse(installBody), { socketPath, describe: 'test' }))).toMatchObject({ replicatedTo: 1 })
  })

  it('says clearly when no agent answers', async () => {
    const err = await apiGet('/v1/health', { socketPath: join(dir, 'missing.sock'), describe: 'unix:missing' }).catch(e => e)
    expect(err).toBeInstanceOf(UserError)
    expect((err as UserError).exitCode).toBe(69)
    expect((err as UserError).hint).toMatch(/dcloud agent/)
  })
})

/**
 * What an error thrown by the cluster behind a route answers, through the
 * real route table and the CLI's client: an error a user can act on (a
 * UserError here or on another node, a refusal of the cluster) reaches the
 * CLI with its message, its hint and a fitting status and exit code; only a
 * bug answers `internal`. `dcloud backup` onto an existing file once printed
 * `the agent failed to answer; see its log (internal)`.
 */
describe('errors thrown behind a route reach the CLI', () => {
  let server: ApiServer
  let thrown: unknown = null
  const logged: string[] = []
  const fails = async (): Promise<never> => { throw thrown }
  /** An error as another node's RPC server answers it, and as rpcCall turns the answer back into an error. */
  const fromPeer = (err: unknown): RpcError => rpcErrorOf(JSON.parse(JSON.stringify(rpcFailureOf(err))))

  beforeAll(async () => {
    const backend: ApiBackend = {
      status: () => ({ self: 'self', leader: null, nodes: [] }),
      metrics: () => new GuardTestBackend().metrics(),
      cluster: () => ({ apps: () => [], change: fails, logs: fails, why: fails, snapshotList: fails, snapshotTake: fails, rollback: fails }) as unknown as ClusterApi,
      backups: new BackupFiles(join(tmpdir(), 'dcloud-api-test-unused'))
    }
    server = new ApiServer({ socketPath: null, tcp: '127.0.0.1:0', token: TOKEN, log: createLogger('test', (line) => { logged.push(line) }), routes: apiRoutes(backend, () => server.metrics()) })
    await server.start()
  })
  afterAll(async () => { await server.stop() })

  const ask = async (err: unknown, path = '/v1/apps/notes/move', method = 'POST'): Promise<ApiCallError> => {
    thrown = err
    const target = { host: '127.0.0.1', port: server.tcpPort as number, token: TOKEN, describe: 'test' }
    const body = method === 'POST' ? { node: '12D3KooWLRPJAA5o6ssZjNE7C3Bc2NJsQeeKtRJNE3qXQjYwHxGD' } : undefined
    return await apiRequest(method, path, body, target).then(() => { throw new Error('answered 200') }, (e: unknown) => e as ApiCallError)
  }

  const hint = 'choose another file name, or move the old backup away first'
  const cases: Array<[string, unknown, { status: number, code: string, message: string, hint?: string, exit: number }]> = [
    ['a UserError here: a file that exists', new UserError('/srv/b.tar already exists; refusing to replace it', { exitCode: EXIT.cantCreate, hint }),
      { status: 409, code: 'conflict', message: '/srv/b.tar already exists; refusing to replace it', hint, exit: EXIT.cantCreate }],
    ['the same UserError on another node', fromPeer(new UserError('/srv/b.tar already exists; refusing to replace it', { exitCode: EXIT.cantCreate, hint })),
      { status: 409, code: 'conflict', message: '/srv/b.tar already exists; refusing to replace it', hint, exit: EXIT.cantCreate }],
    ['a UserError on another node: nothing there', fromPeer(new UserError('no snapshot abcd of notes', { exitCode: EXIT.noInput })),
      { status: 404, code: 'not_found', message: 'no snapshot abcd of notes', exit: EXIT.noInput }],
    ['a UserError that is no refusal: a service that does not start', new UserError('service web of notes failed to start: exited 1', { hint: 'see `dcloud app logs notes`' }),
      { status: 500, code: 'failed', message: 'service web of notes failed to start: exited 1', hint: 'see `dcloud app logs notes`', exit: EXIT.failure }],
    ['a UserError of the node\'s software', new UserError('the Docker engine did not say where its data lives (DockerRootDir)', { exitCode: EXIT.software }),
      { status: 500, code: 'failed', message: 'the Docker engine did not say where its data lives (DockerRootDir)', exit: EXIT.failure }],
    ['a full disk on another node', fromPeer(new NoSpaceError('no space left on the disk of n2', 'free space there and retry')),
      { status: 507, code: 'insufficient_storage', message: 'no space left on the disk of n2', hint: 'free space there and retry', exit: EXIT.ioError }],
    ['another node failed: its message, 502', fromPeer(new Error('docker: image notes:1 not found')),
      { status: 502, code: 'peer_failed', message: 'docker: image notes:1 not found', exit: EXIT.failure }],
    ['a code from a newer peer that this node does not know', new RpcError('quota', 'over quota on n3'),
      { status: 502, code: 'peer_failed', message: 'over quota on n3', exit: EXIT.failure }],
    ['another node answered what does not decode: 502, exit 76', new RpcError('bad_response', 'why from n2: rejections[0].node: expected a string'),
      { status: 502, code: 'bad_response', message: 'why from n2: rejections[0].node: expected a string', exit: EXIT.protocol }],
    ['the node that must answer is unavailable: 503, exit 75', new RpcError('unavailable', 'notes runs nowhere right now'),
      { status: 503, code: 'unavailable', message: 'notes runs nowhere right now', exit: EXIT.tempFail }],
    ['no stream to it: 503', new RpcError('unreachable', 'cannot reach n2'),
      { status: 503, code: 'unavailable', message: 'cannot reach n2', exit: EXIT.tempFail }],
    ['a bug', new TypeError('cannot read properties of undefined'),
      { status: 500, code: 'internal', message: 'the agent failed to answer; see its log', exit: EXIT.failure }]
  ]

  it.each(cases)('%s', async (_what, err, want) => {
    const e = await ask(err)
    expect(e).toBeInstanceOf(ApiCallError)
    expect({ status: e.status, code: e.code, message: e.message, hint: e.hint, exit: e.exitCode }).toEqual({ ...want, hint: want.hint, message: `the agent refused: ${want.message} (${want.code})` })
  })

  it('`dcloud backup APP -o FILE` onto an existing file says so, before asking the agent', async () => {
    const file = join(tmpdir(), `dcloud-existing-${process.pid}.tar`)
    await writeFile(file, 'old backup')
    try {
      const err = await backupCommand(['notes', '-o', file]).catch((e: unknown) => e as UserError)
      expect(err).toBeInstanceOf(UserError)
      expect((err as UserError).message).toBe(`${file} already exists; refusing to replace it`)
      expect((err as UserError).exitCode).toBe(EXIT.cantCreate)
    } finally {
      await rm(file, { force: true })
    }
  })

  it('logs a bug with its stack, a named failure as a warning, a refusal not at all', async () => {
    logged.length = 0
    await ask(new TypeError('cannot read properties of undefined'))
    await ask(new UserError('service web of notes failed to start: exited 1'))
    await ask(new UserError('x exists', { exitCode: EXIT.cantCreate }))
    expect(logged.length).toBe(2)
    expect(logged[0]).toMatch(/error.*api handler failed.*TypeError: cannot read properties of undefined/s)
    expect(logged[1]).toMatch(/warn.*api request failed.*failed to start/)
  })
})
