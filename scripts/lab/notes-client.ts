/**
 * A checksummed write workload for the notes example app
 * (apps/examples/notes): writers append records one at a time and remember
 * which ones the app acknowledged (201: on disk); `verifyNotes` then checks
 * that every acknowledged record is in the log, intact.
 *
 * A record that failed (network error, timeout, any other status) is not
 * acknowledged: it may or may not be in the log, and it never counts as
 * missing. Each attempt gets a new sequence number, so a record is never
 * written twice and a duplicate line is a fault of the app.
 *
 * Lab node addresses are reachable only from inside the lab's namespaces, so
 * a test runs the writers there: `startLabWriters` runs `notes-writer.ts`
 * through `dcloud lab exec` and collects the acknowledgements it prints.
 */
import { createHash } from 'node:crypto'
import { spawn, type ChildProcess } from 'node:child_process'
import { Agent, request as httpsRequest } from 'node:https'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { apiGet } from '../../agent/cli/client.ts'
import type { AppView } from '../../proto/api.ts'
import { Lab } from './lab.ts'

export interface NotesRecord { seq: number, line: string }

/** A record as a lab writer saw it acknowledged: when (ms since the epoch, the lab's one clock) and by which base URL. */
export interface AckedRecord extends NotesRecord { clientId: string, at: number, url: string | null }

export interface NotesCounts { sent: number, acked: number, failed: number }

/** Largest note the app accepts (bytes, without the newline). */
export const MAX_NOTE_BYTES = 4096

const NOTES_PATH = '/cgi-bin/notes'

/** The notes endpoint of an app whose base URL (the app's web endpoint) is `base`. */
export function notesUrl (base: string): string {
  return base.endsWith(NOTES_PATH) ? base : `${base.replace(/\/+$/, '')}${NOTES_PATH}`
}

function sha256 (text: string): string {
  return createHash('sha256').update(text).digest('hex')
}

/**
 * The line of record `seq` of `clientId`: "CLIENT SEQ SHA256(CLIENT:SEQ:PAYLOAD) PAYLOAD".
 * Deterministic, so a verifier knows every acknowledged line from its number
 * alone. The payload's length varies (16 to about 1.5 KiB) so that a torn or
 * interleaved write lands in the middle of some line and breaks its checksum.
 */
export function recordLine (clientId: string, seq: number): string {
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(clientId)) throw new Error(`client id ${JSON.stringify(clientId)}: letters, digits, _ . - only (it is a field of a space-separated line)`)
  const length = 16 + Number.parseInt(sha256(`${clientId}/${seq}/length`).slice(0, 8), 16) % 1500
  let payload = ''
  for (let i = 0; payload.length < length; i++) payload += sha256(`${clientId}/${seq}/${i}`)
  payload = payload.slice(0, length)
  return `${clientId} ${seq} ${sha256(`${clientId}:${seq}:${payload}`)} ${payload}`
}

/** The client and sequence number of a line whose checksum holds, else null. */
export function parseLine (line: string): { clientId: string, seq: number } | null {
  const m = /^(\S+) (\d+) ([0-9a-f]{64}) (\S+)$/.exec(line)
  if (m === null) return null
  const [, clientId, seq, sum, payload] = m as unknown as [string, string, string, string, string]
  return sha256(`${clientId}:${seq}:${payload}`) === sum ? { clientId, seq: Number(seq) } : null
}

export interface NotesVerdict {
  /** Acknowledged records not in the log. */
  missing: NotesRecord[]
  /** Lines whose checksum does not hold (torn, interleaved, garbled), and a partial last line. */
  corrupt: string[]
  /** Well-formed lines found more than once. */
  duplicates: string[]
  /** Lines in the log. */
  total: number
}

/** Checks a log (the text `GET /cgi-bin/notes` returned) against the records acknowledged to the writers. */
export function verifyNotes (text: string, acked: NotesRecord[]): NotesVerdict {
  const lines = text.split('\n')
  // The log ends with a newline; anything after the last one is a partial line.
  const tail = lines.pop() as string
  const corrupt: string[] = tail === '' ? [] : [tail]
  const duplicates: string[] = []
  const seen = new Set<string>()
  for (const line of lines) {
    if (parseLine(line) === null) corrupt.push(line)
    else if (seen.has(line)) duplicates.push(line)
    else seen.add(line)
  }
  const missing = acked.filter(r => !seen.has(r.line))
  return { missing, corrupt, duplicates, total: lines.length + (tail === '' ? 0 : 1) }
}

