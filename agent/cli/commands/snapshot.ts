/** `dcloud snapshot ...`, `dcloud backup`, `dcloud restore`: an app's data, kept and brought back. */
import { existsSync } from 'node:fs'
import { createInterface } from 'node:readline/promises'
import { resolve } from 'node:path'
import { apiDownload, apiGet, apiRequest, apiUpload, resolveApi } from '../client.ts'
import { bytes, table } from '../format.ts'
import { parseCommand } from '../args.ts'
import { Progress } from '../progress.ts'
import { askGrants } from '../grants.ts'
import { verifyArchive, type BackupMeta } from '../../snapshots/archive.ts'
import { UsageError, UserError, EXIT } from '../../util/errors.ts'
import type { AppView, RestoreView, SnapshotView, StatusResponse } from '../../../proto/api.ts'
import { decodeStorage } from '../../../proto/cluster.ts'
import { ValidationError } from '../../../proto/validate.ts'

export const snapshotHelp = `dcloud snapshot COMMAND
  create APP [--json]              snapshot the app's volumes now (quiesced) and replicate it to peers
  ls APP [--json]                  the app's snapshots on every live node, oldest first
  restore APP SNAPSHOT [--yes] [--json]
                                   put the app back to a snapshot (its current data is kept as a snapshot first)

Snapshots are plain restic repositories, one per app, under DATA_DIR/snapshots/repos/APP
on every node holding a copy; docs/snapshots.md shows how to read them with restic alone.`

export const backupHelp = `dcloud backup APP -o FILE [--json]
  writes the app (its manifest, settings and every volume) into one tar file here:
  the agent takes a snapshot, builds the file and streams it to this machine
  (progress on stderr), where it is checked. Works from another machine too,
  with DCLOUD_API=http://NODE:7371 and DCLOUD_TOKEN (the node's DATA_DIR/api.token).
  Restore it on this or any other cluster with \`dcloud restore FILE\``

export const restoreHelp = `dcloud restore FILE [--name NAME] [--node NODE] [--data-dir DIR] [--grant PERM,...|all] [--yes] [--json]
  checks the backup file here, uploads it to the agent (progress on stderr; from another
  machine too, with DCLOUD_API and DCLOUD_TOKEN), then installs its app with its data.
  Without --yes it asks for each (default: the backed-up name, any node, Docker volumes).
  The app answers at https://NAME.DOMAIN, DOMAIN being the cluster's (\`dcloud domain\`).
  --data-dir DIR  keep the data in DIR on the node (DIR/dcloud-APP-VOLUME/_data, bound into a
                  Docker local volume) instead of Docker's volume directory; DIR must exist on
                  every node the app may move to (a disk mounted at the same path, say)
  --grant PERMS   the permissions the app asks for (as \`dcloud app install\`), and with --data-dir
                  the directory's own (path:DIR:rw); \`all\` grants every one; --yes alone grants none
  Other volume drivers than Docker's local one are not supported: snapshots read the data from disk.`

/** Long operations: a snapshot of a large volume, a backup, a restore. */
const LONG_MS = 60 * 60_000

export async function snapshotCommand (argv: string[]): Promise<number> {
  const [sub, ...rest] = argv
  switch (sub) {
    case 'create': return await create(rest)
    case 'ls': case 'list': return await list(rest)
    case 'restore': return await rollback(rest)
    default: throw new UsageError(sub === undefined ? 'missing snapshot command' : `unknown snapshot command '${sub}'`, snapshotHelp)
  }
}

async function create (argv: string[]): Promise<number> {
  const { values, args: [app] } = parseCommand(argv, { usage: 'dcloud snapshot create APP [--json]', args: ['APP'], options: { json: { type: 'boolean', default: false } } })
  process.stderr.write(`${app}: taking a snapshot...\n`)
  const started = Date.now()
  const s = await apiRequest<SnapshotView & { replicatedTo: string[], nodeName: string }>('POST', `/v1/apps/${encodeURIComponent(app)}/snapshots`, {}, undefined, LONG_MS)
  if (values.json === true) {
    process.stdout.write(JSON.stringify(s, null, 2) + '\n')
    return 0
  }
  process.stdout.write(`snapshot ${s.id} of ${app} taken on ${s.nodeName} in ${((Date.now() - started) / 1000).toFixed(1)} s: ${bytes(s.bytes)} of data, ${bytes(s.added)} new; replicated to ${s.replicatedTo.length > 0 ? s.replicatedTo.join(', ') : 'no other node'}\n`)
  return s.replicatedTo.length > 0 ? 0 : EXIT.tempFail
}

