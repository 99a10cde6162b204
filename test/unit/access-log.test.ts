/**
 * The access log's pure parts (agent/access/lines.ts, proto/access.ts): Caddy
 * 2.6's JSON access line decoded, a forwarded request left to the first front
 * door, the summary and its merge, retention, replica targets, which node
 * answers for which origin; and its two small I/O parts on a temp directory:
 * the store (dedup, reads, retention on disk) and the tail of Caddy's file
 * (a roll, a restart in between).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { appendFile, mkdtemp, readdir, rename, rm, utimes, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { assignOrigins, pushRefusal, decodeCaddyAccess, lineId, mergeSummaries, NewestLines, replicaTargets, retentionPlan, SummaryBuilder, type Segment } from '../../agent/access/lines.ts'
import { AccessStore } from '../../agent/access/store.ts'
import { CaddyLogTail } from '../../agent/access/tail.ts'
import { decodeAccessAnswer, decodeAccessLine, decodeAccessPush, decodeAccessQuery, parseSince, type AccessLine } from '../../proto/access.ts'
import { render, type RenderInput } from '../../agent/frontdoor/render.ts'
import { createLogger } from '../../agent/util/log.ts'

const A = '12D3KooW1' + 'a'.repeat(43)
const B = '12D3KooW2' + 'b'.repeat(43)
const C = '12D3KooW3' + 'c'.repeat(43)
const log = createLogger('test', () => {})

/** A line as Debian's Caddy 2.6.2 wrote it (captured from a real run), with what varies as parameters. */
function caddyLine (o: { app?: string, ip?: string, uri?: string, status?: number, size?: number, ts?: number, hop?: string, port?: string, method?: string } = {}): string {
  const headers: Record<string, string[]> = { 'User-Agent': ['curl/7.88.1'], Accept: ['*/*'] }
  if (o.hop !== undefined) headers['X-Dcloud-Hop'] = [o.hop]
  return JSON.stringify({
    level: 'info',
    ts: o.ts ?? 1796670998.0532181,
    logger: `http.log.access.${o.app ?? 'hello'}`,
    msg: 'handled request',
    request: { remote_ip: o.ip ?? '203.0.113.7', remote_port: o.port ?? '50006', proto: 'HTTP/2.0', method: o.method ?? 'GET', host: `${o.app ?? 'hello'}.dcloud.home.arpa`, uri: o.uri ?? '/f2?q=1', headers, tls: { resumed: false, version: 772, cipher_suite: 4865, proto: 'h2', server_name: 'hello.dcloud.home.arpa' } },
    user_id: '',
    duration: 0.00001348,
    size: o.size ?? 2,
    status: o.status ?? 200,
    resp_headers: { Server: ['Caddy'], 'Content-Type': ['text/plain; charset=utf-8'] }
  })
}

const line = (over: Partial<AccessLine> = {}): AccessLine => ({ id: lineId(over.node ?? A, JSON.stringify(over)), node: A, ts: Date.UTC(2026, 11, 7, 12), app: 'hello', client: '203.0.113.7', user: null, method: 'GET', host: 'hello.dcloud.home.arpa', path: '/', status: 200, bytes: 10, durationMs: 1, ...over })

