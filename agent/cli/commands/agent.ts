/** `dcloud agent`: runs this node's agent in the foreground (systemd runs it the same way). */
import { parseCommand } from '../args.ts'
import { Agent, type AccessLogOptions, type AgentOptions } from '../../agent.ts'
import { API_PORT, P2P_PORT, SYSTEM_CADDY_ACCESS_LOG, SYSTEM_CADDY_ADMIN, SYSTEM_DATA_DIR, SYSTEM_DNS_ZONE, defaultDataDir, defaultNodeName, paths } from '../../config.ts'
import { createLogger } from '../../util/log.ts'
import { UsageError } from '../../util/errors.ts'
import { TrustedProxies } from '../../api/auth.ts'
import { parseHostHeader } from '../../api/guards.ts'
import { parseDeviceList } from '../../status/devices.ts'
import { parseDuration } from '../../../apps/units.ts'
import { join } from 'node:path'

export const agentHelp = `dcloud agent [options]
  --data-dir DIR        where the node keeps its identity, key and state (default ${defaultDataDir()})
  --key-file FILE       the cluster key (default DATA_DIR/cluster.key, created when missing)
  --name NAME           the node's name in the cluster (default: hostname)
  --label KEY=VALUE     a label other nodes see (repeatable), e.g. --label ssd=true
  --listen MULTIADDR    libp2p listen address (default /ip4/0.0.0.0/tcp/${P2P_PORT})
  --peer MULTIADDR      a peer to dial where multicast does not reach (repeatable)
  --api HOST:PORT       local HTTP API (default 127.0.0.1:${API_PORT}); "off" to serve only the Unix socket;
                        every TCP request needs the token (DATA_DIR/api.token), see docs/api.md
  --api-host NAME       another Host name the TCP API answers to (repeatable), e.g. a domain in front of it;
                        loopback names, the node's addresses, hostname and name(.local) are always served
  --trusted-proxy ADDR  a proxy (IP or CIDR, repeatable) whose X-Forwarded-For gives the client's address
                        for rate limits and logs (default: none)
  --no-mdns             do not discover peers by mDNS nor announce apps as NAME.local (also DCLOUD_MDNS=off)
  --heartbeat-ms N      status interval (default 1000)
  --retention-every D   how often old snapshots are forgotten and pruned (default 10m; e.g. 30s, 1h)
  --witness HOST[:PORT] what a two-node cluster probes to let its lower-id node lead alone
                        (default: the default gateway, port 53; any TCP answer counts)
  --devices LIST        the node's devices for apps granted one, comma separated (/dev/dri,/dev/ttyUSB0) or none
                        (also DCLOUD_DEVICES; default: read from /sys/dev/char, which PrivateDevices=yes leaves visible)
  --restic PATH         the restic program (default: restic on PATH); where there is none,
                        new snapshot repositories are tar repositories (see docs/snapshots.md)
  --caddy-admin PATH    the front door: Caddy's admin Unix socket (default ${SYSTEM_CADDY_ADMIN} for the
                        system data directory, else off; also DCLOUD_CADDY_ADMIN); "off": no front door
  --https-port N        the front door's HTTPS port, the same on every node (default 443)
  --http-port N         its plain HTTP port (the CA root, redirects to HTTPS; default 80); "off" for none
  --caddy-access-log PATH  the file Caddy writes the apps' access log to, which the agent reads (default
                        ${SYSTEM_CADDY_ACCESS_LOG} for the system data directory, else DATA_DIR/caddy-access/access.log); "off": none
  --access-keep-days N  access log lines older than N days are deleted (default 30)
  --access-keep-mb N    at most N MiB of access log lines per app, this node's and its peers' replicas (default 32)
  --access-keep-total-mb N  at most N MiB of access log lines in all (default 256)
  --dns-zone FILE       where to write the private DNS zone that \`dcloud dns-server\` answers from
                        (default ${SYSTEM_DNS_ZONE} for the system data directory, else off;
                        also DCLOUD_DNS_ZONE); "off": none. Apps are also announced over mDNS as
                        NAME.local unless --no-mdns`

