/**
 * The app runtime on a real engine: one lab node's dockerd, driven directly
 * through AppRuntime (no agent in between), checked with the docker API and
 * with HTTP from inside the node.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import Docker from 'dockerode'
import { LabHandle, waitFor } from './harness.ts'
import { AppRuntime, ImageUnavailableError, StaleTermError, specHash } from '../../agent/runtime/apps.ts'
import { createLogger } from '../../agent/util/log.ts'
import { serviceDefaults, withoutWebPort, type AppManifest, type ComposeService } from '../../proto/app.ts'
import type { DesiredApp } from '../../proto/plan.ts'
import type { AppActual } from '../../proto/runtime.ts'

const lab = new LabHandle('trt')
const IMAGE = 'dcloud/busybox:lab'
const APP = 'shop'
const log = createLogger('test-runtime', () => {})
/** Where the runtime writes config files: the lab's dockerd shares this machine's file system. */
const CONFIG_DIR = mkdtempSync(join(tmpdir(), 'dcloud-trt-configs-'))

function service (over: Partial<ComposeService>): ComposeService {
  return {
    image: IMAGE, command: null, entrypoint: null, environment: {}, ports: [], volumes: [], healthcheck: null,
    dependsOn: [], restart: 'unless-stopped', labels: {}, user: null, ...serviceDefaults(), ...over
  }
}

/**
 * A web service (busybox httpd on a port Docker picks, with a healthcheck)
 * that depends on a worker holding a named volume. Both exit at once on
 * SIGTERM, so replacing them takes no 10 s stop timeout.
 */
function shopApp (opts: { greeting?: string, revision?: number, workerEnv?: Record<string, string> } = {}): DesiredApp {
  const manifest: AppManifest = {
    id: 'shop', name: 'Shop', version: '1.0.0', description: 'test app', icon: null, category: null, architectures: [],
    requests: { memoryBytes: 0, cpus: 0 }, web: { service: 'web', port: 8080 }, constraints: {},
    compose: {
      services: {
        web: service({
          command: ['sh', '-c', 'trap "exit 0" TERM; echo "web starting $GREETING"; echo "hello $GREETING" > /www/index.html; httpd -f -p 8080 -h /www & wait'],
          environment: { GREETING: opts.greeting ?? 'world' },
          ports: [{ host: null, container: 8080, protocol: 'tcp' }],
          healthcheck: { test: ['CMD', 'wget', '-qO-', 'http://127.0.0.1:8080/'], intervalMs: 500, timeoutMs: 2000, retries: 3, startPeriodMs: 0 },
          dependsOn: ['worker'],
          labels: { 'org.example.role': 'frontend' }
        }),
        worker: service({
          command: ['sh', '-c', 'trap "exit 0" TERM; echo "worker up"; sleep 3600 & wait'],
          environment: opts.workerEnv ?? {},
          volumes: [{ source: 'data', target: '/data', kind: 'volume', readOnly: false }]
        })
      },
      volumes: { data: { labels: { 'org.example.backup': 'yes' } } },
      configs: {}
    }
  }
  return { name: APP, manifest, pinnedNode: null, revision: opts.revision ?? 1 }
}

const noPeers = async (ref: string): Promise<void> => { throw new Error(`no peer has ${ref}`) }

interface Snapshot { id: string, startedAt: string }

