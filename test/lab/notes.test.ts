/**
 * The notes example app as a write workload on one lab node: every record
 * the app acknowledged is in its log with a valid checksum, with one writer,
 * with four at once (no torn or interleaved lines), and after its container
 * restarts under load. The writers run inside n1's namespace (lab addresses
 * are not reachable from the host) and stream their acknowledgements back.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { LabHandle, viaFrontDoor, waitFor } from './harness.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import type { AppView } from '../../proto/api.ts'
import { MAX_NOTE_BYTES, describeVerdict, readNotesInLab, startLabWriters, verifyNotes, type LabWriters, type NotesRecord, type NotesTarget, type NotesVerdict, type WriterSummary } from '../../scripts/lab/notes-client.ts'

const lab = new LabHandle('tnotes')
const NOTES = join(PROJECT_ROOT, 'apps', 'examples', 'notes')
const TARGET: NotesTarget = { app: 'notes' }
/** Every record acknowledged in this file: all must be in the log at each check. */
const acked: NotesRecord[] = []

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

async function notesApp (): Promise<AppView | undefined> {
  const r = await lab.exec('n1', ['dcloud', 'app', 'ls', '--json'])
  if (r.code !== 0) throw new Error(`app ls: ${r.stderr}`)
  return (JSON.parse(r.stdout) as AppView[]).find(a => a.name === 'notes')
}

/** curl's arguments for `path` of notes through n1's own front door (https://notes.DOMAIN), trusting the cluster's root. */
async function viaN1 (path: string): Promise<string[]> {
  const app = await notesApp()
  if (app?.url == null) throw new Error(`notes has no URL: ${JSON.stringify(app)}`)
  return viaFrontDoor(new URL(path, app.url).href, '127.0.0.1', await lab.caFile('n1'))
}