export async function agentCommand (argv: string[]): Promise<number> {
  const { values } = parseCommand(argv, {
    usage: 'dcloud agent [options]',
    options: {
      'data-dir': { type: 'string' },
      'key-file': { type: 'string' },
      name: { type: 'string' },
      label: { type: 'string', multiple: true, default: [] },
      listen: { type: 'string', multiple: true },
      peer: { type: 'string', multiple: true, default: [] },
      api: { type: 'string' },
      'no-mdns': { type: 'boolean', default: false },
      'heartbeat-ms': { type: 'string' },
      'retention-every': { type: 'string' },
      witness: { type: 'string' },
      restic: { type: 'string' },
      devices: { type: 'string' },
      'api-host': { type: 'string', multiple: true, default: [] },
      'trusted-proxy': { type: 'string', multiple: true, default: [] },
      'caddy-admin': { type: 'string' },
      'https-port': { type: 'string' },
      'http-port': { type: 'string' },
      'caddy-access-log': { type: 'string' },
      'access-keep-days': { type: 'string' },
      'access-keep-mb': { type: 'string' },
      'access-keep-total-mb': { type: 'string' },
      'dns-zone': { type: 'string' }
    }
  })
  const dataDir = values['data-dir'] ?? defaultDataDir()
  const labels: Record<string, string> = {}
  for (const l of values.label ?? []) {
    const eq = l.indexOf('=')
    if (eq <= 0) throw new UsageError(`--label ${l}: expected KEY=VALUE`)
    labels[l.slice(0, eq)] = l.slice(eq + 1)
  }
  const heartbeatMs = values['heartbeat-ms'] !== undefined ? Number(values['heartbeat-ms']) : undefined
  if (heartbeatMs !== undefined && !(heartbeatMs >= 100 && heartbeatMs <= 60_000)) throw new UsageError('--heartbeat-ms must be between 100 and 60000')
  let retentionEveryMs: number | undefined
  if (values['retention-every'] !== undefined) {
    try {
      retentionEveryMs = parseDuration(values['retention-every'], '--retention-every')
    } catch (err) {
      throw new UsageError((err as Error).message)
    }
    if (retentionEveryMs < 1000) throw new UsageError('--retention-every must be at least 1s')
  }
  const mdnsOff = values['no-mdns'] === true || process.env.DCLOUD_MDNS === 'off'
  const api = values.api ?? process.env.DCLOUD_API_LISTEN ?? `127.0.0.1:${API_PORT}`

  const apiHosts = values['api-host'] ?? []
  for (const h of apiHosts) if (parseHostHeader(h) === null) throw new UsageError(`--api-host ${h}: expected a host name or address, e.g. cloud.example.org`)
  const trustedProxies = values['trusted-proxy'] ?? []
  try { void new TrustedProxies(trustedProxies) } catch (err) { throw new UsageError(`--${(err as Error).message.replace(/^trusted proxy/, 'trusted-proxy')}`) }

  const devicesText = values.devices ?? process.env.DCLOUD_DEVICES
  let devices: string[] | null = null
  try { if (devicesText !== undefined) devices = parseDeviceList(devicesText, '--devices') } catch (err) { throw new UsageError((err as Error).message) }

  const frontDoor = frontDoorOptions(values['caddy-admin'] ?? process.env.DCLOUD_CADDY_ADMIN, values['https-port'], values['http-port'], dataDir)
  const accessLog = accessLogOptions(values, dataDir)

  const dnsZoneArg = values['dns-zone'] ?? process.env.DCLOUD_DNS_ZONE ?? (dataDir.replace(/\/+$/, '') === SYSTEM_DATA_DIR ? SYSTEM_DNS_ZONE : 'off')
  if (dnsZoneArg !== 'off' && !dnsZoneArg.startsWith('/')) throw new UsageError(`--dns-zone ${dnsZoneArg}: expected an absolute path, or off`)

  const log = createLogger('agent')
  const agent = new Agent({
    dataDir,
    keyFile: values['key-file'] ?? paths(dataDir).keyFile,
    name: values.name ?? defaultNodeName(),
    labels,
    listen: values.listen ?? [`/ip4/0.0.0.0/tcp/${P2P_PORT}`],
    apiTcp: api === 'off' ? null : api,
    mdns: !mdnsOff,
    peers: values.peer ?? [],
    heartbeatMs,
    retentionEveryMs,
    witness: values.witness ?? null,
    apiHosts,
    trustedProxies,
    devices,
    frontDoor,
    accessLog,
    dnsZone: dnsZoneArg === 'off' ? null : dnsZoneArg,
    ...(values.restic !== undefined ? { restic: values.restic } : {})
  }, log)

  // The agent keeps running whatever a peer sends; a bug that escapes a handler is logged, not fatal.
  process.on('unhandledRejection', (err) => { log.error('unhandled rejection', { error: (err as Error)?.stack ?? String(err) }) })

  await agent.start()
  await new Promise<void>((resolve) => {
    const shutdown = (signal: string): void => {
      log.info('stopping', { signal })
      agent.stop().then(resolve, (err: Error) => { log.error('stop failed', { error: err.message }); resolve() })
    }
    process.once('SIGINT', () => { shutdown('SIGINT') })
    process.once('SIGTERM', () => { shutdown('SIGTERM') })
  })
  return 0
}

