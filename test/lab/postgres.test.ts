/**
 * A real PostgreSQL as a Dentropy app: the postgres example installed on a
 * one-node lab, written to by a ledger writer and pgbench, restarted under
 * load, and checked: every transaction the server acknowledged is still
 * there, and pgbench's transactions were applied whole.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { LabHandle, waitFor } from './harness.ts'
import { containerHealth, publishedPort, startLedgerWriter, startPgbench, verifyLedger, type PgTarget } from './pg-workload.ts'
import { need } from '../integration/need.ts'
import { loadApp } from '../../apps/catalog.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { LAB_IMAGE_CACHE, POSTGRES_IMAGE, buildPostgresRootfs, loadPostgresImage } from '../../scripts/lab/postgres-image.ts'

const lab = new LabHandle('tpg')
const APP_DIR = join(PROJECT_ROOT, 'apps', 'examples', 'postgres')
/** The runtime names containers dcloud-APP-SERVICE. */
const DB = 'dcloud-postgres-db'
const NODE_IP = '10.213.0.11'

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
    await lab.up(1)
    const t1 = performance.now()
    await loadPostgresImage(lab.lab.dockerSocket('n1'), tar)
    const size = (await lab.exec('n1', ['docker', 'image', 'inspect', '--format', '{{.Size}}', POSTGRES_IMAGE])).stdout.trim()
    say(`${POSTGRES_IMAGE} loaded into n1 in ${((performance.now() - t1) / 1000).toFixed(1)} s (${(Number(size) / 1e6).toFixed(0)} MB)`)
  }, 1_800_000)

  afterAll(async () => {
    await lab.down()
  })

  it('loses no committed transaction when the database restarts under load', async () => {
    await waitFor(async () => (await lab.status('n1')).leader !== null ? true : undefined, 15_000, 'n1 to lead')
    const install = await lab.exec('n1', ['dcloud', 'app', 'install', APP_DIR])
    expect(install.code, install.stderr).toBe(0)
    expect(install.stdout).toMatch(/postgres is running on n1/)
    // The healthcheck (pg_isready over TCP) passes once initdb is done and the server listens.
    const { ms: healthyMs } = await waitFor(async () => await containerHealth(lab, 'n1', DB) === 'healthy' ? true : undefined, 60_000, `${DB} to be healthy`, 250)
    let target: PgTarget = { host: NODE_IP, port: await publishedPort(lab, 'n1', DB) }
    say(`postgres healthy ${(healthyMs / 1000).toFixed(1)} s after install; published at ${target.host}:${target.port}`)

    const writer = await startLedgerWriter(lab, 'n1', target.host, target.port, 'ledger1')
    const bench = await startPgbench(lab, 'n1', target.host, target.port, { seconds: 25, clients: 2 })
    try {
      await waitFor(async () => await bench.started() && (await writer.counts()).committed >= 50 ? true : undefined, 60_000, 'the writer and pgbench to be under way', 250)
      await new Promise(resolve => setTimeout(resolve, 5000))

      const before = await writer.counts()
      const startedBefore = (await lab.exec('n1', ['docker', 'inspect', '--format', '{{.State.StartedAt}}', DB])).stdout.trim()
      const r0 = performance.now()
      const restart = await lab.exec('n1', ['docker', 'restart', DB])
      expect(restart.code, restart.stderr).toBe(0)
      const restartMs = performance.now() - r0
      expect((await lab.exec('n1', ['docker', 'inspect', '--format', '{{.State.StartedAt}}', DB])).stdout.trim()).not.toBe(startedBefore)
      // Docker's SIGTERM made a fast shutdown, a clean one: the server came back without crash recovery.
      const logs = await lab.exec('n1', ['docker', 'logs', DB])
      expect(logs.stderr).toMatch(/received fast shutdown request[\s\S]*database system is shut down[\s\S]*database system was shut down at/)
      expect(logs.stderr).not.toMatch(/database system was interrupted|automatic recovery in progress/)
      // A port the node picked is picked again at each start.
      target = { host: NODE_IP, port: await publishedPort(lab, 'n1', DB) }
      await writer.setTarget(target)
      await bench.setTarget(target)
      const { ms: backMs } = await waitFor(async () => (await writer.counts()).committed > before.committed ? true : undefined, 60_000, 'the writer to commit after the restart', 100)
      say(`docker restart took ${(restartMs / 1000).toFixed(1)} s; the writer committed again ${(backMs / 1000).toFixed(1)} s later, at ${target.host}:${target.port}`)
      await waitFor(async () => (await writer.counts()).committed >= before.committed + 50 ? true : undefined, 60_000, 'the writer to commit 50 more', 250)

      const bench1 = await bench.wait()
      const ledger = await writer.stop()
      const verdict = await verifyLedger(lab, 'n1', target, [ledger], bench1)
      const tps = bench1.runs.map(r => r.tps?.toFixed(0) ?? '-').join(', ')
      say(`ledger: ${verdict.committed} committed (${before.committed} before the restart), ${ledger.failed.length} failed attempts, ${verdict.unacknowledged} in the table unacknowledged, ${verdict.missing.length} missing`)
      say(`pgbench: ${bench1.processed} transactions in ${bench1.runs.length} runs over ${bench1.seconds} s (${bench1.tps.toFixed(0)} tps overall; per run: ${tps}); history holds ${verdict.pgbench?.historyRows}; sums ${JSON.stringify(verdict.pgbench?.sums)}`)
      for (const [i, r] of bench1.runs.entries()) say(`  pgbench run ${i + 1}: ${r.processed} processed, exit ${r.exitCode}${r.error !== null ? `: ${r.error}` : ''}`)

      expect(verdict.missing, `psql errors:\n${ledger.errors}`).toEqual([])
      expect(verdict.committed).toBeGreaterThan(before.committed)
      expect(ledger.failed.length).toBeLessThan(verdict.committed)
      // The restart cut pgbench's connections: its run aborted and another began on the new port.
      expect(bench1.runs.length).toBeGreaterThanOrEqual(2)
      expect(bench1.runs.some(r => r.aborted)).toBe(true)
      expect(bench1.runs.at(-1)?.processed).toBeGreaterThan(0)
      expect(verdict.pgbench?.historyOk).toBe(true)
      expect(verdict.pgbench?.balanced).toBe(true)
    } finally {
      // Whatever failed above, no client container or work directory outlives the test.
      await writer.stop().catch(() => {})
      await bench.cancel()
    }
  }, 300_000)
})
