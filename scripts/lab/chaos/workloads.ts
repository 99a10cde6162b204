/**
 * The workloads of a chaos run, kept going through the faults:
 * - notes writers (scripts/lab/notes-writer.ts), one in every node's
 *   namespace, each following the app through its own node's agent; a writer
 *   killed with its node is started again, under a new client id, once the
 *   node is back;
 * - the PostgreSQL ledger writer and pgbench (scripts/lab/pg-workload.ts), as
 *   client containers on one node's engine, pointed at wherever the database
 *   runs, and started again on a live node when their node loses them.
 * Every acknowledgement is kept with its time and the node that gave it.
 */
import type { Lab } from '../lab.ts'
import { startLabWriters, type LabWriters } from '../notes-client.ts'
import { startLedgerWriter, startPgbench, type LedgerResult, type LedgerWriter, type Pgbench, type PgbenchResult } from '../pg-workload.ts'
import type { Ack } from './checks.ts'

export class NotesWorkload {
  private readonly lab: Lab
  private readonly writers = new Map<string, { w: LabWriters, client: string }>()
  private readonly finished: LabWriters[] = []
  private readonly generation = new Map<string, number>()
  private readonly ipToNode: Map<string, string>
  private readonly log: (line: string) => void
  stopped = false

  constructor (lab: Lab, ipToNode: Map<string, string>, log: (line: string) => void) {
    this.lab = lab
    this.ipToNode = ipToNode
    this.log = log
  }

  /** Starts a writer in every node that has none running (and is up, as `up(node)` says). */
  supervise (up: (node: string) => boolean, nodes: string[]): void {
    if (this.stopped) return
    for (const node of nodes) {
      const cur = this.writers.get(node)
      if (cur !== undefined && !cur.w.hasExited()) continue
      if (cur !== undefined) {
        this.finished.push(cur.w)
        this.writers.delete(node)
        this.log(`notes writer ${cur.client} on ${node} ended${cur.w.errorOutput().trim() !== '' ? `: ${cur.w.errorOutput().trim().split('\n').at(-1) ?? ''}` : ''}`)
      }
      if (!up(node)) continue
      const gen = (this.generation.get(node) ?? 0) + 1
      this.generation.set(node, gen)
      const client = `${node}w${gen}`
      this.writers.set(node, { w: startLabWriters(this.lab.name, node, { app: 'notes' }, [client], { intervalMs: 50, timeoutMs: 3000 }), client })
    }
  }

  /** Every acknowledged record so far, as the judgements take them. */
  acks (): Ack[] {
    const all = [...this.finished, ...[...this.writers.values()].map(x => x.w)]
    return all.flatMap(w => w.acknowledged()).map(r => ({ app: 'notes', id: `${r.clientId} ${r.seq}`, node: nodeOfUrl(r.url, this.ipToNode), at: r.at }))
  }

  async stop (): Promise<void> {
    this.stopped = true
    await Promise.all([...this.writers.values()].map(async ({ w }) => { await w.stop(20_000).catch(() => {}) }))
    this.finished.push(...[...this.writers.values()].map(x => x.w))
    this.writers.clear()
  }
}

export function nodeOfUrl (url: string | null, ipToNode: Map<string, string>): string | null {
  if (url === null) return null
  try { return ipToNode.get(new URL(url).hostname) ?? null } catch { return null }
}

export interface PgTargetNow { node: string, host: string, port: number }

export class PostgresWorkload {
  private readonly lab: Lab
  private readonly ipToNode: Map<string, string>
  private readonly log: (line: string) => void
  private ledger: { w: LedgerWriter, node: string } | null = null
  private bench: { b: Pgbench, node: string } | null = null
  private readonly ledgerResults: LedgerResult[] = []
  private readonly benchResults: PgbenchResult[] = []
  private target: PgTargetNow | null = null
  private ledgerCount = 0
  private readonly endsAt: number
  private busy = false
  stopped = false

