/**
 * The node's persistent identity: an Ed25519 key kept in the data directory,
 * so a node keeps its peer id across restarts and reboots.
 */
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { open, readFile } from 'node:fs/promises'
import { UserError, EXIT } from '../util/errors.ts'

export async function loadOrCreateIdentity (path: string): Promise<PrivateKey> {
  try {
    return privateKeyFromProtobuf(await readFile(path))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new UserError(`the node identity ${path} is unreadable: ${(err as Error).message}`, {
        exitCode: EXIT.config,
        hint: 'restore it from a backup; deleting it makes this node a new member with a new id'
      })
    }
  }
  const key = await generateKeyPair('Ed25519')
  const handle = await open(path, 'wx', 0o600)
  try {
    await handle.writeFile(privateKeyToProtobuf(key))
    await handle.sync()
  } finally {
    await handle.close()
  }
  return key
}
