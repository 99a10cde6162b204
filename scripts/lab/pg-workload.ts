/**
 * Database workloads for lab tests, to prove that a PostgreSQL app loses no
 * committed transaction through restarts, moves and failures.
 *
 * "Committed" means acknowledged: a transaction counts only when the server
 * answered its COMMIT (for an autocommit INSERT, the statement's completion:
 * the server commits, flushes the WAL (synchronous_commit on) and only then
 * reports the command complete). A transaction whose answer never came (the
 * connection broke, the client timed out) may or may not be in the database;
 * it is never counted as committed, so it can never be reported missing.
 *
 * Lab node addresses are reachable only inside the lab's namespaces, so the
 * clients run as containers of the postgres test image (it has psql and
 * pgbench) on a lab node's engine, in that node's network namespace
 * (`--network host` of a lab dockerd). Each client re-reads its target
 * ("HOST PORT") from a file before every attempt: when the server moves to
 * another node or port, `setTarget` redirects it without a restart.
 * The clients write what they did to files in a directory bind-mounted from
 * this machine, read back when they stop.
 */
import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { tryRun, type RunResult } from './sh.ts'
import { POSTGRES_IMAGE } from './postgres-image.ts'
import type { Lab } from './lab.ts'

export interface PgTarget { host: string, port: number }

/**
 * libpq settings every client uses: give up on a connection attempt after 2 s
 * and on a connection whose peer stopped answering after 5 s (a killed node
 * sends no reset; without these a client would wait minutes for TCP).
 */
const CONN_OPTS = 'user=postgres dbname=postgres connect_timeout=2 tcp_user_timeout=5000 keepalives=1 keepalives_idle=2 keepalives_interval=1 keepalives_count=3'

/** The shell function the client scripts share: the connection string of the current target, or failure. */
const CONNINFO = `conninfo () {
  read -r host port < /w/target || return 1
  [ -n "$host" ] && [ -n "$port" ] || return 1
  echo "host=$host port=$port ${CONN_OPTS} application_name=$1"
}`

/**
 * One INSERT per psql run, each with a new seq, so an attempt's outcome is
 * unambiguous: psql exits 0 and prints the seq only when the server reported
 * the statement complete, i.e. committed. A new connection per attempt also
 * means the writer follows the target at once.
 */
const WRITER = `set -u
client=$1
seq=0
ready=0
while [ ! -e /w/stop ]; do
  # The target read once per attempt: the committed line names the server that answered.
  if ! read -r host port < /w/target || [ -z "$host" ] || [ -z "$port" ]; then sleep 0.2; continue; fi
  c="host=$host port=$port ${CONN_OPTS} application_name=ledger-$client"
  if [ "$ready" = 0 ]; then
    # Concurrent writers may race on IF NOT EXISTS and fail: they retry.
    if timeout 10 psql -X -q -d "$c" -c 'CREATE TABLE IF NOT EXISTS ledger (client text NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (client, seq))' 2>>/w/errors; then
      ready=1
    else
      sleep 0.2
    fi
    continue
  fi
  seq=$((seq + 1))
  if out=$(timeout 10 psql -X -qAt -d "$c" -c "INSERT INTO ledger (client, seq) VALUES ('$client', $seq) RETURNING seq" 2>>/w/errors) && [ "$out" = "$seq" ]; then
    echo "$seq $(date +%s%3N) $host" >> /w/committed
  else
    echo "$seq" >> /w/failed
    sleep 0.1
  fi
done
`

/**
 * pgbench -i until it succeeds (unless the tables exist: an earlier instance
 * made them), then back-to-back standard (TPC-B-like) runs
 * until the deadline, which a change of target pushes to at least 15 s after
 * it (a slow move must not leave the new server without load). A run whose connections break aborts and reports what
 * it committed so far; the next run picks up on the current target. Every run
 * has -n: without it pgbench truncates pgbench_history first, and the history
 * is what the verification counts.
 */
