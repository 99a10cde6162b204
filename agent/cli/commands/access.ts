/** `dcloud app access NAME`: the app's access log, merged across the cluster's nodes (docs/frontdoor.md, "Access log"). */
import { apiGet, ApiCallError } from '../client.ts'
import { table } from '../format.ts'
import { intOption, parseCommand } from '../args.ts'
import { UsageError, UserError, EXIT } from '../../util/errors.ts'
import { QUERY_MAX_LINES, parseSince, type AccessLine, type AccessView } from '../../../proto/access.ts'

export const accessUsage = 'dcloud app access NAME [--since 1h] [--limit N] [--summary] [--json] [--follow] [--local]'

const FOLLOW_EVERY_MS = 1000
/** --follow asks again for this much before its newest line: a replica's lines may arrive a moment late. */
const FOLLOW_OVERLAP_MS = 10_000

export async function accessCommand (argv: string[]): Promise<number> {
  const { values, args: [name] } = parseCommand(argv, {
    usage: accessUsage,
    args: ['NAME'],
    options: { since: { type: 'string' }, limit: { type: 'string', default: '1000' }, summary: { type: 'boolean', default: false }, json: { type: 'boolean', default: false }, follow: { type: 'boolean', short: 'f', default: false }, local: { type: 'boolean', default: false } }
  })
  // Visitors per day want days: the summary looks back a week unless told otherwise, the lines an hour.
  let since: number
  try { since = parseSince(values.since ?? (values.summary === true ? '7d' : '1h'), Date.now()) } catch (err) { throw new UsageError((err as Error).message, `usage: ${accessUsage}`) }
  const limit = intOption(values.limit, 'limit', 0, QUERY_MAX_LINES) ?? 1000
  if (values.follow === true && values.summary === true) throw new UsageError('--follow and --summary do not go together', `usage: ${accessUsage}`)
  const local = values.local === true
  const view = await ask(name, since, limit, values.summary === true, local)
  if (values.follow !== true) {
    if (values.json === true) process.stdout.write(JSON.stringify(view, null, 2) + '\n')
    else print(view, values.summary === true)
    return 0
  }
  // Following: every line once, as JSON lines with --json.
  const seen = new Map<string, number>()
  const show = (lines: AccessView['lines']): void => {
    const fresh = lines.filter(l => !seen.has(l.id))
    for (const l of fresh) seen.set(l.id, l.ts)
    if (fresh.length === 0) return
    if (values.json === true) process.stdout.write(fresh.map(l => JSON.stringify(l) + '\n').join(''))
    else process.stdout.write(rows(fresh))
  }
  if (values.json !== true) process.stdout.write(header())
  show(view.lines)
  for (;;) {
    await new Promise(resolve => setTimeout(resolve, FOLLOW_EVERY_MS))
    const newest = Math.max(since, ...seen.values())
    const next = await ask(name, Math.max(since, newest - FOLLOW_OVERLAP_MS), QUERY_MAX_LINES, false, local)
    show(next.lines)
    // Ids older than the overlap cannot come back: forget them (bounded memory however long it follows).
    for (const [id, ts] of seen) if (ts < newest - 2 * FOLLOW_OVERLAP_MS) seen.delete(id)
  }
}

/** `local`: only what the node asked holds (its own lines and its replicas), no other node asked. */
async function ask (name: string, since: number, limit: number, summary: boolean, local: boolean): Promise<AccessView> {
  try {
    return await apiGet<AccessView>(`/v1/apps/${encodeURIComponent(name)}/access?since=${since}&limit=${limit}${summary ? '&summary=1' : ''}${local ? '&local=1' : ''}`, undefined, 40_000)
  } catch (err) {
    if (err instanceof ApiCallError && err.status === 404) throw new UserError('this agent has no access log (an older version)', { exitCode: EXIT.unavailable, hint: 'upgrade this node\'s agent' })
    throw err
  }
}

const COLUMNS = ['TIME', 'NODE', 'CLIENT', 'USER', 'METHOD', 'HOST', 'PATH', 'STATUS', 'BYTES', 'MS']

function cells (l: AccessLine & { nodeName: string | null }): string[] {
  return [new Date(l.ts).toISOString(), l.nodeName ?? l.node.slice(-8), l.client, l.user ?? '-', l.method, l.host, l.path, String(l.status), String(l.bytes), l.durationMs.toFixed(1)]
}

function header (): string { return COLUMNS.join('  ') + '\n' }
function rows (lines: AccessView['lines']): string { return lines.map(l => cells(l).join('  ') + '\n').join('') }

function print (view: AccessView, summary: boolean): void {
  if (view.unreachable.length > 0) process.stderr.write(`warning: not answering: ${view.unreachable.join(', ')} (their lines are shown from replicas where there are)\n`)
  if (!summary) {
    if (view.lines.length === 0) { process.stdout.write(`no requests to ${view.app} since ${new Date(view.since).toISOString()}\n`); return }
    process.stdout.write(table(COLUMNS, view.lines.map(cells)))
    if (view.more) process.stderr.write(`(the newest ${view.lines.length} lines; --limit or --since for others)\n`)
    return
  }
  const s = view.summary
  if (s === null) return
  process.stdout.write(`${view.app}: ${s.lines} requests since ${new Date(view.since).toISOString()}${s.truncated ? ' (over the summary\'s limits: counts are a lower bound)' : ''}\n\n`)
  process.stdout.write(table(['DAY (UTC)', 'VISITORS'], s.visitorsPerDay.map(d => [d.day, String(d.visitors)])) + '\n')
  process.stdout.write(table(['TOP PATHS', 'REQUESTS'], s.topPaths.map(p => [p.path, String(p.requests)])) + '\n')
  process.stdout.write(table(['TOP ADDRESSES', 'REQUESTS'], s.topAddresses.map(a => [a.address, String(a.requests)])))
}
