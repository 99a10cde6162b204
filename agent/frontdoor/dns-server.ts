/**
 * The private DNS responder: the small part that holds port 53. It runs
 * apart from the agent (dcloud-dns.service, with CAP_NET_BIND_SERVICE and
 * nothing else; in the lab, one per node in the node's namespace), reads the
 * zone the agent writes (`ZoneFile`, a JSON file it renames into place), and
 * answers each message with `answerDns`, over UDP and TCP. It decides
 * nothing: what a name resolves to is the agent's (dns-zone.ts).
 *
 * The zone is read again when the file changes (inotify on its directory)
 * and, should an event be missed, when a check every second finds another
 * mtime. A missing or bad file keeps the zone it had (or none: SERVFAIL, and
 * resolvers try another node). Only the home gets answers (HOME_SOURCES and
 * the node's own subnets, dns-zone.ts); others' queries are dropped. Nothing
 * a client sends stops it.
 */
import dgram from 'node:dgram'
import net from 'node:net'
import { watch, type FSWatcher } from 'node:fs'
import { chmod, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { basename, dirname } from 'node:path'
import { networkInterfaces } from 'node:os'
import { answerDns, decodeDnsZone, homeSources, type DnsZone } from './dns-zone.ts'
import type { Logger } from '../util/log.ts'

const RECHECK_MS = 1000
const TCP_IDLE_MS = 10_000
const TCP_MAX_CONNECTIONS = 64
/** How often the node's own subnets are read again (an address from DHCP, a new interface). */
const SUBNETS_EVERY_MS = 10_000

/** The subnets of this machine's interfaces, as CIDRs (Docker's bridges included: containers are on the node). */
function ownSubnets (): string[] {
  return Object.values(networkInterfaces()).flat().map(i => i?.cidr).filter((c): c is string => typeof c === 'string')
}

export interface DnsListen { host: string, port: number }

/** `0.0.0.0:53`, `[::]:53`, `10.213.0.11:53` as given to --listen. */
export function parseDnsListen (text: string): DnsListen {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|(\d{1,3}(?:\.\d{1,3}){3})):(\d{1,5})$/.exec(text)
  const port = Number(m?.[3])
  if (m === null || !(port >= 1 && port <= 65_535) || net.isIP(m[1] ?? m[2] ?? '') === 0) throw new Error(`--listen ${text}: expected ADDRESS:PORT, e.g. 0.0.0.0:53 or [::]:53`)
  return { host: m[1] ?? m[2] ?? '', port }
}

export class DnsResponder {
  private zone: DnsZone | null = null
  private zoneStamp = ''
  private lastZoneError: string | null = null
  private readonly sockets: dgram.Socket[] = []
  private readonly servers: net.Server[] = []
  private watcher: FSWatcher | undefined
  private timer: NodeJS.Timeout | undefined
  readonly counters = { queries: 0, dropped: 0, notFromHome: 0, zoneLoads: 0 }

  private readonly init: { zoneFile: string, listen: DnsListen[], log: Logger, optional?: (l: DnsListen) => boolean, anySource?: boolean }
  private fromHome: { at: number, check: (address: string) => boolean } | null = null

  constructor (init: DnsResponder['init']) { this.init = init }

  /** Binds every address it can; throws only when none could be bound. */
  async start (): Promise<void> {
    await this.reload()
    try {
      this.watcher = watch(dirname(this.init.zoneFile), (_event, file) => { if (file === null || file === basename(this.init.zoneFile)) void this.reload() })
      this.watcher.on('error', () => {})
    } catch (err) {
      this.init.log.warn('cannot watch the zone\'s directory; checking it every second only', { error: (err as Error).message })
    }
    this.timer = setInterval(() => { void this.reload() }, RECHECK_MS)
    const bound: string[] = []
    for (const l of this.init.listen) {
      try {
        await this.bindUdp(l)
        await this.bindTcp(l)
        bound.push(`${l.host}:${l.port}`)
      } catch (err) {
        const optional = this.init.optional?.(l) === true
        this.init.log[optional ? 'info' : 'warn'](`not answering DNS on ${l.host}:${l.port}`, { error: (err as Error).message })
      }
    }
    if (bound.length === 0) {
      await this.stop()
      throw new Error(`could not bind any of ${this.init.listen.map(l => `${l.host}:${l.port}`).join(', ')} (port 53 needs CAP_NET_BIND_SERVICE; is another DNS server running?)`)
    }
    this.init.log.info('answering DNS', { on: bound.join(' '), zone: this.init.zoneFile })
  }

  async stop (): Promise<void> {
    clearInterval(this.timer)
    this.watcher?.close()
    for (const s of this.sockets.splice(0)) s.close()
    await Promise.all(this.servers.splice(0).map(async s => { await new Promise(resolve => s.close(resolve)) }))
  }

  current (): DnsZone | null { return this.zone }

