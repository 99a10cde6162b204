import { describe, expect, it } from 'vitest'
import { Membership } from '../../agent/status/membership.ts'
import type { NodeStatus } from '../../proto/status.ts'

function mockStatus (peerId: string, over: Partial<NodeStatus> = {}): NodeStatus {
  return { v: 1, peerId, name: peerId, incarnation: 1, seq: 1, intervalMs: 1000, ...over }
}

function fixture (connected = true): { m: Membership, clock: { t: number }, transitions: string[] } {
  const clock = { t: 0 }
  const transitions: string[] = []
  const m = new Membership({
    now: () => clock.t,
    isConnected: () => connected,
    onTransition: (member, from) => transitions.push(`${member.status.peerId}:${from ?? 'new'}->${member.state}`)
  })
  return { m, clock, transitions }
}

describe('membership', () => {
  it('echoes the send time of each member\'s newest beat, and none of a dead member or one that sends none', () => {
    const { m, clock } = fixture()
    m.observe(mockStatus('a', { sent: 500 }))
    m.observe(mockStatus('b', { sent: 700 }))
    m.observe(mockStatus('c'))
    m.observe(mockStatus('a', { seq: 2, sent: 1500 }))
    expect(m.heard()).toEqual({ a: 1500, b: 700 })
    clock.t = 3000
    m.observe(mockStatus('a', { seq: 3, sent: 4500 }))
    clock.t = 6000; m.tick()
    expect(m.get('b')?.state).toBe('dead')
    expect(m.heard()).toEqual({ a: 4500 })
    expect(Object.keys(m.heard(0))).toEqual([])
  })

  it('walks a silent node through suspect to dead, and back to alive when it speaks', () => {
    const { m, clock, transitions } = fixture()
    m.observe(mockStatus('a'))
    clock.t = 2600; m.tick()
    clock.t = 4100; m.tick()
    clock.t = 9000; m.observe(mockStatus('a', { incarnation: 2, seq: 1 }))
    expect(transitions).toEqual(['a:new->alive', 'a:alive->suspect', 'a:suspect->dead', 'a:dead->alive'])
  })

  it('keeps the last resources across plain beats', () => {
    const { m } = fixture()
    const resources = { cpu: { cores: 2, load: 5 }, mem: { total: 2, free: 1 }, diskFree: 9, arch: 'arm64', dockerVersion: null, agentVersion: '1', labels: {}, apps: ['x'], appStates: [], containers: 1, address: null, images: [] }
    m.observe(mockStatus('a', { seq: 1, resources }))
    m.observe(mockStatus('a', { seq: 2 }))
    expect(m.get('a')?.resources).toEqual(resources)
    expect(m.get('a')?.status.seq).toBe(2)
  })

  it('ignores replayed and older messages', () => {
    const { m } = fixture()
    expect(m.observe(mockStatus('a', { seq: 5 }))).toBe(true)
    expect(m.observe(mockStatus('a', { seq: 5 }))).toBe(false)
    expect(m.observe(mockStatus('a', { seq: 4 }))).toBe(false)
    expect(m.get('a')?.status.seq).toBe(5)
  })

  it('keeps a node alive as long as its heartbeats arrive, however late within the window', () => {
    const { m, clock, transitions } = fixture()
    for (let i = 1; i <= 100; i++) {
      clock.t = i * 2400
      m.observe(mockStatus('a', { seq: i }))
      m.tick()
    }
    expect(transitions).toEqual(['a:new->alive'])
  })

  it('suspects a disconnected node sooner', () => {
    const { m, clock } = fixture(false)
    m.observe(mockStatus('a'))
    clock.t = 1600; m.tick()
    expect(m.get('a')?.state).toBe('suspect')
  })

  it('forgets the longest-dead members first when full', () => {
    const clock = { t: 0 }
    const m = new Membership({ now: () => clock.t, isConnected: () => false, maxMembers: 3 })
    for (const id of ['a', 'b', 'c']) { clock.t += 10; m.observe(mockStatus(id)) }
    clock.t = 100_000; m.tick()
    m.observe(mockStatus('d'))
    expect(m.list().map(x => x.status.peerId).sort()).toEqual(['b', 'c', 'd'])
  })
})
