/**
 * A real PostgreSQL as a Dentropy app: the postgres example installed on n1
 * of a two-node lab, written to by a ledger writer and pgbench, moved to n2
 * under load (`dcloud app move`; n2 gets the image from n1 peer to peer), and
 * checked: every transaction the server acknowledged is still there, and
 * pgbench's transactions were applied whole.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { LabHandle, waitFor } from './harness.ts'
import { containerHealth, publishedPort, startLedgerWriter, startPgbench, verifyLedger, type PgTarget } from '../../scripts/lab/pg-workload.ts'
import type { AppView } from '../../proto/api.ts'
import { need } from '../integration/need.ts'
import { loadApp } from '../../apps/catalog.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { LAB_IMAGE_CACHE, POSTGRES_IMAGE, buildPostgresRootfs, loadPostgresImage } from '../../scripts/lab/postgres-image.ts'

const lab = new LabHandle('tpg')
const APP_DIR = join(PROJECT_ROOT, 'apps', 'examples', 'postgres')
/** The runtime names containers dcloud-APP-SERVICE. */
const DB = 'dcloud-postgres-db'
const N1_IP = '10.213.0.11'
const N2_IP = '10.213.0.12'

function say (line: string): void {
  process.stderr.write(`${line}\n`)
}

describe('the postgres example app', () => {
  it('is a valid manifest: one stateful service, no web UI', async () => {
    const { manifest, warnings, format } = await loadApp(APP_DIR)
    expect(format).toBe('dcloud')
    expect(warnings).toEqual([])
    expect(manifest).toMatchObject({ id: 'postgres', category: 'database', architectures: [], web: null, requests: { memoryBytes: 256 * 1024 * 1024, cpus: 0.5 } })
    const db = manifest.compose.services.db
    expect(db?.image).toBe(POSTGRES_IMAGE)
    expect(db?.volumes).toEqual([{ source: 'pgdata', target: '/var/lib/postgresql/data', kind: 'volume', readOnly: false }])
    expect(db?.ports).toEqual([{ host: null, container: 5432, protocol: 'tcp' }])
    expect(db?.healthcheck?.test).toContain('pg_isready')
  })
})