/**
 * A fetch for the notes app behind a front door: the URL names the front
 * door's address (`https://10.213.0.12/cgi-bin/notes`, so an acknowledgement
 * still says which node gave it), the request asks it for `host()`
 * (https://notes.DOMAIN, in SNI and Host) and trusts only the cluster's root
 * `ca`: what `curl --resolve` does. Only what the notes client uses of fetch.
 */
export function frontDoorFetch (host: () => string, ca: string): typeof fetch {
  const agent = new Agent({ keepAlive: true, ca })
  return (async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = new URL(input instanceof Request ? input.url : String(input))
    const name = host()
    return await new Promise<Response>((resolve, reject) => {
      const req = httpsRequest({
        agent,
        host: url.hostname.replace(/^\[|\]$/g, ''),
        port: url.port === '' ? 443 : Number(url.port),
        path: `${url.pathname}${url.search}`,
        method: init?.method ?? 'GET',
        servername: name,
        headers: { ...(init?.headers as Record<string, string> | undefined), host: name },
        ...(init?.signal != null ? { signal: init.signal } : {})
      }, (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('error', reject)
        res.on('end', () => {
          const status = res.statusCode ?? 502
          resolve(new Response([101, 204, 205, 304].includes(status) ? null : Buffer.concat(chunks), { status }))
        })
      })
      req.on('error', reject)
      req.end(init?.body == null ? undefined : String(init.body))
    })
  }) as typeof fetch
}

/** A short description of a verdict for a test's log or failure message. */
export function describeVerdict (v: NotesVerdict): string {
  const clip = (s: string): string => s.length > 120 ? `${s.slice(0, 120)}…` : s
  return `${v.total} lines, ${v.missing.length} acknowledged missing, ${v.corrupt.length} corrupt, ${v.duplicates.length} duplicated` +
    (v.missing.length > 0 ? `; first missing: ${clip(v.missing[0]?.line ?? '')}` : '') +
    (v.corrupt.length > 0 ? `; first corrupt: ${clip(v.corrupt[0] ?? '')}` : '')
}

/** Posts one note; resolves to the status and body, rejects on a network error or timeout. */
export async function postNote (url: string, line: string, opts: { timeoutMs?: number, fetchImpl?: typeof fetch } = {}): Promise<{ status: number, body: string }> {
  const res = await (opts.fetchImpl ?? fetch)(notesUrl(url), {
    method: 'POST',
    headers: { 'content-type': 'text/plain' },
    body: line,
    signal: AbortSignal.timeout(opts.timeoutMs ?? 5000)
  })
  return { status: res.status, body: await res.text() }
}

/** Writes records `from`..`from+count-1` of `clientId` one after the other; returns those acknowledged. */
export async function writeNotes (url: string, clientId: string, from: number, count: number, opts: { timeoutMs?: number, fetchImpl?: typeof fetch } = {}): Promise<NotesRecord[]> {
  const acked: NotesRecord[] = []
  for (let seq = from; seq < from + count; seq++) {
    const line = recordLine(clientId, seq)
    const r = await postNote(url, line, opts).catch(() => null)
    if (r?.status === 201) acked.push({ seq, line })
  }
  return acked
}

/** The whole log; throws unless the app answers 200. */
export async function readNotes (url: string, opts: { timeoutMs?: number, fetchImpl?: typeof fetch } = {}): Promise<string> {
  const res = await (opts.fetchImpl ?? fetch)(notesUrl(url), { signal: AbortSignal.timeout(opts.timeoutMs ?? 10_000) })
  const body = await res.text()
  if (res.status !== 200) throw new Error(`GET ${notesUrl(url)}: ${res.status} ${body.slice(0, 200)}`)
  return body
}

