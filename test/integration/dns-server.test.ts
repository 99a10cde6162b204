/**
 * The private DNS responder (agent/frontdoor/dns-server.ts) against the real
 * dig, on a high loopback port: it answers from the zone file the agent's
 * ZoneFile writes, over UDP and TCP; a new zone is answered as soon as it is
 * renamed into place (measured); a bad zone file keeps the last good zone;
 * garbage datagrams and a TCP stream of nonsense leave it answering; no zone
 * yet is SERVFAIL; two writes at once leave the later zone whole.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFile } from 'node:child_process'
import dgram from 'node:dgram'
import net, { type AddressInfo } from 'node:net'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DnsResponder, ZoneFile, parseDnsListen } from '../../agent/frontdoor/dns-server.ts'
import { dnsZone } from '../../agent/frontdoor/dns-zone.ts'
import { createLogger } from '../../agent/util/log.ts'
import { need } from './need.ts'

const log = createLogger('dns-test', () => {})
let dir: string
let port: number
let responder: DnsResponder
let zoneFile: ZoneFile

/** A free loopback port for both UDP and TCP (asked of the kernel, then released). */
async function freePort (): Promise<number> {
  for (;;) {
    const server = net.createServer()
    const p = await new Promise<number>(resolve => server.listen(0, '127.0.0.1', () => { resolve((server.address() as AddressInfo).port) }))
    await new Promise(resolve => server.close(resolve))
    const udp = dgram.createSocket('udp4')
    const free = await new Promise<boolean>(resolve => { udp.once('error', () => { resolve(false) }); udp.bind(p, '127.0.0.1', () => { resolve(true) }) })
    udp.close()
    if (free) return p
  }
}

async function dig (name: string, ...extra: string[]): Promise<{ status: string, addresses: string[] }> {
  const out = await new Promise<string>((resolve) => {
    execFile('dig', ['+tries=1', '+timeout=2', '-p', String(port), '@127.0.0.1', name, 'A', ...extra], (_err, stdout) => { resolve(String(stdout)) })
  })
  const answer = out.split(';; ANSWER SECTION:\n')[1]?.split('\n\n')[0] ?? ''
  return { status: /status: ([A-Z]+)/.exec(out)?.[1] ?? 'none', addresses: answer.split('\n').map(l => l.split(/\s+/)).filter(f => f[3] === 'A').map(f => f[4] ?? '').sort() }
}

const zone = (apps: string[], addresses: string[], revision = 1): ReturnType<typeof dnsZone> => dnsZone({ domain: 'test.home.arpa', revision, apps, nodes: addresses.map(address => ({ address })) })

describe('dcloud dns-server against dig', () => {
  beforeAll(async () => {
    await need(['bind9-dnsutils'])
    dir = await mkdtemp(join(tmpdir(), 'dcloud-dns-'))
    port = await freePort()
    responder = new DnsResponder({ zoneFile: join(dir, 'zone.json'), listen: [parseDnsListen(`127.0.0.1:${port}`)], log })
    await responder.start()
    zoneFile = new ZoneFile(join(dir, 'zone.json'), log)
  }, 300_000)

  afterAll(async () => {
    await responder.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('answers SERVFAIL until the agent wrote a zone', async () => {
    expect((await dig('notes.test.home.arpa')).status).toBe('SERVFAIL')
  })

  it('answers from the zone written, over UDP and TCP; REFUSED outside it', async () => {
    await zoneFile.write(zone(['notes'], ['192.168.1.20', '192.168.1.21']))
    const start = performance.now()
    while ((await dig('notes.test.home.arpa')).status !== 'NOERROR' && performance.now() - start < 3000) await new Promise(resolve => setTimeout(resolve, 20))
    expect(await dig('notes.test.home.arpa')).toEqual({ status: 'NOERROR', addresses: ['192.168.1.20', '192.168.1.21'] })
    expect(await dig('NOTES.test.home.arpa', '+tcp')).toEqual({ status: 'NOERROR', addresses: ['192.168.1.20', '192.168.1.21'] })
    expect((await dig('example.org')).status).toBe('REFUSED')
    expect((await dig('other.test.home.arpa')).status).toBe('NXDOMAIN')
  })

  it('answers a new zone as soon as it is in place (inotify), and keeps the last good zone when the file is bad', async () => {
    await zoneFile.write(zone(['notes', 'photos'], ['192.168.1.20'], 2))
    const start = performance.now()
    while ((await dig('photos.test.home.arpa')).status !== 'NOERROR' && performance.now() - start < 3000) { /* poll */ }
    const ms = performance.now() - start
    process.stdout.write(`a new zone was answered ${Math.round(ms)} ms after it was written\n`)
    expect(ms).toBeLessThan(500)
    await writeFile(join(dir, 'zone.json'), '{"domain": "test.home.arpa", "serial": "x"}')
    await new Promise(resolve => setTimeout(resolve, 1200))
    expect(await dig('photos.test.home.arpa')).toEqual({ status: 'NOERROR', addresses: ['192.168.1.20'] })
  })

  it('writes one zone at a time: two asked at once leave the later one, whole', async () => {
    await Promise.all([zoneFile.write(zone(['notes', 'one'], ['192.168.1.20'], 3)), zoneFile.write(zone(['notes', 'two'], ['192.168.1.20'], 4))])
    expect(JSON.parse(await readFile(join(dir, 'zone.json'), 'utf8'))).toMatchObject({ serial: 4, names: ['notes', 'ns', 'two'] })
    const start = performance.now()
    while ((await dig('two.test.home.arpa')).status !== 'NOERROR' && performance.now() - start < 3000) { /* poll */ }
    expect((await dig('two.test.home.arpa')).status).toBe('NOERROR')
    expect((await dig('one.test.home.arpa')).status).toBe('NXDOMAIN')
  })

  it('keeps answering after garbage datagrams and a nonsense TCP stream', async () => {
    const udp = dgram.createSocket('udp4')
    for (const bytes of [Buffer.alloc(0), Buffer.from([1]), Buffer.alloc(12, 0xff), Buffer.alloc(600, 0x41), Buffer.from('000100000001000000000000ffff', 'hex')]) {
      await new Promise(resolve => udp.send(bytes, port, '127.0.0.1', resolve))
    }
    udp.close()
    const tcp = net.connect(port, '127.0.0.1')
    await new Promise(resolve => tcp.once('connect', resolve))
    tcp.write(Buffer.concat([Buffer.from([0, 5]), Buffer.from('hello'), Buffer.from([0xff, 0xff]), Buffer.alloc(100, 7)]))
    await new Promise(resolve => setTimeout(resolve, 100))
    tcp.destroy()
    expect(await dig('notes.test.home.arpa')).toEqual({ status: 'NOERROR', addresses: ['192.168.1.20'] })
    expect(responder.counters.dropped).toBeGreaterThan(0)
  })
})