describe('postgres in the lab', () => {
  beforeAll(async () => {
    await need(['debootstrap'])
    const t0 = performance.now()
    // Built before the lab is up: the first build (debootstrap) takes a minute or more.
    const tar = await buildPostgresRootfs(LAB_IMAGE_CACHE, l => { say(`postgres image: ${l}`) })
    say(`postgres rootfs ready in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${tar}`)
    await lab.up(2)
    const t1 = performance.now()
    // Into n1 only: n2 must get it from n1, peer to peer, when the app moves there.
    await loadPostgresImage(lab.lab.dockerSocket('n1'), tar)
    const size = (await lab.exec('n1', ['docker', 'image', 'inspect', '--format', '{{.Size}}', POSTGRES_IMAGE])).stdout.trim()
    say(`${POSTGRES_IMAGE} loaded into n1 in ${((performance.now() - t1) / 1000).toFixed(1)} s (${(Number(size) / 1e6).toFixed(0)} MB)`)
  }, 1_800_000)

  afterAll(async () => {
    await lab.down()
  }, 120_000)

  async function appView (node: string): Promise<AppView | undefined> {
    const r = await lab.exec(node, ['dcloud', 'app', 'ls', '--json'])
    if (r.code !== 0) throw new Error(`dcloud app ls on ${node} exited ${r.code}: ${r.stderr}`)
    return (JSON.parse(r.stdout) as AppView[]).find(a => a.name === 'postgres')
  }

  it('loses no committed transaction when the database moves from n1 to n2 under load', async () => {
    const tStart = performance.now()
    await waitFor(async () => (await lab.status('n1')).leader !== null ? true : undefined, 30_000, 'a leader')
    await waitFor(async () => Object.values(await lab.view('n1')).filter(s => s === 'alive').length === 2 ? true : undefined, 30_000, 'n1 to see both nodes alive')
    const install = await lab.exec('n1', ['dcloud', 'app', 'install', APP_DIR, '--node', 'n1'])
    expect(install.code, install.stderr).toBe(0)
    expect(install.stdout).toMatch(/postgres is running on n1/)
    // The healthcheck (pg_isready over TCP) passes once initdb is done and the server listens.
    const { ms: healthyMs } = await waitFor(async () => await containerHealth(lab.lab, 'n1', DB) === 'healthy' ? true : undefined, 60_000, `${DB} to be healthy`, 250)
    let target: PgTarget = { host: N1_IP, port: await publishedPort(lab.lab, 'n1', DB) }
    say(`postgres healthy ${(healthyMs / 1000).toFixed(1)} s after install; published at ${target.host}:${target.port}`)
    // n2 has no copy of the image: the move has to bring it from n1.
    expect((await lab.exec('n2', ['docker', 'image', 'inspect', POSTGRES_IMAGE])).code).not.toBe(0)

    // The clients run on n1's engine (it has the image; the db leaves it) and follow the db by target file.
    const writer = await startLedgerWriter(lab.lab, 'n1', target.host, target.port, 'ledger1')
    const bench = await startPgbench(lab.lab, 'n1', target.host, target.port, { seconds: 60, clients: 2 })
    try {
      await waitFor(async () => await bench.started() && (await writer.counts()).committed >= 50 ? true : undefined, 60_000, 'the writer and pgbench to be under way', 250)
      await new Promise(resolve => setTimeout(resolve, 5000))

      const before = await writer.counts()
      const m0 = performance.now()
      const move = await lab.exec('n1', ['dcloud', 'app', 'move', 'postgres', 'n2'])
      const moveMs = performance.now() - m0
      say(`dcloud app move postgres n2 (exit ${move.code}, ${(moveMs / 1000).toFixed(1)} s):\n${move.stdout}${move.stderr}`)
      expect(move.code, `${move.stderr}\n${move.stdout}`).toBe(0)
      const reported = /downtime (\d+) ms/.exec(move.stdout)
      expect(reported, move.stdout).not.toBeNull()
      const downtimeMs = Number(reported![1])
      const atMove = await writer.counts()

      await waitFor(async () => (await appView('n1'))?.node === 'n2' ? true : undefined, 30_000, 'postgres on n2')
      // The image came from n1, peer to peer.
      expect((await lab.exec('n2', ['docker', 'image', 'inspect', '--format', '{{.Id}}', POSTGRES_IMAGE])).code).toBe(0)
      const sent = (await readFile(join(lab.lab.nodeDir('n1'), 'agent.log'), 'utf8')).split('\n').filter(l => l.includes('sent image') || l.includes('image transfer failed'))
      say(`n1's agent: ${sent.join('\n') || '(no image transfer logged)'}`)
      // Nothing of the db stays on n1.
      expect((await lab.exec('n1', ['docker', 'ps', '-q', '--filter', `name=^${DB}$`])).stdout.trim()).toBe('')

      // The new copy: n2's address, and the port n2's engine picked.
      target = { host: N2_IP, port: await publishedPort(lab.lab, 'n2', DB) }
      await writer.setTarget(target)
      await bench.setTarget(target)
      const { ms: backMs } = await waitFor(async () => (await writer.counts()).committed > atMove.committed ? true : undefined, 60_000, 'the writer to commit on n2', 100)
      say(`move reported downtime ${downtimeMs} ms; the writer committed on n2 ${(backMs / 1000).toFixed(1)} s after the move command returned, at ${target.host}:${target.port}`)
      const logs = await lab.exec('n2', ['docker', 'logs', DB])
      say(`postgres on n2 started ${/database system was shut down at/.test(logs.stderr) ? 'from a cleanly shut down data directory' : /database system was interrupted|automatic recovery in progress/.test(logs.stderr) ? 'with crash recovery' : '(start not recognised in its log)'}`)
      await waitFor(async () => (await writer.counts()).committed >= atMove.committed + 50 ? true : undefined, 60_000, 'the writer to commit 50 more on n2', 250)

      const bench1 = await bench.wait()
      const ledger = await writer.stop()
      const verdict = await verifyLedger(lab.lab, 'n1', target, [ledger], bench1)
      const ran = bench1.runs.filter(r => r.processed > 0 || r.tps !== null)
      const tps = ran.map(r => r.tps?.toFixed(0) ?? '-').join(', ')
      const a = await appView('n1')
      say(`ledger: ${verdict.committed} committed (${before.committed} before the move, ${atMove.committed} when it returned), ${ledger.failed.length} failed attempts, ${verdict.unacknowledged} in the table unacknowledged, ${verdict.missing.length} missing`)
      say(`pgbench: ${bench1.processed} transactions in ${bench1.runs.length} runs (${ran.length} that ran) over ${bench1.seconds} s (${bench1.tps.toFixed(0)} tps overall; per run that ran: ${tps}); history holds ${verdict.pgbench?.historyRows}; sums ${JSON.stringify(verdict.pgbench?.sums)}`)
      for (const [i, r] of bench1.runs.entries()) if (r.processed > 0 || r.aborted) say(`  pgbench run ${i + 1}: ${r.processed} processed, exit ${r.exitCode}${r.error !== null ? `: ${r.error}` : ''}`)
      say(`relocation: ${JSON.stringify(a?.relocation)}; downtime ${downtimeMs} ms; test body ${((performance.now() - tStart) / 1000).toFixed(1)} s`)

      expect(verdict.missing, `psql errors:\n${ledger.errors}`).toEqual([])
      expect(verdict.committed).toBeGreaterThan(atMove.committed)
      expect(ledger.failed.length).toBeLessThan(verdict.committed)
      expect(downtimeMs).toBeGreaterThan(0)
      expect(a?.node).toBe('n2')
      expect(a?.relocation?.kind).toBe('move')
      // The move cut pgbench's connections: a run aborted, and a later one ran on n2.
      expect(bench1.runs.some(r => r.aborted)).toBe(true)
      expect(bench1.runs.at(-1)?.processed).toBeGreaterThan(0)
      expect(verdict.pgbench?.historyOk).toBe(true)
      expect(verdict.pgbench?.balanced).toBe(true)
    } finally {
      // Whatever failed above, no client container or work directory outlives the test.
      await writer.stop().catch(() => {})
      await bench.cancel()
    }
  }, 420_000)
})