export interface NotesWriterOptions {
  /** The app's base URL now; it may change when the app moves. null: not known at the moment (the writer waits). */
  url: () => string | null
  clientId: string
  /** Pause after each write (default 0: back to back). */
  intervalMs?: number
  /** Per request (default 5000). */
  timeoutMs?: number
  fetchImpl?: typeof fetch
  /** Called at each acknowledgement, e.g. to stream them out of a lab namespace. */
  onAck?: (record: NotesRecord, url: string) => void
}

/** Writes records continuously, one at a time, and keeps what was acknowledged. */
export class NotesWriter {
  private readonly opts: NotesWriterOptions
  private readonly acks: NotesRecord[] = []
  private readonly errorCounts = new Map<string, number>()
  private sent = 0
  private failed = 0
  private nextSeq = 1
  private lastAckAt: number | null = null
  private longestGap = 0
  private running = false
  private loop: Promise<void> | null = null
  private wake: (() => void) | null = null

  constructor (opts: NotesWriterOptions) {
    recordLine(opts.clientId, 0) // rejects an unusable id now rather than in the loop
    this.opts = opts
  }

  start (): void {
    if (this.running) return
    this.running = true
    this.loop = this.run()
  }

  /** Stops after the write in flight, if any, is answered or times out. */
  async stop (): Promise<void> {
    this.running = false
    this.wake?.()
    await this.loop
    this.loop = null
  }

  acknowledged (): NotesRecord[] {
    return [...this.acks]
  }

  counts (): NotesCounts {
    return { sent: this.sent, acked: this.acks.length, failed: this.failed }
  }

  /** Why writes failed, with how often ("status 503", "fetch failed: ECONNREFUSED", …). */
  errors (): Record<string, number> {
    return Object.fromEntries(this.errorCounts)
  }

  /** Longest time between two consecutive acknowledged writes: downtime as this client saw it. */
  longestGapMs (): number {
    return this.longestGap
  }

  private async run (): Promise<void> {
    const interval = this.opts.intervalMs ?? 0
    while (this.running) {
      const url = this.opts.url()
      if (url === null) {
        await this.pause(Math.max(interval, 100))
        continue
      }
      const seq = this.nextSeq++
      const line = recordLine(this.opts.clientId, seq)
      this.sent++
      let ok = false
      try {
        const r = await postNote(url, line, { timeoutMs: this.opts.timeoutMs, fetchImpl: this.opts.fetchImpl })
        ok = r.status === 201
        if (!ok) this.noteError(`status ${r.status}`)
      } catch (err) {
        this.noteError(describeError(err))
      }
      if (ok) {
        const now = performance.now()
        if (this.lastAckAt !== null) this.longestGap = Math.max(this.longestGap, now - this.lastAckAt)
        this.lastAckAt = now
        const record = { seq, line }
        this.acks.push(record)
        this.opts.onAck?.(record, url)
      } else {
        this.failed++
      }
      // After a failure, do not hammer an app that is down.
      const pause = ok ? interval : Math.max(interval, 50)
      if (pause > 0) await this.pause(pause)
    }
  }

  private noteError (what: string): void {
    this.errorCounts.set(what, (this.errorCounts.get(what) ?? 0) + 1)
  }

  private async pause (ms: number): Promise<void> {
    await new Promise<void>(resolve => {
      const timer = setTimeout(() => { this.wake = null; resolve() }, ms)
      this.wake = () => { clearTimeout(timer); this.wake = null; resolve() }
    })
  }
}

function describeError (err: unknown): string {
  if (err instanceof Error) {
    if (err.name === 'TimeoutError' || err.name === 'AbortError') return 'timeout'
    // fetch's errors carry the code in `cause`; node:https's (frontDoorFetch) on the error itself.
    const code = (err as { cause?: { code?: unknown } }).cause?.code ?? (err as { code?: unknown }).code
    return typeof code === 'string' && !err.message.includes(code) ? `${err.message}: ${code}` : err.message
  }
  return String(err)
}

// ---- running writers inside a lab node ------------------------------------

const WRITER_SCRIPT = join(PROJECT_ROOT, 'scripts', 'lab', 'notes-writer.ts')
const NODE_BIN = join(PROJECT_ROOT, 'node_modules', '.bin', 'node')