describe('a line of Caddy\'s access log', () => {
  it('gives time, client, method, host, path (no query), status, bytes and duration, with user null', () => {
    const d = decodeCaddyAccess(caddyLine(), A, new Set())
    expect(d.kind).toBe('line')
    if (d.kind !== 'line') return
    expect(d.line).toEqual({ id: expect.stringMatching(/^[0-9a-f]{24}$/), node: A, ts: 1796670998053, app: 'hello', client: '203.0.113.7', user: null, method: 'GET', host: 'hello.dcloud.home.arpa', path: '/f2', status: 200, bytes: 2, durationMs: 0.013 })
    // What the store writes, a peer's decoder takes back unchanged.
    expect(decodeAccessLine(JSON.parse(JSON.stringify(d.line)))).toEqual(d.line)
  })

  it('has an id that is the same for the same bytes and origin, different otherwise', () => {
    const raw = caddyLine()
    const id = (r: string, o: string): string => { const d = decodeCaddyAccess(r, o, new Set()); return d.kind === 'line' ? d.line.id : '' }
    expect(id(raw, A)).toBe(id(raw, A))
    expect(id(raw, A)).not.toBe(id(raw, B))
    expect(id(raw, A)).not.toBe(id(caddyLine({ port: '50007' }), A))
  })

  it('is left to the first front door when another node forwarded it (its address and the hop header)', () => {
    expect(decodeCaddyAccess(caddyLine({ ip: '10.213.0.11', hop: B }), A, new Set(['10.213.0.11'])).kind).toBe('forwarded')
    // The header alone, from a client: logged (a client cannot hide its request).
    expect(decodeCaddyAccess(caddyLine({ ip: '203.0.113.7', hop: B }), A, new Set(['10.213.0.11'])).kind).toBe('line')
    // A node's address alone (a client on that node, no hop): logged.
    expect(decodeCaddyAccess(caddyLine({ ip: '10.213.0.11' }), A, new Set(['10.213.0.11'])).kind).toBe('line')
  })

  it('refuses what is not an app\'s request, with the reason', () => {
    const bad: Array<[string, RegExp]> = [
      ['not json', /not JSON/],
      ['[1,2]', /not an object/],
      [JSON.stringify({ logger: 'tls.obtain', msg: 'x' }), /not an app's access log/],
      [JSON.stringify({ logger: 'http.log.access', request: {} }), /not an app's access log/],
      [JSON.stringify({ logger: 'http.log.access.Bad_Name', request: {} }), /not an app name/],
      [caddyLine().replace('"remote_ip":"203.0.113.7"', '"remote_ip":""'), /no client/],
      [caddyLine({ method: 'G E T' }), /no method/],
      [caddyLine().replace('"status":200', '"status":"200"'), /no status/],
      [caddyLine().replace('"ts":1796670998.0532181', '"ts":"now"'), /no time/]
    ]
    for (const [raw, why] of bad) {
      const d = decodeCaddyAccess(raw, A, new Set())
      expect(d.kind, raw).toBe('invalid')
      if (d.kind === 'invalid') expect(d.reason, raw).toMatch(why)
    }
  })

  it('from a peer is checked: a bad line, an oversized push, a bad query are refused', () => {
    expect(() => decodeAccessLine({ ...line(), node: 'x' })).toThrow(/line.node/)
    expect(() => decodeAccessLine({ ...line(), status: 1000 })).toThrow(/line.status/)
    expect(() => decodeAccessLine({ ...line(), app: '../etc' })).toThrow(/line.app/)
    expect(() => decodeAccessPush({ lines: Array.from({ length: 501 }, () => line()) })).toThrow(/push.lines/)
    expect(() => decodeAccessQuery({ kind: 'read', app: 'hello', since: 0, origins: ['nope'], limit: 10 })).toThrow(/query.origins/)
    expect(() => decodeAccessQuery({ kind: 'drop', app: 'hello', since: 0 })).toThrow(/query.kind/)
    expect(decodeAccessQuery({ kind: 'read', app: 'hello', since: 5, origins: [A], limit: 10, summary: true })).toEqual({ kind: 'read', app: 'hello', since: 5, origins: [A], limit: 10, summary: true })
    expect(() => decodeAccessAnswer({ kind: 'read', lines: [], summary: { lines: 1, days: { today: [] }, paths: {}, clients: {} } })).toThrow(/not a day/)
  })
})

describe('the summary', () => {
  it('counts distinct addresses per day, top paths and top addresses, and merges parts of disjoint lines exactly', () => {
    const day1 = Date.UTC(2026, 11, 6, 23, 59)
    const day2 = Date.UTC(2026, 11, 7, 0, 1)
    const lines = [
      line({ ts: day1, client: '203.0.113.1', path: '/' }),
      line({ ts: day1, client: '203.0.113.1', path: '/a' }),
      line({ ts: day1, client: '203.0.113.2', path: '/' }),
      line({ ts: day2, client: '203.0.113.1', path: '/', node: B }),
      line({ ts: day2, client: '203.0.113.3', path: '/b', node: B })
    ]
    const whole = new SummaryBuilder()
    for (const l of lines) whole.add(l)
    const p1 = new SummaryBuilder()
    const p2 = new SummaryBuilder()
    for (const l of lines) (l.node === A ? p1 : p2).add(l)
    const expected = {
      lines: 5,
      visitorsPerDay: [{ day: '2026-12-06', visitors: 2 }, { day: '2026-12-07', visitors: 2 }],
      topPaths: [{ path: '/', requests: 3 }, { path: '/a', requests: 1 }, { path: '/b', requests: 1 }],
      topAddresses: [{ address: '203.0.113.1', requests: 3 }, { address: '203.0.113.2', requests: 1 }, { address: '203.0.113.3', requests: 1 }],
      truncated: false
    }
    expect(mergeSummaries([whole.part()])).toEqual(expected)
    expect(mergeSummaries([p1.part(), p2.part()])).toEqual(expected)
    expect(mergeSummaries([p2.part(), p1.part()])).toEqual(expected)
    expect(mergeSummaries([whole.part()], 1).topPaths).toEqual([{ path: '/', requests: 3 }])
  })

  it('stops growing at its caps and says so', () => {
    const s = new SummaryBuilder()
    for (let i = 0; i < 10_050; i++) s.add(line({ path: `/p${i}`, client: '203.0.113.1' }))
    const part = s.part()
    expect(Object.keys(part.paths)).toHaveLength(10_000)
    expect(part.truncated).toBe(true)
    expect(part.lines).toBe(10_050)
  })

  it('keeps the newest lines only, oldest first', () => {
    const n = new NewestLines(3)
    for (const ts of [5, 1, 9, 3, 7, 2, 8]) n.add(line({ ts, id: String(ts).padStart(24, '0') }))
    expect(n.lines().map(l => l.ts)).toEqual([7, 8, 9])
    expect(n.more).toBe(true)
  })
})

describe('retention', () => {
  const seg = (app: string, name: string, bytes: number, mtimeMs: number, origin = A): Segment => ({ app, origin, name, bytes, mtimeMs })
  const limits = { maxAgeMs: 1000, maxBytesPerApp: 100, maxBytesTotal: 150 }

  it('deletes segments past the age, then the oldest of an app over its share, then the oldest of all', () => {
    const now = 10_000
    const old = seg('a', '1', 10, now - 2000)
    const a1 = seg('a', '2', 60, now - 500)
    const a2 = seg('a', '3', 60, now - 100)
    const b1 = seg('b', '4', 50, now - 400, B)
    const b2 = seg('b', '5', 40, now - 50)
    const gone = retentionPlan([old, a1, a2, b1, b2], limits, now)
    // old: age. a1: app a is 120 > 100. Then a2 + b1 + b2 = 150: within the total.
    expect(gone).toEqual([old, a1])
    const gone2 = retentionPlan([a2, b1, b2, seg('c', '6', 30, now - 300)], limits, now)
    // 180 in all: the oldest (b1, 400 ms old) goes.
    expect(gone2.map(s => s.name)).toEqual(['4'])
    expect(retentionPlan([a2, b2], limits, now)).toEqual([])
  })
})

describe('replicas and queries', () => {
  it('replicates to the next live nodes in the ring of ids', () => {
    expect(replicaTargets(A, [A, B, C], 2)).toEqual([B, C])
    expect(replicaTargets(B, [A, B, C], 2)).toEqual([C, A])
    expect(replicaTargets(C, [A, B, C], 1)).toEqual([A])
    expect(replicaTargets(A, [], 2)).toEqual([])
  })

  it('takes from a peer only that peer\'s own lines', () => {
    expect(pushRefusal([line({ node: B }), line({ node: B })], B)).toBeNull()
    expect(pushRefusal([line({ node: B }), line({ node: C })], B)).toMatch(/only its own access lines; this push has a line of 12D3KooW3/)
    expect(pushRefusal([], B)).toBeNull()
  })

  it('has each origin read by one node: itself when it answers, else the asking node, else the first holder', () => {
    expect(assignOrigins(new Map([[A, [A, B]], [B, [A, B]]]), A)).toEqual(new Map([[A, [A]], [B, [B]]]))
    // C is dead: its lines are read from the asking node's replica, once.
    expect(assignOrigins(new Map([[A, [A, C]], [B, [B, C]]]), A)).toEqual(new Map([[A, [A, C]], [B, [B]]]))
    expect(assignOrigins(new Map([[A, []], [B, [B, C]]]), A)).toEqual(new Map([[B, [B, C]]]))
  })

  it('reads --since as an age or a date', () => {
    const now = Date.UTC(2026, 11, 7, 12)
    expect(parseSince('1h', now)).toBe(now - 3_600_000)
    expect(parseSince('7d', now)).toBe(now - 7 * 86_400_000)
    expect(parseSince('2026-12-07', now)).toBe(Date.UTC(2026, 11, 7))
    expect(() => parseSince('yesterday', now)).toThrow(/neither an age/)
  })
})

describe('Caddy\'s configuration', () => {
  const input = (over: Partial<RenderInput> = {}): RenderInput => ({
    domain: 'dcloud.home.arpa',
    self: { id: A, name: 'n1', address: '10.213.0.11' },
    adminListen: 'unix//run/dcloud-caddy/admin.sock',
    listen: { https: [':443'], http: [':80'] },
    peerHttpsPort: 443,
    tls: { certPem: 'C', keyPem: 'K', rootPem: 'R', rootDer: Buffer.from('R') },
    apps: [{ name: 'hello', web: { port: 80 } }, { name: 'notes', web: { port: 80 } }],
    nodes: [{ id: A, name: 'n1', address: '10.213.0.11', apps: ['hello'] }],
    local: { hello: '172.18.0.2' },
    ...over
  })

  it('logs each app\'s host under its name, as JSON to the file the agent tails, rolled and bounded', () => {
    const r = render(input({ accessLog: '/var/log/dcloud-caddy/access.log' }))
    const https = (r.config.apps as any).http.servers['dcloud-https']
    expect(https.logs).toEqual({ logger_names: { 'hello.dcloud.home.arpa': 'hello', 'notes.dcloud.home.arpa': 'notes' }, skip_unmapped_hosts: true })
    expect((r.config.apps as any).http.servers['dcloud-http'].logs).toBeUndefined()
    expect(r.config.logging).toEqual({
      logs: {
        default: { exclude: ['http.log.access'] },
        'dcloud-access': { writer: { output: 'file', filename: '/var/log/dcloud-caddy/access.log', roll: true, roll_size_mb: 1, roll_keep: 1, roll_keep_days: 1, roll_gzip: false }, encoder: { format: 'json' }, include: ['http.log.access'] }
      }
    })
    const without = render(input())
    expect(without.config.logging).toBeUndefined()
    expect(without.id).not.toBe(r.id)
  })
})

describe('on disk', () => {
  let dir: string
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'dcloud-access-')) })
  afterEach(async () => { await rm(dir, { recursive: true, force: true }) })

  it('stores each line once, however often it comes, and reads the newest since a time, across a restart', async () => {
    const store = new AccessStore(join(dir, 'access'))
    await store.open()
    const t0 = Date.now()
    const mine = Array.from({ length: 5 }, (_, i) => line({ ts: t0 + i, id: `${i}`.padStart(24, 'a'), path: `/${i}` }))
    const theirs = [line({ node: B, ts: t0 + 10, id: 'b'.repeat(24) })]
    expect(await store.append(mine)).toBe(5)
    expect(await store.append([...mine.slice(3), ...theirs])).toBe(1)
    expect(await store.origins('hello', 0)).toEqual([A, B])
    const r = await store.read('hello', [A], t0 + 1, 2, true)
    expect(r.lines.map(l => l.path)).toEqual(['/3', '/4'])
    expect(r.more).toBe(true)
    expect(r.summary?.lines).toBe(4)
    // A new store on the same directory (the agent restarted): a re-sent line is still recognised.
    const again = new AccessStore(join(dir, 'access'))
    expect(await again.append(mine)).toBe(0)
    expect((await again.read('hello', [A, B], 0, 100, false)).lines).toHaveLength(6)
    // Everything past its age: deleted from disk.
    const files = join(dir, 'access', 'hello', A)
    for (const f of await readdir(files)) await utimes(join(files, f), new Date(t0 - 10_000), new Date(t0 - 10_000))
    expect((await again.retain({ maxAgeMs: 5000, maxBytesPerApp: 1e9, maxBytesTotal: 1e9 })).map(s => s.origin)).toEqual([A])
    expect(await readdir(files)).toEqual([])
    expect(await again.append([line({ ts: t0 + 20, id: 'c'.repeat(24) })])).toBe(1)
    expect((await again.read('hello', [A], 0, 100, false)).lines.map(l => l.id)).toEqual(['c'.repeat(24)])
  })

  it('follows Caddy\'s file through a roll, and after a restart resumes where it stopped, finishing a file rolled meanwhile', async () => {
    const file = join(dir, 'access.log')
    const got: string[] = []
    const tail = (): CaddyLogTail => new CaddyLogTail({ path: file, cursorFile: join(dir, 'cursor.json'), onLines: async (l) => { got.push(...l) }, log })
    const t1 = tail()
    await t1.tick() // no file yet: nothing, no error
    await writeFile(file, 'one\ntwo\nthr')
    await t1.tick()
    expect(got).toEqual(['one', 'two'])
    await appendFile(file, 'ee\n')
    // Caddy rolls: the file is renamed, a new one begins.
    await rename(file, join(dir, 'access-2026-12-07T19-00-00.000.log'))
    await writeFile(file, 'four\n')
    await t1.tick()
    expect(got).toEqual(['one', 'two', 'three', 'four'])
    await t1.stop()
    // While the agent is down, Caddy writes more and rolls again.
    await appendFile(file, 'five\n')
    await rename(file, join(dir, 'access-2026-12-07T19-05-00.000.log'))
    await writeFile(file, 'six\n')
    const t2 = tail()
    await t2.tick()
    expect(got).toEqual(['one', 'two', 'three', 'four', 'five', 'six'])
    await t2.stop()
  })
})
