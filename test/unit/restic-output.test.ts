import { describe, expect, it } from 'vitest'
import fc from 'fast-check'
import {
  DiskFullError, PasswordFileError, RepoCorruptError, RepoExistsError, RepoLockedError, RepoMissingError, ResticError, WrongPasswordError,
  classifyFailure, cleanLines, parseBackupLine, parseForget, parseSnapshots, type FailureContext
} from '../../agent/snapshots/restic-output.ts'
import { UserError } from '../../agent/util/errors.ts'
import { ValidationError } from '../../proto/validate.ts'

// Lines as restic 0.14 prints them (captured from /usr/bin/restic).
const STATUS = '{"message_type":"status","seconds_elapsed":1,"percent_done":0.5,"total_files":6,"files_done":3,"total_bytes":6000000,"bytes_done":3000000,"current_files":["/big/f4","/big/f5"]}'
const STATUS_EARLY = '{"message_type":"status","percent_done":0,"total_files":1,"total_bytes":300000}'
const SUMMARY = '{"message_type":"summary","files_new":2,"files_changed":0,"files_unmodified":0,"dirs_new":1,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":2,"tree_blobs":2,"data_added":301060,"total_files_processed":2,"total_bytes_processed":300006,"total_duration":0.215474742,"snapshot_id":"f3009d84"}'
const SNAPSHOTS = '[{"time":"2026-11-22T03:03:07.876269243Z","tree":"8bf93cf83826ef6b95487e3bcad4473a1d74cbb6243ff88ab3bdba1973ccde37","paths":["/tmp/rx/data"],"hostname":"h1","username":"root","tags":["app=x"],"id":"f3009d84ffd3ab342c88d8296f8705e7222b82d1f22649cbc6e2b2e1d12ac447","short_id":"f3009d84"},{"time":"2026-11-22T03:05:57.91787646Z","parent":"e3f45e0cf05e7ced279a2fa31048da462758c72e27635963edd342d0fd6ccb59","tree":"9d7cf11e4fb5d7787c31f196165a70b4eb8b40224a6a019763592b24d157387c","paths":["/tmp/rx/data"],"hostname":"vm","username":"root","id":"32abd6967c4158b911c9b5d4a7637bcc391c31a168df48428e880dfd27c49d3c","short_id":"32abd696"}]'

const ctx = (stderr: string, code: number | null = 1): FailureContext => ({ action: 'list snapshots', repo: '/srv/repo', passwordFile: '/etc/dcloud/restic.pw', code, stderr })

