/**
 * Public certificates from an ACME CA, ordered once for the whole cluster.
 *
 * The agent talks to the CA, not Caddy: Debian's Caddy keeps certificates per
 * node, so three nodes would order three times, and a failover or a new node
 * would order again (and run into the CA's rate limits). Here only the leader
 * orders; what it gets (the chain and its key) goes into the replicated
 * secrets, and every node's front door serves it from there. A new leader
 * finds the certificates in the state it already holds and orders nothing.
 *
 * HTTP-01 through any node: the key authorization is a replicated entry
 * (`challenge`), rendered by every front door as a static answer on port 80
 * ahead of the redirect to HTTPS; the leader checks every live node answers
 * it before it tells the CA to validate, so whichever node the name resolves
 * to answers.
 *
 * Failures (the CA unreachable, refusing): logged once per distinct error,
 * kept in the replicated state (`dcloud domain show` on any node), retried
 * with a backoff (scheduler/certificates.ts); the cluster CA's certificate
 * keeps serving the host meanwhile.
 */
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'
import { request as httpRequest } from 'node:http'
import { X509Certificate, generateKeyPairSync } from 'node:crypto'
import * as acme from 'acme-client'
import { ACME_ACCOUNT_SECRET, ACME_CERT_SECRET, certSecretName, decodeStoredCertificate, type AcmeSettings } from '../../proto/acme.ts'
import type { AcmeView, PublicCertificateView } from '../../proto/api.ts'
import type { ChangeResponse, DesiredChange, DesiredState } from '../../proto/cluster.ts'
import { clusterDomain } from '../../proto/frontdoor.ts'
import { certificatePlan, wantedHosts, type CertificateAction, type HostFailures } from '../../scheduler/certificates.ts'
import { SecretError, type ReplicatedSecrets } from '../secrets/secrets.ts'
import type { Logger } from '../util/log.ts'
import type { PublicCertificate } from './render.ts'

/** A certificate from the replicated secrets, parsed once. */
export interface HeldPublicCertificate extends PublicCertificate {
  host: string
  issuer: string
  serial: string
  notBefore: number
  notAfter: number
}

/**
 * The public certificates of the replicated state, parsed and cached by
 * their sealed bytes: the front door asks every second, on every node.
 */
export class PublicCertificates {
  private readonly secrets: ReplicatedSecrets
  private readonly log: Logger
  private cache = new Map<string, { sealed: string, cert: HeldPublicCertificate | null }>()

  constructor (secrets: ReplicatedSecrets, log: Logger) {
    this.secrets = secrets
    this.log = log
  }

  /** Every certificate held, by host (including those no longer wanted or expired). */
  all (state: DesiredState): Map<string, HeldPublicCertificate> {
    const out = new Map<string, HeldPublicCertificate>()
    const seen = new Set<string>()
    for (const name of this.secrets.names(ACME_CERT_SECRET)) {
      seen.add(name)
      const sealed = state.secrets?.[name]?.data ?? ''
      let entry = this.cache.get(name)
      if (entry?.sealed !== sealed) {
        entry = { sealed, cert: this.parse(name) }
        this.cache.set(name, entry)
      }
      if (entry.cert !== null) out.set(entry.cert.host, entry.cert)
    }
    for (const name of this.cache.keys()) if (!seen.has(name)) this.cache.delete(name)
    return out
  }

  /** The certificates to serve now: for a host the domain wants, valid at `now`, naming its host. */
  serving (state: DesiredState, now: number): HeldPublicCertificate[] {
    if (state.acme === undefined) return []
    const wanted = new Set(wantedHosts(clusterDomain(state), state.apps.map(a => ({ name: a.name, web: a.manifest.web }))))
    return [...this.all(state).values()].filter(c => wanted.has(c.host) && c.names.includes(c.host) && c.notBefore <= now && now < c.notAfter)
  }

