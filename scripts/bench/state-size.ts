/**
 * `npm run bench:state`: how big the replicated desired state gets, and what
 * one change costs on the wire, for a cluster of 50 apps and 20 users.
 *
 * The apps are real: every app of the shared CasaOS and Runtipi fixtures the
 * importers accept, plus our examples, cycled to 50, each installed under its
 * own name. The users are modelled (accounts have not landed yet): a record
 * with the fields the "People" design needs, sized as their real encodings
 * are (an argon2id PHC string, two passkeys' COSE keys, a TOTP secret).
 *
 * Sizes are of the JSON the agents send and store: a snapshot (what a node
 * that was away gets when the leader no longer keeps the entries it lacks),
 * each kind of log entry, and an append carrying it, length prefix included.
 * Writes docs/bench/state-size.json and its section of docs/benchmarks.md.
 */
import { execFileSync } from 'node:child_process'
import { mkdir, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import { randomBytes } from 'node:crypto'
import { loadApp, listCatalog } from '../../apps/catalog.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { applyChange, EMPTY_STATE } from '../../agent/cluster/desired-store.ts'
import type { AppManifest } from '../../proto/app.ts'
import type { AppendRequest, DesiredChange, DesiredState, LogEntry } from '../../proto/cluster.ts'
import { writeBenchSection } from './report.ts'

const APPS = 50
const USERS = 20
const FOLLOWERS = 2
const FIXTURES = join(PROJECT_ROOT, '..', 'shared', 'fixtures')
const PEER = '12D3KooWFi8L9725trCzbPFxZuGGGW5HEaLdcc1AqbRwuJGWDk2Y'

async function realApps (): Promise<Array<Extract<DesiredChange, { kind: 'install' }>['app']>> {
  const refs: string[] = (await listCatalog()).map(a => a.path)
  for (const [store, sub] of [['casaos-appstore', 'Apps'], ['runtipi-appstore', 'apps']] as const) {
    const dir = join(FIXTURES, store, sub)
    for (const name of (await readdir(dir).catch(() => [])).sort()) refs.push(join(dir, name))
  }
  const manifests: AppManifest[] = []
  for (const ref of refs) {
    try { manifests.push((await loadApp(ref)).manifest) } catch { /* refused by the importer: not an app we could install */ }
  }
  if (manifests.length === 0) throw new Error(`no app could be loaded from the catalog or ${FIXTURES}`)
  return Array.from({ length: APPS }, (_, i) => ({ name: `app-${i + 1}`, manifest: manifests[i % manifests.length]!, pinnedNode: null }))
}

const b64 = (n: number): string => randomBytes(n).toString('base64url')

/** A user as the People issue will store one: modelled, sized like the real encodings. */
function modelledUser (i: number): Record<string, unknown> {
  return {
    name: `user${i}`,
    email: `user${i}@example.org`,
    role: i === 0 ? 'owner' : 'member',
    groups: ['family'],
    // argon2id PHC string: $argon2id$v=19$m=...,t=...,p=...$<22 salt>$<43 hash>
    password: `$argon2id$v=19$m=19456,t=2,p=1$${b64(16)}$${b64(32)}`,
    totp: b64(40),
    passkeys: [0, 1].map(() => ({ id: b64(32), publicKey: b64(77), counter: 0, transports: ['internal', 'hybrid'], createdAt: Date.now() })),
    createdAt: Date.now()
  }
}

const bytes = (v: unknown): number => Buffer.byteLength(JSON.stringify(v))
/** An append on the wire: the JSON plus its varint length prefix (2 or 3 bytes at these sizes). */
const appendBytes = (req: AppendRequest): number => { const n = bytes(req); return n + (n < 16_384 ? 2 : 3) }

const installs = await realApps()
let state: DesiredState = EMPTY_STATE
const entries: LogEntry[] = []
for (const app of installs) {
  const entry: LogEntry = { index: state.revision + 1, term: 1, change: { kind: 'install', app } }
  state = applyChange(state, entry.change!, entry)
  entries.push(entry)
}
const users = Array.from({ length: USERS }, (_, i) => modelledUser(i))
const installSizes = entries.map(e => bytes(e))
/** The middle install by size (an actual entry, not an average of two). */
const middle = [...installSizes].sort((a, b) => a - b)[Math.floor(installSizes.length / 2)] as number
const entryOf = (change: DesiredChange): LogEntry => ({ index: state.revision + 1, term: 1, change })
const kinds: Record<string, LogEntry> = {
  'install (median app)': entries[installSizes.indexOf(middle)] as LogEntry,
  remove: entryOf({ kind: 'remove', name: 'app-1' }),
  'move / pin': entryOf({ kind: 'move', name: 'app-1', node: PEER }),
  drain: entryOf({ kind: 'drain', node: PEER, drained: true }),
  'relocate (failover record)': entryOf({ kind: 'relocate', name: 'app-1', generation: 2, relocation: { kind: 'failover', snapshot: 'a1b2c3d4', snapshotTime: Date.now(), from: PEER, to: PEER, at: Date.now(), downtimeMs: null } })
}
const perChange = Object.fromEntries(Object.entries(kinds).map(([k, e]) => {
  const append = appendBytes({ term: 1, leader: PEER, prevIndex: e.index - 1, prevTerm: 1, entries: [e], commit: e.index - 1 })
  // The follower's answer, and the commit that reaches it with the next append or the leader's next probe.
  const answer = bytes({ ok: true, value: { term: 1, ok: true, lastIndex: e.index, reason: 'ok' } }) + 1
  return [k, { entryBytes: bytes(e), appendBytes: append, perFollowerBytes: append + answer, clusterBytes: (append + answer) * FOLLOWERS }]
}))
const appsBytes = bytes(state)
const usersBytes = bytes(users)
const snapshotJson = JSON.stringify({ ...state, users })
const result = {
  commit: execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: PROJECT_ROOT, encoding: 'utf8' }).trim(),
  measuredAt: new Date().toISOString(),
  apps: APPS,
  distinctManifests: new Set(installs.map(a => a.manifest.id)).size,
  users: USERS,
  usersModelled: true,
  stateBytes: { apps: appsBytes, users: usersBytes, total: Buffer.byteLength(snapshotJson), gzip: gzipSync(snapshotJson).length },
  installEntryBytes: { median: middle, max: Math.max(...installSizes), min: Math.min(...installSizes) },
  perChange,
  followers: FOLLOWERS
}
await mkdir(join(PROJECT_ROOT, 'docs', 'bench'), { recursive: true })
await writeFile(join(PROJECT_ROOT, 'docs', 'bench', 'state-size.json'), JSON.stringify(result, null, 2) + '\n')

