/**
 * The API's route table: one place that says which paths exist, what each
 * takes and what it answers. It is built from `ApiBackend`, the narrow slice
 * of the agent the handlers need, so the whole table runs in-process in tests
 * (test/unit/api-server.test.ts) against a small in-memory backend.
 */
import { ApiError, type Routes } from './server.ts'
import { RpcError } from '../mesh/rpc.ts'
import { decodeChange, decodeDomain, decodeStorage } from '../../proto/cluster.ts'
import type { ApiErrorCode, ApiMetrics, MetricsResponse, StatusResponse } from '../../proto/api.ts'
import type { Coordinator } from '../cluster/coordinator.ts'
import type { BackupMeta } from '../snapshots/archive.ts'

/** The control plane's calls the API makes; the Coordinator implements them. */
export type ClusterApi = Pick<Coordinator, 'apps' | 'change' | 'logs' | 'why' | 'snapshotList' | 'snapshotTake' | 'rollback' | 'backup' | 'restoreFile'>

/** What the handlers need from the agent. */
export interface ApiBackend {
  status: () => StatusResponse
  /** The agent's metrics; the API's own counters are added by the route. */
  metrics: () => Omit<MetricsResponse, 'api'>
  /** The control plane; throws (ApiError internal) while the agent is not started. */
  cluster: () => ClusterApi
  inspectBackup: (file: string, signal: AbortSignal) => Promise<BackupMeta>
}

/** Snapshots, backups and restores of large volumes take long; the caller's connection waits. */
export const LONG_OP_MS = 60 * 60_000

/**
 * Every route of the API. `apiMetrics` gives the server's own counters
 * (refusals by guard), which live in the ApiServer, not in the agent.
 */
export function apiRoutes (backend: ApiBackend, apiMetrics: () => ApiMetrics): Routes {
  const cluster = (): ClusterApi => backend.cluster()
  return {
    // Open without a credential: it says only that an agent answers here (the lab and installers poll it).
    'GET /v1/health': { public: true, handler: () => ({ ok: true }) },
    'GET /v1/status': () => backend.status(),
    'GET /v1/metrics': (): MetricsResponse => ({ ...backend.metrics(), api: apiMetrics() }),
    'GET /v1/apps': () => cluster().apps(),
    'POST /v1/apps': async ({ body }) => {
      const change = decodeOrBadRequest(() => decodeChange({ kind: 'install', app: body }))
      return await viaApi(async () => await cluster().change(change))
    },
    'DELETE /v1/apps/:name': async ({ params }) => {
      const change = decodeOrBadRequest(() => decodeChange({ kind: 'remove', name: params.name }))
      return await viaApi(async () => await cluster().change(change))
    },
    'POST /v1/apps/:name/move': async ({ params, body }) => {
      const change = decodeOrBadRequest(() => decodeChange({ kind: 'move', name: params.name, node: (body as { node?: unknown } | undefined)?.node }))
      return await viaApi(async () => await cluster().change(change))
    },
    'GET /v1/apps/:name/logs': async ({ params, query }) => {
      const tail = Math.min(10_000, Math.max(1, Number(query.get('tail') ?? 200) || 200))
      return await viaApi(async () => await cluster().logs(params.name ?? '', tail))
    },
    'GET /v1/apps/:name/why': async ({ params }) => await viaApi(async () => await cluster().why(params.name ?? '')),
    'GET /v1/apps/:name/snapshots': async ({ params }) => await viaApi(async () => await cluster().snapshotList(appName(params.name), AbortSignal.timeout(120_000))),
    'POST /v1/apps/:name/snapshots': async ({ params }) => await viaApi(async () => await cluster().snapshotTake(appName(params.name), AbortSignal.timeout(LONG_OP_MS))),
    'POST /v1/apps/:name/snapshots/:id/restore': async ({ params }) => await viaApi(async () => await cluster().rollback(appName(params.name), snapshotId(params.id), AbortSignal.timeout(LONG_OP_MS))),
    'POST /v1/apps/:name/backup': async ({ params, body }) => await viaApi(async () => await cluster().backup(appName(params.name), filePath(body), AbortSignal.timeout(LONG_OP_MS))),
    'POST /v1/backups/inspect': async ({ body }) => await viaApi(async () => await backend.inspectBackup(filePath(body), AbortSignal.timeout(LONG_OP_MS))),
    'POST /v1/backups/restore': async ({ body }) => {
      const b = (body ?? {}) as { name?: unknown, node?: unknown, hostPath?: unknown, domain?: unknown }
      const name = b.name === null || b.name === undefined ? null : appName(b.name)
      if (b.node !== null && b.node !== undefined && (typeof b.node !== 'string' || !/^[1-9A-HJ-NP-Za-km-z]{40,60}$/.test(b.node))) throw new ApiError('bad_request', 'node must be a node id (`dcloud status` lists them)')
      const node = typeof b.node === 'string' ? b.node : null
      const storage = b.hostPath === null || b.hostPath === undefined ? null : decodeOrBadRequest(() => decodeStorage({ hostPath: b.hostPath }, 'hostPath')).hostPath
      const domain = b.domain === null || b.domain === undefined ? null : decodeOrBadRequest(() => decodeDomain(b.domain))
      return await viaApi(async () => await cluster().restoreFile(filePath(body), { name, node, storage: storage === null ? null : { hostPath: storage }, domain }, AbortSignal.timeout(LONG_OP_MS)))
    },
    'POST /v1/nodes/:node/drain': async ({ params, body }) => {
      const change = decodeOrBadRequest(() => decodeChange({ kind: 'drain', node: params.node, drained: (body as { drained?: unknown } | undefined)?.drained ?? true }))
      return await viaApi(async () => await cluster().change(change))
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

function filePath (body: unknown): string {
  const file = (body as { file?: unknown } | undefined)?.file
  if (typeof file !== 'string' || !file.startsWith('/') || file.length > 4096 || file.includes('\0')) throw new ApiError('bad_request', 'file must be an absolute path')
  return file
}

function decodeOrBadRequest<T> (decode: () => T): T {
  try {
    return decode()
  } catch (err) {
    throw new ApiError('bad_request', (err as Error).message)
  }
}

const RPC_TO_API: Record<string, ApiErrorCode> = {
  not_found: 'not_found',
  exists: 'conflict',
  conflict: 'conflict',
  stale_term: 'conflict',
  no_leader: 'no_leader',
  not_leader: 'no_leader',
  unreachable: 'unavailable',
  unavailable: 'unavailable',
  bad_request: 'bad_request'
}

/** Runs a cluster call for the API, turning the cluster's error codes into the API's. */
async function viaApi<T> (call: () => Promise<T>): Promise<T> {
  try {
    return await call()
  } catch (err) {
    if (err instanceof RpcError) throw new ApiError(RPC_TO_API[err.code] ?? 'internal', err.message)
    throw err
  }
}
