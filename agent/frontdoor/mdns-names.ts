/**
 * Each app with a web UI announced over mDNS as a one-label name,
 * `NAME.local` (many resolvers refuse `a.b.local`), or `NAME-2.local` when
 * another device on the LAN holds it. A convenience with no sign-in: plain
 * HTTP to the node that answered, whose front door reaches the app wherever
 * it runs (render.ts routes the `.local` host; docs/frontdoor.md says why no
 * HTTPS).
 *
 * Who answers: every node, for every app, with its own address. Any node
 * reaches any app, so every answer is right, and a phone keeps a name while
 * one node is down. The records are shared (no cache-flush bit, RFC 6762
 * 10.2): several nodes answering with their own addresses is no conflict.
 * A conflict is an answer for the name with an address that is none of the
 * cluster's live nodes': another device. Before announcing a name a node
 * probes it (three queries 250 ms apart, 8.1), yields it on a conflict then
 * or later, and takes the next (`-2`, `-3`, ...), skipping names the
 * cluster's own apps would take. Every node sees the same other devices, so
 * they pick the same names; a node that picked another one answers for it
 * and routes it itself, so a name always leads to its app.
 *
 * `--no-mdns` turns this off with the agent's own peer discovery.
 */
import makeMdns from 'multicast-dns'
import type { Answer, Packet, Question } from 'dns-packet'
import type { RemoteInfo } from 'node:dgram'
import type { Logger } from '../util/log.ts'

/** Seconds others may cache an answer: short, so that a dead node's address drops out soon. */
export const MDNS_TTL = 10
const PROBE_MS = 250
const PROBES = 3
const ANNOUNCE_MS = 1000
/** How far `-N` goes before giving up on an app (a LAN with nine devices named like it is broken anyway). */
const MAX_SUFFIX = 9

/** The `.local` name for `app`'s `n`th choice: `app`, then `app-2`, ... */
export function mdnsLabel (app: string, n: number): string {
  return n <= 1 ? app : `${app}-${n}`
}

/** The first choice from `n` on that no other app of the cluster would take as its own first name. */
export function nextChoice (app: string, n: number, apps: readonly string[]): number {
  let k = n
  while (k > 1 && apps.includes(mdnsLabel(app, k)) && k <= MAX_SUFFIX) k++
  return k
}

/**
 * The addresses by which `records` (a response's answers, or a probe's
 * authority section) claim `name` for another device: address records for
 * it that are none of the cluster's nodes'. Case-insensitive, as mDNS names are.
 */
export function foreignClaims (records: readonly Answer[], name: string, cluster: ReadonlySet<string>): string[] {
  const wanted = name.toLowerCase()
  const out: string[] = []
  for (const r of records) {
    if (r.name.toLowerCase() === wanted && (r.type === 'A' || r.type === 'AAAA') && typeof r.data === 'string' && !cluster.has(r.data)) out.push(r.data)
  }
  return out
}

/** A name given up, and the addresses that claimed it then. */
export interface Yielded { n: number, addresses: string[] }

/**
 * The earliest name given up only to addresses now known as the cluster's
 * own, or null. Just after a start a node has not heard from the others yet:
 * their answers look like another device's; once they are known, the name
 * comes back.
 */
export function takeBack (yielded: readonly Yielded[], cluster: ReadonlySet<string>): number | null {
  return yielded.find(y => y.addresses.every(a => cluster.has(a)))?.n ?? null
}

/** The questions of a query that ask for one of `names` (lowercase `.local` names) with an address type. */
export function askedFor (questions: readonly Question[], names: ReadonlySet<string>): Question[] {
  // dns-packet's types know no ANY; it decodes type 255 as 'ANY'.
  return questions.filter(q => names.has(q.name.toLowerCase()) && (q.type === 'A' || (q.type as string) === 'ANY'))
}

interface Claim { app: string, n: number, state: 'probing' | 'announced' | 'gave-up', timer: NodeJS.Timeout | undefined, yielded: Yielded[] }

