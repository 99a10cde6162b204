/**
 * The API's backup-file endpoints: a backup streamed to the caller, a backup
 * file streamed from the caller and restored, and files named by path, which
 * must be inside the node's backups directory (backup-files.ts).
 *
 *   GET  /v1/apps/:name/backup        the backup file as the body (application/x-tar, Content-Length)
 *   POST /v1/apps/:name/backup        {"file"}: write it into the backups directory instead
 *   POST /v1/backups/inspect          {"file"}: verify a file in the backups directory
 *   POST /v1/backups/restore?name=&node=&dataDir=&grants=
 *        with the file as the body (application/octet-stream, Content-Length required),
 *        or {"file", "name", "node", "dataDir", "grants"} for a file in the backups directory
 */
import type { IncomingMessage } from 'node:http'
import { BACKUP_CONTENT_TYPE, type BackupFileView, type RestoreView } from '../../proto/api.ts'
import { APP_NAME, decodeStorage } from '../../proto/cluster.ts'
import { PEER_ID } from '../../proto/validate.ts'
import type { AppStorage } from '../../proto/plan.ts'
import { decodeGrants } from '../../proto/permissions.ts'
import type { Coordinator } from '../cluster/coordinator.ts'
import { inspectBackup } from '../snapshots/app-file.ts'
import type { BackupMeta } from '../snapshots/archive.ts'
import type { BackupFiles } from '../snapshots/backup-files.ts'
import { ApiError, StreamResponse, readJsonBody, type Routes } from './server.ts'
import { decodeOrBadRequest } from './errors.ts'

/** Snapshots, backups and restores of large volumes take long; the caller's connection waits. */
const LONG_OP_MS = 60 * 60_000
/** Content types an upload may have; JSON names a file in the backups directory instead. */
const UPLOAD_TYPES = ['application/octet-stream', BACKUP_CONTENT_TYPE]

/** What the routes need of the cluster (the Coordinator). */
export type BackupCluster = Pick<Coordinator, 'backup' | 'restoreFile' | 'checkRestore'>

export interface BackupRoutesInit {
  files: BackupFiles
  cluster: () => BackupCluster
}

export function backupRoutes ({ files, cluster }: BackupRoutesInit): Routes {
  return {
    'GET /v1/apps/:name/backup': async ({ params, signal }) => {
      const name = appName(params.name)
      const staged = await files.stageDownload(async (file) => await cluster().backup(name, file, longOp(signal)))
      return new StreamResponse(staged.stream, { contentType: BACKUP_CONTENT_TYPE, length: staged.bytes, filename: backupFileName(name, new Date()) })
    },

    'POST /v1/apps/:name/backup': async ({ params, body, signal }): Promise<BackupFileView> => {
      const name = appName(params.name)
      const file = await files.fresh(field(body, 'file'))
      return await cluster().backup(name, file, longOp(signal))
    },

    'POST /v1/backups/inspect': async ({ body, signal }): Promise<BackupMeta> => {
      const file = await files.existing(field(body, 'file'))
      return await inspectBackup(file, longOp(signal))
    },

    'POST /v1/backups/restore': {
      rawBody: [...UPLOAD_TYPES, 'application/json'],
      handler: async ({ req, query, signal }): Promise<RestoreView> => {
        if ((req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() === 'application/json') {
          const body = await readJsonBody(req)
          const opts = restoreOptions((k) => k === 'dataDir' ? field(body, 'dataDir') ?? field(body, 'hostPath') : field(body, k))
          cluster().checkRestore(opts)
          const file = await files.existing(field(body, 'file'))
          return await cluster().restoreFile(file, opts, longOp(signal))
        }
        let length: number
        let opts: RestoreOptions
        try {
          length = contentLength(req)
          opts = restoreOptions((k) => query.get(k) ?? undefined)
          // Refused before a byte is received: an unknown node, a name taken.
          cluster().checkRestore(opts)
        } catch (err) {
          files.counters.uploadsRefused++
          throw err
        }
        const r = await files.receive(req, length, longOp(signal), async (file) => await cluster().restoreFile(file, opts, longOp(signal)))
        return { ...r, uploaded: length }
      }
    }
  }
}

/** `APP-2026-01-02T03-04-05Z.dcloud-backup`. */
export function backupFileName (app: string, at: Date): string {
  return `${app}-${at.toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-')}.dcloud-backup`
}

function contentLength (req: IncomingMessage): number {
  const raw = req.headers['content-length']
  if (raw === undefined) throw new ApiError('length_required', 'send the backup file with a Content-Length (the agent checks the disk has room for it before accepting it)')
  const n = Number(raw)
  if (!Number.isSafeInteger(n) || n < 0) throw new ApiError('bad_request', `Content-Length ${JSON.stringify(raw)} is not a size`)
  if (n === 0) throw new ApiError('bad_request', 'the upload is empty: not a dcloud backup')
  return n
}

interface RestoreOptions { name: string | null, node: string | null, storage: AppStorage | null, grants: string[] }

function restoreOptions (get: (key: 'name' | 'node' | 'dataDir' | 'domain' | 'grants') => unknown): RestoreOptions {
  const given = (k: 'name' | 'node' | 'dataDir' | 'domain' | 'grants'): unknown => { const v = get(k); return v === '' || v === null ? undefined : v }
  const name = given('name') === undefined ? null : appName(given('name'))
  const node = given('node')
  if (node !== undefined && (typeof node !== 'string' || !PEER_ID.test(node))) throw new ApiError('bad_request', 'node must be a node id (`dcloud status` lists them)')
  const dataDir = given('dataDir')
  const storage = dataDir === undefined ? null : decodeOrBadRequest(() => decodeStorage({ hostPath: dataDir }, 'dataDir'))
  // One naming scheme: an app is NAME.DOMAIN (docs/frontdoor.md); a per-app domain no longer exists.
  if (given('domain') !== undefined) throw new ApiError('bad_request', 'domain: an app answers at NAME.DOMAIN, the cluster\'s domain; restore it under another name (name=), or set the cluster\'s domain with `dcloud domain set`')
  // In a query, `grants=a,b`; in a JSON body, a list.
  const rawGrants = given('grants')
  const grants = rawGrants === undefined ? [] : decodeOrBadRequest(() => decodeGrants(typeof rawGrants === 'string' ? rawGrants.split(',') : rawGrants, 'grants'))
  return { name, node: typeof node === 'string' ? node : null, storage, grants }
}

function appName (v: unknown): string {
  if (typeof v !== 'string' || !APP_NAME.test(v) || v.length > 40) throw new ApiError('bad_request', `${JSON.stringify(v)} is not an app name (lowercase letters, digits and dashes)`)
  return v
}

function field (body: unknown, key: string): unknown {
  return typeof body === 'object' && body !== null ? (body as Record<string, unknown>)[key] : undefined
}

/** The request's signal (the caller hung up: no point building a backup nobody reads), capped at LONG_OP_MS. */
function longOp (signal: AbortSignal): AbortSignal {
  return AbortSignal.any([signal, AbortSignal.timeout(LONG_OP_MS)])
}
