/**
 * The access log on this node's disk: its own lines and its peers' replicas,
 * as JSON lines in small segment files, `DIR/APP/ORIGIN/START.jsonl` (ORIGIN
 * the peer id of the node whose front door logged them, START the time the
 * segment was begun). Nothing is held in memory but the segment being
 * appended to per app and origin and the ids of its recent lines (for
 * dedup): a query streams the segments from disk.
 *
 * Lines come in batches, appended with one write per segment; no fsync: a
 * node that loses its last second of lines in a power cut has them at a
 * replica, and an SD card is spared a sync per request.
 */
import { createReadStream } from 'node:fs'
import { appendFile, mkdir, readdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { PEER_ID } from '../../proto/validate.ts'
import { decodeAccessLine, type AccessLine, type SummaryPart } from '../../proto/access.ts'
import { NewestLines, SummaryBuilder, retentionPlan, type RetentionLimits, type Segment } from './lines.ts'

/** A segment is closed at this size or age, so that retention deletes in small steps. */
const SEGMENT_MAX_BYTES = 1024 * 1024
const SEGMENT_MAX_AGE_MS = 3600_000
/** Ids remembered per app and origin: duplicates come from re-sent pushes and re-read tails, seconds apart. */
export const RECENT_IDS = 4096
/** An app and origin not appended to for this long forgets its ids (a duplicate comes within seconds): memory follows the apps with traffic. */
const RECENT_IDLE_MS = 5 * 60_000
const APP_DIR = /^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/
const SEGMENT_FILE = /^(\d{13,16})\.jsonl$/
/**
 * A segment whose last write is older than a query's start by more than this
 * is skipped unread. Not by the exact time: a line's time is its origin's
 * clock, the write time this node's (and the kernel's coarse one); nodes'
 * clocks may differ by minutes before NTP settles.
 */
const CLOCK_SLACK_MS = 10 * 60_000

interface Active { name: string, bytes: number, started: number }

export class AccessStore {
  readonly dir: string
  private readonly active = new Map<string, Active>()
  private readonly recent = new Map<string, { set: Set<string>, order: string[], usedAt: number }>()
  /** Appends of one app and origin never interleave. */
  private readonly chains = new Map<string, Promise<unknown>>()

  constructor (dir: string) {
    this.dir = dir
  }

  async open (): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 })
  }

  /**
   * Appends the lines not seen already (by id); returns how many were new.
   * Lines of several apps and origins are split by both.
   */
  async append (lines: AccessLine[], now = Date.now()): Promise<number> {
    const groups = new Map<string, AccessLine[]>()
    for (const l of lines) {
      const key = `${l.app}/${l.node}`
      const group = groups.get(key)
      if (group === undefined) groups.set(key, [l])
      else group.push(l)
    }
    let added = 0
    for (const [key, group] of groups) {
      const previous = this.chains.get(key) ?? Promise.resolve()
      const next = previous.catch(() => {}).then(async () => await this.appendGroup(key, group, now))
      this.chains.set(key, next)
      try {
        added += await next
      } finally {
        if (this.chains.get(key) === next) this.chains.delete(key)
      }
    }
    return added
  }

  private async appendGroup (key: string, lines: AccessLine[], now: number): Promise<number> {
    const [app, origin] = key.split('/') as [string, string]
    const seen = await this.recentIds(app, origin)
    seen.usedAt = now
    const fresh: AccessLine[] = []
    for (const l of lines) {
      if (seen.set.has(l.id)) continue
      seen.set.add(l.id)
      seen.order.push(l.id)
      fresh.push(l)
    }
    while (seen.order.length > RECENT_IDS) seen.set.delete(seen.order.shift() as string)
    if (fresh.length === 0) return 0
    const text = fresh.map(l => JSON.stringify(l) + '\n').join('')
    const dir = join(this.dir, app, origin)
    let seg = this.active.get(key)
    if (seg === undefined || seg.bytes >= SEGMENT_MAX_BYTES || now - seg.started >= SEGMENT_MAX_AGE_MS) {
      seg = { name: `${now}.jsonl`, bytes: 0, started: now }
      this.active.set(key, seg)
    }
    await mkdir(dir, { recursive: true, mode: 0o700 })
    // appendFile creates a segment retention deleted meanwhile: nothing to reopen.
    await appendFile(join(dir, seg.name), text, { mode: 0o600 })
    seg.bytes += Buffer.byteLength(text)
    return fresh.length
  }

  /** The ids of the newest segment's lines, read once per app and origin after a start: a re-read tail or re-sent push is then recognised. */
  private async recentIds (app: string, origin: string): Promise<{ set: Set<string>, order: string[], usedAt: number }> {
    const key = `${app}/${origin}`
    let r = this.recent.get(key)
    if (r !== undefined) return r
    r = { set: new Set(), order: [], usedAt: 0 }
    const segs = await this.segmentsOf(app, origin)
    const last = segs.at(-1)
    if (last !== undefined) {
      await eachLine(join(this.dir, app, origin, last.name), l => { r?.order.push(l.id) })
      r.order = r.order.slice(-RECENT_IDS)
      for (const id of r.order) r.set.add(id)
      this.active.set(key, { name: last.name, bytes: last.bytes, started: Number(SEGMENT_FILE.exec(last.name)?.[1] ?? 0) })
    }
    // Another call may have filled it meanwhile.
    const again = this.recent.get(key)
    if (again !== undefined) return again
    this.recent.set(key, r)
    return r
  }

  /** The origins this node holds lines of for `app` written since `since`. */
  async origins (app: string, since: number): Promise<string[]> {
    const out: string[] = []
    for (const origin of await dirs(join(this.dir, app), PEER_ID)) {
      if ((await this.segmentsOf(app, origin)).some(s => s.mtimeMs >= since - CLOCK_SLACK_MS)) out.push(origin)
    }
    return out.sort()
  }

  /** The newest `limit` lines of `app` since `since` from the given origins (oldest first) and, if asked, their summary. */
  async read (app: string, origins: readonly string[], since: number, limit: number, summary: boolean): Promise<{ lines: AccessLine[], more: boolean, summary: SummaryPart | null }> {
    const newest = new NewestLines(limit)
    const sum = summary ? new SummaryBuilder() : null
    for (const origin of origins) {
      for (const s of await this.segmentsOf(app, origin)) {
        // Every line of a segment is older than its last write (give or take the clocks).
        if (s.mtimeMs < since - CLOCK_SLACK_MS) continue
        await eachLine(join(this.dir, app, origin, s.name), l => {
          if (l.ts < since) return
          if (limit > 0) newest.add(l)
          else newest.more = true
          sum?.add(l)
        })
      }
    }
    return { lines: newest.lines(), more: newest.more, summary: sum?.part() ?? null }
  }

  /** Deletes what the limits say (lines.ts retentionPlan); returns the segments deleted. Also forgets the ids of idle apps and origins. */
  async retain (limits: RetentionLimits, now = Date.now()): Promise<Segment[]> {
    for (const [key, r] of this.recent) {
      if (now - r.usedAt > RECENT_IDLE_MS && !this.chains.has(key)) { this.recent.delete(key); this.active.delete(key) }
    }
    const all: Segment[] = []
    for (const app of await dirs(this.dir, APP_DIR)) {
      for (const origin of await dirs(join(this.dir, app), PEER_ID)) all.push(...await this.segmentsOf(app, origin))
    }
    const doomed = retentionPlan(all, limits, now)
    for (const s of doomed) {
      await rm(join(this.dir, s.app, s.origin, s.name), { force: true })
      const key = `${s.app}/${s.origin}`
      if (this.active.get(key)?.name === s.name) this.active.delete(key)
    }
    return doomed
  }

  /** Bytes on disk. */
  async bytes (): Promise<number> {
    let n = 0
    for (const app of await dirs(this.dir, APP_DIR)) {
      for (const origin of await dirs(join(this.dir, app), PEER_ID)) for (const s of await this.segmentsOf(app, origin)) n += s.bytes
    }
    return n
  }

  private async segmentsOf (app: string, origin: string): Promise<Segment[]> {
    const dir = join(this.dir, app, origin)
    let names: string[]
    try { names = await readdir(dir) } catch { return [] }
    const out: Segment[] = []
    for (const name of names.filter(n => SEGMENT_FILE.test(n)).sort()) {
      try {
        const st = await stat(join(dir, name))
        out.push({ app, origin, name, bytes: st.size, mtimeMs: st.mtimeMs })
      } catch {}
    }
    return out
  }
}

async function dirs (path: string, pattern: RegExp): Promise<string[]> {
  try {
    return (await readdir(path, { withFileTypes: true })).filter(d => d.isDirectory() && pattern.test(d.name)).map(d => d.name).sort()
  } catch {
    return []
  }
}

/** Each line of a segment, decoded; a torn last line (a crash mid-write) or one damaged on disk is skipped. */
async function eachLine (path: string, each: (l: AccessLine) => void): Promise<void> {
  let input
  try { input = createReadStream(path, { encoding: 'utf8' }) } catch { return }
  const rl = createInterface({ input, crlfDelay: Infinity })
  try {
    for await (const text of rl) {
      if (text === '') continue
      try { each(decodeAccessLine(JSON.parse(text))) } catch {}
    }
  } catch {
    // Deleted by retention while being read: what was read stands.
  } finally {
    rl.close()
    input.destroy()
  }
}
