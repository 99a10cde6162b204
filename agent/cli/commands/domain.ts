/** `dcloud domain ...`: the cluster's domain (apps are NAME.DOMAIN) and its CA's root. */
import { readFile, writeFile } from 'node:fs/promises'
import { apiGet, apiRequest, apiText } from '../client.ts'
import { parseCommand } from '../args.ts'
import { EXIT, UsageError, UserError } from '../../util/errors.ts'
import type { DomainView, FrontDoorView, MetricsResponse } from '../../../proto/api.ts'

export const domainHelp = `dcloud domain [show] [--json]      the cluster's domain, where apps are, the CA root's fingerprint
dcloud domain set DOMAIN            every app becomes https://NAME.DOMAIN (e.g. alice.example.org,
                                    or lab.home.arpa for a second cluster in one home)
dcloud domain set DOMAIN --acme URL [--email ADDR] [--acme-ca-root FILE]
                                    certificates from a public ACME CA (HTTP-01: DOMAIN and NAME.DOMAIN
                                    must resolve to the nodes from the internet), ordered once for the
                                    cluster; e.g. --acme https://acme-v02.api.letsencrypt.org/directory.
                                    --acme-ca-root: a root to trust for the CA's own HTTPS (a test CA)
dcloud domain set DOMAIN --no-acme  the cluster CA's certificates only
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
      process.stdout.write(acmeLines(d))
      process.stdout.write(`front door of this node: ${frontDoorLine((await apiGet<MetricsResponse>('/v1/metrics')).frontDoor)}\n`)
      return 0
    }
    case 'set': case 'reset': {
      let domain: string | null = null
      let acme: { directory: string, email: string | null, caRootFile: string | null } | null | undefined
      if (sub === 'reset') parseCommand(rest, { usage: 'dcloud domain reset' })
      else {
        const usage = 'dcloud domain set DOMAIN [--acme URL [--email ADDR] [--acme-ca-root FILE] | --no-acme]'
        const p = parseCommand(rest, { usage, args: ['DOMAIN'], options: { acme: { type: 'string' }, email: { type: 'string' }, 'acme-ca-root': { type: 'string' }, 'no-acme': { type: 'boolean', default: false } } })
        domain = p.args[0]
        if (p.values.acme !== undefined && p.values['no-acme'] === true) throw new UsageError('--acme and --no-acme together', `usage: ${usage}`)
        if (p.values.acme === undefined && (p.values.email !== undefined || p.values['acme-ca-root'] !== undefined)) throw new UsageError('--email and --acme-ca-root go with --acme URL', `usage: ${usage}`)
        acme = p.values['no-acme'] === true ? null : p.values.acme === undefined ? undefined : { directory: p.values.acme, email: p.values.email ?? null, caRootFile: p.values['acme-ca-root'] ?? null }
      }
      const acmeBody = acme === undefined ? {} : acme === null ? { acme: null } : { acme: { directory: acme.directory, email: acme.email, caRootPem: acme.caRootFile === null ? null : await readRoot(acme.caRootFile) } }
      const before = acme === undefined ? null : await apiGet<DomainView>('/v1/domain')
      const r = await apiRequest<{ revision: number, replicatedTo: number }>('POST', '/v1/domain', { domain, ...acmeBody }, undefined, 30_000)
      const d = await apiGet<DomainView>('/v1/domain')
      if (acme !== undefined) {
        process.stdout.write(acme === null ? `certificates for ${d.domain} come from the cluster CA only\n` : `certificates for ${d.domain} will be ordered from ${acme.directory} by the leader (revision ${r.revision}); \`dcloud domain show\` tells how it goes\n`)
        if (before?.domain === d.domain) return 0
      }
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

async function readRoot (file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8')
  } catch (err) {
    throw new UserError(`--acme-ca-root ${file}: ${(err as Error).message}`, { exitCode: EXIT.noInput, hint: 'give the PEM file of the root that signs the ACME server\'s HTTPS certificate' })
  }
}

/** Where certificates come from, what is held, the last failure. */
function acmeLines (d: DomainView): string {
  if (d.acme == null) return 'TLS     the cluster CA (`dcloud domain set DOMAIN --acme URL` for a public CA)\n'
  const lines = [`TLS     ACME ${d.acme.directory}${d.acme.email !== null ? `, account ${d.acme.email}` : ''}${d.acme.customRoot ? ' (its HTTPS checked against the root given)' : ''}`]
  for (const c of d.certificates ?? []) lines.push(`        ${c.host}: issued by ${c.issuer}, expires ${new Date(c.notAfter).toISOString()}, renewed from ${new Date(c.renewAt).toISOString()}`)
  if ((d.certificates ?? []).length === 0) lines.push('        no certificate yet: hosts are served the cluster CA\'s meanwhile')
  if (d.acmeFailure != null) lines.push(`last error (${new Date(d.acmeFailure.at).toISOString()}, ${d.acmeFailure.host}): ${d.acmeFailure.message}`)
  return lines.join('\n') + '\n'
}

/** One line on whether this node's Caddy runs what the agent rendered. */
function frontDoorLine (f: FrontDoorView | null): string {
  if (f === null) return 'none (the agent runs with --caddy-admin off)'
  const routes = `${f.routes.length} app(s): ${f.routes.map(r => `${r.name} ${r.kind === 'remote' ? `via ${r.node ?? '?'}` : r.kind}`).join(', ') || '-'}`
  if (f.lastError !== null) return `NOT configured: ${f.lastError}${f.loaded !== null ? ` (Caddy may still serve what was loaded at ${new Date(f.loadedAt ?? 0).toISOString()})` : ''}`
  if (f.loaded === null) return 'not configured yet'
  return `configured (${routes})`
}