const PGBENCH = `set -u
${CONNINFO}
seconds=$1 clients=$2 scale=$3
until [ -e /w/stop ]; do
  if ! c=$(conninfo pgbench-init); then sleep 0.3; continue; fi
  # A later instance (its predecessor's client node died) goes on with the tables already there:
  # -i would drop pgbench_history, whose rows the verification counts against every run's commits.
  if [ "$(psql "$c" -Atc 'SELECT count(*) FROM pgbench_branches' 2>/dev/null)" -ge 1 ] 2>/dev/null; then break; fi
  if timeout 120 pgbench -i -q -s "$scale" "$c" > /w/init.log 2>&1; then break; fi
  sleep 0.3
done
start=$(date +%s)
echo "$start" > /w/started
end=$((start + seconds))
i=0
while [ ! -e /w/stop ]; do
  # A new target (the db moved) gets at least 15 s of load, however long the move took.
  moved=$(date -r /w/target +%s 2>/dev/null || echo 0)
  [ $((moved + 15)) -le "$end" ] || end=$((moved + 15))
  left=$((end - $(date +%s)))
  [ "$left" -gt 0 ] || break
  if ! c=$(conninfo pgbench); then sleep 0.2; continue; fi
  i=$((i + 1))
  pgbench -n -c "$clients" -j 1 -T "$left" "$c" > /w/run.$i 2>&1
  code=$?
  echo "exit=$code" >> /w/run.$i
  [ "$code" = 0 ] || sleep 0.2
done
date +%s > /w/ended
`

function docker (lab: Lab, node: string, args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return tryRun('docker', ['-H', `unix://${lab.dockerSocket(node)}`, ...args], { timeoutMs })
}

async function dockerOk (lab: Lab, node: string, args: string[], timeoutMs = 60_000): Promise<string> {
  const r = await docker(lab, node, args, timeoutMs)
  if (r.code !== 0) throw new Error(`docker ${args.join(' ')} on ${node} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`)
  return r.stdout
}

async function writeTarget (dir: string, t: PgTarget): Promise<void> {
  // Replaced whole, so a client never reads half a line.
  await writeFile(join(dir, 'target.tmp'), `${t.host} ${t.port}\n`)
  await rename(join(dir, 'target.tmp'), join(dir, 'target'))
}

async function readOr (path: string, fallback = ''): Promise<string> {
  try { return await readFile(path, 'utf8') } catch { return fallback }
}

/** The first field of each line that starts with a number (a seq, maybe followed by its time and server). */
function numbers (text: string): number[] {
  return text.split('\n').filter(l => /^\d+( |$)/.test(l)).map(l => Number(l.split(' ')[0]))
}

/** Committed lines "SEQ MS HOST": when the server acknowledged each, and which server. */
function commits (text: string): LedgerAck[] {
  const out: LedgerAck[] = []
  for (const l of text.split('\n')) {
    const m = /^(\d+) (\d+) (\S+)$/.exec(l)
    if (m !== null) out.push({ seq: Number(m[1]), at: Number(m[2]), host: m[3] as string })
  }
  return out
}

/** A client container on `node`'s engine, in the node's network namespace, with `dir` at /w. */
async function startClient (lab: Lab, node: string, name: string, dir: string, script: string, args: string[]): Promise<void> {
  await dockerOk(lab, node, ['run', '-d', '--name', name, '--network', 'host', '-v', `${dir}:/w`, '--entrypoint', 'sh', POSTGRES_IMAGE, '-c', script, 'sh', ...args])
}

/** Asks the client to stop at its next step, waits up to `timeoutMs`, then removes it (killed if still running). */
async function stopClient (lab: Lab, node: string, name: string, dir: string, timeoutMs: number): Promise<void> {
  await writeFile(join(dir, 'stop'), '')
  await docker(lab, node, ['wait', name], timeoutMs)
  await docker(lab, node, ['rm', '-f', name])
}

function newId (): string {
  return randomBytes(3).toString('hex')
}

export interface LedgerAck { seq: number, at: number, host: string }