describe('app runtime on a real engine', () => {
  let docker: Docker
  let runtime: AppRuntime
  const signal = (): AbortSignal => AbortSignal.timeout(60_000)

  async function containers (): Promise<Record<string, Snapshot>> {
    const list = await docker.listContainers({ all: true, filters: { label: [`dcloud.app=${APP}`] } })
    const out: Record<string, Snapshot> = {}
    for (const c of list) {
      const info = await docker.getContainer(c.Id).inspect()
      out[c.Labels['dcloud.service'] ?? '?'] = { id: c.Id, startedAt: info.State.StartedAt }
    }
    return out
  }

  /** The web container's address on the app's network: the node reaches the bridge its dockerd made. */
  async function webAddress (): Promise<string> {
    const info = await docker.getContainer('dcloud-shop-web').inspect()
    const ip = info.NetworkSettings.Networks['dcloud-shop']?.IPAddress ?? ''
    expect(ip).toMatch(/^\d+\.\d+\.\d+\.\d+$/)
    return ip
  }

  async function running (): Promise<AppActual> {
    const { value } = await waitFor(async () => {
      const a = (await runtime.list(signal())).find(x => x.app === APP)
      return a?.state === 'running' ? a : undefined
    }, 20_000, `${APP} to be running`)
    return value
  }

  beforeAll(async () => {
    await lab.up(1)
    // This suite drives the engine itself: the node's agent (and any scheduler
    // it runs) must not act on the same containers meanwhile, nor its fencing
    // watchdog, which stops stateful containers once no agent holds the lease.
    const node = await lab.lab.node('n1')
    for (const pid of [node.agentPid, node.watchdogPid ?? null]) {
      if (pid === null) continue
      process.kill(pid, 'SIGTERM')
      await waitFor(async () => { try { process.kill(pid, 0); return undefined } catch { return true } }, 10_000, `the lab's process ${pid} to stop`)
    }
    docker = new Docker({ socketPath: lab.lab.dockerSocket('n1') })
    runtime = new AppRuntime({ docker, log, configDir: CONFIG_DIR })
  })

  afterAll(async () => {
    await lab.down()
    rmSync(CONFIG_DIR, { recursive: true, force: true })
  })

  it('deploys a 2-service app: labelled network, volume and containers, in depends_on order, its web port not published, answering on the app\'s network', async () => {
    const lines: string[] = []
    const t0 = performance.now()
    const deployed = await runtime.deploy(shopApp(), { term: 3, fetchImage: noPeers, signal: signal(), progress: (l) => lines.push(l) })
    const deployMs = performance.now() - t0
    expect(deployed.app).toBe(APP)
    expect(deployed.services.map(s => s.service)).toEqual(['web', 'worker'])
    // The worker is created before the web service that depends on it.
    expect(lines.findIndex(l => l.startsWith('worker: creating'))).toBeLessThan(lines.findIndex(l => l.startsWith('web: creating')))
    expect(lines).toContain('creating network dcloud-shop')
    expect(lines).toContain('creating volume dcloud-shop-data')

    const net = await docker.getNetwork('dcloud-shop').inspect()
    expect(net.Driver).toBe('bridge')
    expect(net.Labels?.['dcloud.app']).toBe(APP)
    const vol = await docker.getVolume('dcloud-shop-data').inspect()
    expect(vol.Labels).toMatchObject({ 'dcloud.app': APP, 'dcloud.volume': 'data', 'org.example.backup': 'yes' })

    const web = await docker.getContainer('dcloud-shop-web').inspect()
    expect(web.Config.Labels).toMatchObject({
      'dcloud.app': APP, 'dcloud.service': 'web', 'dcloud.revision': '1', 'dcloud.term': '3',
      // The web port is the front door's to reach (on the app's network), not published: the hash is of what runs.
      'dcloud.spec': specHash(APP, withoutWebPort(shopApp().manifest).compose.services.web!), 'org.example.role': 'frontend'
    })
    expect(web.Config.Env).toContain('GREETING=world')
    // A stateful app (shop has a volume) is started only by the agent: no restart policy, and the watchdog's label.
    expect(web.HostConfig.RestartPolicy?.Name).toBe('no')
    expect(web.Config.Labels['dcloud.fence']).toBe('1')
    expect(web.Config.Healthcheck?.Test).toEqual(['CMD', 'wget', '-qO-', 'http://127.0.0.1:8080/'])
    expect(web.NetworkSettings.Networks['dcloud-shop']?.Aliases).toContain('web')
    const worker = await docker.getContainer('dcloud-shop-worker').inspect()
    expect(worker.Mounts.find(m => m.Destination === '/data')?.Name).toBe('dcloud-shop-data')

    const actual = await running()
    expect(actual.services.find(s => s.service === 'web')?.ports).toEqual([])
    expect(web.HostConfig.PortBindings ?? {}).toEqual({})
    const { value: page } = await waitFor(async () => {
      const r = await lab.exec('n1', ['wget', '-qO-', `http://${await webAddress()}:8080/`])
      return r.code === 0 ? r.stdout : undefined
    }, 10_000, 'the web service to answer on the app\'s network')
    expect(page.trim()).toBe('hello world')
    // The worker reaches the web service by its service name on the app's network.
    const byAlias = await lab.exec('n1', ['docker', 'exec', 'dcloud-shop-worker', 'wget', '-qO-', 'http://web:8080/'])
    expect(byAlias.stdout.trim(), byAlias.stderr).toBe('hello world')
    console.log(`deploy of 2 services: ${Math.round(deployMs)} ms; running (healthy) ${Math.round(performance.now() - t0)} ms after the call`)
  })

  it('redeploying the same app recreates and restarts nothing', async () => {
    const before = await containers()
    const lines: string[] = []
    const again = await runtime.deploy(shopApp(), { term: 3, fetchImage: noPeers, signal: signal(), progress: (l) => lines.push(l) })
    expect(await containers()).toEqual(before)
    expect(lines.filter(l => l.includes('creating'))).toEqual([])
    expect(lines).toEqual(expect.arrayContaining(['web: unchanged', 'worker: unchanged']))
    expect(again.state).toBe('running')
  })

  it('a changed spec replaces only that service; a stopped container with an unchanged spec is started, not recreated', async () => {
    const before = await containers()
    const changed = await runtime.deploy(shopApp({ greeting: 'again', revision: 2 }), { term: 4, fetchImage: noPeers, signal: signal() })
    const after = await containers()
    expect(after.worker).toEqual(before.worker)
    expect(after.web?.id).not.toBe(before.web?.id)
    const web = changed.services.find(s => s.service === 'web')
    expect(web?.revision).toBe(2)
    expect(web?.term).toBe(4)
    expect(changed.services.find(s => s.service === 'worker')?.revision).toBe(1)
    expect(changed.revision).toBe(2)
    await running()
    const { value: page } = await waitFor(async () => {
      const r = await lab.exec('n1', ['wget', '-qO-', `http://${await webAddress()}:8080/`])
      return r.code === 0 ? r.stdout : undefined
    }, 10_000, 'the new web container to answer')
    expect(page.trim()).toBe('hello again')

    await docker.getContainer(after.worker!.id).stop({ t: 5 })
    expect((await runtime.list(signal())).find(a => a.app === APP)?.state).toBe('failed') // part of the app is down
    await runtime.deploy(shopApp({ greeting: 'again', revision: 2 }), { term: 4, fetchImage: noPeers, signal: signal() })
    const restarted = await containers()
    expect(restarted.worker?.id).toBe(after.worker?.id)
    expect(restarted.worker?.startedAt).not.toBe(after.worker?.startedAt)
    expect(restarted.web).toEqual(after.web)
    await running()
  })

  it('a fresh runtime (as after an agent restart) rebuilds the same view from Docker labels alone', async () => {
    const before = await runtime.list(signal())
    const fresh = new AppRuntime({ docker: new Docker({ socketPath: lab.lab.dockerSocket('n1') }), log, configDir: CONFIG_DIR })
    const after = await fresh.list(signal())
    expect(after).toEqual(before)
    const shop = after.find(a => a.app === APP)
    expect(shop).toMatchObject({ app: APP, revision: 2, term: 4, state: 'running' })
    expect(shop?.services.map(s => [s.service, s.state, s.health])).toEqual([['web', 'running', 'healthy'], ['worker', 'running', 'none']])
    // And a deploy through the fresh runtime still changes nothing.
    const ids = await containers()
    await fresh.deploy(shopApp({ greeting: 'again', revision: 2 }), { term: 4, fetchImage: noPeers, signal: signal() })
    expect(await containers()).toEqual(ids)
  })

  it('refuses a deploy from an older term than the one that created the containers', async () => {
    await expect(runtime.deploy(shopApp({ greeting: 'stale', revision: 3 }), { term: 2, fetchImage: noPeers, signal: signal() }))
      .rejects.toThrow(StaleTermError)
    expect((await containers()).web?.id).toBeDefined()
  })

  it('logs come back merged, each line prefixed with its service', async () => {
    const text = await runtime.logs(APP, { tail: 50, signal: signal() })
    const lines = text.trimEnd().split('\n')
    expect(lines).toContain('web    | web starting again')
    expect(lines).toContain('worker | worker up')
    expect(lines.every(l => /^(web   |worker) \| /.test(l))).toBe(true)
  })

  it('remove stops and removes containers and network, keeps the volume and its data, and says so', async () => {
    const w = await lab.exec('n1', ['docker', 'exec', 'dcloud-shop-worker', 'sh', '-c', 'echo precious > /data/keep.txt'])
    expect(w.code, w.stderr).toBe(0)
    const kept = await runtime.remove(APP, signal())
    expect(kept).toEqual(['dcloud-shop-data'])
    expect(await containers()).toEqual({})
    await expect(docker.getNetwork('dcloud-shop').inspect()).rejects.toMatchObject({ statusCode: 404 })
    expect((await docker.getVolume('dcloud-shop-data').inspect()).Name).toBe('dcloud-shop-data')
    expect((await runtime.list(signal())).find(a => a.app === APP)).toBeUndefined()

    // Deployed again, the app finds its data where it left it.
    const lines: string[] = []
    await runtime.deploy(shopApp({ revision: 4 }), { term: 5, fetchImage: noPeers, signal: signal(), progress: (l) => lines.push(l) })
    expect(lines).not.toContain('creating volume dcloud-shop-data')
    const r = await lab.exec('n1', ['docker', 'exec', 'dcloud-shop-worker', 'cat', '/data/keep.txt'])
    expect(r.stdout.trim()).toBe('precious')
    expect(await runtime.remove(APP, signal())).toEqual(['dcloud-shop-data'])
    // Removing what is gone is not an error.
    expect(await runtime.remove(APP, signal())).toEqual(['dcloud-shop-data'])
  })

  it('a missing image nobody can supply fails with an error naming it and what was tried, before touching anything', async () => {
    const app = shopApp()
    app.name = 'ghost'
    app.manifest.compose.services.worker!.image = 'dcloud/missing:lab'
    const asked: string[] = []
    const err = await runtime.deploy(app, { term: 5, fetchImage: async (ref) => { asked.push(ref); throw new Error('no peer reports it') }, signal: signal() }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ImageUnavailableError)
    expect((err as Error).message).toMatch(/image dcloud\/missing:lab is not on this node/)
    expect((err as Error).message).toMatch(/not pulled: a local-only name/)
    expect((err as Error).message).toMatch(/peers: no peer reports it/)
    expect((err as ImageUnavailableError).hint).toMatch(/docker load/)
    expect(asked).toEqual(['dcloud/missing:lab'])
    // Images are settled first: no network, volume or container of the app exists.
    await expect(docker.getNetwork('dcloud-ghost').inspect()).rejects.toMatchObject({ statusCode: 404 })
    expect(await docker.listContainers({ all: true, filters: { label: ['dcloud.app=ghost'] } })).toEqual([])

    // A registry name is pulled first; with no route out of the lab that fails at once.
    app.manifest.compose.services.worker!.image = 'registry.example.invalid/team/worker:1.0'
    const t0 = performance.now()
    const pulled = await runtime.deploy(app, { term: 5, fetchImage: noPeers, signal: signal() }).then(() => new Error('deploy succeeded'), (e: unknown) => e as Error)
    const ms = performance.now() - t0
    expect(pulled.message).toMatch(/image registry\.example\.invalid\/team\/worker:1\.0 is not on this node/)
    expect(pulled.message).toMatch(/docker pull failed/)
    expect(pulled.message).toMatch(/peers: no peer has registry\.example\.invalid/)
    expect(ms).toBeLessThan(10_000)
    console.log(`missing registry image: pull failed and peers asked in ${Math.round(ms)} ms`)
  })

  it('an image a peer supplies is used: deploy calls fetchImage, then runs it', async () => {
    await docker.getImage(IMAGE).tag({ repo: 'dcloud/peer-only', tag: 'lab' })
    const app = shopApp()
    app.name = 'peered'
    app.manifest.compose.services.worker!.image = 'dcloud/peer-only:lab'
    app.manifest.compose.services.web!.ports = [] // no port: this app only shows the image path
    await docker.getImage('dcloud/peer-only:lab').remove()
    const fetched: string[] = []
    const deployed = await runtime.deploy(app, {
      term: 5,
      // Stands in for fetchImageFromPeers (tested in image-transfer.test.ts): the image appears.
      fetchImage: async (ref) => { fetched.push(ref); await docker.getImage(IMAGE).tag({ repo: 'dcloud/peer-only', tag: 'lab' }) },
      signal: signal()
    })
    expect(fetched).toEqual(['dcloud/peer-only:lab'])
    expect(deployed.services).toHaveLength(2)
    expect(await runtime.remove('peered', signal())).toEqual(['dcloud-peered-data'])
  })

  it('maps the keys that add no power onto the container exactly, and mounts a config\'s content read-only', async () => {
    const keysApp = (content: string): DesiredApp => ({
      name: 'keys',
      pinnedNode: null,
      revision: 1,
      manifest: {
        id: 'keys', name: 'Keys', version: '1', description: '', icon: null, category: null, architectures: [],
        requests: { memoryBytes: 0, cpus: 0 }, web: null, constraints: {},
        compose: {
          services: {
            svc: service({
              command: ['sh', '-c', 'trap "exit 0" TERM; sleep 3600 & wait'],
              workingDir: '/work',
              tty: true,
              stdinOpen: true,
              shmSizeBytes: 128 * 1024 * 1024,
              tmpfs: [{ target: '/work', options: ['size=8388608', 'mode=1777'] }],
              readOnly: true,
              capDrop: ['NET_RAW', 'MKNOD'],
              ulimits: { nofile: { soft: 1024, hard: 2048 }, nproc: { soft: 512, hard: 512 } },
              extraHosts: [{ host: 'db.example', address: '10.1.2.3' }, { host: 'gw', address: 'host-gateway' }],
              noNewPrivileges: true,
              configs: [{ source: 'app_conf', target: '/etc/app/app.conf', mode: 0o440 }]
            })
          },
          volumes: {},
          configs: { app_conf: { content } }
        }
      }
    })
    await runtime.deploy(keysApp('greeting = "hello"\n'), { term: 5, fetchImage: noPeers, signal: signal() })
    const info = await docker.getContainer('dcloud-keys-svc').inspect()
    expect(info.Config.WorkingDir).toBe('/work')
    expect(info.Config.Tty).toBe(true)
    expect(info.Config.OpenStdin).toBe(true)
    const hc = info.HostConfig as Record<string, unknown>
    expect(hc.ShmSize).toBe(128 * 1024 * 1024)
    expect(hc.Tmpfs).toEqual({ '/work': 'size=8388608,mode=1777' })
    expect(hc.ReadonlyRootfs).toBe(true)
    expect(hc.CapDrop).toEqual(['NET_RAW', 'MKNOD'])
    expect(hc.CapAdd ?? null).toBeNull()
    expect(hc.Privileged).toBe(false)
    expect(hc.Ulimits).toEqual([{ Name: 'nofile', Soft: 1024, Hard: 2048 }, { Name: 'nproc', Soft: 512, Hard: 512 }])
    expect(hc.ExtraHosts).toEqual(['db.example:10.1.2.3', 'gw:host-gateway'])
    expect(hc.SecurityOpt).toEqual(['no-new-privileges:true'])
    // The stateless app keeps its restart policy.
    expect(info.HostConfig.RestartPolicy?.Name).toBe('unless-stopped')
    const conf = info.Mounts.find(m => m.Destination === '/etc/app/app.conf')
    expect(conf).toMatchObject({ Type: 'bind', RW: false })
    expect(conf?.Source.startsWith(join(CONFIG_DIR, 'keys'))).toBe(true)

    const sh = async (script: string): Promise<{ code: number, stdout: string, stderr: string }> => await lab.exec('n1', ['docker', 'exec', 'dcloud-keys-svc', 'sh', '-c', script])
    await waitFor(async () => (await runtime.list(signal())).find(a => a.app === 'keys')?.state === 'running' ? true : undefined, 20_000, 'keys to run')
    const read = await sh('cat /etc/app/app.conf; stat -c %a /etc/app/app.conf; pwd; grep -E "db.example|gw" /etc/hosts')
    expect(read.code, read.stderr).toBe(0)
    const lines = read.stdout.split('\n')
    expect(lines.slice(0, 3)).toEqual(['greeting = "hello"', '440', '/work'])
    expect(lines).toContain('10.1.2.3\tdb.example')
    // Docker put the node's own address for host-gateway.
    expect(lines.some(l => /^\d+\.\d+\.\d+\.\d+\tgw$/.test(l))).toBe(true)
    expect((await sh('echo x > /rootfs-file')).code).not.toBe(0) // read_only: the root filesystem refuses writes
    expect((await sh('echo x > /etc/app/app.conf')).code).not.toBe(0) // the config too
    expect((await sh('echo x > /work/scratch && cat /work/scratch')).stdout.trim()).toBe('x') // the tmpfs takes them

    // A new text is a new spec: the container is replaced and mounts the new file; the old file goes.
    const before = info.Id
    await runtime.deploy(keysApp('greeting = "again"\n'), { term: 5, fetchImage: noPeers, signal: signal() })
    const after = await docker.getContainer('dcloud-keys-svc').inspect()
    expect(after.Id).not.toBe(before)
    await waitFor(async () => (await runtime.list(signal())).find(a => a.app === 'keys')?.state === 'running' ? true : undefined, 20_000, 'keys to run again')
    expect((await sh('cat /etc/app/app.conf')).stdout).toBe('greeting = "again"\n')
    expect(readdirSync(join(CONFIG_DIR, 'keys'))).toHaveLength(1)
    expect(await runtime.remove('keys', signal())).toEqual([])
    expect(existsSync(join(CONFIG_DIR, 'keys'))).toBe(false)
  })
})