const kb = (n: number): string => n >= 10_240 ? `${(n / 1024).toFixed(0)} KiB` : `${n} B`
const rows = Object.entries(perChange).map(([k, v]) => `| ${k} | ${kb(v.entryBytes)} | ${kb(v.appendBytes)} | ${kb(v.clusterBytes)} |`).join('\n')
await writeBenchSection('state', 'Replicated state: size, and what a change costs', `Measured at commit ${result.commit} (${result.measuredAt.slice(0, 10)}) by \`npm run bench:state\`; raw results in [bench/state-size.json](bench/state-size.json).

A cluster of ${APPS} apps (${result.distinctManifests} distinct real manifests: our examples and the CasaOS and Runtipi fixtures the importers take) and ${USERS} users (**modelled**: accounts have not landed; each record sized as argon2id, two passkeys and a TOTP secret encode).

| state | JSON | gzip |
| --- | --- | --- |
| ${APPS} apps | ${kb(appsBytes)} | |
| ${USERS} users (modelled) | ${kb(usersBytes)} | |
| whole snapshot | ${kb(result.stateBytes.total)} | ${kb(result.stateBytes.gzip)} |

A node that was away gets the whole snapshot once, and only when the leader no longer keeps the entries it lacks (the log is folded into a snapshot every 64 entries); otherwise it gets the entries. Every change costs one log entry, sent once to each follower (${FOLLOWERS} in a 3-node cluster) and appended to one file on each node; before this log, every change made every follower pull the whole document (up to 16 MiB) and rewrite it.

| change | log entry | append on the wire | whole cluster, ${FOLLOWERS} followers, with answers |
| --- | --- | --- | --- |
${rows}

An install entry carries the app's whole manifest: ${kb(result.installEntryBytes.min)} to ${kb(result.installEntryBytes.max)}, median ${kb(result.installEntryBytes.median)}. Libp2p's framing and encryption (Yamux, Noise: about 40 bytes a message) come on top.
`)
process.stdout.write(JSON.stringify(result, null, 2) + '\n')