/** Runs `cmd` in lab node `node`'s network namespace with its environment, as `dcloud lab exec` does (without a CLI process in between). */
function spawnInNode (lab: string, node: string, cmd: string[], stdio: ['pipe' | 'ignore', 'pipe', 'pipe']): ChildProcess & { stdout: NodeJS.ReadableStream, stderr: NodeJS.ReadableStream } {
  const l = new Lab(lab)
  return spawn('nsenter', [`--net=/run/netns/${l.nodeNs(node)}`, '--', ...cmd], { stdio, env: l.nodeEnv(node) }) as ChildProcess & { stdout: NodeJS.ReadableStream, stderr: NodeJS.ReadableStream }
}

/**
 * Where the app is: its instance name (looked up on the node's agent: the
 * front door of the node running it, followed when it moves), or a fixed
 * front door, `url` (https://ADDRESS/), asked for `host` (NAME.DOMAIN): a
 * writer pinned to one node's front door, which serves its own copy while
 * that copy runs.
 */
export type NotesTarget = { app: string } | { url: string, host: string }

/**
 * The front door of the node running `app` (`https://ADDRESS/`), and the
 * app's host to ask it for, as this node's agent (DCLOUD_API) reports it;
 * null while it runs nowhere. The address comes from the lab's state: a
 * probe that goes there is served by that node's own copy, so what answers
 * tells which copy did.
 */
export async function runningFrontDoor (lab: string, app: string): Promise<{ url: string, host: string } | null> {
  const apps = await apiGet<AppView[]>('/v1/apps', undefined, 2000)
  const view = apps.find(a => a.name === app)
  if (view?.url == null || view.node === null || view.state !== 'running') return null
  const node = (await new Lab(lab).state()).nodes.find(n => n.name === view.node)
  return node === undefined ? null : { url: `https://${node.ip}/`, host: new URL(view.url).hostname }
}

/**
 * A target pinned to the front door at `address` (a node's), for the app whose
 * URL is `url` (https://NAME.DOMAIN/). That front door serves its own node's
 * copy while it runs there (a local container comes first). Once its agent
 * hears that the app runs elsewhere, it forwards instead: the fencing and
 * partition tests pin to nodes that cannot (no agent, or cut off), so what
 * acknowledges there is the old copy.
 */
export function pinnedTo (url: string, address: string): NotesTarget {
  return { url: `https://${address}/`, host: new URL(url).hostname }
}

function targetArgs (lab: string, target: NotesTarget): string[] {
  return 'app' in target ? ['--app', target.app, '--lab', lab] : ['--url', target.url, '--host', target.host]
}

/** What one writer of a `LabWriters` reported when it stopped. */
export interface WriterSummary extends NotesCounts {
  clientId: string
  longestGapMs: number
  errors: Record<string, number>
}

/**
 * Writers run by `notes-writer.ts` in a lab node's namespace. The
 * acknowledgements stream back as they happen, so even a writer that dies
 * leaves the host with every record it saw acknowledged.
 */
export class LabWriters {
  readonly clients: string[]
  private readonly child: ChildProcess
  private readonly acks = new Map<string, AckedRecord[]>()
  private readonly summaries: WriterSummary[] = []
  private readonly urls: string[] = []
  private stderr = ''
  private closed = false
  private readonly exited: Promise<number>

  constructor (lab: string, node: string, target: NotesTarget, clients: string[], opts: { intervalMs?: number, timeoutMs?: number } = {}) {
    this.clients = clients
    for (const c of clients) this.acks.set(c, [])
    const args = [NODE_BIN, WRITER_SCRIPT, 'write', ...targetArgs(lab, target), '--clients', clients.join(',')]
    if (opts.intervalMs !== undefined) args.push('--interval', String(opts.intervalMs))
    if (opts.timeoutMs !== undefined) args.push('--timeout', String(opts.timeoutMs))
    // stdin is the stop signal: the writer stops when it closes, also when this process dies.
    this.child = spawnInNode(lab, node, args, ['pipe', 'pipe', 'pipe'])
    this.child.stderr?.on('data', (chunk: Buffer) => { this.stderr = (this.stderr + chunk.toString()).slice(-8192) })
    createInterface({ input: this.child.stdout as NodeJS.ReadableStream }).on('line', line => { this.onLine(line) })
    this.exited = new Promise(resolve => {
      this.child.on('error', err => { this.stderr += `\n${err.message}`; resolve(127) })
      this.child.on('close', (code, signal) => { this.closed = true; resolve(code ?? (signal !== null ? 128 : 1)) })
    })
  }

