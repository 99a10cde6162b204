/**
 * Decoding what users and peers send about an app's storage and the
 * cluster's domain: a bad value is refused by field, before it reaches the
 * desired state.
 */
import { describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { loadApp } from '../../apps/catalog.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { decodeAppendRequest, decodeChange, decodeDesiredState, decodeOpRequest, decodeStorage, decodeVoteRequest } from '../../proto/cluster.ts'

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

describe('install changes carry storage through the decoder', () => {
  it('keeps good ones and refuses bad ones by field', async () => {
    const { manifest } = await loadApp(join(PROJECT_ROOT, 'apps', 'examples', 'notes'))
    const app = { name: 'notes2', manifest, pinnedNode: null }
    const ok = decodeChange({ kind: 'install', app: { ...app, storage: { hostPath: '/srv/dcloud' } } })
    expect(ok).toMatchObject({ kind: 'install', app: { name: 'notes2', storage: { hostPath: '/srv/dcloud' } } })
    const plain = decodeChange({ kind: 'install', app })
    expect(plain.kind === 'install' && 'storage' in plain.app).toBe(false)
    expect(() => decodeChange({ kind: 'install', app: { ...app, storage: { hostPath: '/etc' } } })).toThrow(/change\.app\.storage\.hostPath: .*system directory/)
  })

  it('drops the per-app domain of older peers and states: one naming scheme, NAME.DOMAIN', async () => {
    const { manifest } = await loadApp(join(PROJECT_ROOT, 'apps', 'examples', 'notes'))
    const old = decodeChange({ kind: 'install', app: { name: 'notes2', manifest, pinnedNode: null, domain: 'notes.example.org' } })
    expect(old.kind === 'install' && 'domain' in old.app).toBe(false)
    const state = decodeDesiredState({ revision: 3, term: 1, apps: [{ name: 'notes2', manifest, pinnedNode: null, revision: 3, domain: 'notes.example.org' }] })
    expect('domain' in (state.apps[0] ?? {})).toBe(false)
  })
})

describe('the cluster\'s domain in changes and states', () => {
  it('decodes a domain change, and null back to the LAN default', () => {
    expect(decodeChange({ kind: 'domain', domain: 'Alice.Example.org.' })).toEqual({ kind: 'domain', domain: 'alice.example.org' })
    expect(decodeChange({ kind: 'domain', domain: null })).toEqual({ kind: 'domain', domain: null })
    expect(() => decodeChange({ kind: 'domain', domain: 'printer.local' })).toThrow(/change\.domain: .*mDNS/)
    expect(() => decodeChange({ kind: 'domain', domain: 42 })).toThrow(/change\.domain/)
  })

  it('keeps the domain in the replicated state, and refuses a bad one there too', () => {
    expect(decodeDesiredState({ revision: 1, term: 1, apps: [], domain: 'alice.example.org' }).domain).toBe('alice.example.org')
    expect('domain' in decodeDesiredState({ revision: 1, term: 1, apps: [] })).toBe(false)
    expect(() => decodeDesiredState({ revision: 1, term: 1, apps: [], domain: 'x' })).toThrow(/desired\.domain/)
  })
})

describe('sync operations name the snapshot to stage', () => {
  const from = '12D3KooW' + 'A'.repeat(44)

  it('decodes with and without it (an older leader sends none)', () => {
    const base = { term: 3, leader: from, op: { kind: 'sync', name: 'notes', from } }
    expect(decodeOpRequest(base).op).toEqual({ kind: 'sync', name: 'notes', from, snapshot: null })
    expect(decodeOpRequest({ ...base, op: { ...base.op, snapshot: 'abcdef12' } }).op).toEqual({ kind: 'sync', name: 'notes', from, snapshot: 'abcdef12' })
    expect(() => decodeOpRequest({ ...base, op: { ...base.op, snapshot: '../x' } })).toThrow(/snapshot/)
    // The room a move's restore needs on the target: optional, a non-negative integer.
    expect(decodeOpRequest({ ...base, op: { ...base.op, restoreBytes: 83886080 } }).op).toEqual({ kind: 'sync', name: 'notes', from, snapshot: null, restoreBytes: 83886080 })
    for (const bad of [-1, 1.5, '10', Number.MAX_SAFE_INTEGER * 2]) expect(() => decodeOpRequest({ ...base, op: { ...base.op, restoreBytes: bad } })).toThrow(/restoreBytes/)
  })
})

describe('log appends are refused by shape before anyone reads them', () => {
  const LEADER = '12D3KooWFi8L9725trCzbPFxZuGGGW5HEaLdcc1AqbRwuJGWDk2Y'
  const base = { term: 3, leader: LEADER, prevIndex: 4, prevTerm: 2, commit: 4 }
  const noop = (index: number, term: number): { index: number, term: number, change: null } => ({ index, term, change: null })
  it('takes contiguous entries after prevIndex with terms that never decrease', () => {
    expect(decodeAppendRequest({ ...base, entries: [noop(5, 2), noop(6, 3)] }).entries).toHaveLength(2)
    expect(decodeAppendRequest({ ...base, entries: [] }).entries).toEqual([])
  })
  it.each([
    ['a gap', [noop(5, 3), noop(7, 3)], /without gaps/],
    ['an entry before prevIndex', [noop(4, 3)], /without gaps/],
    ['terms going backwards', [noop(5, 3), noop(6, 2)], /must not decrease/],
    ['a term older than prevTerm', [noop(5, 1)], /must not decrease/],
    ['a term past the request\'s', [noop(5, 4)], /not exceed/],
    ['a change that is not one', [{ index: 5, term: 3, change: { kind: 'wipe' } }], /change.kind/]
  ])('refuses %s', (_what, entries, message) => {
    expect(() => decodeAppendRequest({ ...base, entries })).toThrow(message)
  })
  it('refuses a snapshot that contradicts itself or the entries after it', () => {
    const state = { revision: 4, term: 2, apps: [] }
    expect(decodeAppendRequest({ ...base, entries: [], snapshot: { index: 4, term: 2, state } }).snapshot?.index).toBe(4)
    expect(() => decodeAppendRequest({ ...base, entries: [], snapshot: { index: 4, term: 2, state: { ...state, revision: 9 } } })).toThrow(/revision and term/)
    expect(() => decodeAppendRequest({ ...base, prevIndex: 3, entries: [], snapshot: { index: 4, term: 2, state } })).toThrow(/follow it/)
  })
  it('votes name the candidate\'s log', () => {
    expect(decodeVoteRequest({ term: 2, candidate: LEADER, lastLogTerm: 1, lastLogIndex: 9, preVote: true })).toMatchObject({ lastLogTerm: 1, lastLogIndex: 9 })
    expect(() => decodeVoteRequest({ term: 2, candidate: LEADER, lastLogTerm: -1, lastLogIndex: 9 })).toThrow(/lastLogTerm/)
  })
})