function describe (s: SnapshotView): string {
  if (s.purpose === 'divergent') return `divergent copy kept (${s.label ?? 'unnamed'})`
  if (s.purpose === 'replaced') return 'data replaced by a restore, kept'
  return s.purpose
}

async function list (argv: string[]): Promise<number> {
  const { values, args: [app] } = parseCommand(argv, { usage: 'dcloud snapshot ls APP [--json]', args: ['APP'], options: { json: { type: 'boolean', default: false } } })
  const snaps = await apiGet<SnapshotView[]>(`/v1/apps/${encodeURIComponent(app)}/snapshots`, undefined, 120_000)
  if (values.json === true) {
    process.stdout.write(JSON.stringify(snaps, null, 2) + '\n')
    return 0
  }
  if (snaps.length === 0) {
    process.stdout.write(`${app} has no snapshots on any live node\n`)
    return 0
  }
  process.stdout.write(table(['ID', 'TIME', 'TAKEN ON', 'GEN', 'WHAT', 'HELD BY'], snaps.map(s => [s.id, new Date(s.time).toISOString(), s.node, String(s.generation), describe(s), s.holders.join(',')])))
  const divergent = snaps.filter(s => s.purpose === 'divergent')
  if (divergent.length > 0) process.stdout.write(`\n${divergent.length} divergent cop${divergent.length === 1 ? 'y' : 'ies'}: data written on a node cut off from the cluster, kept and never deleted by dcloud.\nLook at one with \`dcloud snapshot restore ${app} ID\` into a copy, or with restic directly (docs/snapshots.md).\n`)
  return 0
}

async function rollback (argv: string[]): Promise<number> {
  const { values, args: [app, snapshot] } = parseCommand(argv, { usage: 'dcloud snapshot restore APP SNAPSHOT [--yes] [--json]', args: ['APP', 'SNAPSHOT'], options: { yes: { type: 'boolean', default: false }, json: { type: 'boolean', default: false } } })
  if (values.yes !== true) {
    const ok = await confirm(`${app} stops, its current data is kept as a snapshot, and snapshot ${snapshot} becomes its data. Go on?`)
    if (!ok) return EXIT.failure
  }
  const started = Date.now()
  const s = await apiRequest<SnapshotView>('POST', `/v1/apps/${encodeURIComponent(app)}/snapshots/${encodeURIComponent(snapshot)}/restore`, {}, undefined, LONG_MS)
  if (values.json === true) process.stdout.write(JSON.stringify(s, null, 2) + '\n')
  else process.stdout.write(`${app} runs on snapshot ${s.id} (taken ${new Date(s.time).toISOString()}) after ${((Date.now() - started) / 1000).toFixed(1)} s\n`)
  return 0
}

