/**
 * Replicated secrets: small named values (a certificate's key, the ACME
 * account key, later people's credentials and DNS providers' tokens) kept in
 * the replicated desired state, sealed, so that every member has them, a new
 * leader or a new node finds them, and nothing holds them in clear but the
 * memory of the agent that uses them.
 *
 * The key: HKDF-SHA256 of the cluster key's 32 secret bytes (every member
 * holds them, nobody else does), AES-256-GCM, a random 96-bit nonce per seal,
 * the secret's name as the associated data: a sealed value copied under
 * another name does not open. A key id (a second HKDF output, not the key)
 * travels with each value, so that "sealed by another cluster's key" is told
 * apart from "altered on the way".
 *
 * Writes go through the log like any change (put, delete): the leader
 * appends, a majority persists, every node applies. Reads are of the
 * committed state, on any node.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto'
import type { ChangeResponse, DesiredChange, DesiredState } from '../../proto/cluster.ts'
import { SECRET_MAX_BYTES, decodeSecretName, type SealedSecret } from '../../proto/secrets.ts'

const SALT = 'dcloud replicated secrets v1'

export class SecretError extends Error {
  override name = 'SecretError'
  readonly code: 'wrong_key' | 'tampered' | 'too_large'
  constructor (code: SecretError['code'], message: string) {
    super(message)
    this.code = code
  }
}

/** The sealing key and its public id, from the cluster key's secret bytes (agent/frontdoor/ca.ts clusterSecret). */
export interface SecretsKey { key: Buffer, id: string }

export function secretsKey (clusterSecret: Uint8Array): SecretsKey {
  return {
    key: Buffer.from(hkdfSync('sha256', clusterSecret, SALT, 'aes-256-gcm key', 32)),
    id: Buffer.from(hkdfSync('sha256', clusterSecret, SALT, 'key id', 8)).toString('hex')
  }
}

export function sealSecret (k: SecretsKey, name: string, plain: Uint8Array): SealedSecret {
  decodeSecretName(name, 'secret name')
  if (plain.length > SECRET_MAX_BYTES) throw new SecretError('too_large', `secret ${name} is ${plain.length} bytes; at most ${SECRET_MAX_BYTES}`)
  const nonce = randomBytes(12)
  const cipher = createCipheriv('aes-256-gcm', k.key, nonce)
  cipher.setAAD(Buffer.from(name, 'utf8'))
  const data = Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()])
  return { v: 1, key: k.id, nonce: nonce.toString('base64'), data: data.toString('base64') }
}

/** The plain bytes of `sealed`, stored under `name`; throws SecretError saying which of the two failures it is. */
export function openSecret (k: SecretsKey, name: string, sealed: SealedSecret): Buffer {
  if (sealed.key !== k.id) throw new SecretError('wrong_key', `secret ${name} was sealed with another cluster key (key id ${sealed.key}; this node's is ${k.id}): this node holds a different cluster key than the node that stored it`)
  const data = Buffer.from(sealed.data, 'base64')
  const decipher = createDecipheriv('aes-256-gcm', k.key, Buffer.from(sealed.nonce, 'base64'))
  decipher.setAAD(Buffer.from(name, 'utf8'))
  decipher.setAuthTag(data.subarray(data.length - 16))
  try {
    return Buffer.concat([decipher.update(data.subarray(0, data.length - 16)), decipher.final()])
  } catch {
    throw new SecretError('tampered', `secret ${name} does not authenticate: it was altered, or stored under another name; put it again`)
  }
}

export interface ReplicatedSecretsInit {
  /** The cluster key's 32 secret bytes. */
  clusterSecret: Uint8Array
  /** The committed desired state on this node. */
  state: () => DesiredState
  /** Commits a change through the leader (Coordinator.change). */
  change: (change: DesiredChange, signal?: AbortSignal) => Promise<ChangeResponse>
}

/** put/get/delete of named secrets through the desired-state log. */
export class ReplicatedSecrets {
  private readonly key: SecretsKey
  private readonly init: ReplicatedSecretsInit

  constructor (init: ReplicatedSecretsInit) {
    this.init = init
    this.key = secretsKey(init.clusterSecret)
  }

  /** The names stored under `prefix` (all without one). */
  names (prefix = ''): string[] {
    return Object.keys(this.init.state().secrets ?? {}).filter(n => n.startsWith(prefix)).sort()
  }

  /** The committed value, or null when there is none. Throws SecretError when it does not open. */
  get (name: string): Buffer | null {
    const sealed = this.init.state().secrets?.[name]
    return sealed === undefined ? null : openSecret(this.key, name, sealed)
  }

  async put (name: string, value: Uint8Array | string, signal?: AbortSignal): Promise<ChangeResponse> {
    const plain = typeof value === 'string' ? Buffer.from(value, 'utf8') : value
    return await this.init.change({ kind: 'secret', name, sealed: sealSecret(this.key, name, plain) }, signal)
  }

  async delete (name: string, signal?: AbortSignal): Promise<ChangeResponse> {
    return await this.init.change({ kind: 'secret', name: decodeSecretName(name, 'secret name'), sealed: null }, signal)
  }
}
