/**
 * The fencing lease (agent/fence/lease.ts) and the watchdog's verdict on it
 * (agent/fence/watchdog.ts): a lease file on a real disk, renewed only while
 * the agent is entitled to it, and judged lapsed on the machine's monotonic
 * clock. The watchdog stopping containers is shown on real engines by
 * test/lab/fencing.test.ts.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LEASE_MS, NodeLease, echoLeaseMs, monotonicMs, parseLease } from '../../agent/fence/lease.ts'
import { leaseVerdict } from '../../agent/fence/watchdog.ts'
import { createLogger } from '../../agent/util/log.ts'

const quiet = createLogger('test', () => {})
let dir: string
beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'dcloud-lease-')) })
afterEach(async () => { await rm(dir, { recursive: true, force: true }) })

const settle = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

describe('the fencing lease', () => {
  it('is renewed while the agent sees a quorum, and lapses LEASE_MS after it stops seeing one', async () => {
    let quorum = true
    const lease = new NodeLease({ dir, node: 'n1', entitled: () => quorum, log: quiet })
    lease.start()
    try {
      await settle(400)
      const first = parseLease(await readFile(lease.path, 'utf8'))
      expect(first).not.toBeNull()
      expect(first!.until - monotonicMs()).toBeGreaterThan(LEASE_MS - 500)
      expect(lease.holds).toBe(true)
      expect(leaseVerdict(first, monotonicMs()).holds).toBe(true)
      quorum = false
      expect(lease.holds, 'no start without a quorum, even while the file is still valid').toBe(false)
      await settle(400)
      const last = parseLease(await readFile(lease.path, 'utf8'))
      expect(last!.until).toBeLessThanOrEqual(first!.until + 600)
      // Judged at the moment it runs out.
      expect(leaseVerdict(last, last!.until - 1).holds).toBe(true)
      const lapsed = leaseVerdict(last, last!.until + 5)
      expect(lapsed.holds).toBe(false)
      if (!lapsed.holds) expect(lapsed.reason).toMatch(/lapsed 5 ms ago/)
    } finally {
      lease.stop()
    }
  })

  it('never runs past the time a quorum last echoed this node\'s beats (a link failing one way)', async () => {
    let heardUntil = monotonicMs() + 10_000
    const lease = new NodeLease({ dir, node: 'n1', entitled: () => true, heardUntil: () => heardUntil, log: quiet })
    lease.start()
    try {
      await settle(400)
      const first = parseLease(await readFile(lease.path, 'utf8'))
      // Heard lately: the usual LEASE_MS from now.
      expect(first!.until - monotonicMs()).toBeGreaterThan(LEASE_MS - 500)
      heardUntil = monotonicMs() + 800
      await settle(400)
      const capped = parseLease(await readFile(lease.path, 'utf8'))
      expect(capped!.until).toBe(heardUntil)
      heardUntil = monotonicMs() - 1
      await settle(400)
      expect(lease.holds, 'no start once no quorum hears us').toBe(false)
      expect(parseLease(await readFile(lease.path, 'utf8'))!.until).toBe(capped!.until)
    } finally {
      lease.stop()
    }
  })

  it('an echo keeps the lease for less than the others wait before they declare the node dead', () => {
    expect(echoLeaseMs(1000, 4)).toBe(3500)
    expect(echoLeaseMs(200, 4)).toBe(LEASE_MS)
  })

  it('a missing, unreadable or foreign lease file counts as lapsed', async () => {
    expect(leaseVerdict(null, monotonicMs()).holds).toBe(false)
    for (const text of ['', 'not json', '{"v":2,"until":1e20,"node":"n","pid":1}', '{"v":1,"until":"soon","node":"n","pid":1}', '{"v":1,"until":1e400,"node":"n","pid":1}']) {
      expect(parseLease(text), text).toBeNull()
    }
    await writeFile(join(dir, 'fence.lease'), '{"v":1,"until":0,"node":"n1","pid":1}')
    expect(leaseVerdict(parseLease(await readFile(join(dir, 'fence.lease'), 'utf8')), monotonicMs()).holds).toBe(false)
  })
})
