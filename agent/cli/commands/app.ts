/** `dcloud app ...`: install, list, move, remove apps, and ask why one is where it is. */
import { apiGet, apiRequest, ApiCallError } from '../client.ts'
import { table } from '../format.ts'
import { intOption, parseCommand } from '../args.ts'
import { loadApp } from '../../../apps/catalog.ts'
import { UsageError, UserError, EXIT } from '../../util/errors.ts'
import { ValidationError } from '../../../proto/validate.ts'
import type { AppView, DomainView, StatusResponse, WhyView } from '../../../proto/api.ts'
import type { AppManifest } from '../../../proto/app.ts'
import { askGrants } from '../grants.ts'
import { formatStep, moveSteps as planMove } from '../../../scheduler/procedure.ts'
import { accessCommand } from './access.ts'

export const appHelp = `dcloud app COMMAND
  install PATH|ID [--name N] [--node NODE] [--set K=V]... [--grant all|P1,P2] [--yes] [--no-wait]
                                                         install an app (a compose file, its folder, or a catalog id);
                                                         --node pins it to that node; --set fills the app's variables;
                                                         the permissions it asks for are listed and asked on a
                                                         terminal, or granted by --grant (--yes alone grants none)
  grant NAME PERM...                                     grant permissions the app asks for (it is redeployed with them)
  revoke NAME PERM...                                    take permissions away (it is redeployed without them)
  expose NAME lan|internet                               who reaches the app at its URL: lan (the default: clients on private and
                                                         link-local addresses only) or internet (anyone who reaches a node);
                                                         every node's front door applies it within about a second
  ls [--json]                                            every app: its URL (https://NAME.DOMAIN/), node, state, reach, raw ports
                                                         (ENDPOINTS: tcp/udp services published on its node), permissions granted
  rm NAME                                                remove an app (its volumes are kept)
  move NAME NODE [--dry-run] [--no-wait]                 move an app to another node (a stateful app with its data;
                                                         prints the downtime); --dry-run: print its steps, do
                                                         nothing; --no-wait: return once accepted, and follow its
                                                         steps in \`app ls\`
  logs NAME [--tail N]                                   the app's container logs (the last N lines, 1 to 10000; default 200)
  why NAME [--json]                                      why the app runs where it does, or nowhere
  access NAME [--since 1h] [--limit N] [--json] [--follow] [--summary] [--local]
                                                         requests to the app's web UI, from every node's front door
                                                         (--since: 15m, 1h, 7d, or a date; default 1h, 7d with --summary);
                                                         --summary: visitors per day, top paths and addresses;
                                                         --local: only what this node holds (its lines and replicas)`

const WAIT_MS = 180_000
const FAILED_GIVE_UP_MS = 5000

export async function appCommand (argv: string[]): Promise<number> {
  const [sub, ...rest] = argv
  switch (sub) {
    case 'install': return await install(rest)
    case 'ls': case 'list': return await list(rest)
    case 'rm': case 'remove': return await remove(rest)
    case 'move': return await move(rest)
    case 'logs': return await logs(rest)
    case 'why': return await why(rest)
    case 'access': return await accessCommand(rest)
    case 'expose': return await expose(rest)
    case 'grant': return await changeGrants(rest, 'grant')
    case 'revoke': return await changeGrants(rest, 'revoke')
    default: throw new UsageError(sub === undefined ? 'missing app command' : `unknown app command '${sub}'`, appHelp)
  }
}

async function nodeIdByName (name: string): Promise<string> {
  const status = await apiGet<StatusResponse>('/v1/status')
  const node = status.nodes.find(n => n.name === name || n.id === name)
  if (node === undefined) throw new UserError(`no node named ${name} in the cluster`, { exitCode: EXIT.noInput, hint: `nodes: ${status.nodes.map(n => n.name).join(', ')}` })
  return node.id
}

