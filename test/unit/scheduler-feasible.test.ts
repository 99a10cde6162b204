import { describe, expect, it } from 'vitest'
import type { DesiredApp, Placement, SchedNode } from '../../proto/plan.ts'
import { feasible } from '../../scheduler/feasible.ts'
import { reserve, usageOf, type NodeUsage } from '../../scheduler/usage.ts'
import { GiB, MiB, mockApp, mockNode, mockPlacement } from '../builders.ts'

/** The usage of `node` with `running` apps on it and `planned` apps already reserved by the plan. */
function usage (node: SchedNode, running: Array<[DesiredApp, Placement]> = [], planned: DesiredApp[] = []): NodeUsage {
  const u = usageOf({ nodes: [node], desired: running.map(r => r[0]), actual: running.map(r => r[1]) }).byId.get(node.id)!
  for (const app of planned) reserve(u, app)
  return u
}

describe('feasibility', () => {
  const web1 = mockApp('web1', { hostPorts: [8080] })
  const cases: Array<[string, DesiredApp, NodeUsage, string | null]> = [
    ['a plain app fits a plain node', mockApp('a'), usage(mockNode({ id: 'n1' })), null],
    ['a suspect node takes nothing', mockApp('a'), usage(mockNode({ id: 'n1', state: 'suspect' })), 'node is suspect'],
    ['a dead node takes nothing', mockApp('a'), usage(mockNode({ id: 'n1', state: 'dead' })), 'node is dead'],
    ['an alive node whose engine does not answer', mockApp('a'), usage(mockNode({ id: 'n1', unavailable: 'its Docker engine does not answer' })), 'its Docker engine does not answer'],
    ['an app pinned elsewhere', mockApp('a', { pinnedNode: 'n2' }), usage(mockNode({ id: 'n1' })), 'pinned to n2'],
    ['an app pinned here', mockApp('a', { pinnedNode: 'n1' }), usage(mockNode({ id: 'n1' })), null],
    ['an architecture the images lack', mockApp('a', { architectures: ['amd64', 'arm64'] }), usage(mockNode({ id: 'n1', arch: 'arm' })), 'arch arm not in [amd64, arm64]'],
    ['an architecture the images have', mockApp('a', { architectures: ['amd64', 'arm64'] }), usage(mockNode({ id: 'n1', arch: 'arm64' })), null],
    ['no architectures listed means any', mockApp('a'), usage(mockNode({ id: 'n1', arch: 'riscv64' })), null],
    ['a missing label', mockApp('a', { constraints: { ssd: 'true' } }), usage(mockNode({ id: 'n1' })), 'label ssd=true missing'],
    ['a label with another value', mockApp('a', { constraints: { ssd: 'true' } }), usage(mockNode({ id: 'n1', labels: { ssd: 'false' } })), 'label ssd=true missing (node has ssd=false)'],
    ['a matching label', mockApp('a', { constraints: { ssd: 'true' } }), usage(mockNode({ id: 'n1', labels: { ssd: 'true', zone: 'attic' } })), null],
    ['more CPUs than the node has', mockApp('a', { cpus: 8 }), usage(mockNode({ id: 'n1', cores: 4 })), 'needs 8 CPUs, node has 4'],
    ['not enough free memory', mockApp('a', { memoryMiB: 512 }), usage(mockNode({ id: 'n1', memFree: 300 * MiB })), 'needs 512 MiB, 300 MiB free'],
    ['exactly enough free memory', mockApp('a', { memoryMiB: 512 }), usage(mockNode({ id: 'n1', memFree: 512 * MiB })), null],
    ['memory taken by apps planned in this plan', mockApp('a', { memoryMiB: 512 }), usage(mockNode({ id: 'n1', memFree: 1 * GiB }), [], [mockApp('p1', { memoryMiB: 400 }), mockApp('p2', { memoryMiB: 324 })]), 'needs 512 MiB, 300 MiB free after 2 planned apps'],
    ['one planned app', mockApp('a', { memoryMiB: 512 }), usage(mockNode({ id: 'n1', memFree: 700 * MiB }), [], [mockApp('p1', { memoryMiB: 400 })]), 'needs 512 MiB, 300 MiB free after 1 planned app'],
    ['a host port used by a running app', mockApp('a', { hostPorts: [8080] }), usage(mockNode({ id: 'n1' }), [[web1, mockPlacement('web1', 'n1')]]), 'host port 8080/tcp used by app web1'],
    ['a host port used by a stopped app (it gets it back on restart)', mockApp('a', { hostPorts: [8080] }), usage(mockNode({ id: 'n1' }), [[web1, mockPlacement('web1', 'n1', 'stopped')]]), 'host port 8080/tcp used by app web1'],
    ['a host port used by an app planned in this plan', mockApp('a', { hostPorts: [8080] }), usage(mockNode({ id: 'n1' }), [], [web1]), 'host port 8080/tcp used by app web1'],
    ['the same port number over another protocol', mockApp('a', { hostPorts: ['8080/udp'] }), usage(mockNode({ id: 'n1' }), [[web1, mockPlacement('web1', 'n1')]]), null],
    ['its own port, when restarting in place', web1, usage(mockNode({ id: 'n1' }), [[web1, mockPlacement('web1', 'n1', 'failed')]]), null],
    ['the first failing check wins: state before memory', mockApp('a', { memoryMiB: 99_999 }), usage(mockNode({ id: 'n1', state: 'suspect' })), 'node is suspect']
  ]

  it.each(cases)('%s', (_title, app, u, expected) => {
    expect(feasible(app, u)).toBe(expected)
  })

  it('names the pinned node by its display name when it knows it', () => {
    const u = usage(mockNode({ id: 'n1' }))
    expect(feasible(mockApp('a', { pinnedNode: 'peer-2' }), u, new Map([['peer-2', 'pi-2']]))).toBe('pinned to pi-2')
  })
})
