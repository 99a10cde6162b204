/**
 * Private DNS (agent/frontdoor/dns-zone.ts), pure: the zone from the
 * cluster's state and live nodes; the answer to each kind of question,
 * case-insensitively; names outside the zone refused; bad messages answered
 * FORMERR or dropped, never a throw (a property test over random bytes and
 * over mangled valid queries).
 */
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import dnsPacket from 'dns-packet'
import type { DecodedPacket, RecordType } from 'dns-packet'
import { DNS_TTL, answerDns, decodeDnsZone, dnsZone, homeSources, type DnsZone } from '../../agent/frontdoor/dns-zone.ts'

const ZONE: DnsZone = dnsZone({
  domain: 'dcloud.home.arpa',
  revision: 42,
  apps: ['notes', 'hello', 'auth'],
  nodes: [{ address: '10.213.0.12' }, { address: '10.213.0.11' }, { address: null }, { address: 'fd00::11' }, { address: '10.213.0.11' }]
})

function ask (name: string, type: RecordType = 'A', over: Partial<Parameters<typeof dnsPacket.encode>[0]> = {}): Buffer {
  return dnsPacket.encode({ type: 'query', id: 4242, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type, class: 'IN' }], ...over })
}

function answer (msg: Buffer, zone: DnsZone | null = ZONE, transport: 'udp' | 'tcp' = 'udp'): DecodedPacket & { rcode?: string } {
  const out = answerDns(msg, zone, transport)
  if (out === null) throw new Error('no answer')
  return dnsPacket.decode(out) as DecodedPacket & { rcode?: string }
}

const data = (p: DecodedPacket, type: string): unknown[] => (p.answers ?? []).filter(a => a.type === type).map(a => (a as { data: unknown }).data)

describe('the zone', () => {
  it('holds the apps (reserved names left out), ns, the live nodes\' addresses once each, sorted', () => {
    expect(ZONE).toEqual({ domain: 'dcloud.home.arpa', serial: 42, names: ['hello', 'notes', 'ns'], v4: ['10.213.0.11', '10.213.0.12'], v6: ['fd00::11'] })
  })

  it('is the same whatever order apps and nodes come in', () => {
    const again = dnsZone({ domain: 'DCLOUD.home.arpa', revision: 42, apps: ['auth', 'hello', 'notes'], nodes: [{ address: 'fd00::11' }, { address: '10.213.0.11' }, { address: '10.213.0.12' }] })
    expect(again).toEqual(ZONE)
  })

  it('round-trips through the file the agent writes, and refuses a bad one with the field', () => {
    expect(decodeDnsZone(JSON.parse(JSON.stringify(ZONE)))).toEqual(ZONE)
    expect(() => decodeDnsZone({ ...ZONE, v4: ['10.0.0.1; rm'] })).toThrow(/zone\.v4\[0\]/)
    expect(() => decodeDnsZone({ ...ZONE, names: ['a.b'] })).toThrow(/zone\.names\[0\]/)
    expect(() => decodeDnsZone({ ...ZONE, domain: 'arpa' })).toThrow(/zone\.domain/)
    expect(() => decodeDnsZone('zone')).toThrow(/zone/)
  })
})

