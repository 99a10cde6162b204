/**
 * The runtime's wire and pure logic: image references, the image-transfer
 * messages (hostile input included), spec hashes, start order, Docker's log
 * framing and state mapping.
 */
import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import type Docker from 'dockerode'
import {
  IMAGE_REQUEST_MAX_BYTES, appState, decodeImageHeader, decodeImageHeaderBytes, decodeImageRequest, decodeImageRequestBytes,
  encodeJson, isImageRef, isRegistryRef
} from '../../proto/runtime.ts'
import { demuxDockerLog, desiredSpecs, normaliseService, serviceState, specHash, startOrder } from '../../agent/runtime/apps.ts'
import { lengthPrefixed } from '../../agent/runtime/image-transfer.ts'
import { serviceDefaults, type ComposeService } from '../../proto/app.ts'
import type { DesiredApp } from '../../proto/plan.ts'

function svc (over: Partial<ComposeService> = {}): ComposeService {
  return {
    image: 'nginx:1.27', command: null, entrypoint: null, environment: {}, ports: [], volumes: [], healthcheck: null,
    dependsOn: [], restart: 'unless-stopped', labels: {}, user: null, ...serviceDefaults(), ...over
  }
}

describe('image references', () => {
  it.each([
    'nginx', 'nginx:1.27', 'library/nginx:latest', 'dcloud/busybox:lab', 'ghcr.io/owner/app:v1.2.3',
    'registry.lan:5000/team/app', 'localhost:5000/app:dev', 'localhost/app', 'a/b/c/d:tag_1.0-x',
    `nginx@sha256:${'a'.repeat(64)}`, `ghcr.io/o/a:1@sha256:${'b'.repeat(64)}`, 'my-app__x.y:1'
  ])('accepts %s', (ref) => {
    expect(isImageRef(ref)).toBe(true)
    expect(() => decodeImageRequest({ ref })).not.toThrow()
  })

  it.each([
    '', '-v', '--help', '../../etc/passwd', '/abs/path', 'UPPER/case', 'Nginx', 'nginx:', 'nginx:-tag', 'a b', 'a\nb',
    'nginx:tag:tag', 'ghcr.io/', 'app/', 'a//b', `a:${'x'.repeat(129)}`, 'x'.repeat(256), 'nginx@sha256:short', 'a..b', '.hidden'
  ])('refuses %j', (ref) => {
    expect(isImageRef(ref)).toBe(false)
    expect(() => decodeImageRequest({ ref })).toThrow(/request\.ref/)
  })

  it('knows which references a registry could serve', () => {
    expect(isRegistryRef('nginx:1.27')).toBe(true)
    expect(isRegistryRef('ghcr.io/owner/app:1')).toBe(true)
    expect(isRegistryRef('registry.lan:5000/app')).toBe(true)
    expect(isRegistryRef('dcloud/busybox:lab')).toBe(false)
    expect(isRegistryRef('localhost:5000/app')).toBe(false)
    expect(isRegistryRef('localhost/app')).toBe(false)
    expect(isRegistryRef('-v')).toBe(false)
  })

  it('never accepts whitespace, control characters or a leading dash, whatever the input', () => {
    fc.assert(fc.property(fc.string({ maxLength: 300 }), (s) => {
      if (isImageRef(s)) {
        expect(s).not.toMatch(/[\s\0-\x1f]/)
        expect(s.startsWith('-')).toBe(false)
        expect(s.length).toBeLessThanOrEqual(255)
      }
    }))
  })
})

describe('image transfer messages', () => {
  it('decodes a request and refuses oversized, non-JSON and non-object input', () => {
    expect(decodeImageRequestBytes(encodeJson({ ref: 'nginx:1', extra: 1 }))).toEqual({ ref: 'nginx:1' })
    expect(() => decodeImageRequestBytes(new Uint8Array(IMAGE_REQUEST_MAX_BYTES + 1))).toThrow(/limit/)
    expect(() => decodeImageRequestBytes(new Uint8Array([0xde, 0xad, 0xbe, 0xef]))).toThrow(/UTF-8|JSON/)
    expect(() => decodeImageRequestBytes(encodeJson(['nginx']))).toThrow(/request/)
    expect(() => decodeImageRequestBytes(encodeJson({ ref: 42 }))).toThrow(/request\.ref/)
  })

  it('decodes headers, mapping unknown error codes to failed', () => {
    expect(decodeImageHeader({ ok: true })).toEqual({ ok: true })
    expect(decodeImageHeader({ ok: true, size: 1234 })).toEqual({ ok: true, size: 1234 })
    expect(decodeImageHeader({ ok: false, error: { code: 'not_found', message: 'no' } })).toEqual({ ok: false, error: { code: 'not_found', message: 'no' } })
    expect(decodeImageHeader({ ok: false, error: { code: 'weird', message: 'hm' } })).toEqual({ ok: false, error: { code: 'failed', message: 'hm' } })
    expect(() => decodeImageHeader({ ok: true, size: -1 })).toThrow(/header\.size/)
    expect(() => decodeImageHeader({ ok: 'yes' })).toThrow(/header\.ok/)
    expect(() => decodeImageHeader({ ok: false })).toThrow(/header\.error/)
    expect(() => decodeImageHeaderBytes(new Uint8Array(5000))).toThrow(/limit/)
  })

  it('length prefixes are unsigned varints', () => {
    expect([...lengthPrefixed(new Uint8Array(3))]).toEqual([3, 0, 0, 0])
    expect([...lengthPrefixed(new Uint8Array(300)).subarray(0, 2)]).toEqual([0xac, 0x02])
    expect(lengthPrefixed(new Uint8Array(128)).length).toBe(130)
  })
})

