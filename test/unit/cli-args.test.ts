/**
 * Every CLI command parses its arguments strictly (agent/cli/args.ts): an
 * unknown option, an argument too many or one missing is a usage error (exit
 * 64) naming it, raised before any I/O. The commands run here for real with
 * DCLOUD_API pointing at a socket nobody serves: arguments that parse reach
 * for the agent and fail as unreachable (exit 69), so nothing is done either
 * way. `dcloud app move notes n2 --dry-run` once really moved the app.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { parseCommand } from '../../agent/cli/args.ts'
import { appCommand } from '../../agent/cli/commands/app.ts'
import { nodeCommand } from '../../agent/cli/commands/node.ts'
import { backupCommand, restoreCommand, snapshotCommand } from '../../agent/cli/commands/snapshot.ts'
import { statusCommand } from '../../agent/cli/commands/status.ts'
import { initCommand } from '../../agent/cli/commands/init.ts'
import { flashCommand } from '../../agent/cli/commands/flash.ts'
import { domainCommand } from '../../agent/cli/commands/domain.ts'
import { agentCommand } from '../../agent/cli/commands/agent.ts'
import { labCommand } from '../../scripts/lab/cli.ts'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { EXIT, UsageError, UserError } from '../../agent/util/errors.ts'

type Run = (argv: string[]) => Promise<number>

/** What running the command did: the usage error's message, 'unreachable' when it went for the agent, or 'ran'. */
async function outcome (run: Run, argv: string[]): Promise<string> {
  try {
    await run(argv)
    return 'ran'
  } catch (err) {
    if (err instanceof UsageError) {
      expect(err.exitCode).toBe(EXIT.usage)
      return err.message
    }
    if (err instanceof UserError && err.name === 'AgentUnreachableError') return 'unreachable'
    throw err
  }
}

describe('parseCommand', () => {
  const move = { usage: 'dcloud app move NAME NODE', args: ['NAME', 'NODE'] } as const

  it('gives the named positionals and the options', () => {
    expect(parseCommand(['notes', 'n2'], move).args).toEqual(['notes', 'n2'])
    const p = parseCommand(['a', '--tail', '5', '--json'], { usage: 'x NAME', args: ['NAME'], options: { tail: { type: 'string' }, json: { type: 'boolean' } } })
    expect(p.values).toEqual({ tail: '5', json: true })
    expect(parseCommand(['a', 'b', 'c'], { usage: 'x A', args: ['A'], rest: 'B' }).rest).toEqual(['b', 'c'])
  })

  it('refuses unknown options, missing and extra arguments, with the usage as the hint', () => {
    const err = (argv: string[]): UsageError => { try { parseCommand(argv, move) } catch (e) { return e as UsageError } throw new Error('parsed') }
    expect(err(['notes', 'n2', '--dry-run']).message).toBe("unknown option '--dry-run'")
    expect(err(['notes', 'n2', '--dry-run']).hint).toBe('usage: dcloud app move NAME NODE; see `dcloud app move --help`')
    expect(err(['notes']).message).toBe('missing NODE')
    expect(err([]).message).toBe('missing NAME NODE')
    expect(err(['notes', 'n2', 'n3']).message).toBe("unexpected argument 'n3'")
    expect(err(['notes', 'n2', 'n3', 'n4']).message).toBe("unexpected arguments 'n3' 'n4'")
    expect(err(['notes', '-x', 'n2']).exitCode).toBe(EXIT.usage)
    expect(() => parseCommand(['--tail'], { usage: 'x', options: { tail: { type: 'string' } } })).toThrow("option '--tail <value>' argument missing")
    expect(() => parseCommand(['--json=yes'], { usage: 'x', options: { json: { type: 'boolean' } } })).toThrow("option '--json' does not take an argument")
  })
})

