/**
 * The API's route table: one place that says which paths exist, what each
 * takes and what it answers. It is built from `ApiBackend`, the narrow slice
 * of the agent the handlers need, so the whole table runs in-process in tests
 * (test/unit/api-server.test.ts) against a small in-memory backend.
 */
import { Readable } from 'node:stream'
import { ApiError, StreamResponse, type Routes } from './server.ts'
import { decodeChange } from '../../proto/cluster.ts'
import { LAN_DOMAIN } from '../../proto/frontdoor.ts'
import { QUERY_MAX_LINES, type AccessRequest, type AccessView } from '../../proto/access.ts'
import type { ApiMetrics, DomainView, MetricsResponse, StatusResponse } from '../../proto/api.ts'
import type { Coordinator } from '../cluster/coordinator.ts'
import type { BackupFiles } from '../snapshots/backup-files.ts'
import { backupRoutes } from './backups.ts'
import { decodeOrBadRequest } from './errors.ts'
import { checkHostPaths } from '../runtime/host-paths.ts'

/** The control plane's calls the API makes; the Coordinator implements them. */
export type ClusterApi = Pick<Coordinator, 'apps' | 'change' | 'logs' | 'why' | 'snapshotList' | 'snapshotTake' | 'rollback' | 'backup' | 'restoreFile' | 'checkRestore'>

/** What the handlers need from the agent. */
export interface ApiBackend {
  status: () => StatusResponse
  /** The agent's metrics; the API's own counters are added by the route. */
  metrics: () => Omit<MetricsResponse, 'api'>
  /** The control plane; throws (ApiError internal) while the agent is not started. */
  cluster: () => ClusterApi
  /** The node's backups directory: uploads, downloads and the only paths the API takes (backups.ts). */
  backups: BackupFiles
  /** The agent's own directories (its data directory): a granted ordinary path may not lead into them. */
  ownDirs?: string[]
  /** The cluster's domain and CA root, as this node derives them (agent/frontdoor/ca.ts). */
  names?: () => Promise<ClusterNames>
  /** An app's access log across the cluster (agent/access/service.ts); absent: this node keeps none. */
  access?: (app: string, q: AccessRequest, signal: AbortSignal) => Promise<AccessView>
}

export interface ClusterNames { domain: string, isDefault: boolean, rootPem: string, fingerprint: string, acme?: DomainView['acme'], certificates?: DomainView['certificates'], acmeFailure?: DomainView['acmeFailure'] }

/** Snapshots, backups and restores of large volumes take long; the caller's connection waits. */
export const LONG_OP_MS = 60 * 60_000

/**
 * Every route of the API. `apiMetrics` gives the server's own counters
 * (refusals by guard), which live in the ApiServer, not in the agent.
 */