async function install (argv: string[]): Promise<number> {
  const { values, args: [ref] } = parseCommand(argv, {
    usage: 'dcloud app install PATH|ID [--name N] [--node NODE] [--set K=V]... [--grant PERM,...|all] [--yes] [--no-wait]',
    args: ['PATH|ID'],
    options: { name: { type: 'string' }, node: { type: 'string' }, set: { type: 'string', multiple: true, default: [] }, grant: { type: 'string', multiple: true, default: [] }, yes: { type: 'boolean', short: 'y', default: false }, 'no-wait': { type: 'boolean', default: false } }
  })
  const variables: Record<string, string> = {}
  for (const kv of values.set ?? []) {
    const eq = kv.indexOf('=')
    if (eq <= 0) throw new UsageError(`--set ${kv}: expected KEY=VALUE`)
    variables[kv.slice(0, eq)] = kv.slice(eq + 1)
  }
  // The app's own host (for the importers' $APP_DOMAIN and the like) is NAME.DOMAIN, the front door's one scheme.
  // An agent older than the front door has no /v1/domain: the importers' default (the LAN domain) then.
  const domain = await apiGet<DomainView>('/v1/domain').then(d => d.domain, (err: unknown) => { if (err instanceof ApiCallError && err.status === 404) return undefined; throw err })
  let loaded
  try {
    loaded = await loadApp(ref, { values: variables, ...(domain !== undefined ? { domain } : {}), ...(values.name !== undefined ? { name: values.name } : {}) })
  } catch (err) {
    // A manifest the validator refuses is the user's to fix: say what, not how we crashed.
    if (err instanceof ValidationError) throw new UserError(err.message, { exitCode: EXIT.dataError, hint: 'see docs/apps.md for the manifest format and what the importers accept' })
    throw err
  }
  const { manifest, warnings } = loaded
  for (const w of warnings) process.stderr.write(`warning: ${w}\n`)
  const name = values.name ?? manifest.id
  const grants = await askGrants(manifest, values.grant ?? [], values.yes === true)
  const pinnedNode = values.node !== undefined ? await nodeIdByName(values.node) : null
  const started = Date.now()
  const res = await apiRequest<{ revision: number, replicatedTo: number }>('POST', '/v1/apps', { name, manifest, pinnedNode, grants }, undefined, 30_000)
  process.stderr.write(`${name}: accepted (desired state revision ${res.revision}, on ${res.replicatedTo} node(s))\n`)
  if (values['no-wait'] === true) return 0
  const app = await waitForApp(name, (a) => a.state === 'running', started)
  process.stdout.write(`${app.name} is running on ${app.node ?? '?'}${whereText(app)}\n`)
  return 0
}

async function expose (argv: string[]): Promise<number> {
  const usage = 'dcloud app expose NAME lan|internet'
  const { args: [name, reach] } = parseCommand(argv, { usage, args: ['NAME', 'lan|internet'] })
  if (reach !== 'lan' && reach !== 'internet') throw new UsageError(`'${reach}' is not a reach: lan (clients on private and link-local addresses only) or internet (anyone who reaches a node)`, `usage: ${usage}`)
  const res = await apiRequest<{ revision: number }>('POST', `/v1/apps/${encodeURIComponent(name)}/expose`, { reach }, undefined, 30_000)
  process.stdout.write(reach === 'internet'
    ? `${name} is answered for anyone who reaches a node's front door (revision ${res.revision}); \`dcloud app expose ${name} lan\` takes it back to the LAN\n`
    : `${name} is answered for clients on the LAN only (revision ${res.revision}); others get a 403\n`)
  return 0
}

