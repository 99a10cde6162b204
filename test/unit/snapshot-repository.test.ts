/**
 * The two snapshot backends behind one interface (agent/snapshots/repository.ts):
 * the same table of calls runs against restic's and the tar fallback's, and
 * which one a repository gets is decided once, by openRepository.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ResticRepository, TarRepository, openRepository, type SnapshotRepository } from '../../agent/snapshots/repository.ts'
import { initTarRepository } from '../../agent/snapshots/tar-repo.ts'
import { initRepo, newPasswordFile, type ResticRepo } from '../../agent/snapshots/restic.ts'

const signal = (): AbortSignal => AbortSignal.timeout(60_000)
let tmp: string
let passwordFile: string
const resticRepo = (name: string): ResticRepo => ({ repo: join(tmp, name), passwordFile, cacheDir: join(tmp, 'cache') })

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'dcloud-snap-repo-'))
  passwordFile = join(tmp, 'restic.pw')
  await newPasswordFile(passwordFile)
  // Two volumes side by side, as a snapshot of an app holds them.
  for (const vol of ['dcloud-notes-data', 'dcloud-notes-db']) {
    await mkdir(join(tmp, 'volumes', vol, '_data'), { recursive: true })
    await writeFile(join(tmp, 'volumes', vol, '_data', 'file.txt'), `${vol} v1\n`)
  }
})
afterAll(async () => { await rm(tmp, { recursive: true, force: true }) })

describe('openRepository chooses the backend once', () => {
  it.each([
    ['no repository yet, restic here', true, null, 'restic'],
    ['no repository yet, no restic here', false, null, 'tar'],
    ['a tar repository (a replica from a node without restic), restic here', true, 'tar', 'tar'],
    ['a restic repository, restic here', true, 'restic', 'restic'],
    ['a restic repository, no restic here (it fails loudly when used, never turns tar)', false, 'restic', 'restic']
  ] as const)('%s → %s', async (_what, resticFound, existing, want) => {
    const r = resticRepo(`open-${String(resticFound)}-${existing ?? 'none'}`)
    if (existing === 'tar') await initTarRepository(r.repo, { signal: signal() })
    if (existing === 'restic') await initRepo(r, { signal: signal() })
    const repo = await openRepository(r, resticFound)
    expect(repo.format).toBe(want)
    expect(repo).toBeInstanceOf(want === 'tar' ? TarRepository : ResticRepository)
    expect(repo.incremental).toBe(want === 'restic')
    expect(repo.dir).toBe(r.repo)
  })
})

describe.each([
  ['restic', (name: string): SnapshotRepository => new ResticRepository(resticRepo(name))],
  ['tar', (name: string): SnapshotRepository => new TarRepository(join(tmp, name))]
] as const)('the %s backend through the interface', (format, make) => {
  let repo: SnapshotRepository
  beforeAll(() => { repo = make(`calls-${format}`) })
  const within = (): string => join(tmp, 'volumes')
  const names = ['dcloud-notes-data', 'dcloud-notes-db']
  let first: string
  let second: string

  it('creates the repository, with the layout repo-sync replicates', async () => {
    await repo.init({ signal: signal() })
    const entries = (await readdir(repo.dir)).sort()
    for (const d of ['config', 'data', 'index', 'keys', 'snapshots']) expect(entries).toContain(d)
  })

  it('backs up, and lists by tag, oldest first', async () => {
    await writeFile(join(within(), 'dcloud-notes-data', '_data', 'file.txt'), 'dcloud-notes-data v1\n')
    first = (await repo.backup({ within: within(), names }, { tags: ['dcloud.app=notes', 'dcloud.purpose=manual', 'dcloud.gen=1'], host: 'n1', signal: signal() })).snapshot.id
    await writeFile(join(within(), 'dcloud-notes-data', '_data', 'file.txt'), 'dcloud-notes-data v2\n')
    second = (await repo.backup({ within: within(), names }, { tags: ['dcloud.app=notes', 'dcloud.purpose=scheduled', 'dcloud.gen=1'], host: 'n1', signal: signal() })).snapshot.id
    await repo.backup({ within: within(), names: ['dcloud-notes-db'] }, { tags: ['dcloud.app=other'], host: 'n1', signal: signal() })
    const listed = await repo.snapshots({ signal: signal(), tags: ['dcloud.app=notes'] })
    expect(listed.map(s => s.id)).toEqual([first, second])
    expect(listed[0]?.tags).toContain('dcloud.purpose=manual')
    expect(listed[0]?.hostname).toBe('n1')
  })

  it('restores a snapshot as laid out in it: its top-level entries under the target', async () => {
    const target = join(tmp, `restored-${format}`)
    const found = await repo.restore(first, target, { signal: signal(), lookup: true })
    expect(found?.id).toBe(first)
    expect((await readdir(target)).sort()).toEqual(names)
    expect(await readFile(join(target, 'dcloud-notes-data', '_data', 'file.txt'), 'utf8')).toBe('dcloud-notes-data v1\n')
  })

  it('brings a restored copy up to a later snapshot only where it is incremental', async () => {
    const target = join(tmp, `staged-${format}`)
    await repo.restore(first, target, { signal: signal() })
    if (repo.incremental) {
      expect(await repo.increment(first, second, target, { signal: signal(), maxPaths: 100 })).toBeGreaterThan(0)
      expect(await readFile(join(target, 'dcloud-notes-data', '_data', 'file.txt'), 'utf8')).toBe('dcloud-notes-data v2\n')
    } else {
      await expect(repo.increment(first, second, target, { signal: signal(), maxPaths: 100 })).rejects.toThrow(/restored in full/)
    }
  })

  it('forgets, then prunes', async () => {
    await repo.forget([first], { signal: signal() })
    await repo.prune({ signal: signal() })
    expect((await repo.snapshots({ signal: signal(), tags: ['dcloud.app=notes'] })).map(s => s.id)).toEqual([second])
    await expect(repo.restore(second, join(tmp, `after-${format}`), { signal: signal(), lookup: true })).resolves.toMatchObject({ id: second })
  })
})