describe('service specs', () => {
  it('hash the same whatever the order of keys, environment, labels and ports', () => {
    const a = svc({ environment: { A: '1', B: '2' }, labels: { x: '1', y: '2' }, ports: [{ host: 80, container: 80, protocol: 'tcp' }, { host: null, container: 53, protocol: 'udp' }] })
    const b = svc({ labels: { y: '2', x: '1' }, environment: { B: '2', A: '1' }, ports: [{ host: null, container: 53, protocol: 'udp' }, { host: 80, container: 80, protocol: 'tcp' }] })
    expect(specHash('app', a)).toBe(specHash('app', b))
    expect(specHash('app', a)).toMatch(/^[0-9a-f]{64}$/)
  })

  it('change with anything that changes the container, and only with that', () => {
    const base = svc({ dependsOn: ['db'] })
    const h = specHash('app', base)
    for (const changed of [
      svc({ image: 'nginx:1.28' }), svc({ command: ['x'] }), svc({ entrypoint: ['sh'] }), svc({ environment: { A: '1' } }),
      svc({ ports: [{ host: null, container: 80, protocol: 'tcp' }] }), svc({ volumes: [{ source: 'data', target: '/d', kind: 'volume', readOnly: false }] }),
      svc({ healthcheck: { test: ['CMD', 'true'], intervalMs: 1, timeoutMs: 1, retries: 1, startPeriodMs: 0 } }),
      svc({ restart: 'always' }), svc({ labels: { a: 'b' } }), svc({ user: '1000' })
    ]) expect(specHash('app', changed)).not.toBe(h)
    // depends_on orders the start; it changes no container.
    expect(specHash('app', svc())).toBe(h)
    // The same service in another app instance mounts other volumes and joins another network.
    expect(specHash('other', base)).not.toBe(h)
    expect(normaliseService('app', svc({ volumes: [{ source: 'data', target: '/d', kind: 'volume', readOnly: true }] })).mounts).toEqual([['volume', 'dcloud-app-data', '/d', true]])
  })

  it('keeps the hash of a service that uses none of the later keys (no recreation on upgrade), and changes it with each', () => {
    // The normalised form of a plain service has only the first release's keys.
    expect(Object.keys(normaliseService('app', svc())).sort()).toEqual(['command', 'entrypoint', 'environment', 'healthcheck', 'image', 'labels', 'mounts', 'network', 'ports', 'restart', 'user'])
    const h = specHash('app', svc())
    const configs = { c: { content: 'one' } }
    const changed = [
      svc({ workingDir: '/srv' }), svc({ tty: true }), svc({ stdinOpen: true }), svc({ shmSizeBytes: 1 << 20 }),
      svc({ tmpfs: [{ target: '/run', options: [] }] }), svc({ readOnly: true }), svc({ capDrop: ['NET_RAW'] }),
      svc({ ulimits: { nofile: { soft: 1, hard: 2 } } }), svc({ extraHosts: [{ host: 'a', address: '10.0.0.1' }] }),
      svc({ noNewPrivileges: true }), svc({ configs: [{ source: 'c', target: '/c', mode: 0o444 }] })
    ].map(s => specHash('app', s, configs))
    expect(new Set([h, ...changed]).size).toBe(changed.length + 1)
    // A config's text is part of the spec: new text, new container.
    const mounted = svc({ configs: [{ source: 'c', target: '/c', mode: 0o444 }] })
    expect(specHash('app', mounted, { c: { content: 'two' } })).not.toBe(specHash('app', mounted, configs))
    expect(() => specHash('app', mounted, {})).toThrow(/config c is mounted but not part of the app/)
  })

  it('desiredSpecs gives the hash per service', () => {
    const app = { name: 'a', pinnedNode: null, revision: 1, manifest: { compose: { services: { web: svc(), db: svc({ image: 'postgres:16' }) }, volumes: {} } } } as unknown as DesiredApp
    expect(desiredSpecs(app)).toEqual({ web: specHash('a', svc()), db: specHash('a', svc({ image: 'postgres:16' })) })
  })
})