export async function backupCommand (argv: string[]): Promise<number> {
  const { values, args: [app] } = parseCommand(argv, { usage: 'dcloud backup APP -o FILE [--json]', args: ['APP'], options: { output: { type: 'string', short: 'o' }, json: { type: 'boolean', default: false } } })
  if (values.output === undefined) throw new UsageError('missing -o FILE: where to write the backup', 'usage: dcloud backup APP -o FILE [--json]')
  const file = resolve(values.output)
  if (existsSync(file)) throw new UserError(`${file} already exists; refusing to replace it`, { exitCode: EXIT.cantCreate, hint: 'choose another file name, or move the old backup away first' })
  const target = resolveApi()
  process.stderr.write(`${app}: the agent at ${target.describe} takes a snapshot and builds the backup...\n`)
  const started = Date.now()
  const waiting = setInterval(() => { process.stderr.write(`${app}: still building the backup (${Math.round((Date.now() - started) / 1000)} s)\n`) }, 10_000)
  const progress = new Progress(`${app}: downloading`)
  let transfer
  try {
    transfer = await apiDownload(`/v1/apps/${encodeURIComponent(app)}/backup`, file, {
      target,
      onAnswer: () => { clearInterval(waiting); progress.restart() },
      progress: (done, total) => { progress.update(done, total) }
    })
  } catch (err) {
    progress.abandon()
    throw err
  } finally {
    clearInterval(waiting)
  }
  const moved = progress.finish()
  // The whole file, checked here as a restore would read it.
  const meta = await checkFile(file, `${app}: checking ${file}`)
  const snapshot = typeof meta.settings.snapshot === 'string' ? meta.settings.snapshot : null
  const volumes = meta.volumes.map(v => ({ name: v.name, entries: v.entries, bytes: v.bytes }))
  if (values.json === true) {
    process.stdout.write(JSON.stringify({ file, app, bytes: transfer.bytes, snapshot, createdAt: meta.createdAt, volumes, seconds: (Date.now() - started) / 1000, download: { seconds: moved.seconds, bytesPerSecond: moved.bytesPerSecond } }, null, 2) + '\n')
    return 0
  }
  process.stdout.write(`${app} backed up to ${file} (${bytes(transfer.bytes)}) in ${((Date.now() - started) / 1000).toFixed(1)} s${snapshot !== null ? ` from snapshot ${snapshot}` : ''}\n`)
  for (const v of volumes) process.stdout.write(`  volume ${v.name}: ${v.entries} entries, ${bytes(v.bytes)}\n`)
  return 0
}

/** Reads the whole backup file and checks every rule and checksum (archive.ts), with progress. */
async function checkFile (file: string, label: string): Promise<BackupMeta> {
  const progress = new Progress(label)
  try {
    const meta = await verifyArchive(file, { signal: AbortSignal.timeout(LONG_MS), progress: (p) => { progress.update(p.bytesDone, p.bytesTotal) } })
    progress.finish()
    return meta
  } catch (err) {
    progress.abandon()
    throw err
  }
}

