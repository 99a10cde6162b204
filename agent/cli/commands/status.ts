/** `dcloud status`: the cluster as this node sees it. */
import { apiGet } from '../client.ts'
import { parseCommand } from '../args.ts'
import { bytes, shortId, table } from '../format.ts'
import type { StatusResponse } from '../../../proto/api.ts'

export const statusHelp = `dcloud status [--json]
  Prints every node this agent knows: state (alive, suspect, dead), CPU load,
  memory, disk free where Docker keeps data, architecture and running apps.`

export async function statusCommand (argv: string[]): Promise<number> {
  const { values } = parseCommand(argv, { usage: 'dcloud status [--json]', options: { json: { type: 'boolean', default: false } } })
  const status = await apiGet<StatusResponse>('/v1/status')
  if (values.json === true) {
    process.stdout.write(JSON.stringify(status, null, 2) + '\n')
    return 0
  }
  const rows = status.nodes.map(n => [
    (n.self ? '* ' : '  ') + n.name,
    shortId(n.id),
    n.state + (n.id === status.leader ? ' (leader)' : '') + (n.drained ? ' (drained)' : ''),
    `${n.cpu.toFixed(0)}% of ${n.cores}`,
    `${bytes(n.memFree)} / ${bytes(n.memTotal)}`,
    bytes(n.diskFree),
    n.arch,
    n.apps.length === 0 ? '-' : n.apps.join(',')
  ])
  process.stdout.write(table(['  NAME', 'ID', 'STATE', 'CPU', 'MEM FREE', 'DISK FREE', 'ARCH', 'APPS'], rows))
  return 0
}