  view (state: DesiredState): PublicCertificateView[] {
    return [...this.all(state).values()].sort((a, b) => a.host.localeCompare(b.host)).map(c => ({
      host: c.host, issuer: c.issuer, serial: c.serial, notBefore: c.notBefore, notAfter: c.notAfter, renewAt: c.notBefore + Math.ceil((c.notAfter - c.notBefore) * 2 / 3)
    }))
  }

  private parse (name: string): HeldPublicCertificate | null {
    try {
      const raw = this.secrets.get(name)
      if (raw === null) return null
      const stored = decodeStoredCertificate(JSON.parse(raw.toString('utf8')), name)
      const x = new X509Certificate(stored.certPem)
      const names = (x.subjectAltName ?? '').split(',').map(s => s.trim()).filter(s => s.startsWith('DNS:')).map(s => s.slice(4).toLowerCase())
      return { host: name.slice(ACME_CERT_SECRET.length), certPem: stored.certPem, keyPem: stored.keyPem, names, issuer: x.issuer.replace(/\n/g, ', '), serial: x.serialNumber, notBefore: Date.parse(x.validFrom), notAfter: Date.parse(x.validTo) }
    } catch (err) {
      // A secret another cluster key sealed, or a damaged one: the host keeps the cluster CA's certificate, and the leader orders anew.
      this.log.warn('a public certificate in the replicated state cannot be used; the cluster CA\'s serves its host', { secret: name, error: (err as Error).message })
      return null
    }
  }
}

export interface AcmeIssuerInit {
  secrets: ReplicatedSecrets
  certificates: PublicCertificates
  state: () => DesiredState
  /** Only the leader orders. */
  isLeader: () => boolean
  change: (change: DesiredChange, signal?: AbortSignal) => Promise<ChangeResponse>
  /** The addresses of the live nodes' front doors (this one's included): each must answer a challenge before the CA is asked to validate. */
  frontDoors: () => string[]
  /** The front doors' HTTP port, or null when plain HTTP is off (HTTP-01 then cannot work: said so). */
  httpPort: number | null
  log: Logger
  intervalMs?: number
  now?: () => number
  /** How long every front door has to serve a new challenge before the CA is asked anyway. */
  challengeWaitMs?: number
}

const DEFAULT_INTERVAL_MS = 5000
const ORDER_TIMEOUT_MS = 180_000

export class AcmeIssuer {
  private readonly init: AcmeIssuerInit
  private readonly controller = new AbortController()
  private timer: NodeJS.Timeout | undefined
  private running: Promise<void> | null = null
  private started = false
  private readonly failures = new Map<string, HostFailures>()
  private lastLoggedError: string | null = null
  /** The settings the backoff was counted under: new settings (a fixed URL, another CA) are tried at once. */
  private settingsKey = ''
  readonly status: AcmeView = { orders: 0, issued: 0, failures: 0, lastError: null, plan: [] }

  constructor (init: AcmeIssuerInit) { this.init = init }

  start (): void {
    if (this.started) return
    this.started = true
    this.schedule(0)
  }

  async stop (): Promise<void> {
    this.started = false
    clearTimeout(this.timer)
    this.controller.abort()
    await this.running?.catch(() => {})
  }

  /** Looks again soon (a commit: a new app, a new domain, ACME set). */
  poke (): void {
    if (this.started && this.running === null) this.schedule(200)
  }

  private schedule (ms: number): void {
    clearTimeout(this.timer)
    this.timer = setTimeout(() => {
      this.running = this.tick().then(ordered => {
        this.running = null
        // The next host at once after a certificate was stored; otherwise at the next round.
        if (this.started) this.schedule(ordered ? 0 : this.init.intervalMs ?? DEFAULT_INTERVAL_MS)
      }, (err: unknown) => {
        this.running = null
        this.init.log.warn('ACME round failed; next round', { error: (err as Error).message })
        if (this.started) this.schedule(this.init.intervalMs ?? DEFAULT_INTERVAL_MS)
      })
    }, ms)
  }