describe('start order', () => {
  it('puts dependencies first, deterministically', () => {
    expect(startOrder({ web: svc({ dependsOn: ['api'] }), api: svc({ dependsOn: ['db', 'cache'] }), db: svc(), cache: svc() })).toEqual(['cache', 'db', 'api', 'web'])
  })

  it('names a cycle and a missing dependency', () => {
    expect(() => startOrder({ a: svc({ dependsOn: ['b'] }), b: svc({ dependsOn: ['a'] }) })).toThrow(/cycle: a -> b -> a/)
    expect(() => startOrder({ a: svc({ dependsOn: ['ghost'] }) })).toThrow(/a depends on ghost, which the app does not define/)
  })
})

describe('docker log framing', () => {
  const frame = (stream: number, text: string): Buffer => {
    const payload = Buffer.from(text)
    const header = Buffer.alloc(8)
    header[0] = stream
    header.writeUInt32BE(payload.length, 4)
    return Buffer.concat([header, payload])
  }

  it('splits stdout and stderr frames', () => {
    expect(demuxDockerLog(Buffer.concat([frame(1, 'out\n'), frame(2, 'err\n'), frame(1, '')]))).toEqual([
      { stream: 'stdout', text: 'out\n' }, { stream: 'stderr', text: 'err\n' }, { stream: 'stdout', text: '' }
    ])
  })

  it('keeps raw (TTY) output and a truncated tail as text', () => {
    expect(demuxDockerLog(Buffer.from('plain text\n'))).toEqual([{ stream: 'stdout', text: 'plain text\n' }])
    const cut = Buffer.concat([frame(1, 'whole\n'), frame(2, 'partial').subarray(0, 10)])
    expect(demuxDockerLog(cut)[0]).toEqual({ stream: 'stdout', text: 'whole\n' })
    expect(demuxDockerLog(cut)).toHaveLength(2)
  })

  it('never throws on arbitrary bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => { demuxDockerLog(Buffer.from(bytes)) }))
  })
})

describe('states', () => {
  const st = (over: Partial<Docker.ContainerInspectInfo['State']>): Docker.ContainerInspectInfo['State'] => ({
    Status: 'running', Running: true, Paused: false, Restarting: false, OOMKilled: false, Dead: false, Pid: 1, ExitCode: 0, Error: '', StartedAt: '', FinishedAt: '', ...over
  })

  it.each([
    [{}, 'running', 'none'],
    [{ Health: { Status: 'healthy', FailingStreak: 0, Log: [] } }, 'running', 'healthy'],
    [{ Health: { Status: 'starting', FailingStreak: 0, Log: [] } }, 'starting', 'starting'],
    [{ Health: { Status: 'unhealthy', FailingStreak: 3, Log: [] } }, 'failed', 'unhealthy'],
    [{ Status: 'created' }, 'starting', 'none'],
    [{ Status: 'created', Error: 'port is already allocated' }, 'failed', 'none'],
    [{ Status: 'restarting' }, 'failed', 'none'],
    [{ Status: 'exited', ExitCode: 0 }, 'stopped', 'none'],
    [{ Status: 'exited', ExitCode: 143 }, 'stopped', 'none'],
    [{ Status: 'exited', ExitCode: 137, OOMKilled: true }, 'failed', 'none'],
    [{ Status: 'exited', ExitCode: 1 }, 'failed', 'none'],
    [{ Status: 'paused' }, 'running', 'none'],
    [{ Status: 'dead' }, 'failed', 'none']
  ] as const)('container %j is %s (health %s)', (over, state, health) => {
    expect(serviceState(st(over as Partial<Docker.ContainerInspectInfo['State']>))).toEqual({ state, health })
  })

  it('forgives an unhealthy verdict just after a snapshot\'s pause, and nothing else', () => {
    const unhealthy = st({ Health: { Status: 'unhealthy', FailingStreak: 3, Log: [] } })
    expect(serviceState(unhealthy, true)).toEqual({ state: 'running', health: 'unhealthy' })
    expect(serviceState(unhealthy, false)).toEqual({ state: 'failed', health: 'unhealthy' })
    expect(serviceState(st({ Status: 'exited', ExitCode: 1 }), true)).toEqual({ state: 'failed', health: 'none' })
  })

  it('combine into the app state', () => {
    expect(appState([])).toBe('stopped')
    expect(appState([{ state: 'running' }, { state: 'running' }])).toBe('running')
    expect(appState([{ state: 'running' }, { state: 'starting' }])).toBe('starting')
    expect(appState([{ state: 'stopped' }, { state: 'stopped' }])).toBe('stopped')
    expect(appState([{ state: 'running' }, { state: 'stopped' }])).toBe('failed')
    expect(appState([{ state: 'starting' }, { state: 'stopped' }])).toBe('starting')
    expect(appState([{ state: 'running' }, { state: 'failed' }])).toBe('failed')
  })
})