export function apiRoutes (backend: ApiBackend, apiMetrics: () => ApiMetrics): Routes {
  const cluster = (): ClusterApi => backend.cluster()
  const names = async (): Promise<ClusterNames> => {
    if (backend.names === undefined) throw new ApiError('internal', 'the agent has no cluster key loaded yet')
    return await backend.names()
  }
  return {
    // Open without a credential: it says only that an agent answers here (the lab and installers poll it).
    'GET /v1/health': { public: true, handler: () => ({ ok: true }) },
    // Open too: the CA's root is public (phones install it), and a client needs it before it can trust anything.
    'GET /v1/ca.pem': {
      public: true,
      handler: async () => {
        const n = await names()
        return new StreamResponse(Readable.from([Buffer.from(n.rootPem)]), { contentType: 'application/x-pem-file', filename: `${n.domain}-ca.pem` })
      }
    },
    'GET /v1/domain': async (): Promise<DomainView> => {
      const n = await names()
      return { domain: n.domain, isDefault: n.isDefault, url: `https://${n.domain}/`, apps: `https://NAME.${n.domain}/`, caFingerprint: n.fingerprint, caUrl: `http://${n.domain}/ca.pem`, acme: n.acme ?? null, certificates: n.certificates ?? [], acmeFailure: n.acmeFailure ?? null }
    },
    'POST /v1/domain': async ({ body }) => {
      const b = (body ?? {}) as { domain?: unknown, acme?: unknown }
      const change = decodeOrBadRequest(() => decodeChange({ kind: 'domain', domain: b.domain ?? null }))
      // `domain set D --acme URL`: the domain (when it changes) and the CA, two entries of the log; `acme: null` goes back to the cluster CA only.
      if (b.acme === undefined) return await cluster().change(change)
      const acme = decodeOrBadRequest(() => decodeChange({ kind: 'acme', acme: b.acme }))
      const current = (await names()).domain
      if (change.kind === 'domain' && (change.domain ?? LAN_DOMAIN) !== current) await cluster().change(change)
      return await cluster().change(acme)
    },
    'GET /v1/status': () => backend.status(),
    'GET /v1/metrics': (): MetricsResponse => ({ ...backend.metrics(), api: apiMetrics() }),
    'GET /v1/apps': () => cluster().apps(),
    'POST /v1/apps': async ({ body }) => {
      const change = decodeOrBadRequest(() => decodeChange({ kind: 'install', app: body }))
      if (change.kind === 'install') {
        // Here, not only on the node that runs it: a granted path that leads into the node's own files is refused before anything is installed.
        const app = change.app
        await decodeOrBadRequest(async () => { await checkHostPaths(app.manifest, app.grants ?? [], backend.ownDirs ?? []) })
      }
      return await cluster().change(change)
    },
    'POST /v1/apps/:name/grants': async ({ params, body }) => {
      const b = (body ?? {}) as { grant?: unknown, revoke?: unknown }
      const change = decodeOrBadRequest(() => decodeChange({ kind: 'grants', name: params.name, grant: b.grant ?? [], revoke: b.revoke ?? [] }))
      return await cluster().change(change)
    },
    'POST /v1/apps/:name/expose': async ({ params, body }) => {
      const change = decodeOrBadRequest(() => decodeChange({ kind: 'expose', name: params.name, reach: (body as { reach?: unknown } | undefined)?.reach }))
      return await cluster().change(change)
    },
    'DELETE /v1/apps/:name': async ({ params }) => {
      const change = decodeOrBadRequest(() => decodeChange({ kind: 'remove', name: params.name }))
      return await cluster().change(change)
    },
    'POST /v1/apps/:name/move': async ({ params, body }) => {
      const change = decodeOrBadRequest(() => decodeChange({ kind: 'move', name: params.name, node: (body as { node?: unknown } | undefined)?.node }))
      return await cluster().change(change)
    },
    'GET /v1/apps/:name/logs': async ({ params, query }) => {
      const tail = Math.min(10_000, Math.max(1, Number(query.get('tail') ?? 200) || 200))
      return await cluster().logs(params.name ?? '', tail)
    },
    'GET /v1/apps/:name/access': async ({ params, query }) => {
      if (backend.access === undefined) throw new ApiError('unavailable', 'this agent keeps no access log')
      const app = appName(params.name)
      const since = query.get('since') ?? '0'
      const limit = query.get('limit') ?? '1000'
      if (!/^\d{1,16}$/.test(since)) throw new ApiError('bad_request', 'since: expected a time in ms since the epoch')
      if (!/^\d{1,5}$/.test(limit) || Number(limit) > QUERY_MAX_LINES) throw new ApiError('bad_request', `limit: expected 0 to ${QUERY_MAX_LINES} lines`)
      // local=1: only what this node holds (its own lines and its replicas of others'), without asking anyone.
      return await backend.access(app, { since: Number(since), limit: Number(limit), summary: query.get('summary') === '1', local: query.get('local') === '1' }, AbortSignal.timeout(30_000))
    },
    'GET /v1/apps/:name/why': async ({ params }) => await cluster().why(params.name ?? ''),
    'GET /v1/apps/:name/snapshots': async ({ params }) => await cluster().snapshotList(appName(params.name), AbortSignal.timeout(120_000)),
    'POST /v1/apps/:name/snapshots': async ({ params }) => await cluster().snapshotTake(appName(params.name), AbortSignal.timeout(LONG_OP_MS)),
    'POST /v1/apps/:name/snapshots/:id/restore': async ({ params }) => await cluster().rollback(appName(params.name), snapshotId(params.id), AbortSignal.timeout(LONG_OP_MS)),
    ...backupRoutes({ files: backend.backups, cluster }),
    'POST /v1/nodes/:node/drain': async ({ params, body }) => {
      const change = decodeOrBadRequest(() => decodeChange({ kind: 'drain', node: params.node, drained: (body as { drained?: unknown } | undefined)?.drained ?? true }))
      return await cluster().change(change)
    }
  }
}

function appName (v: unknown): string {
  return decodeOrBadRequest(() => decodeChange({ kind: 'remove', name: v })).kind === 'remove' ? String(v) : ''
}

function snapshotId (v: unknown): string {
  if (typeof v !== 'string' || !/^[0-9a-f]{4,64}$/.test(v)) throw new ApiError('bad_request', 'a snapshot id is 4 to 64 hex digits')
  return v
}
