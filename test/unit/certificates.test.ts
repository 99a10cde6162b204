/**
 * The ACME issuer's decisions (scheduler/certificates.ts): when a
 * certificate is renewed (two thirds of its lifetime, or not valid now),
 * the backoff after failures, and which hosts need one.
 */
import { describe, expect, it } from 'vitest'
import { certificatePlan, renewalDue, retryAfterMs, wantedHosts } from '../../scheduler/certificates.ts'

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
  it('renews a certificate that is not valid now: expired, or not valid yet', () => {
    expect(renewalDue(T0 + 90 * DAY, T0, T0 + 90 * DAY)).toBe(true)
    expect(renewalDue(T0 + 400 * DAY, T0, T0 + 90 * DAY)).toBe(true)
    expect(renewalDue(T0 - 1, T0, T0 + 90 * DAY)).toBe(true)
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