  private async reload (): Promise<void> {
    const file = this.init.zoneFile
    try {
      const s = await stat(file)
      const stamp = `${s.ino}:${s.mtimeMs}:${s.size}`
      if (stamp === this.zoneStamp) return
      const zone = decodeDnsZone(JSON.parse(await readFile(file, 'utf8')))
      this.zone = zone
      this.zoneStamp = stamp
      this.counters.zoneLoads++
      this.lastZoneError = null
      this.init.log.debug('zone loaded', { domain: zone.domain, serial: zone.serial, names: zone.names.length })
    } catch (err) {
      const message = (err as NodeJS.ErrnoException).code === 'ENOENT' ? `no zone yet at ${file} (the agent writes it)` : `zone ${file}: ${(err as Error).message}`
      if (message !== this.lastZoneError) this.init.log.warn(`${message}; keeping ${this.zone === null ? 'no zone (answering SERVFAIL)' : 'the last zone'}`)
      this.lastZoneError = message
    }
  }

  /** Whether `address` may ask (HOME_SOURCES in dns-zone.ts), unless --any-source. */
  private mayAsk (address: string | undefined): boolean {
    if (this.init.anySource === true) return true
    const now = Date.now()
    if (this.fromHome === null || now - this.fromHome.at > SUBNETS_EVERY_MS) this.fromHome = { at: now, check: homeSources(ownSubnets()) }
    if (address !== undefined && this.fromHome.check(address)) return true
    this.counters.notFromHome++
    return false
  }

  private answer (msg: Buffer, transport: 'udp' | 'tcp'): Buffer | null {
    this.counters.queries++
    const out = answerDns(msg, this.zone, transport)
    if (out === null) this.counters.dropped++
    return out
  }

  private async bindUdp (l: DnsListen): Promise<void> {
    // IPv6 sockets only for IPv6 (IPV6_V6ONLY): the IPv4 address has its own socket; IPv4 ones take no such option (EINVAL).
    const socket = l.host.includes(':') ? dgram.createSocket({ type: 'udp6', ipv6Only: true }) : dgram.createSocket({ type: 'udp4' })
    socket.on('message', (msg, rinfo) => {
      if (!this.mayAsk(rinfo.address)) return
      const out = this.answer(msg, 'udp')
      if (out !== null) socket.send(out, rinfo.port, rinfo.address, () => {})
    })
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject)
      socket.bind(l.port, l.host, () => { socket.off('error', reject); resolve() })
    })
    // After binding, an error (an ICMP unreachable reported late) is no reason to stop answering.
    socket.on('error', (err) => { this.init.log.debug('udp socket error', { error: err.message }) })
    this.sockets.push(socket)
  }

  private async bindTcp (l: DnsListen): Promise<void> {
    const server = net.createServer((conn) => { this.serveTcp(conn) })
    server.maxConnections = TCP_MAX_CONNECTIONS
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen({ port: l.port, host: l.host, ...(l.host.includes(':') ? { ipv6Only: true } : {}) }, () => { server.off('error', reject); resolve() })
    })
    server.on('error', (err) => { this.init.log.debug('tcp server error', { error: err.message }) })
    this.servers.push(server)
  }

  /** DNS over TCP: each message after its 2-byte length (RFC 1035 4.2.2), several per connection. */
  private serveTcp (conn: net.Socket): void {
    if (!this.mayAsk(conn.remoteAddress)) { conn.destroy(); return }
    let buffered = Buffer.alloc(0)
    conn.setTimeout(TCP_IDLE_MS, () => conn.destroy())
    conn.on('error', () => {})
    conn.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk])
      while (buffered.length >= 2) {
        const length = buffered.readUInt16BE(0)
        if (buffered.length < 2 + length) break
        const msg = buffered.subarray(2, 2 + length)
        buffered = buffered.subarray(2 + length)
        const out = this.answer(Buffer.from(msg), 'tcp')
        if (out === null) { conn.destroy(); return }
        const prefix = Buffer.alloc(2)
        prefix.writeUInt16BE(out.length)
        conn.write(Buffer.concat([prefix, out]))
      }
    })
  }
}

/**
 * The agent's side: writes the zone where the responder reads it, only when
 * it changed, renamed into place so the responder never reads half a file.
 * Mode 0640: the responder's group (dcloud) reads it.
 */
export class ZoneFile {
  private readonly path: string
  private readonly log: Logger
  private last = ''
  private lastError: string | null = null
  private queue: Promise<void> = Promise.resolve()

  constructor (path: string, log: Logger) {
    this.path = path
    this.log = log
  }

  /** One write at a time (a commit and the tick may ask at once): two through one temporary file would mix. */
  async write (zone: DnsZone): Promise<void> {
    this.queue = this.queue.then(async () => { await this.writeNow(zone) })
    await this.queue
  }

  private async writeNow (zone: DnsZone): Promise<void> {
    const text = JSON.stringify(zone) + '\n'
    if (text === this.last) return
    try {
      await writeFile(`${this.path}.tmp`, text, { mode: 0o640 })
      // The agent's umask (0077 under systemd) would leave it 0600: the responder's group must read it.
      await chmod(`${this.path}.tmp`, 0o640)
      await rename(`${this.path}.tmp`, this.path)
      this.last = text
      this.lastError = null
    } catch (err) {
      const message = (err as Error).message
      if (message !== this.lastError) this.log.warn('cannot write the DNS zone; retrying every second', { path: this.path, error: message })
      this.lastError = message
    }
  }
}