describe('restic backup --json lines', () => {
  it('reads a status line as percent and bytes', () => {
    expect(parseBackupLine(STATUS)).toEqual({
      kind: 'status',
      progress: { percent: 50, bytesDone: 3_000_000, bytesTotal: 6_000_000, filesDone: 3, filesTotal: 6, secondsElapsed: 1 }
    })
  })

  it('reads an early status line, before restic has counted everything', () => {
    expect(parseBackupLine(STATUS_EARLY)).toMatchObject({ kind: 'status', progress: { percent: 0, bytesDone: 0, bytesTotal: 300_000, filesDone: 0 } })
  })

  it('reads the summary', () => {
    expect(parseBackupLine(SUMMARY)).toEqual({
      kind: 'summary',
      summary: { snapshotId: 'f3009d84', filesNew: 2, filesChanged: 0, filesUnmodified: 0, dirsNew: 1, dirsChanged: 0, dirsUnmodified: 0, dataAdded: 301060, bytesProcessed: 300006, filesProcessed: 2, durationMs: 215 }
    })
  })

  it('reads a file error without trusting its shape', () => {
    expect(parseBackupLine('{"message_type":"error","error":{"Op":"open","Path":"/x","Err":13},"during":"archival","item":"/srv/x"}')).toEqual({
      kind: 'error', error: { item: '/srv/x', during: 'archival', message: '{"Op":"open","Path":"/x","Err":13}' }
    })
  })

  it.each([
    ['not json', 'using parent snapshot 1234'],
    ['verbose status', '{"message_type":"verbose_status","action":"new","item":"/x"}'],
    ['an array', '[1,2]'],
    ['no type', '{"percent_done":1}']
  ])('ignores %s', (_what, line) => {
    expect(parseBackupLine(line)).toEqual({ kind: 'other' })
  })

  it.each([
    ['a summary whose id is not hex', SUMMARY.replace('f3009d84', '../../etc')],
    ['a summary without files_new', SUMMARY.replace('"files_new":2,', '')],
    ['a summary with a negative count', SUMMARY.replace('"data_added":301060', '"data_added":-1')],
    ['a status over 100 %', STATUS.replace('"percent_done":0.5', '"percent_done":7')],
    ['a status with a string count', STATUS.replace('"bytes_done":3000000', '"bytes_done":"3000000"')]
  ])('refuses %s', (_what, line) => {
    expect(() => parseBackupLine(line)).toThrow(ValidationError)
  })

  it('never throws anything but ValidationError, whatever the line', () => {
    fc.assert(fc.property(fc.oneof(fc.string(), fc.json(), fc.record({ message_type: fc.constantFrom('status', 'summary', 'error'), percent_done: fc.anything(), snapshot_id: fc.anything(), files_new: fc.anything() }).map(o => JSON.stringify(o))), (line) => {
      try {
        parseBackupLine(line)
      } catch (err) {
        expect(err).toBeInstanceOf(ValidationError)
      }
    }), { numRuns: 500 })
  })
})

describe('restic snapshots --json', () => {
  it('reads snapshots, with and without tags and parent', () => {
    const s = parseSnapshots(SNAPSHOTS)
    expect(s).toHaveLength(2)
    expect(s[0]).toEqual({
      id: 'f3009d84ffd3ab342c88d8296f8705e7222b82d1f22649cbc6e2b2e1d12ac447',
      shortId: 'f3009d84',
      time: '2026-11-22T03:03:07.876269243Z',
      hostname: 'h1',
      username: 'root',
      paths: ['/tmp/rx/data'],
      tags: ['app=x'],
      parent: null,
      tree: '8bf93cf83826ef6b95487e3bcad4473a1d74cbb6243ff88ab3bdba1973ccde37'
    })
    expect(s[1]?.tags).toEqual([])
    expect(s[1]?.parent).toBe('e3f45e0cf05e7ced279a2fa31048da462758c72e27635963edd342d0fd6ccb59')
  })

  it('reads an empty list, as [] or null', () => {
    expect(parseSnapshots('[]')).toEqual([])
    expect(parseSnapshots('null')).toEqual([])
  })

  it.each([
    ['not JSON', 'Fatal: oops', /did not print JSON/],
    ['an object', '{}', /must be an array/],
    ['a short id', SNAPSHOTS.replace('"id":"f3009d84ffd3ab342c88d8296f8705e7222b82d1f22649cbc6e2b2e1d12ac447"', '"id":"f3009d84"'), /snapshots\[0\]\.id/],
    ['a short_id that is not the id', SNAPSHOTS.replace('"short_id":"f3009d84"', '"short_id":"00000000"'), /short_id: is not a prefix/],
    ['a time that is not one', SNAPSHOTS.replace('2026-11-22T03:03:07.876269243Z', 'yesterday'), /snapshots\[0\]\.time/],
    ['paths that are not strings', SNAPSHOTS.replace('"paths":["/tmp/rx/data"]', '"paths":[1]'), /snapshots\[0\]\.paths\[0\]/]
  ])('refuses %s', (_what, text, message) => {
    expect(() => parseSnapshots(text)).toThrow(message)
  })
})

describe('restic forget --json', () => {
  it('collects the removed snapshots of every group', () => {
    const snaps = JSON.parse(SNAPSHOTS) as unknown[]
    const text = JSON.stringify([{ tags: ['t2'], host: '', paths: null, keep: [snaps[1]], remove: [snaps[0]], reasons: [] }, { keep: [], remove: null }])
    expect(parseForget(text)).toEqual(['f3009d84ffd3ab342c88d8296f8705e7222b82d1f22649cbc6e2b2e1d12ac447'])
  })

  it('reads no output (forget by id prints nothing) as nothing removed', () => {
    expect(parseForget('')).toEqual([])
  })
})

