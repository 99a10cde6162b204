/**
 * This node's web containers as the front door sees them
 * (agent/frontdoor/frontdoor.ts): from Docker's labels and the app's network,
 * asked of Docker only when something may have changed. Docker's answers are
 * recorded shapes of `GET /containers/json`; the real engine is the lab's.
 */
import { describe, expect, it } from 'vitest'
import type Docker from 'dockerode'
import { LocalWebAddresses, localWebAddresses } from '../../agent/frontdoor/frontdoor.ts'

function engine (containers: unknown[]): { docker: Docker, calls: () => number } {
  let calls = 0
  const docker = { listContainers: async (opts: { filters: unknown }) => { calls++; expect(opts.filters).toEqual({ label: ['dcloud.app'], status: ['running'] }); return containers } } as unknown as Docker
  return { docker, calls: () => calls }
}

const container = (app: string, service: string, net: Record<string, string>, mode = 'bridge'): unknown => ({
  Labels: { 'dcloud.app': app, 'dcloud.service': service },
  HostConfig: { NetworkMode: mode },
  NetworkSettings: { Networks: Object.fromEntries(Object.entries(net).map(([k, ip]) => [k, { IPAddress: ip }])) }
})

const signal = AbortSignal.timeout(5000)

describe('the web containers of this node', () => {
  it('takes the web service\'s address on the app\'s own network, 127.0.0.1 on the host\'s, and nothing else', async () => {
    const { docker } = engine([
      container('notes', 'web', { 'dcloud-notes': '172.18.0.2', bridge: '172.17.0.5' }),
      container('notes', 'worker', { 'dcloud-notes': '172.18.0.3' }),
      container('photos', 'web', { 'dcloud-photos': '' }),
      container('hostapp', 'ui', {}, 'host'),
      container('stranger', 'web', { 'dcloud-stranger': '172.19.0.2' })
    ])
    const apps = [{ name: 'notes', webService: 'web' }, { name: 'photos', webService: 'web' }, { name: 'hostapp', webService: 'ui' }, { name: 'db', webService: null }]
    expect(await localWebAddresses(docker, apps, signal)).toEqual({ notes: '172.18.0.2', hostapp: '127.0.0.1' })
  })

  it('asks Docker nothing when no app has a web UI', async () => {
    const { docker, calls } = engine([])
    expect(await localWebAddresses(docker, [{ name: 'db', webService: null }], signal)).toEqual({})
    expect(calls()).toBe(0)
  })

  it('asks Docker again after a container event, another set of apps, or maxAge; not every second otherwise', async () => {
    const { docker, calls } = engine([container('notes', 'web', { 'dcloud-notes': '172.18.0.2' })])
    const cache = new LocalWebAddresses(docker, 5000)
    const apps = [{ name: 'notes', webService: 'web' }]
    await cache.get(apps, signal, 0)
    await cache.get(apps, signal, 1000)
    await cache.get(apps, signal, 4999)
    expect(calls()).toBe(1)
    cache.invalidate()
    await cache.get(apps, signal, 5000)
    expect(calls()).toBe(2)
    await cache.get([...apps, { name: 'photos', webService: 'web' }], signal, 5001)
    expect(calls()).toBe(3)
    expect(await cache.get([...apps, { name: 'photos', webService: 'web' }], signal, 10_001)).toEqual({ notes: '172.18.0.2' })
    expect(calls()).toBe(4)
  })
})
