/**
 * Where the agent keeps its things and which ports it uses, with the
 * environment overrides the lab and systemd units use.
 */
import { homedir, hostname } from 'node:os'
import { join } from 'node:path'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

export const P2P_PORT = 7370
export const API_PORT = 7371

/**
 * The checkout or installed bundle this code runs from. Both the sources
 * (agent/config.ts) and the bundle (dist/dcloud.mjs) sit one level below it.
 */
export const PROJECT_ROOT = fileURLToPath(new URL('..', import.meta.url)).replace(/\/$/, '')

export const AGENT_VERSION: string = (JSON.parse(readFileSync(join(PROJECT_ROOT, 'package.json'), 'utf8')) as { version: string }).version

/** An installed node's data directory (systemd's StateDirectory), and the default for root. */
export const SYSTEM_DATA_DIR = '/var/lib/dcloud'
/** An installed node's runtime directory (systemd's RuntimeDirectory=dcloud, mode 0750): where its API socket is. */
export const SYSTEM_RUNTIME_DIR = '/run/dcloud'
/** Caddy's admin socket on an installed node (scripts/systemd/dcloud-caddy.service's RuntimeDirectory): the front door. */
export const SYSTEM_CADDY_ADMIN = '/run/dcloud-caddy/admin.sock'
/** Where an installed node's Caddy writes the apps' access log (dcloud-caddy.service's LogsDirectory, group dcloud): the agent reads it. */
export const SYSTEM_CADDY_ACCESS_LOG = '/var/log/dcloud-caddy/access.log'
/** The private DNS zone an installed node's agent writes and dcloud-dns.service reads (docs/frontdoor.md). */
export const SYSTEM_DNS_ZONE = '/run/dcloud/dns-zone.json'

export function defaultDataDir (): string {
  if (process.env.DCLOUD_DATA_DIR !== undefined && process.env.DCLOUD_DATA_DIR !== '') return process.env.DCLOUD_DATA_DIR
  if (process.getuid?.() === 0) return SYSTEM_DATA_DIR
  return join(process.env.XDG_DATA_HOME ?? join(homedir(), '.local', 'share'), 'dcloud')
}

export function defaultNodeName (): string {
  // Node names travel in status messages, whose schema allows [a-zA-Z0-9._-].
  const name = (process.env.DCLOUD_NAME ?? hostname()).replace(/[^a-zA-Z0-9._-]/g, '-').replace(/^[^a-zA-Z0-9]+/, '')
  return name.slice(0, 63) || 'node'
}

/**
 * Where the API socket of the agent with this data directory lives: in
 * DCLOUD_RUNTIME_DIR when set (the lab gives each node one); for the system
 * data directory, in /run/dcloud, which members of the `dcloud` group can
 * traverse (the data directory, mode 0700, they cannot); otherwise in the
 * data directory itself (an agent of one user, for that user). The agent, the
 * CLI and the lab all ask this one function.
 */
export function runtimeDir (dataDir: string, env: NodeJS.ProcessEnv = process.env): string {
  if (env.DCLOUD_RUNTIME_DIR !== undefined && env.DCLOUD_RUNTIME_DIR !== '') return env.DCLOUD_RUNTIME_DIR
  return dataDir.replace(/\/+$/, '') === SYSTEM_DATA_DIR ? SYSTEM_RUNTIME_DIR : dataDir
}

export function paths (dataDir: string, env: NodeJS.ProcessEnv = process.env): { keyFile: string, identity: string, token: string, socket: string, incarnation: string } {
  return {
    keyFile: join(dataDir, 'cluster.key'),
    identity: join(dataDir, 'node.key'),
    token: join(dataDir, 'api.token'),
    socket: join(runtimeDir(dataDir, env), 'api.sock'),
    incarnation: join(dataDir, 'incarnation')
  }
}