async function changeGrants (argv: string[], how: 'grant' | 'revoke'): Promise<number> {
  const { args: [name], rest } = parseCommand(argv, { usage: `dcloud app ${how} NAME PERMISSION...`, args: ['NAME'], rest: 'PERMISSION' })
  const names = rest.flatMap(p => p.split(',')).filter(p => p !== '')
  if (names.length === 0) throw new UsageError(`missing PERMISSION (e.g. dcloud app ${how} ${name} net_admin)`, `usage: dcloud app ${how} NAME PERMISSION...`)
  const res = await apiRequest<{ revision: number }>('POST', `/v1/apps/${encodeURIComponent(name)}/grants`, { [how]: names }, undefined, 30_000)
  process.stdout.write(`${name}: ${how === 'grant' ? 'granted' : 'revoked'} ${names.join(', ')} (revision ${res.revision}); it is redeployed ${how === 'grant' ? 'with' : 'without'} ${names.length === 1 ? 'it' : 'them'}\n`)
  return 0
}

/** Polls the app until `done`, printing each change of node or state: the install's progress. */
async function waitForApp (name: string, done: (a: AppView) => boolean, started: number): Promise<AppView> {
  let last = ''
  let failedSince: number | null = null
  while (Date.now() - started < WAIT_MS) {
    const apps = await apiGet<AppView[]>('/v1/apps')
    const app = apps.find(a => a.name === name)
    if (app !== undefined) {
      const line = `${app.state}${app.node !== null ? ` on ${app.node}` : ''}`
      if (line !== last) {
        process.stderr.write(`${name}: ${line} (${((Date.now() - started) / 1000).toFixed(1)} s)\n`)
        last = line
      }
      if (done(app)) return app
      failedSince = app.state === 'failed' ? (failedSince ?? Date.now()) : null
      // Failed for a while (no node can take it, or its containers keep failing): say why and stop waiting.
      if (failedSince !== null && Date.now() - failedSince > FAILED_GIVE_UP_MS) {
        const w = await apiGet<WhyView>(`/v1/apps/${encodeURIComponent(name)}/why`).catch(() => null)
        const reasons = (w?.rejections ?? []).map(r => `  ${r.node}: ${r.reason}`).join('\n')
        throw new UserError(`${name} cannot run: ${w?.detail ?? 'it failed'}${reasons !== '' ? `\n${reasons}` : ''}`, { exitCode: EXIT.unavailable, hint: `the app stays installed and is placed as soon as a node fits; \`dcloud app rm ${name}\` removes it` })
      }
    }
    await new Promise(resolve => setTimeout(resolve, 300))
  }
  throw new UserError(`${name} did not reach the expected state within ${WAIT_MS / 1000} s`, { exitCode: EXIT.tempFail, hint: `see \`dcloud app why ${name}\` and \`dcloud app logs ${name}\`` })
}

async function list (argv: string[]): Promise<number> {
  const { values } = parseCommand(argv, { usage: 'dcloud app ls [--json]', options: { json: { type: 'boolean', default: false } } })
  const apps = await apiGet<AppView[]>('/v1/apps')
  if (values.json === true) {
    process.stdout.write(JSON.stringify(apps, null, 2) + '\n')
    return 0
  }
  // The name first, as the URL people open (any node's front door answers it).
  // REACH from an older agent (no reach): lan, what it served before the switch existed.
  process.stdout.write(table(['URL', 'APP', 'NODE', 'STATE', 'REACH', 'STATEFUL', 'ENDPOINTS', 'GRANTED'], apps.map(a => [a.url ?? `${a.name} (no web UI)`, `${a.app} ${a.version}`, a.node ?? '-', a.state, a.url === null ? '-' : a.reach ?? 'lan', a.stateful ? 'yes' : 'no', a.endpoints.join(' ') || '-', grantsText(a.grants, a.permissions)])))
  for (const a of apps) {
    const r = a.relocation
    if (r == null) continue
    const what = r.kind === 'failover' ? `came back on ${r.to} after ${r.from ?? 'its node'} died` : r.kind === 'move' ? `moved from ${r.from ?? '?'} to ${r.to} (downtime ${r.downtimeMs ?? '?'} ms)` : r.kind === 'rollback' ? `rolled back on ${r.to}` : `restored from a backup on ${r.to}`
    process.stdout.write(`${a.name}: ${what}, at ${r.at}, from snapshot ${r.snapshot} taken ${r.snapshotTime}\n`)
  }
  for (const a of apps) {
    const o = a.operation
    if (o === undefined) continue
    process.stdout.write(`${a.name}: ${o.kind} under way, ${o.done} of ${o.of} steps done${o.recovery !== null ? `; recovering: ${o.recovery}` : ''}\n${o.steps.map(s => `  ${s}\n`).join('')}`)
  }
  return 0
}