describe('answers', () => {
  it('A of an app: every live node, authoritative, TTL short, the id and RD echoed', () => {
    const p = answer(ask('notes.dcloud.home.arpa'))
    expect(p.rcode).toBe('NOERROR')
    expect(p.id).toBe(4242)
    expect(p.flag_aa).toBe(true)
    expect(p.flag_rd).toBe(true)
    expect(p.flag_ra).toBe(false)
    expect(data(p, 'A')).toEqual(['10.213.0.11', '10.213.0.12'])
    expect(p.answers?.every(a => (a as { ttl?: number }).ttl === DNS_TTL && a.name === 'notes.dcloud.home.arpa')).toBe(true)
  })

  it('rotates the addresses by the query\'s id, so that clients taking the first spread over the nodes', () => {
    const three = dnsZone({ domain: 'dcloud.home.arpa', revision: 1, apps: ['notes'], nodes: [{ address: '10.0.0.1' }, { address: '10.0.0.2' }, { address: '10.0.0.3' }] })
    const first = (id: number): unknown => data(answer(ask('notes.dcloud.home.arpa', 'A', { id }), three), 'A')
    expect([first(0), first(1), first(2), first(3)]).toEqual([
      ['10.0.0.1', '10.0.0.2', '10.0.0.3'], ['10.0.0.2', '10.0.0.3', '10.0.0.1'], ['10.0.0.3', '10.0.0.1', '10.0.0.2'], ['10.0.0.1', '10.0.0.2', '10.0.0.3']
    ])
  })

  it('AAAA of an app, of the bare domain and of ns', () => {
    for (const name of ['hello.dcloud.home.arpa', 'dcloud.home.arpa', 'ns.dcloud.home.arpa']) {
      expect(data(answer(ask(name, 'AAAA')), 'AAAA'), name).toEqual(['fd00::11'])
    }
  })

  it('is case-insensitive and answers in the case asked (0x20)', () => {
    const p = answer(ask('NoTeS.DCloud.Home.ARPA.', 'A'))
    expect(p.rcode).toBe('NOERROR')
    expect(data(p, 'A')).toEqual(['10.213.0.11', '10.213.0.12'])
    expect(p.answers?.[0]?.name).toBe('NoTeS.DCloud.Home.ARPA')
  })

  it('SOA and NS at the apex, with ns\' addresses as glue', () => {
    const soa = answer(ask('dcloud.home.arpa', 'SOA'))
    expect(data(soa, 'SOA')).toEqual([expect.objectContaining({ mname: 'ns.dcloud.home.arpa', serial: 42, minimum: 5 })])
    const ns = answer(ask('dcloud.home.arpa', 'NS'))
    expect(data(ns, 'NS')).toEqual(['ns.dcloud.home.arpa'])
    expect((ns.additionals ?? []).map(a => [a.name, a.type, (a as { data: unknown }).data])).toEqual([
      ['ns.dcloud.home.arpa', 'A', '10.213.0.11'], ['ns.dcloud.home.arpa', 'A', '10.213.0.12'], ['ns.dcloud.home.arpa', 'AAAA', 'fd00::11']
    ])
  })

  it('NXDOMAIN for an unknown app, a reserved name, two labels deep; with the SOA', () => {
    for (const name of ['nothere.dcloud.home.arpa', 'auth.dcloud.home.arpa', 'a.notes.dcloud.home.arpa', 'xdcloud.home.arpa.dcloud.home.arpa']) {
      const p = answer(ask(name))
      expect(p.rcode, name).toBe('NXDOMAIN')
      expect(p.flag_aa).toBe(true)
      expect(p.answers).toEqual([])
      expect(p.authorities?.map(a => a.type)).toEqual(['SOA'])
    }
  })

  it('NODATA (NOERROR, no answer, the SOA) for a type the name does not have', () => {
    const p = answer(ask('notes.dcloud.home.arpa', 'MX'))
    expect(p.rcode).toBe('NOERROR')
    expect(p.answers).toEqual([])
    expect(p.authorities?.map(a => a.type)).toEqual(['SOA'])
  })

  it('REFUSED for a name outside the zone: not a recursive resolver', () => {
    for (const name of ['example.org', 'home.arpa', 'xdcloud.home.arpa', 'dcloud.home.arpa.evil.org', '.']) {
      const p = answer(ask(name))
      expect(p.rcode, name).toBe('REFUSED')
      expect(p.flag_aa).toBe(false)
      expect(p.answers).toEqual([])
    }
  })

  it('REFUSED for another class; SERVFAIL before the agent wrote a zone', () => {
    expect(answer(dnsPacket.encode({ type: 'query', id: 1, questions: [{ name: 'version.bind', type: 'TXT', class: 'CH' }] })).rcode).toBe('REFUSED')
    expect(answer(ask('notes.dcloud.home.arpa'), null).rcode).toBe('SERVFAIL')
  })

  it('EDNS: answers with an OPT record; too big for UDP: truncated (TC), whole over TCP', () => {
    const big = dnsZone({ domain: 'dcloud.home.arpa', revision: 1, apps: ['notes'], nodes: Array.from({ length: 25 }, (_, i) => ({ address: `10.0.${i}.1` })) })
    const plain = answer(ask('notes.dcloud.home.arpa'), big)
    expect(plain.flag_tc).toBe(true)
    expect(plain.answers).toEqual([])
    const truncatedEdns = answer(ask('notes.dcloud.home.arpa', 'A', { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 512 } as never] }), big)
    expect([truncatedEdns.flag_tc, truncatedEdns.additionals?.map(a => a.type)]).toEqual([true, ['OPT']])
    const tcp = answer(ask('notes.dcloud.home.arpa'), big, 'tcp')
    expect(tcp.flag_tc).toBe(false)
    expect(tcp.answers).toHaveLength(25)
    const edns = answer(ask('notes.dcloud.home.arpa', 'A', { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 4096 } as never] }), big)
    expect(edns.flag_tc).toBe(false)
    expect(edns.answers).toHaveLength(25)
    expect(edns.additionals?.map(a => a.type)).toEqual(['OPT'])
  })
})

