/**
 * Which public certificates the cluster needs, and when to order each: pure
 * decisions for the ACME issuer (agent/frontdoor/acme.ts), which only the
 * leader runs. No clock of its own: `now` is given.
 *
 * One certificate per host (the bare DOMAIN, and NAME.DOMAIN for each app
 * with a web UI), not one certificate naming them all: installing an app
 * orders one name and re-issues nothing else, removing one leaves the
 * others' certificates alone, and a CA refusing one name (a typo in DNS, a
 * CAA record) does not hold back the rest. Let's Encrypt's limit of 50 new
 * certificates per registered domain a week bounds app installs, not renewals
 * (renewals are exempt), which a home cluster does not reach.
 */
import { appHost, reservedNameReason } from '../proto/frontdoor.ts'

/** The hosts that need a public certificate: the bare domain (dashboard, API) and each app with a web UI whose name is not reserved. */
export function wantedHosts (domain: string, apps: ReadonlyArray<{ name: string, web: unknown }>): string[] {
  const hosts = apps.filter(a => a.web !== null && a.web !== undefined && reservedNameReason(a.name) === null).map(a => appHost(a.name, domain))
  return [domain, ...[...new Set(hosts)].sort()]
}

/**
 * Whether a certificate is due for renewal: once two thirds of its lifetime
 * have passed (Let's Encrypt's 90 days: at day 60, a month of retries left
 * before it expires), at once when it has expired. Not when it is not valid
 * yet: this node's clock is behind the CA's, and a new certificate would be
 * just as early (ordering again would only spend the CA's rate limits; the
 * cluster CA's certificate serves the host until it is valid).
 */
export function renewalDue (now: number, notBefore: number, notAfter: number): boolean {
  if (now >= notAfter) return true
  if (now < notBefore) return false
  return now >= notBefore + (notAfter - notBefore) * 2 / 3
}

/** How long to wait after `failures` consecutive failures before the next attempt: 30 s, doubling, at most 6 h. */
export function retryAfterMs (failures: number): number {
  return Math.min(6 * 3_600_000, 30_000 * 2 ** Math.max(0, failures - 1))
}

export interface HeldCertificate { notBefore: number, notAfter: number, names: string[] }
export interface HostFailures { count: number, lastAt: number }

export type CertificateAction =
  | { host: string, action: 'order', reason: string }
  | { host: string, action: 'wait', reason: string, until: number }
  | { host: string, action: 'keep', renewAt: number }

/**
 * What to do for each wanted host now: keep a valid certificate (until its
 * renewal time), order one (none held, or one due), or wait out the backoff
 * after failures. Hosts in the order given.
 */
export function certificatePlan (hosts: readonly string[], held: ReadonlyMap<string, HeldCertificate>, failures: ReadonlyMap<string, HostFailures>, now: number): CertificateAction[] {
  return hosts.map((host): CertificateAction => {
    const cert = held.get(host)
    const covers = cert !== undefined && cert.names.includes(host)
    if (covers && !renewalDue(now, cert.notBefore, cert.notAfter)) return { host, action: 'keep', renewAt: cert.notBefore + Math.ceil((cert.notAfter - cert.notBefore) * 2 / 3) }
    const failed = failures.get(host)
    if (failed !== undefined && failed.count > 0) {
      const until = failed.lastAt + retryAfterMs(failed.count)
      if (now < until) return { host, action: 'wait', reason: `${failed.count} failed attempt(s); next at ${new Date(until).toISOString()}`, until }
    }
    if (cert === undefined) return { host, action: 'order', reason: 'no certificate yet' }
    if (!covers) return { host, action: 'order', reason: 'the certificate held does not name it' }
    return { host, action: 'order', reason: now >= cert.notAfter ? 'expired' : 'two thirds of its lifetime passed' }
  })
}