  private onLine (line: string): void {
    let msg: { t?: string, c?: string, s?: number, url?: string, at?: number, u?: string } & Partial<WriterSummary>
    try { msg = JSON.parse(line) } catch { return }
    if (msg.t === 'ack' && typeof msg.c === 'string' && typeof msg.s === 'number') {
      this.acks.get(msg.c)?.push({ seq: msg.s, line: recordLine(msg.c, msg.s), clientId: msg.c, at: typeof msg.at === 'number' ? msg.at : Date.now(), url: typeof msg.u === 'string' ? msg.u : null })
    } else if (msg.t === 'done') {
      this.summaries.push(msg as WriterSummary)
    } else if (msg.t === 'url' && typeof msg.url === 'string') {
      this.urls.push(msg.url)
    }
  }

  /** Every record acknowledged so far, all clients, with when and by which URL. */
  acknowledged (): AckedRecord[] {
    return [...this.acks.values()].flat()
  }

  /** The latest time a write was acknowledged (ms since epoch), or null for none. */
  lastAckAt (): number | null {
    let last: number | null = null
    for (const a of this.acks.values()) for (const r of a) if (last === null || r.at > last) last = r.at
    return last
  }

  ackCount (): number {
    let n = 0
    for (const a of this.acks.values()) n += a.length
    return n
  }

  /** Whether the writers' process has ended (stopped, or killed with its node). */
  hasExited (): boolean {
    return this.closed
  }

  /** The last of what the writers wrote to stderr. */
  errorOutput (): string {
    return this.stderr
  }

  /** Throws, with what the writers said, when they have exited without being stopped (e.g. Node failed to start). */
  assertRunning (): void {
    if (this.closed) throw new Error(`notes writers exited early: ${this.stderr.trim()}`)
  }

  /** The URLs the writers followed, in order (more than one: the app moved or changed port). */
  urlsSeen (): string[] {
    return [...this.urls]
  }

  /** Stops the writers (each finishes its write in flight) and returns their summaries. */
  async stop (timeoutMs = 30_000): Promise<WriterSummary[]> {
    this.child.stdin?.end()
    let timer: NodeJS.Timeout | undefined
    const code = await Promise.race([
      this.exited,
      new Promise<'timeout'>(resolve => { timer = setTimeout(() => resolve('timeout'), timeoutMs) })
    ])
    clearTimeout(timer)
    if (code === 'timeout') {
      // Only our own child; closing stdin did not stop it.
      this.child.kill('SIGKILL')
      throw new Error(`notes writers did not stop within ${timeoutMs} ms\n${this.stderr}`)
    }
    if (code !== 0) throw new Error(`notes writers exited ${code}\n${this.stderr}`)
    return [...this.summaries]
  }
}

/** Starts writers `clients` in lab `lab`'s node `node`, writing to `target`. */
export function startLabWriters (lab: string, node: string, target: NotesTarget, clients: string[], opts: { intervalMs?: number, timeoutMs?: number } = {}): LabWriters {
  return new LabWriters(lab, node, target, clients, opts)
}

/** The log as read from inside lab node `node`. */
export async function readNotesInLab (lab: string, node: string, target: NotesTarget, timeoutMs = 30_000): Promise<string> {
  return await new Promise((resolve, reject) => {
    const child = spawnInNode(lab, node, [NODE_BIN, WRITER_SCRIPT, 'read', ...targetArgs(lab, target)], ['ignore', 'pipe', 'pipe'])
    const out: Buffer[] = []
    let err = ''
    const timer = setTimeout(() => { child.kill('SIGKILL') }, timeoutMs)
    child.stdout.on('data', (b: Buffer) => out.push(b))
    child.stderr.on('data', (b: Buffer) => { err += b.toString() })
    child.on('error', reject)
    child.on('close', code => {
      clearTimeout(timer)
      if (code === 0) resolve(Buffer.concat(out).toString('utf8'))
      else reject(new Error(`reading notes in ${node} failed (${code ?? 'killed'}): ${err.trim()}`))
    })
  })
}
