/**
 * `dcloud watchdog`: runs the fencing watchdog (watchdog.ts) in the
 * foreground. Bundled apart from the agent (dist/watchdog.mjs) so that it
 * loads a few kilobytes, not the agent's libp2p.
 *
 *   dcloud watchdog [--lease FILE] [--docker unix:///var/run/docker.sock]
 *
 * Defaults: the lease in the agent's runtime directory (DCLOUD_RUNTIME_DIR,
 * /run/dcloud for the system agent), Docker from DOCKER_HOST.
 */
import { parseArgs } from 'node:util'
import { join } from 'node:path'
import { defaultDataDir, runtimeDir } from '../config.ts'
import { LEASE_FILE } from './lease.ts'
import { Watchdog } from './watchdog.ts'

const { values } = parseArgs({ args: process.argv.slice(2).filter(a => a !== 'watchdog'), strict: true, options: { lease: { type: 'string' }, docker: { type: 'string' }, help: { type: 'boolean', short: 'h' } } })
if (values.help === true) {
  process.stdout.write('dcloud watchdog [--lease FILE] [--docker unix:///PATH]\n  stops the node\'s stateful containers when the agent\'s fencing lease lapses\n')
  process.exit(0)
}
const dockerHost = values.docker ?? process.env.DOCKER_HOST ?? 'unix:///var/run/docker.sock'
if (!dockerHost.startsWith('unix://')) {
  process.stderr.write(`dcloud watchdog: only a local Docker socket (unix://) is supported, got ${dockerHost}\n`)
  process.exit(64)
}
const leaseFile = values.lease ?? join(runtimeDir(defaultDataDir()), LEASE_FILE)
const log = (line: string, fields: Record<string, unknown> = {}): void => {
  process.stderr.write(`${new Date().toISOString()} watchdog ${line}${Object.entries(fields).map(([k, v]) => ` ${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join('')}\n`)
}
const dog = new Watchdog({ leaseFile, dockerSocket: dockerHost.slice('unix://'.length), log })
log('watching', { lease: leaseFile, docker: dockerHost })
dog.start()
for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => { dog.stop(); process.exit(0) })
