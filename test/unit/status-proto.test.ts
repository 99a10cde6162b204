import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import { STATUS_MAX_BYTES, StatusDropError, decodeStatus, encodeStatus, type NodeResources, type NodeStatus } from '../../proto/status.ts'

const PEER = '12D3KooWH2WDzhwRt9of17QyrgPqta7M1yVtwffRh12ej7U3UkiX'
const OTHER = '12D3KooWKq58w8Aeb71jcEcLY1y83kks4fGPEsvZtRNG8etEs1t9'

function mockBeat (over: Partial<NodeStatus> = {}): NodeStatus {
  return { v: 1, peerId: PEER, name: 'n1', incarnation: 1_700_000_000_000, seq: 1, intervalMs: 1000, ...over }
}

function mockStatus (over: Partial<NodeStatus> = {}, res: Partial<NodeResources> = {}): NodeStatus {
  return mockBeat({ resources: mockResources(res), ...over })
}

function mockResources (over: Partial<NodeResources> = {}): NodeResources {
  return {
    cpu: { cores: 4, load: 12.5 },
    mem: { total: 8e9, free: 4e9 },
    diskFree: 1e11,
    arch: 'arm64',
    dockerVersion: '20.10.24',
    agentVersion: '0.1.0',
    labels: { ssd: 'true' },
    apps: ['nextcloud'],
    appStates: [{ name: 'nextcloud', state: 'running', revision: 3, ports: [{ port: 53, protocol: 'udp' }], webPort: null }],
    containers: 2,
    address: '192.168.1.20',
    images: ['nextcloud:29'],
    ...over
  }
}

const bytes = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v))

function dropReason (data: Uint8Array, signer: string | undefined): string {
  try {
    decodeStatus(data, signer)
  } catch (err) {
    expect(err).toBeInstanceOf(StatusDropError)
    return (err as StatusDropError).reason
  }
  return 'accepted'
}

describe('status messages', () => {
  it('carries the send time and the echoes of peers\' beats, each validated', () => {
    const beat = mockBeat({ sent: 123_456, heard: { [OTHER]: 99_000 } })
    expect(decodeStatus(encodeStatus(beat), PEER)).toEqual(beat)
    expect(decodeStatus(encodeStatus(mockBeat()), PEER).heard).toBeUndefined()
    for (const bad of [{ sent: -1 }, { sent: 'x' }, { heard: [] }, { heard: { 'not-a-peer': 1 } }, { heard: { [OTHER]: -5 } }, { heard: Object.fromEntries(Array.from({ length: 257 }, (_, i) => [`12D3KooW${String(i).padStart(44, 'A')}`, 1])) }]) {
      expect(dropReason(bytes({ ...mockBeat(), ...bad }), PEER), JSON.stringify(bad).slice(0, 60)).toBe('malformed')
    }
    const proto = JSON.stringify(mockBeat()).replace(/}$/, ',"heard":{"__proto__":1}}')
    expect(dropReason(new TextEncoder().encode(proto), PEER)).toBe('malformed')
  })

  it('round-trips a full report and a plain beat', () => {
    const s = mockStatus()
    expect(decodeStatus(encodeStatus(s), PEER)).toEqual(s)
    const beat = mockBeat()
    expect(decodeStatus(encodeStatus(beat), PEER)).toEqual(beat)
    expect(encodeStatus(beat).byteLength).toBeLessThan(encodeStatus(s).byteLength / 2)
  })

  it('reads an older agent\'s app report (its published web port, no raw ports) and keeps webPort null for older decoders', () => {
    const older = mockStatus({}, { appStates: [{ name: 'hello', state: 'running', revision: 2, webPort: 32768 } as unknown as NodeResources['appStates'][number]] })
    expect(decodeStatus(encodeStatus(older), PEER).resources?.appStates).toEqual([{ name: 'hello', state: 'running', revision: 2, webPort: null }])
    // Agents before the front door call number() on webPort: it must be there, null.
    const sent = JSON.parse(new TextDecoder().decode(encodeStatus(mockStatus()))) as { resources: { appStates: Array<Record<string, unknown>> } }
    expect(sent.resources.appStates[0]).toHaveProperty('webPort', null)
    const badPort = mockStatus({}, { appStates: [{ name: 'dns', state: 'running', revision: 1, ports: [{ port: 53, protocol: 'sctp' }], webPort: null } as unknown as NodeResources['appStates'][number]] })
    expect(dropReason(encodeStatus(badPort), PEER)).toBe('malformed')
  })

  it.each([
    ['garbage bytes', new Uint8Array([0xff, 0xfe, 0x00, 0x13]), 'malformed'],
    ['not JSON', new TextEncoder().encode('hello'), 'malformed'],
    ['JSON but not an object', bytes([1, 2, 3]), 'malformed'],
    ['oversized', new Uint8Array(STATUS_MAX_BYTES + 1).fill(0x20), 'oversized'],
    ['wrong version', bytes({ ...mockStatus(), v: 2 }), 'version'],
    ['missing version', bytes({ ...mockStatus(), v: undefined }), 'version'],
    ['claims another peer', bytes(mockStatus({ peerId: OTHER })), 'forged'],
    ['negative memory', bytes(mockStatus({}, { mem: { total: -1, free: 0 } })), 'malformed'],
    ['free above total', bytes(mockStatus({}, { mem: { total: 10, free: 11 } })), 'malformed'],
    ['load above 100', bytes(mockStatus({}, { cpu: { cores: 2, load: 101 } })), 'malformed'],
    ['name with spaces', bytes(mockStatus({ name: 'my node' })), 'malformed'],
    ['too many apps', bytes(mockStatus({}, { apps: Array.from({ length: 300 }, (_, i) => `a${i}`) })), 'malformed'],
    ['label key injection', bytes(mockStatus({}, { labels: { 'a b': 'x' } })), 'malformed'],
    ['resources not an object', bytes({ ...mockBeat(), resources: 'plenty' }), 'malformed'],
    ['heartbeat too fast', bytes(mockStatus({ intervalMs: 1 })), 'malformed'],
    ['NaN smuggled as string', bytes({ ...mockStatus(), seq: 'NaN' }), 'malformed']
  ])('drops %s as %s', (_name, data, reason) => {
    expect(dropReason(data, PEER)).toBe(reason)
  })

  it('drops unsigned messages', () => {
    expect(dropReason(encodeStatus(mockStatus()), undefined)).toBe('unsigned')
  })

  it('names the offending field', () => {
    expect(() => decodeStatus(bytes(mockStatus({}, { diskFree: -5 })), PEER)).toThrow(/status\.resources\.diskFree/)
  })

  it('never throws anything but StatusDropError on arbitrary bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 2048 }), (data) => {
      try {
        decodeStatus(data, PEER)
      } catch (err) {
        return err instanceof StatusDropError
      }
      return true
    }), { numRuns: 2000 })
  })

  it('never throws anything but StatusDropError on arbitrary JSON', () => {
    fc.assert(fc.property(fc.jsonValue(), (value) => {
      try {
        decodeStatus(bytes(value), PEER)
      } catch (err) {
        return err instanceof StatusDropError
      }
      return true
    }), { numRuns: 2000 })
  })
})
