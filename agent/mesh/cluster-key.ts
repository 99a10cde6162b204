/**
 * The cluster key: a 32-byte pre-shared key in the swarm.key format that
 * libp2p private networks (and IPFS) use. Only nodes holding it can complete
 * a connection; everything else fails before any libp2p protocol runs.
 */
import { generateKey } from '@libp2p/pnet'
import { chmod, open, readFile, stat } from 'node:fs/promises'
import { UserError, EXIT } from '../util/errors.ts'

const HEADER = '/key/swarm/psk/1.0.0/\n/base16/\n'

export function newClusterKey (): Uint8Array {
  const bytes = new Uint8Array(HEADER.length + 64)
  generateKey(bytes)
  return bytes
}

/** Checks the text of a key file and returns it in the canonical form libp2p expects. */
export function parseClusterKey (text: string, source: string): Uint8Array {
  const lines = text.trim().split(/\r?\n/)
  if (lines.length !== 3 || lines[0] !== '/key/swarm/psk/1.0.0/' || lines[1] !== '/base16/' || !/^[0-9a-fA-F]{64}$/.test(lines[2] ?? '')) {
    throw new UserError(`${source} is not a cluster key file`, {
      exitCode: EXIT.config,
      hint: 'a cluster key has three lines: /key/swarm/psk/1.0.0/, /base16/, and 64 hex digits; create one with `dcloud init`'
    })
  }
  return new TextEncoder().encode(`${HEADER}${(lines[2] ?? '').toLowerCase()}`)
}

export async function readClusterKey (path: string): Promise<Uint8Array> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new UserError(`cannot read the cluster key ${path}: ${(err as Error).message}`, {
      exitCode: EXIT.noInput,
      hint: 'create a key with `dcloud init --key-file PATH` on the first node and copy it to the others'
    })
  }
  const info = await stat(path)
  if ((info.mode & 0o077) !== 0) await chmod(path, 0o600) // a readable key lets anyone join
  return parseClusterKey(text, path)
}

/** Writes a new key to `path`, mode 0600; refuses to overwrite an existing key (it would split the cluster). */
export async function writeNewClusterKey (path: string): Promise<void> {
  let handle
  try {
    handle = await open(path, 'wx', 0o600)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new UserError(`${path} already exists; not overwriting a cluster key`, {
        exitCode: EXIT.cantCreate,
        hint: 'remove it yourself if you really want a new cluster, or pass another --key-file'
      })
    }
    throw new UserError(`cannot create ${path}: ${(err as Error).message}`, { exitCode: EXIT.cantCreate })
  }
  try {
    await handle.writeFile(newClusterKey())
  } finally {
    await handle.close()
  }
}
