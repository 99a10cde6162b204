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

export function defaultDataDir (): string {
  if (process.env.DCLOUD_DATA_DIR !== undefined && process.env.DCLOUD_DATA_DIR !== '') return process.env.DCLOUD_DATA_DIR
  if (process.getuid?.() === 0) return '/var/lib/dcloud'
  return join(process.env.XDG_DATA_HOME ?? join(homedir(), '.local', 'share'), 'dcloud')
}

export function defaultNodeName (): string {
  // Node names travel in status messages, whose schema allows [a-zA-Z0-9._-].
  const name = (process.env.DCLOUD_NAME ?? hostname()).replace(/[^a-zA-Z0-9._-]/g, '-').replace(/^[^a-zA-Z0-9]+/, '')
  return name.slice(0, 63) || 'node'
}

export function paths (dataDir: string): { keyFile: string, identity: string, token: string, socket: string, incarnation: string } {
  return {
    keyFile: join(dataDir, 'cluster.key'),
    identity: join(dataDir, 'node.key'),
    token: join(dataDir, 'api.token'),
    socket: join(dataDir, 'api.sock'),
    incarnation: join(dataDir, 'incarnation')
  }
}