describe('every command, with bad arguments and no agent', () => {
  const saved = process.env.DCLOUD_API
  beforeAll(() => { process.env.DCLOUD_API = `unix:${join(PROJECT_ROOT, 'no-agent-here.sock')}` })
  afterAll(() => { if (saved === undefined) delete process.env.DCLOUD_API; else process.env.DCLOUD_API = saved })

  const cases: Array<[string, Run, string[], string]> = [
    ['app move', appCommand, ['move', 'notes', 'n2', '--force'], "unknown option '--force'"],
    ['app move', appCommand, ['move', 'notes', 'n2', 'n3'], "unexpected argument 'n3'"],
    ['app move', appCommand, ['move', 'notes'], 'missing NODE'],
    ['app move', appCommand, ['move', 'notes', 'n2'], 'unreachable'],
    ['app rm', appCommand, ['rm', 'notes', '--force'], "unknown option '--force'"],
    ['app rm', appCommand, ['rm', 'notes', 'wiki'], "unexpected argument 'wiki'"],
    ['app rm', appCommand, ['rm', 'notes'], 'unreachable'],
    ['app install', appCommand, ['install', 'apps/examples/notes', 'extra'], "unexpected argument 'extra'"],
    ['app install', appCommand, ['install', '--nmae', 'x', 'apps/examples/notes'], "unknown option '--nmae'"],
    ['app ls', appCommand, ['ls', 'notes'], "unexpected argument 'notes'"],
    ['app ls', appCommand, ['ls', '--json'], 'unreachable'],
    ['app logs', appCommand, ['logs', 'notes', '--tail', 'lots'], '--tail lots: expected a whole number from 1 to 10000'],
    ['app logs', appCommand, ['logs', 'notes', 'wiki'], "unexpected argument 'wiki'"],
    ['app logs', appCommand, ['logs', 'notes', '--tail', '50'], 'unreachable'],
    ['app why', appCommand, ['why', 'notes', 'wiki'], "unexpected argument 'wiki'"],
    ['app why', appCommand, ['why', 'notes'], 'unreachable'],
    ['node drain', nodeCommand, ['drain', 'n1', 'n2'], "unexpected argument 'n2'"],
    ['node drain', nodeCommand, ['drain', 'n1', '--dry-run'], "unknown option '--dry-run'"],
    ['node drain', nodeCommand, ['drain', 'n1', '--no-wait'], 'unreachable'],
    ['node undrain', nodeCommand, ['undrain', 'n1', '--no-wait'], "unknown option '--no-wait'"],
    ['node undrain', nodeCommand, ['undrain'], 'missing NODE'],
    ['node', nodeCommand, ['remove', 'n1'], "unknown node command 'remove'"],
    ['snapshot create', snapshotCommand, ['create', 'notes', 'now'], "unexpected argument 'now'"],
    ['snapshot create', snapshotCommand, ['create', 'notes'], 'unreachable'],
    ['snapshot ls', snapshotCommand, ['ls', 'notes', '--all'], "unknown option '--all'"],
    ['snapshot restore', snapshotCommand, ['restore', 'notes'], 'missing SNAPSHOT'],
    ['snapshot restore', snapshotCommand, ['restore', 'notes', 'abc', 'def', '--yes'], "unexpected argument 'def'"],
    ['snapshot restore', snapshotCommand, ['restore', 'notes', 'abc', '--yes'], 'unreachable'],
    ['backup', backupCommand, ['notes'], 'missing -o FILE: where to write the backup'],
    ['backup', backupCommand, ['notes', 'wiki', '-o', 'x.tar'], "unexpected argument 'wiki'"],
    ['restore', restoreCommand, ['a.dcloud-backup', 'b.dcloud-backup'], "unexpected argument 'b.dcloud-backup'"],
    ['restore', restoreCommand, ['a.dcloud-backup', '--force'], "unknown option '--force'"],
    ['status', statusCommand, ['n1'], "unexpected argument 'n1'"],
    ['status', statusCommand, ['--json'], 'unreachable'],
    ['init', initCommand, ['cluster.key'], "unexpected argument 'cluster.key'"],
    ['agent', agentCommand, ['--dta-dir', '/tmp/x'], "unknown option '--dta-dir'"],
    ['agent', agentCommand, ['start'], "unexpected argument 'start'"],
    ['flash', flashCommand, ['/dev/sdb'], "unexpected argument '/dev/sdb'"],
    ['domain set', domainCommand, ['set', 'a.example.org', '--email', 'me@a.example.org'], '--email and --acme-ca-root go with --acme URL'],
    ['domain set', domainCommand, ['set', 'a.example.org', '--acme', 'https://x/dir', '--no-acme'], '--acme and --no-acme together'],
    ['domain set', domainCommand, ['set', 'a.example.org', '--acme'], "option '--acme <value>' argument missing"],
    ['domain set', domainCommand, ['set', 'a.example.org', '--acme', 'https://x/dir', '--email', 'me@a.example.org'], 'unreachable'],
    ['domain set', domainCommand, ['set', 'a.example.org', '--no-acme'], 'unreachable'],
    ['lab kill', labCommand, ['kill', 'n1', 'n2'], "unexpected argument 'n2'"],
    ['lab start', labCommand, ['start', 'n1', '--agnet-only'], "unknown option '--agnet-only'"],
    ['lab heal', labCommand, ['heal', 'now'], "unexpected argument 'now'"],
    ['lab down', labCommand, ['down', '--force'], "unknown option '--force'"],
    ['lab exec', labCommand, ['exec', 'n1', 'extra', '--', 'true'], "unexpected argument 'extra'"],
    ['lab chaos', labCommand, ['chaos', '5'], "unexpected argument '5'"]
  ]

  it.each(cases)('%s %j → %s', async (_name, run, argv, expected) => {
    expect(await outcome(run, argv)).toBe(expected)
  })

  it('exits 64 from the real entry, saying what is wrong and how to see the usage', () => {
    const r = spawnSync(process.execPath, [join(PROJECT_ROOT, 'agent', 'cli', 'main.ts'), 'app', 'move', 'notes', 'n2', '--force'], { encoding: 'utf8', env: { ...process.env, DCLOUD_API: 'unix:/nonexistent.sock' }, timeout: 60_000 })
    expect(r.stderr).toBe("dcloud: unknown option '--force'\n  usage: dcloud app move NAME NODE [--dry-run] [--no-wait]; see `dcloud app move --help`\n")
    expect(r.status).toBe(EXIT.usage)
    const v = spawnSync(process.execPath, [join(PROJECT_ROOT, 'agent', 'cli', 'main.ts'), 'version', 'now'], { encoding: 'utf8', timeout: 60_000 })
    expect(v.stderr).toMatch(/^dcloud: unexpected argument 'now'/)
    expect(v.status).toBe(EXIT.usage)
  })
})
