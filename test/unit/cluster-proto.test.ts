/**
 * Decoding what users and peers send about an app's storage and domain: a
 * bad value is refused by field, before it reaches the desired state.
 */
import { describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { loadApp } from '../../apps/catalog.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { decodeChange, decodeDomain, decodeOpRequest, decodeStorage } from '../../proto/cluster.ts'

describe('app storage (restore --data-dir)', () => {
  it('accepts a plain absolute directory', () => {
    expect(decodeStorage({ hostPath: '/srv/dcloud' })).toEqual({ hostPath: '/srv/dcloud' })
    expect(decodeStorage({ hostPath: '/mnt/usb disk/apps' })).toEqual({ hostPath: '/mnt/usb disk/apps' })
  })

  it.each([
    ['relative', 'srv/dcloud', /absolute/],
    ['dot-dot', '/srv/../etc', /plain absolute path/],
    ['dot', '/srv/./x', /plain absolute path/],
    ['double slash', '/srv//x', /plain absolute path/],
    ['trailing slash', '/srv/x/', /plain absolute path/],
    ['control character', '/srv/x\n', /plain absolute path/],
    ['the root', '/', /system directory/],
    ['/etc', '/etc', /system directory/],
    ['under /etc', '/etc/dcloud', /system directory/],
    ['under /proc', '/proc/1/root', /system directory/],
    ['Docker\'s own data', '/var/lib/docker/volumes', /system directory/],
    ['not a string', 42, /hostPath/]
  ])('refuses %s', (_what, hostPath, why) => {
    expect(() => decodeStorage({ hostPath })).toThrow(why)
  })
})

describe('app domain (restore --domain)', () => {
  it('accepts DNS names of two labels or more', () => {
    expect(decodeDomain('notes.example.org')).toBe('notes.example.org')
    expect(decodeDomain('a-b.home.arpa')).toBe('a-b.home.arpa')
  })

  it.each(['localhost', 'Notes.Example.org', '-x.example.org', 'x..org', 'x.org.', 'x_y.org', 'x.1org', `${'a'.repeat(64)}.org`, 'x.org/path', ''])('refuses %j', (d) => {
    expect(() => decodeDomain(d)).toThrow(/domain/)
  })
})

describe('install changes carry storage and domain through the decoder', () => {
  it('keeps good ones and refuses bad ones by field', async () => {
    const { manifest } = await loadApp(join(PROJECT_ROOT, 'apps', 'examples', 'notes'))
    const app = { name: 'notes2', manifest, pinnedNode: null }
    const ok = decodeChange({ kind: 'install', app: { ...app, storage: { hostPath: '/srv/dcloud' }, domain: 'notes.example.org' } })
    expect(ok).toMatchObject({ kind: 'install', app: { name: 'notes2', storage: { hostPath: '/srv/dcloud' }, domain: 'notes.example.org' } })
    const plain = decodeChange({ kind: 'install', app })
    expect(plain.kind === 'install' && 'storage' in plain.app).toBe(false)
    expect(() => decodeChange({ kind: 'install', app: { ...app, storage: { hostPath: '/etc' } } })).toThrow(/change\.app\.storage\.hostPath: .*system directory/)
    expect(() => decodeChange({ kind: 'install', app: { ...app, domain: 'not a domain' } })).toThrow(/change\.app\.domain/)
  })
})

describe('sync operations name the snapshot to stage', () => {
  const from = '12D3KooW' + 'A'.repeat(44)

  it('decodes with and without it (an older leader sends none)', () => {
    const base = { term: 3, leader: from, op: { kind: 'sync', name: 'notes', from } }
    expect(decodeOpRequest(base).op).toEqual({ kind: 'sync', name: 'notes', from, snapshot: null })
    expect(decodeOpRequest({ ...base, op: { ...base.op, snapshot: 'abcdef12' } }).op).toEqual({ kind: 'sync', name: 'notes', from, snapshot: 'abcdef12' })
    expect(() => decodeOpRequest({ ...base, op: { ...base.op, snapshot: '../x' } })).toThrow(/snapshot/)
  })
})
