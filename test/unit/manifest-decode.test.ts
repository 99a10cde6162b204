/**
 * decodeManifest on the keys added after the first release: what a peer
 * replicates is validated, and a manifest an older peer wrote (without them)
 * still decodes, with their defaults.
 */
import { describe, expect, it } from 'vitest'
import { stringify } from 'yaml'
import { parseManifest } from '../../apps/manifest.ts'
import { decodeManifest } from '../../proto/cluster.ts'
import { serviceDefaults } from '../../proto/app.ts'

const COMPOSE = {
  services: {
    web: {
      image: 'nginx:1.27', working_dir: '/srv', tty: true, stdin_open: true, shm_size: '64m', read_only: true,
      tmpfs: ['/run:size=1m,mode=755'], cap_drop: ['ALL'], ulimits: { nofile: 1024 }, extra_hosts: ['gw:host-gateway'],
      security_opt: ['no-new-privileges'], configs: [{ source: 'conf', target: '/etc/nginx/conf.d/site.conf' }]
    }
  },
  configs: { conf: { content: 'server {}\n' } },
  'x-dcloud': { id: 'demo' }
}

function wire (): any {
  return JSON.parse(JSON.stringify(parseManifest(stringify(COMPOSE), 'demo.yaml').manifest))
}

describe('decodeManifest and the later service keys', () => {
  it('round-trips them', () => {
    const m = wire()
    expect(decodeManifest(m, 'manifest')).toEqual(m)
  })

  it('decodes a manifest written before they existed, with their defaults', () => {
    const m = wire()
    for (const k of Object.keys(serviceDefaults())) delete m.compose.services.web[k]
    delete m.compose.configs
    const decoded = decodeManifest(m, 'manifest')
    expect(decoded.compose.services.web).toMatchObject(serviceDefaults())
    expect(decoded.compose.configs).toEqual({})
  })

  it.each<[string, (m: any) => void, RegExp]>([
    ['a relative working dir', m => { m.compose.services.web.workingDir = 'srv' }, /manifest\.compose\.services\.web\.workingDir/],
    ['a tmpfs option that adds power', m => { m.compose.services.web.tmpfs[0].options.push('suid') }, /manifest\.compose\.services\.web\.tmpfs\[0\]\.options\[2\]/],
    ['an unknown ulimit', m => { m.compose.services.web.ulimits = { files: { soft: 1, hard: 1 } } }, /ulimits\.files: is not a resource limit/],
    ['an extra host that is no address', m => { m.compose.services.web.extraHosts[0].address = 'evil;rm' }, /extraHosts\[0\]\.address: must be an IP address or host-gateway/],
    ['a config mounted but not carried', m => { m.compose.configs = {} }, /manifest\.compose\.configs: service web mounts config conf, which the app does not have/],
    ['a config larger than a peer accepts', m => { m.compose.configs.conf.content = 'é'.repeat(200 * 1024) }, /configs\.conf\.content: longer than 262144 bytes/],
    ['no-new-privileges that is not a boolean', m => { m.compose.services.web.noNewPrivileges = 'yes' }, /noNewPrivileges: must be true or false/]
  ])('refuses %s, naming the field', (_name, change, message) => {
    const m = wire()
    change(m)
    expect(() => decodeManifest(m, 'manifest')).toThrow(message)
  })
})
