/** `dcloud node ...`: drain a node before taking it away, and take it back. */
import { apiGet, apiRequest } from '../client.ts'
import { parseCommand } from '../args.ts'
import { UsageError, UserError, EXIT } from '../../util/errors.ts'
import type { AppView, StatusResponse } from '../../../proto/api.ts'

export const nodeHelp = `dcloud node COMMAND
  drain NODE [--no-wait]    move every app off NODE (stateful apps with their data); it takes no new apps
  undrain NODE              let NODE take apps again`

export async function nodeCommand (argv: string[]): Promise<number> {
  const [sub, ...rest] = argv
  if (sub !== 'drain' && sub !== 'undrain') throw new UsageError(sub === undefined ? 'missing node command' : `unknown node command '${sub}'`, nodeHelp)
  const { values, args: [name] } = sub === 'drain'
    ? parseCommand(rest, { usage: 'dcloud node drain NODE [--no-wait]', args: ['NODE'], options: { 'no-wait': { type: 'boolean', default: false } } })
    : { ...parseCommand(rest, { usage: 'dcloud node undrain NODE', args: ['NODE'] }), values: { 'no-wait': true } } // nothing to wait for
  const status = await apiGet<StatusResponse>('/v1/status')
  const node = status.nodes.find(n => n.name === name || n.id === name)
  if (node === undefined) throw new UserError(`no node named ${name} in the cluster`, { exitCode: EXIT.noInput, hint: `nodes: ${status.nodes.map(n => n.name).join(', ')}` })
  await apiRequest('POST', `/v1/nodes/${encodeURIComponent(node.id)}/drain`, { drained: sub === 'drain' }, undefined, 30_000)
  if (sub === 'undrain') {
    process.stdout.write(`${node.name} takes apps again\n`)
    return 0
  }
  process.stderr.write(`${node.name} drained: its apps are moving away\n`)
  if (values['no-wait'] === true) return 0
  const started = Date.now()
  let last = -1
  for (;;) {
    const left = (await apiGet<AppView[]>('/v1/apps')).filter(a => a.nodeId === node.id)
    if (left.length !== last) {
      process.stderr.write(`${node.name}: ${left.length} app(s) left${left.length > 0 ? ` (${left.map(a => a.name).join(', ')})` : ''} (${((Date.now() - started) / 1000).toFixed(1)} s)\n`)
      last = left.length
    }
    if (left.length === 0) break
    if (Date.now() - started > 60 * 60_000) throw new UserError(`apps still on ${node.name}: ${left.map(a => a.name).join(', ')}`, { exitCode: EXIT.tempFail, hint: '`dcloud app why NAME` says why one stays' })
    await new Promise(resolve => setTimeout(resolve, 1000))
  }
  process.stdout.write(`${node.name} runs no apps any more\n`)
  return 0
}