  /** One round: on the leader with ACME set, the first host that needs a certificate gets one. Whether one was stored. */
  async tick (): Promise<boolean> {
    const state = this.init.state()
    const settings = state.acme
    if (!this.init.isLeader() || settings === undefined) {
      this.status.plan = []
      return false
    }
    const key = JSON.stringify(settings)
    if (key !== this.settingsKey) { this.settingsKey = key; this.failures.clear() }
    const now = (this.init.now ?? Date.now)()
    const hosts = wantedHosts(clusterDomain(state), state.apps.map(a => ({ name: a.name, web: a.manifest.web })))
    const held = this.init.certificates.all(state)
    await this.tidy(state, hosts, held, now)
    const plan = certificatePlan(hosts, held, this.failures, now)
    this.status.plan = plan.map(viewOf)
    const next = plan.find(p => p.action === 'order')
    if (next === undefined) return false
    const signal = AbortSignal.any([this.controller.signal, AbortSignal.timeout(ORDER_TIMEOUT_MS)])
    this.init.log.info('ordering a certificate', { host: next.host, why: next.reason, from: settings.directory })
    this.status.orders++
    try {
      await this.order(next.host, settings, signal)
      this.status.issued++
      this.failures.delete(next.host)
      this.init.log.info('certificate stored in the replicated state; every front door serves it', { host: next.host })
      if (this.lastLoggedError !== null) this.init.log.info('ACME orders succeed again')
      this.lastLoggedError = null
      this.status.lastError = null
      if (this.init.state().acmeFailure !== undefined) await this.init.change({ kind: 'acme-failure', failure: null }, signal).catch(() => {})
      return true
    } catch (err) {
      if (this.controller.signal.aborted) return false
      // A CA that does not answer fails every host alike: all of them wait, not one after the other.
      const hit = err instanceof CaUnreachable ? plan.filter(p => p.action === 'order').map(p => p.host) : [next.host]
      for (const host of hit) {
        const failed = this.failures.get(host)
        this.failures.set(host, { count: (failed?.count ?? 0) + 1, lastAt: (this.init.now ?? Date.now)() })
      }
      this.status.failures++
      const message = `ordering a certificate for ${next.host} from ${settings.directory}: ${describe(err)}`
      this.status.lastError = message
      if (message !== this.lastLoggedError) this.init.log.warn('ACME order failed; the cluster CA\'s certificate keeps serving the host, retrying with a backoff', { error: message })
      this.lastLoggedError = message
      // In the replicated state only when it changes: a CA down for a day writes one entry, not one per retry.
      if (this.init.state().acmeFailure?.message !== message) await this.init.change({ kind: 'acme-failure', failure: { message, at: Date.now(), host: next.host } }).catch(() => {})
      return false
    }
  }

  /**
   * Between orders (this issuer runs one at a time), a challenge in the state
   * is a dead leader's, left mid-order: removed. A certificate for a host no
   * longer wanted (an app removed, another domain) is kept until it expires,
   * should the app come back, then removed.
   */
  private async tidy (state: DesiredState, hosts: string[], held: Map<string, HeldPublicCertificate>, now: number): Promise<void> {
    try {
      for (const token of Object.keys(state.challenges ?? {})) await this.init.change({ kind: 'challenge', token, keyAuthorization: null })
      for (const [host, cert] of held) if (!hosts.includes(host) && cert.notAfter <= now) await this.init.secrets.delete(certSecretName(host))
    } catch (err) {
      this.init.log.debug('tidying the ACME state failed; next round', { error: (err as Error).message })
    }
  }