export async function restoreCommand (argv: string[]): Promise<number> {
  const { values, args: [fileArg] } = parseCommand(argv, {
    usage: 'dcloud restore FILE [--name NAME] [--node NODE] [--data-dir DIR] [--grant PERM,...|all] [--yes] [--json]',
    args: ['FILE'],
    options: { name: { type: 'string' }, node: { type: 'string' }, 'data-dir': { type: 'string' }, domain: { type: 'string' }, grant: { type: 'string', multiple: true, default: [] }, yes: { type: 'boolean', default: false }, json: { type: 'boolean', default: false } }
  })
  if (values.domain !== undefined) throw new UsageError('--domain is gone: an app answers at NAME.DOMAIN, DOMAIN being the cluster\'s; choose the app\'s name with --name, the cluster\'s domain with `dcloud domain set`', restoreHelp)
  const file = resolve(fileArg)
  // Checked here, before anything is sent: the CLI has the file and the same reader as the agent.
  const meta = await checkFile(file, `checking ${file}`)
  process.stderr.write(`${file}: ${meta.app} (${meta.manifest.id} ${meta.manifest.version}), backed up ${meta.createdAt}, ${meta.volumes.length} volume(s), ${bytes(meta.volumes.reduce((n, v) => n + v.bytes, 0))}: verified\n`)
  let name = values.name ?? null
  let node = values.node ?? null
  let hostPath = values['data-dir'] === undefined ? null : resolve(values['data-dir'])
  if (values.yes !== true) {
    if (!process.stdin.isTTY) throw new UserError('restore asks where to put the app: run it in a terminal, or give --yes (with --name and --node as needed)', { exitCode: EXIT.usage })
    const status = await apiGet<StatusResponse>('/v1/status')
    const apps = await apiGet<AppView[]>('/v1/apps')
    const rl = createInterface({ input: process.stdin, output: process.stderr })
    try {
      const taken = apps.some(a => a.name === (name ?? meta.app))
      const n = (await rl.question(`name [${taken ? `${meta.app} is taken, choose another` : name ?? meta.app}]: `)).trim()
      if (n !== '') name = n
      const alive = status.nodes.filter(x => x.state === 'alive').map(x => x.name)
      const where = (await rl.question(`node (${alive.join(', ')}) [${node ?? 'any'}]: `)).trim()
      if (where !== '') node = where
      const dir = (await rl.question(`data: Docker volumes, or a directory on the node [${hostPath ?? 'Docker volumes'}]: `)).trim()
      if (dir !== '') hostPath = resolve(dir)
      process.stderr.write(`restoring ${name ?? meta.app} on ${node ?? 'any node'}, data in ${hostPath ?? 'Docker volumes'}\n`)
      if ((await rl.question('restore? [y/N] ')).trim().toLowerCase() !== 'y') return EXIT.failure
    } finally {
      rl.close()
    }
  }
  // Refused here, before a byte of a file that may be gigabytes is sent, by the agent's own rule.
  if (hostPath !== null) {
    try {
      decodeStorage({ hostPath }, '--data-dir')
    } catch (err) {
      if (err instanceof ValidationError) throw new UsageError(err.message, restoreHelp)
      throw err
    }
  }
  // The app's own permissions, and its data directory's: asked as `app install` asks.
  const grants = await askGrants(meta.manifest, values.grant ?? [], values.yes === true, hostPath === null ? null : { hostPath }, 'restored')
  let nodeId: string | null = null
  if (node !== null) {
    const status = await apiGet<StatusResponse>('/v1/status')
    const found = status.nodes.find(n => n.name === node || n.id === node)
    if (found === undefined) throw new UserError(`no node named ${node} in the cluster`, { exitCode: EXIT.noInput, hint: `nodes: ${status.nodes.map(n => n.name).join(', ')}` })
    nodeId = found.id
  }
  const query = new URLSearchParams({ name: name ?? meta.app })
  if (nodeId !== null) query.set('node', nodeId)
  if (hostPath !== null) query.set('dataDir', hostPath)
  if (grants.length > 0) query.set('grants', grants.join(','))
  const started = Date.now()
  const progress = new Progress(`${name ?? meta.app}: uploading`)
  let upload
  try {
    upload = await apiUpload<RestoreView>(`/v1/backups/restore?${query.toString()}`, file, {
      progress: (done, total) => { progress.update(done, total) },
      onSent: () => { progress.finish(); process.stderr.write(`${name ?? meta.app}: uploaded; the agent checks and imports it...\n`) }
    })
  } catch (err) {
    progress.abandon()
    throw err
  }
  const r = upload.answer
  const sent = { bytes: upload.bytes, seconds: upload.ms / 1000, bytesPerSecond: upload.ms > 0 ? Math.round(upload.bytes * 1000 / upload.ms) : 0 }
  process.stderr.write(`${r.name}: installed${r.snapshot !== null ? `; its data is snapshot ${r.snapshot}` : ''}, waiting for it to run...\n`)
  for (;;) {
    const app = (await apiGet<AppView[]>('/v1/apps')).find(a => a.name === r.name)
    if (app !== undefined && app.state === 'running' && (r.snapshot === null || app.relocation != null)) {
      if (values.json === true) process.stdout.write(JSON.stringify({ ...app, upload: sent }, null, 2) + '\n')
      else {
        process.stdout.write(`${r.name} restored and running on ${app.node ?? '?'} in ${((Date.now() - started) / 1000).toFixed(1)} s${app.endpoints.length > 0 ? `; raw ports ${app.endpoints.join(' ')}` : ''}\n`)
        if (app.hostPath !== undefined) process.stdout.write(`  data in ${app.hostPath} on ${app.node ?? '?'}\n`)
        if (app.url !== null) process.stdout.write(`  at ${app.url}\n`)
      }
      return 0
    }
    if (Date.now() - started > 30 * 60_000) throw new UserError(`${r.name} was installed but is not running yet`, { exitCode: EXIT.tempFail, hint: `\`dcloud app why ${r.name}\` says why` })
    await new Promise(resolve => setTimeout(resolve, 500))
  }
}

async function confirm (question: string): Promise<boolean> {
  if (!process.stdin.isTTY) throw new UserError('this asks for a confirmation: run it in a terminal, or add --yes', { exitCode: EXIT.usage })
  const rl = createInterface({ input: process.stdin, output: process.stderr })
  try {
    return (await rl.question(`${question} [y/N] `)).trim().toLowerCase() === 'y'
  } finally {
    rl.close()
  }
}
