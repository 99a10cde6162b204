/**
 * The cluster CA (agent/frontdoor/ca.ts): derived from the cluster key alone,
 * the same bytes on every node, verified by Node's X.509 code and by
 * `openssl verify -x509_strict`, name-constrained to the domain.
 */
import { describe, expect, it } from 'vitest'
import { X509Certificate, createPublicKey } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ClusterTls, SERVING_DAYS, SERVING_STEP_DAYS, clusterCa, clusterSecret, deriveRsaKey, servingCertificate } from '../../agent/frontdoor/ca.ts'
import { newClusterKey } from '../../agent/mesh/cluster-key.ts'

const KEY_A = Buffer.alloc(32, 1)
const KEY_B = Buffer.alloc(32, 2)
const NOW = Date.parse('2026-12-07T12:00:00Z')
const DAY = 86_400_000

describe('the cluster CA', () => {
  it('is a pure function of the key: two nodes derive the same root and serving certificate, byte for byte', async () => {
    const one = new ClusterTls(KEY_A)
    const two = new ClusterTls(Buffer.from(KEY_A))
    expect((await one.root('dcloud.home.arpa')).rootPem).toBe((await two.root('dcloud.home.arpa')).rootPem)
    expect(await one.serve('dcloud.home.arpa', NOW)).toEqual(await two.serve('dcloud.home.arpa', NOW + 3600_000))
  })

  it('differs for another key: another key, another root, and its certificates do not verify against ours', async () => {
    const a = new ClusterTls(KEY_A)
    const b = new ClusterTls(KEY_B)
    const rootA = new X509Certificate((await a.root('dcloud.home.arpa')).rootPem)
    const leafB = new X509Certificate((await b.serve('dcloud.home.arpa', NOW)).certPem)
    expect((await a.root('dcloud.home.arpa')).fingerprint).not.toBe((await b.root('dcloud.home.arpa')).fingerprint)
    expect(createPublicKey(await deriveRsaKey(KEY_A, 'ca')).export({ format: 'jwk' }).n).not.toBe(createPublicKey(await deriveRsaKey(KEY_B, 'ca')).export({ format: 'jwk' }).n)
    expect(leafB.verify(rootA.publicKey)).toBe(false)
    expect(leafB.checkIssued(rootA)).toBe(false)
  })

  it('issues a wildcard serving certificate that verifies against the root, for the domain and one label below', async () => {
    const t = new ClusterTls(KEY_A)
    const root = new X509Certificate((await t.root('alice.example.org')).rootPem)
    const leaf = new X509Certificate((await t.serve('alice.example.org', NOW)).certPem)
    expect(leaf.verify(root.publicKey)).toBe(true)
    expect(leaf.checkIssued(root)).toBe(true)
    expect(root.ca).toBe(true)
    expect(leaf.ca).toBe(false)
    expect(leaf.checkHost('notes.alice.example.org')).toBe('*.alice.example.org')
    expect(leaf.checkHost('alice.example.org')).toBe('alice.example.org')
    expect(leaf.checkHost('a.b.alice.example.org')).toBeUndefined()
    expect(leaf.checkHost('notes.bob.example.org')).toBeUndefined()
    expect(leaf.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1'])
  })

  it('passes openssl verify -x509_strict, and its name constraint refuses a certificate for another domain', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dcloud-ca-'))
    try {
      const ca = clusterCa('alice.example.org', await deriveRsaKey(KEY_A, 'ca'))
      const servingKey = await deriveRsaKey(KEY_A, 'serving')
      const good = servingCertificate(ca, servingKey, NOW)
      // A certificate for another domain signed by the same CA key: what the name constraint is for.
      const rogue = servingCertificate(ca, servingKey, NOW, ['bank.example.com'])
      writeFileSync(join(dir, 'root.pem'), ca.rootPem)
      writeFileSync(join(dir, 'good.pem'), good.certPem)
      writeFileSync(join(dir, 'rogue.pem'), rogue.certPem)
      const at = String(Math.floor(NOW / 1000))
      expect(execFileSync('openssl', ['verify', '-x509_strict', '-attime', at, '-CAfile', join(dir, 'root.pem'), join(dir, 'good.pem')], { encoding: 'utf8' })).toMatch(/good\.pem: OK/)
      let out = ''
      try { execFileSync('openssl', ['verify', '-x509_strict', '-attime', at, '-CAfile', join(dir, 'root.pem'), join(dir, 'rogue.pem')], { encoding: 'utf8', stdio: 'pipe' }) } catch (err) { out = String((err as { stderr?: unknown, stdout?: unknown }).stdout) + String((err as { stderr?: unknown }).stderr) }
      expect(out).toMatch(/permitted subtree violation|name constraints/i)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  it('keeps the CA key when the domain changes, and gives the root a new name constraint', async () => {
    const t = new ClusterTls(KEY_A)
    const lan = await t.root('dcloud.home.arpa')
    const pub = await t.root('alice.example.org')
    expect(new X509Certificate(lan.rootPem).publicKey.export({ format: 'jwk' })).toEqual(new X509Certificate(pub.rootPem).publicKey.export({ format: 'jwk' }))
    expect(lan.rootPem).not.toBe(pub.rootPem)
  })

  it('replaces the serving certificate every step, valid long before and after, and under iOS\'s 825 days', async () => {
    const t = new ClusterTls(KEY_A)
    for (let now = NOW; now < NOW + 3 * SERVING_STEP_DAYS * DAY; now += 17 * DAY) {
      const c = await t.serve('dcloud.home.arpa', now)
      expect(c.notBefore.getTime()).toBeLessThanOrEqual(now - DAY)
      expect(c.notAfter.getTime()).toBeGreaterThanOrEqual(now + (SERVING_DAYS - SERVING_STEP_DAYS - 1) * DAY)
      expect((c.notAfter.getTime() - c.notBefore.getTime()) / DAY).toBeLessThanOrEqual(825)
    }
    expect((await t.serve('dcloud.home.arpa', NOW)).certPem).not.toBe((await t.serve('dcloud.home.arpa', NOW + SERVING_STEP_DAYS * DAY)).certPem)
  })

  it('reads the secret of a real key file, and refuses text that is not one', () => {
    const key = newClusterKey()
    expect(clusterSecret(key)).toHaveLength(32)
    expect(clusterSecret(key).toString('hex')).toBe(new TextDecoder().decode(key).split('\n')[2])
    expect(() => clusterSecret(new TextEncoder().encode('/key/swarm/psk/1.0.0/\n/base16/\nxyz'))).toThrow(/64 hex digits/)
  })
})