describe('who gets an answer', () => {
  it('the home: private, CGNAT, loopback, link-local addresses and the node\'s own subnets; nobody else', () => {
    const home = homeSources(['2001:db8:1::/64', '203.0.113.0/24'])
    for (const a of ['192.168.1.7', '10.213.0.11', '172.31.255.1', '100.100.1.1', '127.0.0.1', '169.254.3.4', 'fd00::5', 'fe80::1', '::1', '::ffff:192.168.1.7', '2001:db8:1::99', '203.0.113.9']) expect(home(a), a).toBe(true)
    for (const a of ['8.8.8.8', '172.32.0.1', '100.128.0.1', '2001:db8:2::1', '198.51.100.1', '::ffff:8.8.8.8', 'not an address', '']) expect(home(a), a).toBe(false)
  })
})

describe('bad messages', () => {
  it('drops what is too short to carry an id, and responses (no loops)', () => {
    expect(answerDns(Buffer.alloc(0), ZONE)).toBeNull()
    expect(answerDns(Buffer.from([1, 2, 3]), ZONE)).toBeNull()
    const response = dnsPacket.encode({ type: 'response', id: 7, questions: [{ name: 'notes.dcloud.home.arpa', type: 'A' }] })
    expect(answerDns(response, ZONE)).toBeNull()
  })

  it('FORMERR, with the id, for a header that promises a question that is not there, and for two questions', () => {
    const header = Buffer.from([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0])
    const p = answer(header)
    expect(p.id).toBe(0x1234)
    expect(p.rcode).toBe('FORMERR')
    const two = dnsPacket.encode({ type: 'query', id: 9, questions: [{ name: 'notes.dcloud.home.arpa', type: 'A' }, { name: 'hello.dcloud.home.arpa', type: 'A' }] })
    expect(answer(two).rcode).toBe('FORMERR')
    expect(answer(Buffer.from([0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])).rcode).toBe('FORMERR')
  })

  it('NOTIMP for another opcode (an UPDATE)', () => {
    const update = ask('notes.dcloud.home.arpa')
    update.writeUInt16BE(update.readUInt16BE(2) | (5 << 11), 2)
    expect(answer(update).rcode).toBe('NOTIMP')
  })

  it('never throws, whatever the bytes: random, and valid queries with bytes changed or cut', () => {
    const valid = ask('notes.dcloud.home.arpa', 'A', { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232 } as never] })
    fc.assert(fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 600 }).map(b => Buffer.from(b)),
        fc.tuple(fc.nat(valid.length - 1), fc.integer({ min: 0, max: 255 }), fc.nat(valid.length)).map(([i, v, cut]) => {
          const b = Buffer.from(valid)
          b[i] = v
          return b.subarray(0, Math.max(cut, 12))
        })
      ),
      (bytes) => {
        const out = answerDns(bytes, ZONE)
        if (out === null) return
        // Whatever it answers is a DNS message with the query's id.
        expect(out.readUInt16BE(0)).toBe(bytes.readUInt16BE(0))
        expect(out.readUInt16BE(2) & 0x8000).toBe(0x8000)
      }
    ), { numRuns: 2000 })
  })
})