async function remove (argv: string[]): Promise<number> {
  const { args: [name] } = parseCommand(argv, { usage: 'dcloud app rm NAME', args: ['NAME'] })
  const res = await apiRequest<{ revision: number, kept: string[] }>('DELETE', `/v1/apps/${encodeURIComponent(name)}`, {}, undefined, 30_000)
  process.stdout.write(`${name} removed (revision ${res.revision})\n`)
  return 0
}

async function move (argv: string[]): Promise<number> {
  const { values, args: [name, node] } = parseCommand(argv, { usage: 'dcloud app move NAME NODE [--dry-run] [--no-wait]', args: ['NAME', 'NODE'], options: { 'dry-run': { type: 'boolean', default: false }, 'no-wait': { type: 'boolean', default: false } } })
  const nodeId = await nodeIdByName(node)
  const current = (await apiGet<AppView[]>('/v1/apps')).find(a => a.name === name)
  if (current === undefined) throw new UserError(`no app named ${name}`, { exitCode: EXIT.noInput })
  if (values['dry-run'] === true) {
    process.stdout.write(await moveSteps(current, nodeId, node))
    return 0
  }
  const started = Date.now()
  if (current.nodeId === nodeId && current.state === 'running') {
    // Pin it there all the same, so the scheduler keeps it there; nothing moves.
    await apiRequest('POST', `/v1/apps/${encodeURIComponent(name)}/move`, { node: nodeId }, undefined, 30_000)
    process.stdout.write(`${name} already runs on ${current.node ?? node}\n`)
    return 0
  }
  await apiRequest('POST', `/v1/apps/${encodeURIComponent(name)}/move`, { node: nodeId }, undefined, 30_000)
  if (values['no-wait'] === true) {
    process.stdout.write(`${name}: move to ${node} accepted; \`dcloud app ls\` shows its steps as they go\n`)
    return 0
  }
  // A stateful app has moved once its data did: the leader records the move, with its downtime, when the copy runs.
  const moved = (a: AppView): boolean => a.nodeId === nodeId && a.state === 'running' &&
    (!a.stateful || (a.relocation != null && a.relocation.kind === 'move' && Date.parse(a.relocation.at) >= started - 1000))
  const app = await waitForApp(name, moved, started)
  process.stdout.write(`${name} moved to ${app.node ?? node} in ${((Date.now() - started) / 1000).toFixed(1)} s${whereText(app)}\n`)
  const r = app.relocation
  if (app.stateful && r != null) process.stdout.write(`data: final snapshot ${r.snapshot}; downtime ${r.downtimeMs ?? '?'} ms (stopped on ${r.from ?? '?'} until running on ${r.to})\n`)
  return 0
}

/** What `app move` would do, step by step, without doing it: the same steps the leader runs (scheduler/procedure.ts). */
async function moveSteps (app: AppView, toId: string, to: string): Promise<string> {
  if (app.nodeId === toId) return `${app.name} already runs on ${to}: it would only be pinned there\n`
  if (app.nodeId === null) return `${app.name} runs nowhere now: it would be pinned to ${to} and placed there\n`
  if (!app.stateful) return `${app.name} would start on ${to}, then stop on ${app.node ?? '?'} (stateless: no data moves)\n`
  const status = await apiGet<StatusResponse>('/v1/status')
  const name = (id: string): string => status.nodes.find(n => n.id === id)?.name ?? id
  const steps = planMove(app.name, app.nodeId, toId, (app.generation ?? 1) + 1, Date.now())
  return `${app.name} would move from ${app.node ?? '?'} to ${to} with its data, in ${steps.steps.length} steps (a journal in the replicated state: a new leader resumes it):\n${steps.steps.map((s, i) => `  ${i + 1}. ${formatStep(s, name)}\n`).join('')}`
}