describe('restic failures', () => {
  it.each<[string, FailureContext, new (...args: never[]) => ResticError, RegExp]>([
    ['wrong password (0.14)', ctx('Fatal: wrong password or no key found\n'), WrongPasswordError, /password in \/etc\/dcloud\/restic\.pw does not open the repository \/srv\/repo/],
    ['wrong password (0.17 exit code)', ctx('{"message_type":"exit_error","code":12,"message":"Fatal: wrong password or no key found"}', 12), WrongPasswordError, /does not open/],
    ['no repository (0.14)', ctx('Fatal: unable to open config file: stat /srv/repo/config: no such file or directory\nIs there a repository at the following location?\n/srv/repo\n'), RepoMissingError, /there is no restic repository at \/srv\/repo/],
    ['no repository (0.17 exit code)', ctx('Fatal: repository does not exist: unable to open config file', 10), RepoMissingError, /no restic repository/],
    ['init over a repository', ctx('Fatal: create repository at /srv/repo failed: config file already exists\n'), RepoExistsError, /already holds a restic repository/],
    ['disk full', ctx('Fatal: unable to save snapshot: write /srv/repo/data/1e/1e90-tmp-17: no space left on device\n'), DiskFullError, /no space left/],
    ['locked', ctx('unable to create lock in backend: repository is already locked exclusively by PID 11 on vm by root (UID 0, GID 0)\nlock was created at 2026-11-22 03:00:00 (1m ago)\n'), RepoLockedError, /locked by another restic process/],
    ['a damaged index', ctx('error: error loading index 78cf31b3: load <index/78cf31b3bf>: invalid data returned\nFatal: LoadIndex returned errors\n'), RepoCorruptError, /is damaged: error loading index/],
    ['check finding damage', ctx('read all data\nPack ID does not match, want 25b0cb18, got 7ee03d25\n[0:00] 100.00%  3 / 3 packs\n\nFatal: repository contains errors\n'), RepoCorruptError, /damaged: Pack ID does not match/],
    ['a config that panics restic 0.14', ctx('panic: runtime error: slice bounds out of range [16:8]\n\ngoroutine 1 [running]:\ngithub.com/restic/restic/internal/repository.(*Repository).LoadUnpacked(0xc0000f2000)\ngithub.com/restic/restic/internal/restic.LoadConfig({0x104abd0})\n', 2), RepoCorruptError, /restic crashed reading the repository/],
    ['a password file restic cannot read', ctx('Resolving password failed: Fatal: /etc/dcloud/restic.pw does not exist\n'), PasswordFileError, /restic password file \/etc\/dcloud\/restic\.pw cannot be read/]
  ])('%s', (_what, c, cls, message) => {
    const err = classifyFailure(c)
    expect(err).toBeInstanceOf(cls)
    expect(err).toBeInstanceOf(UserError)
    expect(err.message).toMatch(message)
    expect(err.hint).toBeTruthy()
  })

  it('says what restic said when it is nothing we know', () => {
    const err = classifyFailure(ctx('\x1b[2Kscan finished\nFatal: unable to save snapshot: something new\n'))
    expect(err.constructor).toBe(ResticError)
    expect(err.message).toBe('cannot list snapshots: restic failed (exit 1): unable to save snapshot: something new')
  })

  it('says when restic was killed', () => {
    expect(classifyFailure(ctx('', null)).message).toMatch(/restic failed \(killed\)/)
  })

  it('cleans terminal escapes out of restic\'s lines', () => {
    expect(cleanLines('\x1b[2Ksignal interrupt received, cleaning up\r\n\n  x  ')).toEqual(['signal interrupt received, cleaning up', 'x'])
  })
})