  private async order (host: string, settings: AcmeSettings, signal: AbortSignal): Promise<void> {
    if (this.init.httpPort === null) throw new Error('the front door\'s plain HTTP port is off (--http-port off): HTTP-01 is answered on port 80')
    configureHttp(settings)
    // acme-client loses a connection's error (its retry interceptor reads the response a refused connection never had):
    // the directory asked first, with the same trust, says plainly whether the CA answers at all.
    await probeDirectory(settings, signal)
    const client = new acme.Client({ directoryUrl: settings.directory, accountKey: await this.accountKey(signal), backoffAttempts: 30, backoffMin: 300, backoffMax: 3000 })
    await client.createAccount({ termsOfServiceAgreed: true, ...(settings.email !== null ? { contact: [`mailto:${settings.email}`] } : {}) })
    let order = await client.createOrder({ identifiers: [{ type: 'dns', value: host }] })
    const opened: string[] = []
    try {
      for (const authz of await client.getAuthorizations(order)) {
        if (authz.status === 'valid') continue
        const challenge = authz.challenges.find(c => c.type === 'http-01')
        if (challenge === undefined) throw new Error(`the CA offers no HTTP-01 challenge for ${authz.identifier.value} (offered: ${authz.challenges.map(c => c.type).join(', ')})`)
        const keyAuthorization = await client.getChallengeKeyAuthorization(challenge)
        await this.init.change({ kind: 'challenge', token: challenge.token, keyAuthorization }, signal)
        opened.push(challenge.token)
        await this.servedEverywhere(challenge.token, keyAuthorization, host, signal)
        await client.completeChallenge(challenge)
        await client.waitForValidStatus(challenge)
      }
      const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
      const [, csr] = await acme.crypto.createCsr({ commonName: host, altNames: [host] }, key)
      order = await client.finalizeOrder(order, csr)
      const certPem = await client.getCertificate(order)
      const x = new X509Certificate(certPem)
      if (!x.checkHost(host)) throw new Error(`the CA's certificate does not name ${host}`)
      await this.init.secrets.put(certSecretName(host), JSON.stringify({ certPem, keyPem: key }), signal)
    } finally {
      for (const token of opened) await this.init.change({ kind: 'challenge', token, keyAuthorization: null }).catch(() => {})
    }
  }

  /** The account key: a replicated secret, created once; a new leader uses the same account. */
  private async accountKey (signal: AbortSignal): Promise<string> {
    let held: Buffer | null = null
    try {
      held = this.init.secrets.get(ACME_ACCOUNT_SECRET)
    } catch (err) {
      // Sealed under another cluster key (rotated) or damaged: a new account; the CA's orders do not depend on the old one.
      if (!(err instanceof SecretError)) throw err
      this.init.log.warn('the ACME account key in the replicated state cannot be opened; creating a new account', { error: err.message })
    }
    if (held !== null) return held.toString('utf8')
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
    await this.init.secrets.put(ACME_ACCOUNT_SECRET, key, signal)
    return key
  }

  /**
   * Waits until every live node's front door answers the challenge (each
   * renders it from the committed entry, within a second or so): the CA
   * may ask any of the addresses the name resolves to. A node still not
   * answering after the wait is named in the log; the CA is asked anyway.
   */
  private async servedEverywhere (token: string, keyAuthorization: string, host: string, signal: AbortSignal): Promise<void> {
    const deadline = Date.now() + (this.init.challengeWaitMs ?? 15_000)
    let missing = this.init.frontDoors()
    while (missing.length > 0 && Date.now() < deadline) {
      const answers = await Promise.all(missing.map(async a => await httpGet(a, this.init.httpPort ?? 80, host, `/.well-known/acme-challenge/${token}`, signal).catch(() => null)))
      missing = missing.filter((_, i) => answers[i] !== keyAuthorization)
      if (missing.length > 0) await new Promise(resolve => setTimeout(resolve, 200))
    }
    if (missing.length > 0) this.init.log.warn('some front doors do not answer the ACME challenge yet; asking the CA anyway', { host, missing: missing.join(', ') })
  }
}

