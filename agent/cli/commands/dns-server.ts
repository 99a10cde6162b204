/** `dcloud dns-server`: the private DNS responder for the cluster's domain (dcloud-dns.service runs it; docs/frontdoor.md). */
import { parseCommand } from '../args.ts'
import { DnsResponder, parseDnsListen, type DnsListen } from '../../frontdoor/dns-server.ts'
import { SYSTEM_DNS_ZONE } from '../../config.ts'
import { createLogger } from '../../util/log.ts'
import { UsageError } from '../../util/errors.ts'

const DEFAULT_LISTEN = ['0.0.0.0:53', '[::]:53']

export const dnsServerHelp = `dcloud dns-server [--zone FILE] [--listen ADDRESS:PORT ...] [--any-source]
  answers DNS for the cluster's domain from the zone the agent writes (--dns-zone of dcloud agent):
  the apps' names, the bare domain and ns.DOMAIN resolve to the live nodes' addresses; other names
  under the domain are NXDOMAIN, names outside it REFUSED (it is not a resolver). It needs only
  the right to bind port 53 (CAP_NET_BIND_SERVICE: dcloud-dns.service); the agent needs none.
  --zone FILE              the zone file (default ${SYSTEM_DNS_ZONE})
  --listen ADDRESS:PORT    where to answer, UDP and TCP (repeatable; default ${DEFAULT_LISTEN.join(' and ')},
                           the IPv6 one skipped where the machine has no IPv6)
  --any-source             answer every client; by default only private, CGNAT, loopback and link-local
                           addresses and the subnets of this machine's interfaces get an answer (a node
                           on a VPS must not tell the internet the cluster's addresses)`

export async function dnsServerCommand (argv: string[]): Promise<number> {
  const { values } = parseCommand(argv, {
    usage: 'dcloud dns-server [--zone FILE] [--listen ADDRESS:PORT ...] [--any-source]',
    options: { zone: { type: 'string' }, listen: { type: 'string', multiple: true }, 'any-source': { type: 'boolean', default: false } }
  })
  const zoneFile = values.zone ?? SYSTEM_DNS_ZONE
  if (!zoneFile.startsWith('/')) throw new UsageError(`--zone ${zoneFile}: expected an absolute path`)
  let listen: DnsListen[]
  try { listen = (values.listen ?? DEFAULT_LISTEN).map(parseDnsListen) } catch (err) { throw new UsageError((err as Error).message) }
  const log = createLogger('dns')
  // The default IPv6 address is optional: a machine without IPv6 answers on IPv4 only.
  const responder = new DnsResponder({ zoneFile, listen, log, optional: (l) => values.listen === undefined && l.host === '::', anySource: values['any-source'] === true })
  await responder.start()
  await new Promise<void>((resolve) => {
    const shutdown = (): void => { void responder.stop().then(resolve) }
    process.once('SIGINT', shutdown)
    process.once('SIGTERM', shutdown)
  })
  return 0
}