  constructor (lab: Lab, ipToNode: Map<string, string>, endsAt: number, log: (line: string) => void) {
    this.lab = lab
    this.ipToNode = ipToNode
    this.endsAt = endsAt
    this.log = log
  }

  currentTarget (): PgTargetNow | null { return this.target }

  /**
   * Points the clients at `target` (where the database runs now, if it runs
   * once), and starts clients again where they were lost. `clientAlive(node, name)`
   * says whether a client container runs; `pick()` names a live node for new clients.
   */
  async supervise (target: PgTargetNow | null, clientAlive: (node: string, name: string) => Promise<boolean | null>, pick: () => string | null): Promise<void> {
    if (this.stopped || this.busy) return
    this.busy = true
    try {
      if (target !== null && (this.target === null || target.host !== this.target.host || target.port !== this.target.port)) {
        this.target = target
        await this.ledger?.w.setTarget(target)
        await this.bench?.b.setTarget(target)
      }
      if (this.target === null) return
      if (this.ledger !== null && await clientAlive(this.ledger.node, `pg-ledger-${this.lab.name}-${this.ledger.w.client}`) === false) {
        this.log(`ledger writer ${this.ledger.w.client} on ${this.ledger.node} is gone; collecting what it recorded`)
        this.ledgerResults.push(await this.ledger.w.stop())
        this.ledger = null
      }
      if (this.ledger === null) {
        const node = pick()
        if (node !== null) {
          this.ledgerCount++
          const w = await startLedgerWriter(this.lab, node, this.target.host, this.target.port, `ledger${this.ledgerCount}`)
          this.ledger = { w, node }
          this.log(`ledger writer ${w.client} started on ${node}`)
        }
      }
      const left = Math.floor((this.endsAt - Date.now()) / 1000)
      if (this.bench !== null && await this.bench.b.containerRunning() === false) {
        this.benchResults.push(await this.bench.b.wait().catch(() => emptyBench()))
        this.bench = null
      }
      if (this.bench === null && left > 20) {
        const node = pick()
        if (node !== null) {
          this.bench = { b: await startPgbench(this.lab, node, this.target.host, this.target.port, { seconds: left, clients: 2 }), node }
          this.log(`pgbench started on ${node} for ${left} s`)
        }
      }
    } catch (err) {
      this.log(`postgres workload: ${(err as Error).message}`)
    } finally {
      this.busy = false
    }
  }

  /** Ledger acknowledgements so far are only known once a writer stops; at the end, all of them. */
  acks (): Ack[] {
    return this.ledgerResults.flatMap(r => r.acks.map(a => ({ app: 'postgres', id: `${r.client}/${a.seq}`, node: this.ipToNode.get(a.host) ?? null, at: a.at })))
  }

  async stop (): Promise<{ ledgers: LedgerResult[], bench: PgbenchResult }> {
    this.stopped = true
    while (this.busy) await new Promise(resolve => setTimeout(resolve, 100))
    if (this.ledger !== null) this.ledgerResults.push(await this.ledger.w.stop().catch(() => ({ client: this.ledger?.w.client ?? '?', committed: [], acks: [], failed: [], errors: 'could not be read back' })))
    this.ledger = null
    if (this.bench !== null) {
      await this.bench.b.finish()
      this.benchResults.push(await this.bench.b.wait().catch(() => emptyBench()))
    }
    this.bench = null
    const runs = this.benchResults.flatMap(r => r.runs)
    const processed = this.benchResults.reduce((n, r) => n + r.processed, 0)
    const seconds = this.benchResults.reduce((n, r) => n + r.seconds, 0)
    return { ledgers: [...this.ledgerResults], bench: { processed, runs, seconds, tps: seconds > 0 ? processed / seconds : 0 } }
  }
}

function emptyBench (): PgbenchResult {
  return { processed: 0, runs: [], seconds: 0, tps: 0 }
}