function viewOf (a: CertificateAction): AcmeView['plan'][number] {
  switch (a.action) {
    case 'keep': return { host: a.host, action: 'keep', renewAt: a.renewAt }
    case 'wait': return { host: a.host, action: 'wait', until: a.until, reason: a.reason }
    case 'order': return { host: a.host, action: 'order', reason: a.reason }
  }
}

/**
 * acme-client's HTTP settings are its module's: the directory's own root
 * (Pebble's test CA) when one is set, a timeout, and no retries of its own
 * (this issuer retries with its backoff, and says why once).
 */
function configureHttp (settings: AcmeSettings): void {
  acme.axios.defaults.httpsAgent = new HttpsAgent(settings.caRootPem !== null ? { ca: settings.caRootPem } : {})
  acme.axios.defaults.timeout = 20_000
  const defaults = acme.axios.defaults as unknown as { acmeSettings: { retryMaxAttempts: number } }
  defaults.acmeSettings.retryMaxAttempts = 0
}

/** An error as a user reads it: the server's problem document, or the network error's code and address. */
function describe (err: unknown): string {
  // axios wraps the socket's error: its code is axios's, the address the cause's.
  type NetError = Error & { code?: string, address?: string, port?: number, cause?: unknown }
  const e = err as NetError
  const cause = (e.cause ?? {}) as NetError
  if (e.address === undefined && cause.address !== undefined) { e.address = cause.address; e.port = cause.port }
  if (e.code === undefined && cause.code !== undefined) e.code = cause.code
  if (e.code === 'ECONNREFUSED' || e.code === 'EHOSTUNREACH' || e.code === 'ENETUNREACH' || e.code === 'ETIMEDOUT' || e.code === 'ECONNABORTED' || e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN') return `the ACME server is unreachable (${e.code}${e.address !== undefined ? ` ${e.address}${e.port !== undefined ? `:${e.port}` : ''}` : ''}); is the directory URL right, and the server up?`
  if (e.code === 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' || e.code === 'SELF_SIGNED_CERT_IN_CHAIN' || e.code === 'DEPTH_ZERO_SELF_SIGNED_CERT' || e.code === 'ERR_TLS_CERT_ALTNAME_INVALID') return `the ACME server's HTTPS certificate is not trusted (${e.code}); for a test CA, give its root with --acme-ca-root FILE`
  // What acme-client's retry interceptor throws when a connection fails mid-order (see probeDirectory).
  if (e instanceof TypeError && /reading 'config'/.test(e.message)) return 'the connection to the ACME server failed (it stopped answering during the order)'
  return e.message
}

/** The CA's directory did not answer: no host can be ordered now. */
class CaUnreachable extends Error {
  override name = 'CaUnreachable'
}

async function probeDirectory (settings: AcmeSettings, signal: AbortSignal): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const req = httpsRequest(settings.directory, { agent: acme.axios.defaults.httpsAgent as HttpsAgent, signal: AbortSignal.any([signal, AbortSignal.timeout(20_000)]) }, res => {
      res.resume()
      if (res.statusCode === 200) resolve()
      else reject(new Error(`the ACME directory answered HTTP ${res.statusCode ?? 0}; is the URL the CA's directory?`))
    })
    req.on('error', err => { reject(Object.assign(new CaUnreachable(describe(err)), { cause: err })) })
    req.end()
  })
}

/** A plain GET with a Host header, the body as text (the challenge answer is short). */
async function httpGet (address: string, port: number, host: string, path: string, signal: AbortSignal): Promise<string> {
  return await new Promise((resolve, reject) => {
    const req = httpRequest({ host: address, port, path, headers: { Host: host }, signal: AbortSignal.any([signal, AbortSignal.timeout(2000)]) }, res => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { if (body.length < 4096) body += c })
      res.on('end', () => { resolve(res.statusCode === 200 ? body : `HTTP ${res.statusCode ?? 0}`) })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}
