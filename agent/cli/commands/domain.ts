/** `dcloud domain ...`: the cluster's domain (apps are NAME.DOMAIN) and its CA's root. */
import { writeFile } from 'node:fs/promises'
import { apiGet, apiRequest, apiText } from '../client.ts'
import { parseCommand } from '../args.ts'
import { UsageError } from '../../util/errors.ts'
import type { DomainView, FrontDoorView, MetricsResponse } from '../../../proto/api.ts'

export const domainHelp = `dcloud domain [show] [--json]      the cluster's domain, where apps are, the CA root's fingerprint
dcloud domain set DOMAIN            every app becomes https://NAME.DOMAIN (e.g. alice.example.org,
                                    or lab.home.arpa for a second cluster in one home)
dcloud domain reset                 back to the LAN default, dcloud.home.arpa
dcloud domain ca [-o FILE]          the cluster CA's root certificate (PEM), to install on phones and
                                    browsers (docs/frontdoor.md); also at http://DOMAIN/ca.pem`

export async function domainCommand (argv: string[]): Promise<number> {
  // `dcloud domain --json` is `dcloud domain show --json`.
  const [sub = 'show', ...rest] = argv[0]?.startsWith('-') === true ? ['show', ...argv] : argv
  switch (sub) {
    case 'show': {
      const { values } = parseCommand(rest, { usage: 'dcloud domain show [--json]', options: { json: { type: 'boolean', default: false } } })
      const d = await apiGet<DomainView>('/v1/domain')
      if (values.json === true) { process.stdout.write(JSON.stringify(d, null, 2) + '\n'); return 0 }
      process.stdout.write(`domain  ${d.domain}${d.isDefault ? ' (the LAN default; `dcloud domain set DOMAIN` for another)' : ''}\napps    ${d.apps}\nCA root ${d.caUrl} (SHA-256 ${d.caFingerprint})\n`)
      process.stdout.write(`front door of this node: ${frontDoorLine((await apiGet<MetricsResponse>('/v1/metrics')).frontDoor)}\n`)
      return 0
    }
    case 'set': case 'reset': {
      const domain = sub === 'reset'
        ? (parseCommand(rest, { usage: 'dcloud domain reset' }), null)
        : parseCommand(rest, { usage: 'dcloud domain set DOMAIN', args: ['DOMAIN'] }).args[0]
      const r = await apiRequest<{ revision: number, replicatedTo: number }>('POST', '/v1/domain', { domain }, undefined, 30_000)
      const d = await apiGet<DomainView>('/v1/domain')
      process.stdout.write(`the cluster's domain is ${d.domain} (revision ${r.revision}, on ${r.replicatedTo} node(s)); apps are at ${d.apps}\n`)
      process.stdout.write(`the CA root changed with it (it is valid for ${d.domain} only): install it again from ${d.caUrl} (SHA-256 ${d.caFingerprint})\n`)
      return 0
    }
    case 'ca': {
      const { values } = parseCommand(rest, { usage: 'dcloud domain ca [-o FILE]', options: { output: { type: 'string', short: 'o' } } })
      const d = await apiGet<DomainView>('/v1/domain')
      const pem = await apiText('/v1/ca.pem')
      if (values.output !== undefined) {
        await writeFile(values.output, pem)
        process.stderr.write(`wrote the CA root for ${d.domain} to ${values.output} (SHA-256 ${d.caFingerprint})\n`)
      } else process.stdout.write(pem)
      return 0
    }
    default: throw new UsageError(`unknown domain command '${sub}'`, domainHelp)
  }
}

/** One line on whether this node's Caddy runs what the agent rendered. */
function frontDoorLine (f: FrontDoorView | null): string {
  if (f === null) return 'none (the agent runs with --caddy-admin off)'
  const routes = `${f.routes.length} app(s): ${f.routes.map(r => `${r.name} ${r.kind === 'remote' ? `via ${r.node ?? '?'}` : r.kind}`).join(', ') || '-'}`
  if (f.lastError !== null) return `NOT configured: ${f.lastError}${f.loaded !== null ? ` (Caddy may still serve what was loaded at ${new Date(f.loadedAt ?? 0).toISOString()})` : ''}`
  if (f.loaded === null) return 'not configured yet'
  return `configured (${routes})`
}