function accessLogOptions (values: { 'caddy-access-log'?: string, 'access-keep-days'?: string, 'access-keep-mb'?: string, 'access-keep-total-mb'?: string }, dataDir: string): AccessLogOptions {
  const file = values['caddy-access-log'] ?? (dataDir.replace(/\/+$/, '') === SYSTEM_DATA_DIR ? SYSTEM_CADDY_ACCESS_LOG : join(dataDir, 'caddy-access', 'access.log'))
  if (file !== 'off' && !file.startsWith('/')) throw new UsageError(`--caddy-access-log ${file}: expected an absolute path, or off`)
  const int = (v: string | undefined, flag: string, max: number): number | undefined => {
    if (v === undefined) return undefined
    const n = Number(v)
    if (!Number.isInteger(n) || n < 1 || n > max) throw new UsageError(`${flag} ${v}: expected a whole number, 1 to ${max}`)
    return n
  }
  const days = int(values['access-keep-days'], '--access-keep-days', 3650)
  const perApp = int(values['access-keep-mb'], '--access-keep-mb', 1_000_000)
  const total = int(values['access-keep-total-mb'], '--access-keep-total-mb', 1_000_000)
  return {
    caddyLog: file === 'off' ? null : file,
    retention: {
      ...(days !== undefined ? { maxAgeMs: days * 86_400_000 } : {}),
      ...(perApp !== undefined ? { maxBytesPerApp: perApp * 1024 * 1024 } : {}),
      ...(total !== undefined ? { maxBytesTotal: total * 1024 * 1024 } : {})
    }
  }
}

function frontDoorOptions (admin: string | undefined, https: string | undefined, http: string | undefined, dataDir: string): AgentOptions['frontDoor'] {
  const socket = admin ?? (dataDir.replace(/\/+$/, '') === SYSTEM_DATA_DIR ? SYSTEM_CADDY_ADMIN : 'off')
  if (socket === 'off') return null
  if (!socket.startsWith('/')) throw new UsageError(`--caddy-admin ${socket}: expected the absolute path of Caddy's admin Unix socket, or off (a network address would let any local user reconfigure the front door)`)
  const port = (v: string, flag: string): number => {
    const n = Number(v)
    if (!Number.isInteger(n) || n < 1 || n > 65_535) throw new UsageError(`${flag} ${v}: expected a port, 1 to 65535`)
    return n
  }
  const httpsPort = https === undefined ? 443 : port(https, '--https-port')
  const httpPort = http === 'off' ? null : http === undefined ? 80 : port(http, '--http-port')
  if (httpPort === httpsPort) throw new UsageError(`--http-port ${httpPort}: the same port as --https-port`)
  return { adminSocket: socket, httpsPort, httpPort }
}