export interface LedgerResult {
  client: string
  /** Seqs whose INSERT the server acknowledged. */
  committed: number[]
  /** The same, with when (ms since the epoch, the client's clock: the lab's) and the server's address. */
  acks: LedgerAck[]
  /** Seqs whose INSERT failed or got no answer: outcome unknown to the client. */
  failed: number[]
  /** The last lines psql wrote to stderr, for whoever reads a failure. */
  errors: string
}

export interface LedgerWriter {
  readonly client: string
  /** Sends the next attempts to `target` (the server moved, or got a new port). */
  setTarget: (target: PgTarget) => Promise<void>
  /** Acknowledged and failed INSERTs so far. */
  counts: () => Promise<{ committed: number, failed: number }>
  /** Stops the loop after its current attempt and returns what it recorded. */
  stop: () => Promise<LedgerResult>
}

/**
 * Starts a client on `clientNode` that inserts (client, seq) rows into table
 * `ledger` one autocommit statement at a time, as fast as it can, through
 * connection errors, until stopped.
 */
export async function startLedgerWriter (lab: Lab, clientNode: string, host: string, port: number, client = `w${newId()}`): Promise<LedgerWriter> {
  // The client name goes into SQL text: letters, digits and dashes only.
  if (!/^[a-z0-9-]{1,32}$/.test(client)) throw new Error(`ledger client name ${JSON.stringify(client)}: lowercase letters, digits and dashes only`)
  const dir = await mkdtemp(join(tmpdir(), 'dcloud-pg-ledger-'))
  await writeTarget(dir, { host, port })
  const name = `pg-ledger-${lab.name}-${client}`
  await startClient(lab, clientNode, name, dir, WRITER, [client])
  let stopped: Promise<LedgerResult> | undefined
  const stop = async (): Promise<LedgerResult> => {
    await stopClient(lab, clientNode, name, dir, 30_000)
    const result: LedgerResult = {
      client,
      committed: numbers(await readOr(join(dir, 'committed'))),
      acks: commits(await readOr(join(dir, 'committed'))),
      failed: numbers(await readOr(join(dir, 'failed'))),
      errors: (await readOr(join(dir, 'errors'))).trim().split('\n').slice(-10).join('\n')
    }
    await rm(dir, { recursive: true, force: true })
    return result
  }
  return {
    client,
    setTarget: async (t) => { await writeTarget(dir, t) },
    counts: async () => ({
      committed: numbers(await readOr(join(dir, 'committed'))).length,
      failed: numbers(await readOr(join(dir, 'failed'))).length
    }),
    // Once only: a test's cleanup may stop a writer its body already stopped.
    stop: async () => await (stopped ??= stop())
  }
}

export interface PgbenchRun {
  /** Transactions pgbench completed, COMMIT acknowledged. */
  processed: number
  /** Transactions that failed with a serialization or deadlock error (retries are off). */
  failed: number
  /** Clients aborted (connection lost) and the run ended early. */
  aborted: boolean
  exitCode: number | null
  /** As pgbench reports it, without connection time; null if the run printed none. */
  tps: number | null
  /** The run's last error line (why it aborted or could not start), or null. */
  error: string | null
}

export interface PgbenchResult {
  /** Over all runs: the count the history table must at least hold. */
  processed: number
  runs: PgbenchRun[]
  /** Wall time from the end of `pgbench -i` to the end of the last run. */
  seconds: number
  /** processed / seconds: throughput including the outages. */
  tps: number
}

export interface Pgbench {
  setTarget: (target: PgTarget) => Promise<void>
  /** Waits for the load to end (its deadline), then returns the runs' reports. */
  wait: () => Promise<PgbenchResult>
  /** Whether `pgbench -i` is done and the timed load has begun. */
  started: () => Promise<boolean>
  /** Ends the load at once, reporting nothing (a test's cleanup); no-op after `wait`. */
  cancel: () => Promise<void>
  /** Whether its container still runs (false: gone, e.g. with its node; null: the engine did not answer). */
  containerRunning: () => Promise<boolean | null>
  /** Asks it to stop early: no new run starts; the one under way is given `graceMs`, then stopped. `wait` reports what was done. */
  finish: (graceMs?: number) => Promise<void>
}

