/**
 * Replicated secrets (agent/secrets/secrets.ts, proto/secrets.ts): a round
 * trip through seal, the wire's decoder, the log's apply and open; another
 * cluster key refused as such; every altered byte, and a value moved under
 * another name, detected; put/get/delete through a real log applying the
 * changes (applyChange), on a second "node" holding the same key.
 */
import { describe, expect, it } from 'vitest'
import { randomBytes } from 'node:crypto'
import { ReplicatedSecrets, SecretError, openSecret, sealSecret, secretsKey } from '../../agent/secrets/secrets.ts'
import { EMPTY_STATE, applyChange } from '../../agent/cluster/desired-store.ts'
import { decodeChange, decodeDesiredState, type DesiredChange, type DesiredState } from '../../proto/cluster.ts'
import { decodeSealedSecret, SECRET_MAX_BYTES } from '../../proto/secrets.ts'
import { ValidationError } from '../../proto/validate.ts'

const SECRET = randomBytes(32)
const k = secretsKey(SECRET)

function caught (fn: () => unknown): Error {
  try { fn() } catch (err) { return err as Error }
  throw new Error('did not throw')
}

/** A one-node log: each change decoded as a peer's would be, applied, and the state decoded back as from disk. */
function cluster (): { state: () => DesiredState, change: (c: DesiredChange) => Promise<{ revision: number, replicatedTo: number }> } {
  let state = EMPTY_STATE
  return {
    state: () => state,
    change: async (c) => {
      const wire = decodeChange(JSON.parse(JSON.stringify(c)))
      state = decodeDesiredState(JSON.parse(JSON.stringify(applyChange(state, wire, { index: state.revision + 1, term: 1 }))))
      return { revision: state.revision, replicatedTo: 1 }
    }
  }
}

describe('sealing and opening', () => {
  it('opens what it sealed, bytes for bytes, and seals the same value differently each time', () => {
    const plain = randomBytes(3000)
    const a = sealSecret(k, 'tls/notes.example.org', plain)
    const b = sealSecret(k, 'tls/notes.example.org', plain)
    expect(a.data).not.toBe(b.data)
    expect(a.nonce).not.toBe(b.nonce)
    expect(Buffer.from(a.data, 'base64').includes(plain.subarray(0, 16))).toBe(false)
    expect(openSecret(k, 'tls/notes.example.org', decodeSealedSecret(JSON.parse(JSON.stringify(a))))).toEqual(plain)
    expect(openSecret(k, 'e', sealSecret(k, 'e', Buffer.alloc(0)))).toEqual(Buffer.alloc(0))
  })

  it('refuses another cluster\'s key with an error that says so', () => {
    const sealed = sealSecret(k, 'acme/account-key', Buffer.from('key'))
    const other = secretsKey(randomBytes(32))
    const err = caught(() => openSecret(other, 'acme/account-key', sealed))
    expect(err).toBeInstanceOf(SecretError)
    expect((err as SecretError).code).toBe('wrong_key')
    expect(err.message).toMatch(/sealed with another cluster key \(key id [0-9a-f]{16}; this node's is [0-9a-f]{16}\)/)
    // Even with the key id forged to ours, the other key cannot open it: the tag fails.
    expect((caught(() => openSecret(other, 'acme/account-key', { ...sealed, key: other.id })) as SecretError).code).toBe('tampered')
  })

  it('detects any altered byte of the ciphertext, the tag or the nonce, and a value moved under another name', () => {
    const sealed = sealSecret(k, 'people/alice/totp', Buffer.from('JBSWY3DPEHPK3PXP'))
    const data = Buffer.from(sealed.data, 'base64')
    for (let i = 0; i < data.length; i++) {
      const bad = Buffer.from(data)
      bad[i] = (bad[i] ?? 0) ^ 0x01
      const err = caught(() => openSecret(k, 'people/alice/totp', { ...sealed, data: bad.toString('base64') }))
      expect((err as SecretError).code, `byte ${i}`).toBe('tampered')
    }
    const nonce = Buffer.from(sealed.nonce, 'base64')
    nonce[0] = (nonce[0] ?? 0) ^ 0x80
    expect((caught(() => openSecret(k, 'people/alice/totp', { ...sealed, nonce: nonce.toString('base64') })) as SecretError).code).toBe('tampered')
    const moved = caught(() => openSecret(k, 'people/bob/totp', sealed))
    expect((moved as SecretError).code).toBe('tampered')
    expect(moved.message).toMatch(/secret people\/bob\/totp does not authenticate: it was altered, or stored under another name/)
  })

  it('refuses bad names, oversized values and malformed sealed values', () => {
    expect(caught(() => sealSecret(k, '../etc', Buffer.from('x')))).toBeInstanceOf(ValidationError)
    expect(caught(() => sealSecret(k, 'Upper', Buffer.from('x')))).toBeInstanceOf(ValidationError)
    expect((caught(() => sealSecret(k, 'big', Buffer.alloc(SECRET_MAX_BYTES + 1))) as SecretError).code).toBe('too_large')
    const good = sealSecret(k, 'a', Buffer.from('x'))
    expect(caught(() => decodeSealedSecret({ ...good, v: 2 })).message).toMatch(/secret\.v: must be 1/)
    expect(caught(() => decodeSealedSecret({ ...good, nonce: 'AAAA' })).message).toMatch(/secret\.nonce/)
    expect(caught(() => decodeSealedSecret({ ...good, data: 'not base64!' })).message).toMatch(/secret\.data/)
    expect(caught(() => decodeSealedSecret({ ...good, key: 'XYZ' })).message).toMatch(/secret\.key/)
    expect(caught(() => decodeChange({ kind: 'secret', name: 'a b', sealed: null })).message).toMatch(/change\.name/)
    expect(caught(() => decodeDesiredState({ revision: 1, term: 1, apps: [], secrets: { x: { ...good, v: 0 } } })).message).toMatch(/desired\.secrets\.x\.v/)
  })
})

describe('put, get and delete through the log', () => {
  it('stores only the sealed form, reads it on another node with the same key, deletes it', async () => {
    const log = cluster()
    const mine = new ReplicatedSecrets({ clusterSecret: SECRET, ...log })
    const other = new ReplicatedSecrets({ clusterSecret: Buffer.from(SECRET), ...log })
    expect(mine.get('acme/account-key')).toBeNull()
    await mine.put('acme/account-key', '-----BEGIN PRIVATE KEY-----\nabc\n')
    await mine.put('tls/a.example.org', Buffer.from([0, 1, 2, 255]))
    expect(JSON.stringify(log.state())).not.toContain('BEGIN PRIVATE KEY')
    expect(other.get('acme/account-key')?.toString()).toBe('-----BEGIN PRIVATE KEY-----\nabc\n')
    expect(other.get('tls/a.example.org')).toEqual(Buffer.from([0, 1, 2, 255]))
    expect(other.names('tls/')).toEqual(['tls/a.example.org'])
    await mine.put('tls/a.example.org', 'replaced')
    expect(other.get('tls/a.example.org')?.toString()).toBe('replaced')
    await mine.delete('tls/a.example.org')
    expect(other.get('tls/a.example.org')).toBeNull()
    expect(other.names()).toEqual(['acme/account-key'])
    await expect(mine.delete('tls/a.example.org')).rejects.toThrow(/no secret named tls\/a\.example\.org/)
    // A node with another cluster key sees the entry but cannot open it, and says why.
    const stranger = new ReplicatedSecrets({ clusterSecret: randomBytes(32), ...log })
    expect(() => stranger.get('acme/account-key')).toThrow(/sealed with another cluster key/)
  })
})
