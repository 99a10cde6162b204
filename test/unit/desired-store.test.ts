/**
 * The replicated state on a real disk (agent/cluster/desired-store.ts):
 * appended entries and commit marks survive a restart, compaction folds the
 * log into a snapshot, a torn last line is dropped, a damaged log is kept
 * aside, a leader's snapshot replaces a log that fell behind, and a node
 * upgraded from the old whole-document file keeps its apps.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { appendFile, mkdtemp, readdir, readFile, rm, writeFile, mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { COMPACT_AFTER, DesiredStore, stateDigest } from '../../agent/cluster/desired-store.ts'
import { createLogger } from '../../agent/util/log.ts'
import type { LogEntry } from '../../proto/cluster.ts'

const quiet = createLogger('test', () => {})
const NODE = 'QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N'
const drain = (index: number, term: number, drained = true): LogEntry => ({ index, term, change: { kind: 'drain', node: NODE, drained } })

let dir: string
beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'dcloud-store-')) })
afterEach(async () => { await rm(dir, { recursive: true, force: true }) })

async function reopened (): Promise<DesiredStore> {
  const s = new DesiredStore(dir, quiet)
  await s.load()
  return s
}

describe('the replicated state on disk', () => {
  it('keeps appended entries and what was committed across a restart; uncommitted entries stay in the log, unapplied', async () => {
    const s = await reopened()
    await s.appendEntries(null, [{ index: 1, term: 1, change: null }, drain(2, 1), drain(3, 1, false)])
    await s.commit(2)
    expect(s.current()).toMatchObject({ revision: 2, term: 1, drained: [NODE] })
    expect(s.tip()).toMatchObject({ revision: 3, drained: [] })
    const again = await reopened()
    expect(again.current()).toEqual(s.current())
    expect(again.lastIndex).toBe(3)
    expect(again.committed).toBe(2)
  })

  it('refuses to append out of order or to drop committed entries', async () => {
    const s = await reopened()
    await s.appendEntries(null, [drain(1, 1), drain(2, 1)])
    await s.commit(2)
    await expect(s.appendEntries(null, [drain(4, 1)])).rejects.toThrow(/does not follow/)
    await expect(s.appendEntries(1, [drain(2, 2)])).rejects.toThrow(/committed/)
    expect(s.lastIndex).toBe(2)
  })

  it('drops an uncommitted tail for the leader\'s entries, durably', async () => {
    const s = await reopened()
    await s.appendEntries(null, [drain(1, 1), drain(2, 1), drain(3, 1)])
    await s.commit(1)
    await s.appendEntries(1, [drain(2, 2, false)])
    expect(s.lastIndex).toBe(2)
    const again = await reopened()
    expect(again.termAt(2)).toBe(2)
    expect(again.lastIndex).toBe(2)
  })

  it('folds committed entries into a snapshot every COMPACT_AFTER entries, and reads it back', async () => {
    const s = await reopened()
    for (let i = 1; i <= COMPACT_AFTER + 3; i++) {
      await s.appendEntries(null, [drain(i, 1, i % 2 === 1)])
      await s.commit(i)
    }
    const log = await readFile(join(dir, 'state', 'log.jsonl'), 'utf8')
    expect(log.split('\n').filter(l => l.includes('"index"')).length).toBeLessThan(COMPACT_AFTER)
    const again = await reopened()
    expect(stateDigest(again.current())).toBe(stateDigest(s.current()))
    expect(again.current().revision).toBe(COMPACT_AFTER + 3)
    expect(again.entriesFrom(1, 10)).toEqual([])
  })

  it('drops a torn last line (a crash mid-append, never acknowledged)', async () => {
    const s = await reopened()
    await s.appendEntries(null, [drain(1, 1)])
    await s.commit(1)
    await appendFile(join(dir, 'state', 'log.jsonl'), '{"index":2,"term":1,"cha')
    const again = await reopened()
    expect(again.lastIndex).toBe(1)
    expect(again.current().revision).toBe(1)
    await again.appendEntries(null, [drain(2, 1)])
    expect((await reopened()).lastIndex).toBe(2)
  })

  it('keeps a damaged log aside and goes on with the entries before the damage', async () => {
    const s = await reopened()
    await s.appendEntries(null, [drain(1, 1), drain(2, 1)])
    await s.commit(2)
    await appendFile(join(dir, 'state', 'log.jsonl'), 'not json\n{"index":4,"term":1,"change":null}\n')
    const again = await reopened()
    expect(again.lastIndex).toBe(2)
    expect(again.committed).toBe(2)
    expect((await readdir(join(dir, 'state'))).some(f => f.startsWith('log.jsonl.unreadable-'))).toBe(true)
  })

  it('takes a leader\'s snapshot in place of a log that fell behind, keeping entries that continue it', async () => {
    const s = await reopened()
    await s.appendEntries(null, [drain(1, 1)])
    await s.commit(1)
    await s.installSnapshot(40, 3, { revision: 40, term: 3, apps: [], drained: [NODE] })
    expect(s.current()).toMatchObject({ revision: 40, term: 3 })
    expect(s.lastIndex).toBe(40)
    await s.appendEntries(null, [drain(41, 3, false)])
    await s.commit(41)
    const again = await reopened()
    expect(again.current()).toMatchObject({ revision: 41, drained: [] })
  })

  it('a node upgraded from desired.json keeps its apps as the first snapshot, and the old file is kept', async () => {
    await mkdir(dir, { recursive: true })
    await writeFile(join(dir, 'desired.json'), JSON.stringify({ revision: 7, term: 2, apps: [], drained: [NODE] }))
    const s = await reopened()
    expect(s.current()).toMatchObject({ revision: 7, term: 2, drained: [NODE] })
    expect(s.lastIndex).toBe(7)
    expect(s.termAt(7)).toBe(2)
    expect((await readdir(dir))).toContain('desired.json.migrated')
  })
})
