/**
 * The ACME issuer's decisions (scheduler/certificates.ts): when a
 * certificate is renewed (two thirds of its lifetime, or not valid now),
 * the backoff after failures, and which hosts need one; and ACME's part of
 * the replicated state (proto/acme.ts): decoded by field, applied by the log.
 */
import { describe, expect, it } from 'vitest'
import { certificatePlan, renewalDue, retryAfterMs, wantedHosts } from '../../scheduler/certificates.ts'
import { decodeAcmeSettings, decodeChallenges } from '../../proto/acme.ts'
import { decodeChange, decodeDesiredState } from '../../proto/cluster.ts'
import { EMPTY_STATE, applyChange } from '../../agent/cluster/desired-store.ts'

const DAY = 86_400_000
const T0 = Date.UTC(2026, 0, 1)

describe('renewalDue', () => {
  it('renews at two thirds of the lifetime, not before', () => {
    const nb = T0
    const na = T0 + 90 * DAY
    expect(renewalDue(T0, nb, na)).toBe(false)
    expect(renewalDue(T0 + 59 * DAY, nb, na)).toBe(false)
    expect(renewalDue(T0 + 60 * DAY - 1, nb, na)).toBe(false)
    expect(renewalDue(T0 + 60 * DAY, nb, na)).toBe(true)
    expect(renewalDue(T0 + 89 * DAY, nb, na)).toBe(true)
  })
  it('renews an expired certificate at once, but not one valid only later (this clock is behind: another would be too)', () => {
    expect(renewalDue(T0 + 90 * DAY, T0, T0 + 90 * DAY)).toBe(true)
    expect(renewalDue(T0 + 400 * DAY, T0, T0 + 90 * DAY)).toBe(true)
    expect(renewalDue(T0 - 1, T0, T0 + 90 * DAY)).toBe(false)
    expect(renewalDue(T0 - 400 * DAY, T0, T0 + 90 * DAY)).toBe(false)
  })
  it('scales with the lifetime: a 6-day certificate at day 4', () => {
    expect(renewalDue(T0 + 4 * DAY - 1, T0, T0 + 6 * DAY)).toBe(false)
    expect(renewalDue(T0 + 4 * DAY, T0, T0 + 6 * DAY)).toBe(true)
  })
})

describe('retryAfterMs', () => {
  it('doubles from 30 s up to 6 h', () => {
    expect([1, 2, 3, 4].map(retryAfterMs)).toEqual([30_000, 60_000, 120_000, 240_000])
    expect(retryAfterMs(30)).toBe(6 * 3_600_000)
  })
})

describe('wantedHosts and certificatePlan', () => {
  it('wants the bare domain and each app with a web UI whose name is not reserved', () => {
    expect(wantedHosts('a.example.org', [{ name: 'notes', web: { port: 80 } }, { name: 'db', web: null }, { name: 'auth', web: { port: 1 } }, { name: 'blog', web: { port: 8080 } }]))
      .toEqual(['a.example.org', 'blog.a.example.org', 'notes.a.example.org'])
  })
  it('keeps a valid certificate, orders a missing or due one, waits out the backoff', () => {
    const hosts = ['a.org', 'x.a.org', 'y.a.org', 'z.a.org', 'w.a.org']
    const held = new Map([
      ['a.org', { notBefore: T0, notAfter: T0 + 90 * DAY, names: ['a.org'] }],
      ['x.a.org', { notBefore: T0 - 80 * DAY, notAfter: T0 + 10 * DAY, names: ['x.a.org'] }],
      ['w.a.org', { notBefore: T0, notAfter: T0 + 90 * DAY, names: ['other.a.org'] }]
    ])
    const failures = new Map([['z.a.org', { count: 2, lastAt: T0 - 10_000 }], ['y.a.org', { count: 1, lastAt: T0 - 31_000 }]])
    expect(certificatePlan(hosts, held, failures, T0)).toEqual([
      { host: 'a.org', action: 'keep', renewAt: T0 + 60 * DAY },
      { host: 'x.a.org', action: 'order', reason: 'two thirds of its lifetime passed' },
      { host: 'y.a.org', action: 'order', reason: 'no certificate yet' },
      { host: 'z.a.org', action: 'wait', reason: `2 failed attempt(s); next at ${new Date(T0 + 50_000).toISOString()}`, until: T0 + 50_000 },
      { host: 'w.a.org', action: 'order', reason: 'the certificate held does not name it' }
    ])
  })
})