export class AppMdns {
  private readonly log: Logger
  private mdns: ReturnType<typeof makeMdns> | undefined
  private address: string | null = null
  private cluster = new Set<string>()
  private apps: string[] = []
  private readonly claims = new Map<string, Claim>()

  constructor (log: Logger) { this.log = log }

  /** The `.local` host of each app announced now (for the front door's routes). */
  hosts (): Record<string, string> {
    const out: Record<string, string> = {}
    for (const c of this.claims.values()) if (c.state === 'announced') out[c.app] = `${mdnsLabel(c.app, c.n)}.local`
    return out
  }

  /**
   * What to announce: the apps with a web UI, this node's address (IPv4:
   * multicast-dns speaks IPv4 here) and the cluster's live nodes' addresses.
   * Called every second; starts, renames and says goodbye as they change.
   */
  update (apps: string[], address: string | null, cluster: string[]): void {
    this.cluster = new Set(cluster)
    const usable = address !== null && !address.includes(':') ? address : null
    if (usable !== this.address) {
      // A new address (or none): the socket is bound to the interface of the old one.
      void this.stop()
      this.address = usable
    }
    if (this.address === null) return
    this.mdns ??= this.open(this.address)
    this.apps = [...apps].sort()
    for (const [app, c] of this.claims) {
      if (!apps.includes(app)) { this.goodbye(c); clearTimeout(c.timer); this.claims.delete(app) }
    }
    for (const app of this.apps) if (!this.claims.has(app)) this.probe({ app, n: nextChoice(app, 1, this.apps), state: 'probing', timer: undefined, yielded: [] })
    for (const c of [...this.claims.values()]) {
      const n = takeBack(c.yielded, this.cluster)
      if (n === null) continue
      clearTimeout(c.timer)
      this.goodbye(c)
      this.log.info(`mdns: ${mdnsLabel(c.app, n)}.local was answered by a node of the cluster not known then; taking it back`)
      this.probe({ app: c.app, n, state: 'probing', timer: undefined, yielded: c.yielded.filter(y => y.n < n) })
    }
  }

  /** Says goodbye (TTL 0) for every name announced, then closes the socket once they are sent (at most 500 ms). */
  async stop (): Promise<void> {
    const mdns = this.mdns
    const claims = [...this.claims.values()]
    this.claims.clear()
    this.mdns = undefined
    for (const c of claims) clearTimeout(c.timer)
    if (mdns === undefined) return
    const sent = claims.filter(c => c.state === 'announced').map(async c => { await new Promise<void>(resolve => { mdns.respond({ answers: [this.record(c, 0)] }, () => { resolve() }) }) })
    await Promise.race([Promise.all(sent), new Promise(resolve => setTimeout(resolve, 500).unref())])
    mdns.destroy()
  }

  private open (address: string): ReturnType<typeof makeMdns> {
    // Joined and sent on the interface of the node's own address only (in the lab: the node's
    // namespace's link to the lab's switch), bound to the wildcard so multicast arrives.
    const mdns = makeMdns({ interface: address, bind: '0.0.0.0', reuseAddr: true })
    mdns.on('query', (q: Packet, rinfo: RemoteInfo) => { try { this.onQuery(q, rinfo) } catch (err) { this.log.debug('mdns query not handled', { error: (err as Error).message }) } })
    mdns.on('response', (r: Packet) => { try { this.onResponse(r) } catch (err) { this.log.debug('mdns response not handled', { error: (err as Error).message }) } })
    mdns.on('error', (err: Error) => { this.log.warn('mdns: cannot announce app names', { error: err.message }) })
    mdns.on('warning', (err: Error) => { this.log.debug('mdns warning', { error: err.message }) })
    this.log.info('announcing app names over mDNS', { address })
    return mdns
  }