/** Status code of a request made with curl from inside n1. */
async function statusOf (curlArgs: string[]): Promise<string> {
  const r = await lab.exec('n1', ['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '5', ...curlArgs])
  return r.stdout.trim()
}

async function runWriters (clients: string[], ms: number, during?: (w: LabWriters) => Promise<void>): Promise<{ summaries: WriterSummary[], records: NotesRecord[], urls: string[] }> {
  const w = startLabWriters(lab.name, 'n1', TARGET, clients)
  try {
    // Node's start-up inside the namespace takes a moment: time the run from the first acknowledgement.
    await waitFor(async () => { w.assertRunning(); return w.ackCount() > 0 ? true : undefined }, 30_000, `${clients.join(',')} to get a first acknowledgement`)
    if (during !== undefined) await during(w)
    else await sleep(ms)
  } catch (err) {
    await w.stop().catch(() => {})
    acked.push(...w.acknowledged())
    throw err
  }
  const summaries = await w.stop()
  // Whatever was acknowledged must be in the log from now on, checked or not in this test.
  acked.push(...w.acknowledged())
  process.stderr.write(summaries.map(s => `  ${s.clientId}: sent ${s.sent}, acked ${s.acked}, failed ${s.failed}, longest gap ${s.longestGapMs} ms${Object.keys(s.errors).length > 0 ? ` ${JSON.stringify(s.errors)}` : ''}\n`).join(''))
  expect(summaries.map(s => s.clientId).sort()).toEqual([...clients].sort())
  return { summaries, records: w.acknowledged(), urls: w.urlsSeen() }
}

async function verifyAll (): Promise<NotesVerdict> {
  const v = verifyNotes(await readNotesInLab(lab.name, 'n1', TARGET), acked)
  process.stderr.write(`  log: ${describeVerdict(v)} (${acked.length} acknowledged in all)\n`)
  expect(v.corrupt, describeVerdict(v)).toEqual([])
  expect(v.missing, describeVerdict(v)).toEqual([])
  expect(v.duplicates, describeVerdict(v)).toEqual([])
  expect(v.total).toBeGreaterThanOrEqual(acked.length)
  return v
}

describe('notes: acknowledged writes are durable', () => {
  beforeAll(async () => {
    await lab.up(1)
    await waitFor(async () => (await lab.status('n1')).leader !== null ? true : undefined, 15_000, 'n1 to lead')
    const r = await lab.exec('n1', ['dcloud', 'app', 'install', NOTES])
    if (r.code !== 0) throw new Error(`app install exited ${r.code}: ${r.stderr}`)
    expect(r.stdout).toMatch(/notes is running on n1: https:\/\/notes\.dcloud\.home\.arpa\//)
  })

  afterAll(async () => {
    await lab.down()
  })

  it('serves an index, an empty log, and refuses what is not one line', async () => {
    expect((await lab.exec('n1', ['curl', '-sf', '--max-time', '5', ...await viaN1('/')])).stdout).toMatch(/<title>notes<\/title>/)
    const notes = await viaN1('/cgi-bin/notes')
    const empty = await lab.exec('n1', ['curl', '-sf', '--max-time', '5', ...notes])
    expect(empty.code, empty.stderr).toBe(0)
    expect(empty.stdout).toBe('')
    expect(await statusOf(['--data-binary', 'two\nlines', ...notes])).toBe('400')
    expect(await statusOf(['--data-binary', 'x'.repeat(MAX_NOTE_BYTES + 1), ...notes])).toBe('400')
    expect(await statusOf(['-X', 'POST', ...notes])).toBe('400')
    expect((await lab.exec('n1', ['curl', '-sf', '--max-time', '5', ...notes])).stdout).toBe('')
  })

  it('one writer for 5 s: every acknowledged record is in the log', async () => {
    const started = performance.now()
    const { summaries, records } = await runWriters(['w1'], 5000)
    const s = summaries[0] as WriterSummary
    process.stderr.write(`one writer: ${s.acked} of ${s.sent} acknowledged in ${((performance.now() - started) / 1000).toFixed(1)} s\n`)
    expect(records.length).toBe(s.acked)
    expect(s.acked).toBeGreaterThan(10)
    expect(s.failed).toBe(0)
    await verifyAll()
  })

  it('four concurrent writers for 3 s: no torn or interleaved lines', async () => {
    const { summaries } = await runWriters(['c1', 'c2', 'c3', 'c4'], 3000)
    const total = summaries.reduce((n, s) => n + s.acked, 0)
    process.stderr.write(`four writers: ${total} of ${summaries.reduce((n, s) => n + s.sent, 0)} acknowledged\n`)
    for (const s of summaries) {
      expect(s.acked, s.clientId).toBeGreaterThan(0)
      expect(s.failed, s.clientId).toBe(0)
    }
    const v = await verifyAll()
    // Nothing failed, so the log holds exactly what was acknowledged.
    expect(v.total).toBe(acked.length)
  })

  it('a container restart under load loses no acknowledged record', async () => {
    const ps = await lab.exec('n1', ['docker', 'ps', '-q', '--filter', 'label=dcloud.app=notes'])
    const ids = ps.stdout.trim().split('\n').filter(l => l !== '')
    expect(ids, ps.stderr).toHaveLength(1)
    let restartMs = 0
    const { summaries, urls } = await runWriters(['r1'], 0, async (w) => {
      await sleep(1500)
      const before = w.ackCount()
      const t0 = performance.now()
      const r = await lab.exec('n1', ['docker', 'restart', ids[0] as string])
      expect(r.code, r.stderr).toBe(0)
      restartMs = performance.now() - t0
      const afterRestart = w.ackCount()
      // Writes resume once the agent reports the container's (possibly new) port.
      const { ms } = await waitFor(async () => w.ackCount() > afterRestart + 20 ? true : undefined, 60_000, 'writes to resume after the restart', 100)
      process.stderr.write(`docker restart took ${(restartMs / 1000).toFixed(2)} s; ${afterRestart - before} acks during it; writes resumed ${(ms / 1000).toFixed(2)} s after\n`)
      await sleep(1000)
    })
    const s = summaries[0] as WriterSummary
    process.stderr.write(`restart: ${s.acked} of ${s.sent} acknowledged, ${s.failed} failed, client-side gap ${s.longestGapMs} ms, urls ${urls.join(' -> ')}\n`)
    expect(s.acked).toBeGreaterThan(20)
    const ps2 = await lab.exec('n1', ['docker', 'ps', '-q', '--filter', 'label=dcloud.app=notes'])
    expect(ps2.stdout.trim(), 'the same container, restarted (not recreated)').toBe(ids[0])
    await verifyAll()
  })
})