/** Reads one run's report; a run killed before it printed one counts nothing. */
export function parsePgbenchRun (text: string): PgbenchRun {
  const processed = /number of transactions actually processed: (\d+)/.exec(text)
  const failed = /number of failed transactions: (\d+)/.exec(text)
  const tps = /tps = ([\d.]+) \(without initial connection time\)/.exec(text)
  const exit = /^exit=(\d+)$/m.exec(text)
  const errors = text.split('\n').filter(l => /error|abort/i.test(l))
  return {
    processed: processed === null ? 0 : Number(processed[1]),
    failed: failed === null ? 0 : Number(failed[1]),
    aborted: /aborted/i.test(text),
    exitCode: exit === null ? null : Number(exit[1]),
    tps: tps === null ? null : Number(tps[1]),
    error: errors.at(-1)?.trim() ?? null
  }
}

/**
 * Starts pgbench's standard load from `clientNode`: `pgbench -i -s scale`
 * once, then `pgbench -c clients -j 1` for `seconds` in all, restarting the
 * run whenever connection loss aborts it.
 */
export async function startPgbench (lab: Lab, clientNode: string, host: string, port: number, opts: { seconds: number, clients?: number, scale?: number }): Promise<Pgbench> {
  const dir = await mkdtemp(join(tmpdir(), 'dcloud-pgbench-'))
  await writeTarget(dir, { host, port })
  const name = `pgbench-${lab.name}-${newId()}`
  await startClient(lab, clientNode, name, dir, PGBENCH, [String(opts.seconds), String(opts.clients ?? 2), String(opts.scale ?? 1)])
  let finished = false
  return {
    setTarget: async (t) => { await writeTarget(dir, t) },
    started: async () => (await readOr(join(dir, 'started'))).trim() !== '',
    wait: async () => {
      // The deadline counts from the end of -i, which can take a while on a busy node; a run can overrun by its last transaction.
      await docker(lab, clientNode, ['wait', name], (opts.seconds + 180) * 1000)
      await stopClient(lab, clientNode, name, dir, 15_000)
      finished = true
      const files = (await readdir(dir)).filter(f => /^run\.\d+$/.test(f)).sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)))
      const runs: PgbenchRun[] = []
      for (const f of files) runs.push(parsePgbenchRun(await readOr(join(dir, f))))
      const started = Number((await readOr(join(dir, 'started'))).trim())
      const ended = Number((await readOr(join(dir, 'ended'))).trim())
      const seconds = started > 0 && ended >= started ? ended - started : 0
      const processed = runs.reduce((sum, r) => sum + r.processed, 0)
      await rm(dir, { recursive: true, force: true })
      return { processed, runs, seconds, tps: seconds > 0 ? processed / seconds : 0 }
    },
    containerRunning: async () => {
      const r = await docker(lab, clientNode, ['inspect', '--format', '{{.State.Running}}', name], 10_000)
      if (r.code === 0) return r.stdout.trim() === 'true'
      return /no such (object|container)/i.test(r.stderr) ? false : null
    },
    finish: async (graceMs = 20_000) => {
      await writeFile(join(dir, 'stop'), '')
      if ((await docker(lab, clientNode, ['wait', name], graceMs)).code !== 0) await docker(lab, clientNode, ['stop', '-t', '5', name], 30_000)
    },
    cancel: async () => {
      if (finished) return
      finished = true
      await docker(lab, clientNode, ['rm', '-f', name])
      await rm(dir, { recursive: true, force: true })
    }
  }
}

export interface LedgerVerdict {
  /** Acknowledged INSERTs over all writers given. */
  committed: number
  /** Acknowledged INSERTs whose row is not in the table: must be none. */
  missing: Array<{ client: string, seq: number }>
  /** Rows of these writers whose INSERT got no acknowledgement (committed, but the answer was lost). */
  unacknowledged: number
  pgbench: {
    /** pgbench's own count of transactions it saw commit. */
    processed: number
    historyRows: number
    /** historyRows >= processed: every transaction pgbench saw commit left its row. */
    historyOk: boolean
    /**
     * Each TPC-B-like transaction adds the same delta to an account, a teller
     * and a branch and logs it in the history: the four sums stay equal unless
     * some transaction was applied in part.
     */
    sums: { accounts: number, tellers: number, branches: number, history: number }
    balanced: boolean
  } | null
}