describe('ACME in the replicated state (proto/acme.ts)', () => {
  const token = 'T'.repeat(43)
  const auth = `${token}.${'k'.repeat(43)}`
  const err = (fn: () => unknown): string => { try { fn() } catch (e) { return (e as Error).message } return 'accepted' }

  it('takes a CA by its https directory, an optional contact and root', () => {
    expect(decodeAcmeSettings({ directory: 'https://acme-v02.api.letsencrypt.org/directory', email: 'me@alice.example.org' })).toEqual({ directory: 'https://acme-v02.api.letsencrypt.org/directory', email: 'me@alice.example.org', caRootPem: null })
    expect(err(() => decodeAcmeSettings({ directory: 'http://acme.example.org/dir' }))).toBe('acme.directory: must be an https:// URL (RFC 8555 requires HTTPS)')
    expect(err(() => decodeAcmeSettings({ directory: 'acme.example.org' }))).toMatch(/^acme\.directory: "acme\.example\.org" is not a URL/)
    expect(err(() => decodeAcmeSettings({ directory: 'https://u:p@acme.example.org/dir' }))).toBe('acme.directory: must not carry a user name or password')
    expect(err(() => decodeAcmeSettings({ directory: 'https://acme.example.org/dir', email: 'not an address' }))).toMatch(/^acme\.email/)
    expect(err(() => decodeAcmeSettings({ directory: 'https://acme.example.org/dir', caRootPem: 'x'.repeat(100) }))).toMatch(/^acme\.caRootPem/)
  })

  it('takes HTTP-01 answers only as token.thumbprint of their own token', () => {
    expect(decodeChallenges({ [token]: auth })).toEqual({ [token]: auth })
    expect(err(() => decodeChallenges({ 'a/b': auth }))).toMatch(/is not an ACME token/)
    expect(err(() => decodeChallenges({ ['U'.repeat(43)]: auth }))).toMatch(/does not start with its token/)
    expect(err(() => decodeChange({ kind: 'challenge', token, keyAuthorization: '<script>' }))).toMatch(/^change\.keyAuthorization/)
    expect(decodeChange({ kind: 'challenge', token, keyAuthorization: null })).toEqual({ kind: 'challenge', token, keyAuthorization: null })
  })

  it('round-trips a state with ACME, challenges and a failure through the decoder and the log', () => {
    let state = EMPTY_STATE
    const apply = (c: unknown): void => { state = decodeDesiredState(JSON.parse(JSON.stringify(applyChange(state, decodeChange(c), { index: state.revision + 1, term: 1 })))) }
    apply({ kind: 'acme', acme: { directory: 'https://acme.example.org/dir', email: null, caRootPem: null } })
    apply({ kind: 'challenge', token, keyAuthorization: auth })
    apply({ kind: 'acme-failure', failure: { message: 'refused', at: 5, host: 'a.example.org' } })
    expect(state).toMatchObject({ acme: { directory: 'https://acme.example.org/dir' }, challenges: { [token]: auth }, acmeFailure: { message: 'refused', host: 'a.example.org' } })
    apply({ kind: 'challenge', token, keyAuthorization: null })
    // New settings clear the failure (they are tried at once).
    apply({ kind: 'acme', acme: { directory: 'https://other.example.org/dir', email: null, caRootPem: null } })
    expect(state.challenges).toBeUndefined()
    expect(state.acmeFailure).toBeUndefined()
    apply({ kind: 'acme', acme: null })
    expect(state.acme).toBeUndefined()
    expect(err(() => decodeChange({ kind: 'acme-failure', failure: { message: 1, at: 0, host: '' } }))).toMatch(/^change\.failure\.message/)
  })
})