  private record (c: Claim, ttl = MDNS_TTL): Answer {
    return { name: `${mdnsLabel(c.app, c.n)}.local`, type: 'A', ttl, data: this.address ?? '0.0.0.0' }
  }

  private probe (c: Claim, sent = 0): void {
    this.claims.set(c.app, c)
    c.state = 'probing'
    if (c.n > MAX_SUFFIX) {
      c.state = 'gave-up'
      this.log.warn(`mdns: ${c.app}.local to ${c.app}-${MAX_SUFFIX}.local are all held by other devices; ${c.app} gets no .local name`)
      return
    }
    if (sent < PROBES) {
      // A probe: "who has this name?", with the record we want in the authority section (RFC 6762 8.1).
      this.mdns?.query({ questions: [{ name: `${mdnsLabel(c.app, c.n)}.local`, type: 'ANY' as 'A' }], authorities: [this.record(c)] })
      c.timer = setTimeout(() => { this.probe(c, sent + 1) }, PROBE_MS)
      return
    }
    c.state = 'announced'
    this.log.info(`mdns: ${c.app} is http://${mdnsLabel(c.app, c.n)}.local/`)
    this.announce(c, 2)
  }

  private announce (c: Claim, times: number): void {
    if (times <= 0 || c.state !== 'announced') return
    this.mdns?.respond({ answers: [this.record(c)] })
    c.timer = setTimeout(() => { this.announce(c, times - 1) }, ANNOUNCE_MS)
  }

  private goodbye (c: Claim): void {
    if (c.state === 'announced') this.mdns?.respond({ answers: [this.record(c, 0)] })
  }

  /** Another device holds the name: take the next one and probe it. */
  private yieldName (c: Claim, why: string, addresses: string[]): void {
    clearTimeout(c.timer)
    const from = `${mdnsLabel(c.app, c.n)}.local`
    this.goodbye(c)
    const n = nextChoice(c.app, c.n + 1, this.apps)
    this.log.info(`mdns: ${from} is held by another device (${why}); trying ${mdnsLabel(c.app, n)}.local`)
    this.probe({ app: c.app, n, state: 'probing', timer: undefined, yielded: [...c.yielded, { n: c.n, addresses }] })
  }

  private onResponse (r: Packet): void {
    const records = [...(r.answers ?? []), ...(r.additionals ?? [])]
    for (const c of [...this.claims.values()]) {
      if (c.state === 'gave-up') continue
      const foreign = foreignClaims(records, `${mdnsLabel(c.app, c.n)}.local`, this.cluster)
      if (foreign.length > 0) this.yieldName(c, `an answer with ${foreign.join(', ')}`, foreign)
    }
  }

  private onQuery (q: Packet, rinfo: RemoteInfo): void {
    // Another device probing a name we are probing too: it keeps it (a simultaneous probe, RFC 6762 8.2, settled the simple way).
    for (const c of [...this.claims.values()]) {
      const foreign = c.state === 'probing' ? foreignClaims(q.authorities ?? [], `${mdnsLabel(c.app, c.n)}.local`, this.cluster) : []
      if (foreign.length > 0) this.yieldName(c, `a probe for ${foreign.join(', ')}`, foreign)
    }
    const announced = [...this.claims.values()].filter(c => c.state === 'announced')
    const names = new Set(announced.map(c => `${mdnsLabel(c.app, c.n)}.local`))
    const asked = askedFor(q.questions ?? [], names)
    if (asked.length === 0) return
    const answers = announced.filter(c => asked.some(a => a.name.toLowerCase() === `${mdnsLabel(c.app, c.n)}.local`)).map(c => this.record(c))
    if (rinfo.port !== 5353) {
      // A one-shot query (dig, nslookup: not from port 5353): answered to it alone, with its id and
      // question, as a unicast DNS answer (RFC 6762 6.7).
      this.mdns?.respond({ id: q.id, questions: asked, answers }, { port: rinfo.port, address: rinfo.address } as never)
      return
    }
    this.mdns?.respond({ answers })
  }
}