/** Runs one query in a throwaway client container on `node`, retrying while the server is unreachable. */
export async function pgQuery (lab: Lab, node: string, target: PgTarget, sql: string, timeoutMs = 60_000): Promise<string> {
  const conn = `host=${target.host} port=${target.port} ${CONN_OPTS} application_name=verify`
  const start = performance.now()
  for (;;) {
    const r = await docker(lab, node, ['run', '--rm', '--network', 'host', '--entrypoint', 'psql', POSTGRES_IMAGE, '-X', '-qAt', '-F', ' ', '-v', 'ON_ERROR_STOP=1', '-d', conn, '-c', sql], 60_000)
    if (r.code === 0) return r.stdout
    // psql exits 2 when it cannot connect or loses the connection; anything else is the query's fault.
    if (r.code !== 2 || performance.now() - start > timeoutMs) throw new Error(`psql on ${node} against ${target.host}:${target.port} exited ${r.code}: ${r.stderr.trim()}`)
    await new Promise(resolve => setTimeout(resolve, 500))
  }
}

/**
 * Reads the ledger (and pgbench's tables, when a pgbench result is given)
 * from the server at `target` and checks them against what the clients saw
 * acknowledged.
 */
export async function verifyLedger (lab: Lab, node: string, target: PgTarget, writers: LedgerResult[], pgbench?: PgbenchResult): Promise<LedgerVerdict> {
  const rows = await pgQuery(lab, node, target, 'SELECT client, seq FROM ledger')
  const present = new Map<string, Set<number>>()
  for (const line of rows.split('\n')) {
    const [client, seq] = line.split(' ')
    if (client === undefined || seq === undefined) continue
    let set = present.get(client)
    if (set === undefined) present.set(client, set = new Set())
    set.add(Number(seq))
  }
  const missing: Array<{ client: string, seq: number }> = []
  let unacknowledged = 0
  for (const w of writers) {
    const have = present.get(w.client) ?? new Set<number>()
    for (const seq of w.committed) if (!have.has(seq)) missing.push({ client: w.client, seq })
    const acked = new Set(w.committed)
    for (const seq of have) if (!acked.has(seq)) unacknowledged++
  }
  let bench: LedgerVerdict['pgbench'] = null
  if (pgbench !== undefined) {
    const out = await pgQuery(lab, node, target, 'SELECT (SELECT count(*) FROM pgbench_history), (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts), (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers), (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches), (SELECT coalesce(sum(delta), 0) FROM pgbench_history)')
    const [historyRows, accounts, tellers, branches, history] = out.trim().split(' ').map(Number) as [number, number, number, number, number]
    bench = {
      processed: pgbench.processed,
      historyRows,
      historyOk: historyRows >= pgbench.processed,
      sums: { accounts, tellers, branches, history },
      balanced: accounts === tellers && tellers === branches && branches === history
    }
  }
  return { committed: writers.reduce((n, w) => n + w.committed.length, 0), missing, unacknowledged, pgbench: bench }
}

/** The host port the engine of `node` published for `containerPort` of `container` (it changes when the container restarts). */
export async function publishedPort (lab: Lab, node: string, container: string, containerPort = 5432): Promise<number> {
  const out = await dockerOk(lab, node, ['port', container, `${containerPort}/tcp`])
  const m = /:(\d+)\s*$/m.exec(out)
  if (m === null) throw new Error(`${container} on ${node} publishes no port for ${containerPort}/tcp: ${out.trim()}`)
  return Number(m[1])
}

/** The health Docker reports for a container ("starting", "healthy", "unhealthy"; "" without a healthcheck). */
export async function containerHealth (lab: Lab, node: string, container: string): Promise<string> {
  return (await dockerOk(lab, node, ['inspect', '--format', '{{if .State.Health}}{{.State.Health.Status}}{{end}}', container])).trim()
}
