/**
 * Finding an app to install: `dcloud app install PATH|ID`. A path is a
 * compose file or a folder holding one, in our format or a store's (CasaOS,
 * Runtipi), told apart by content. An id is looked up in apps/catalog/, then
 * apps/examples/, each app a folder named by its id with a compose.yaml.
 */
import { readdir, stat } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ValidationError } from '../proto/validate.ts'
import { importCasaOSText } from './importers/casaos.ts'
import { readText, type ImportOptions } from './importers/common.ts'
import { importRuntipi } from './importers/runtipi.ts'
import { APP_ID, parseManifest, type ParsedApp } from './manifest.ts'

// '..' from apps/catalog.ts and from the bundle (dist/dcloud.mjs) is the project root alike.
const ROOT = fileURLToPath(new URL('..', import.meta.url))

/** Where ids are looked up, first match wins. */
export const CATALOG_DIRS = [join(ROOT, 'apps', 'catalog'), join(ROOT, 'apps', 'examples')]

const COMPOSE_NAMES = ['compose.yaml', 'compose.yml', 'docker-compose.yaml', 'docker-compose.yml']

export type AppFormat = 'dcloud' | 'casaos' | 'runtipi'

export interface LoadedApp extends ParsedApp {
  /** The file the app was read from. */
  source: string
  format: AppFormat
}

export interface LoadOptions extends ImportOptions {
  /** Folders to look ids up in (tests); default CATALOG_DIRS. */
  catalogDirs?: string[]
}

export class AppNotFoundError extends ValidationError {
  override name = 'AppNotFoundError'
}

/** Loads the app `ref` names: a path to a compose file or app folder, or a catalog id. */
export async function loadApp (ref: string, opts: LoadOptions = {}): Promise<LoadedApp> {
  const dirs = opts.catalogDirs ?? CATALOG_DIRS
  const pathLike = ref.includes('/') || ref.startsWith('.') || /\.(ya?ml|json)$/.test(ref)
  if (!pathLike && APP_ID.test(ref)) {
    for (const dir of dirs) {
      const folder = join(dir, ref)
      if (await isDir(folder)) return await loadPath(folder, opts)
    }
    // A folder of that name in the current directory is still a path.
    if (await exists(ref)) return await loadPath(ref, opts)
    const known = (await listCatalog(dirs)).map(a => a.id)
    throw new AppNotFoundError('app', `no app "${ref}" in the catalog (${known.length === 0 ? 'it is empty' : `it has ${known.join(', ')}`}); give a path to a compose file or an app folder instead`)
  }
  if (!(await exists(ref))) throw new AppNotFoundError('app', `${ref}: no such file or folder`)
  return await loadPath(ref, opts)
}

async function loadPath (path: string, opts: ImportOptions): Promise<LoadedApp> {
  const full = resolve(path)
  if (await isDir(full)) {
    if (await exists(join(full, 'config.json'))) return { ...await importRuntipi(full, opts), source: full, format: 'runtipi' }
    for (const name of COMPOSE_NAMES) {
      if (await exists(join(full, name))) return await loadFile(join(full, name), opts)
    }
    throw new AppNotFoundError('app', `${path}: no ${COMPOSE_NAMES.join(', ')} or config.json (Runtipi) in this folder`)
  }
  // A file of a Runtipi app folder (config.json beside it) is that app, read from that file.
  if (['config.json', 'docker-compose.json', 'docker-compose.yml'].includes(basename(full)) && await exists(join(dirname(full), 'config.json'))) {
    const prefer = basename(full) === 'docker-compose.yml' ? 'yaml' : 'json'
    return { ...await importRuntipi(dirname(full), { ...opts, prefer }), source: full, format: 'runtipi' }
  }
  return await loadFile(full, opts)
}

async function loadFile (file: string, opts: ImportOptions): Promise<LoadedApp> {
  const text = await readText(file, file)
  // A top-level x-casaos block marks a CasaOS app; anything else is read as ours.
  if (/^x-casaos:/m.test(text) && !/^x-dcloud:/m.test(text)) return { ...importCasaOSText(text, file, opts), source: file, format: 'casaos' }
  return { ...parseManifest(text, file, { variables: opts.values ?? {} }), source: file, format: 'dcloud' }
}

/** The apps of the catalog folders: every sub-folder with a compose file, by id. */
export async function listCatalog (dirs: string[] = CATALOG_DIRS): Promise<Array<{ id: string, path: string }>> {
  const out: Array<{ id: string, path: string }> = []
  const seen = new Set<string>()
  for (const dir of dirs) {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => [])
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      if (!e.isDirectory() || !APP_ID.test(e.name) || seen.has(e.name)) continue
      const folder = join(dir, e.name)
      for (const name of COMPOSE_NAMES) {
        if (await exists(join(folder, name))) {
          out.push({ id: e.name, path: join(folder, name) })
          seen.add(e.name)
          break
        }
      }
    }
  }
  return out
}

async function exists (p: string): Promise<boolean> {
  return (await stat(p).catch(() => null)) !== null
}

async function isDir (p: string): Promise<boolean> {
  return (await stat(p).catch(() => null))?.isDirectory() === true
}