async function logs (argv: string[]): Promise<number> {
  const { values, args: [name] } = parseCommand(argv, { usage: 'dcloud app logs NAME [--tail N]', args: ['NAME'], options: { tail: { type: 'string', default: '200' } } })
  const tail = intOption(values.tail, 'tail', 1, 10_000)
  const res = await apiGet<{ node: string, text: string }>(`/v1/apps/${encodeURIComponent(name)}/logs?tail=${tail ?? 200}`, undefined, 30_000)
  process.stdout.write(res.text.endsWith('\n') || res.text === '' ? res.text : res.text + '\n')
  return 0
}

async function why (argv: string[]): Promise<number> {
  const { values, args: [name] } = parseCommand(argv, { usage: 'dcloud app why NAME [--json]', args: ['NAME'], options: { json: { type: 'boolean', default: false } } })
  let w: WhyView
  try {
    w = await apiGet<WhyView>(`/v1/apps/${encodeURIComponent(name)}/why`, undefined, 15_000)
  } catch (err) {
    if (err instanceof ApiCallError && err.code === 'not_found') throw new UserError(`no app named ${name}`, { exitCode: EXIT.noInput })
    throw err
  }
  if (values.json === true) {
    process.stdout.write(JSON.stringify(w, null, 2) + '\n')
    return 0
  }
  process.stdout.write(`${w.app}: ${w.node !== null ? `runs on ${w.node}` : 'not placed'}${w.planTerm !== null ? ` (plan of term ${w.planTerm})` : ''}\n`)
  if (w.detail !== '') process.stdout.write(`${w.detail}\n`)
  // Where it answers: the URL and its reach (the front door), the raw ports (published on its node).
  const view = (await apiGet<AppView[]>('/v1/apps')).find(a => a.name === name)
  if (view?.url != null) process.stdout.write(`at ${view.url}, ${view.reach === 'internet' ? 'for anyone (reach internet)' : 'for clients on the LAN only (reach lan; `dcloud app expose ' + name + ' internet` opens it)'}\n`)
  if (view !== undefined && view.endpoints.length > 0) process.stdout.write(`raw ports on ${view.node ?? '?'}: ${view.endpoints.join(' ')}\n`)
  for (const r of w.rejections) process.stdout.write(`  ${r.node}: ${r.reason}\n`)
  if ((w.grants ?? []).length > 0) process.stdout.write(`granted: ${(w.grants ?? []).join(', ')}\n`)
  if ((w.ungranted ?? []).length > 0) process.stdout.write(`asks for but not granted (runs without): ${(w.ungranted ?? []).join(', ')}\n`)
  return 0
}

/** Where an app answers, after its node: its URL (any node's front door), and its raw ports on that node. */
function whereText (app: Pick<AppView, 'url' | 'endpoints'>): string {
  return `${app.url !== null ? `: ${app.url}` : ''}${app.endpoints.length > 0 ? `${app.url !== null ? ';' : ':'} raw ports ${app.endpoints.join(' ')}` : ''}`
}

/** The GRANTED column: the grants, and what is asked for but not granted. */
function grantsText (grants: string[] | undefined, requested: string[] | undefined): string {
  const g = grants ?? []
  const missing = (requested ?? []).filter(p => !g.includes(p))
  const text = [g.join(','), missing.length > 0 ? `not ${missing.join(',')}` : ''].filter(t => t !== '').join('; ')
  return text === '' ? '-' : text
}
