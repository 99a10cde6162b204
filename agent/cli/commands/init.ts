/** `dcloud init`: creates a new cluster key. */
import { mkdir } from 'node:fs/promises'
import { dirname } from 'node:path'
import { writeNewClusterKey } from '../../mesh/cluster-key.ts'
import { defaultDataDir, paths } from '../../config.ts'
import { parseCommand } from '../args.ts'

export const initHelp = `dcloud init [--key-file FILE]
  Writes a new cluster key (mode 0600). Give the same file to every node's agent
  (--key-file) to make them one cluster. Default: DATA_DIR/cluster.key.`

export async function initCommand (argv: string[]): Promise<number> {
  const { values } = parseCommand(argv, { usage: 'dcloud init [--key-file FILE]', options: { 'key-file': { type: 'string' } } })
  const file = values['key-file'] ?? paths(defaultDataDir()).keyFile
  await mkdir(dirname(file), { recursive: true, mode: 0o700 })
  await writeNewClusterKey(file)
  process.stdout.write(`wrote a new cluster key to ${file}\nstart every node with: dcloud agent --key-file ${file}\n`)
  return 0
}
