/**
 * The lab is not part of the agent: `dcloud lab` loads scripts/lab from the
 * checkout's sources when asked (agent/cli/main.ts), and the agent's bundle
 * (scripts/build.sh's dist/dcloud.mjs) carries none of it. A string literal
 * in `import('../../scripts/lab/cli.ts')`, even a lazy one, is bundled by
 * esbuild: the bundle used to hold the whole lab.
 */
import { describe, expect, it } from 'vitest'
import { spawnSync } from 'node:child_process'
import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { build, type BuildOptions } from 'esbuild'
import { PROJECT_ROOT } from '../../agent/config.ts'
import { EXIT, UsageError, isUserError } from '../../agent/util/errors.ts'

/** The options of scripts/build.sh that decide what gets in. */
const BUNDLE: BuildOptions = {
  entryPoints: [join(PROJECT_ROOT, 'agent', 'cli', 'main.ts')],
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node22',
  logLevel: 'silent',
  alias: { ssh2: join(PROJECT_ROOT, 'agent', 'runtime', 'no-ssh.ts') },
  external: ['cpu-features'],
  banner: { js: "import { createRequire as __dcloudRequire } from 'node:module'; const require = __dcloudRequire(import.meta.url);" }
}

describe('the agent bundle', () => {
  it('holds no module of the lab, and none of its text', async () => {
    const result = await build({ ...BUNDLE, write: false, metafile: true })
    const inputs = Object.keys(result.metafile.inputs).map(p => relative(PROJECT_ROOT, join(PROJECT_ROOT, p)))
    expect(inputs).toContain('agent/cli/main.ts')
    expect(inputs.filter(p => p.startsWith('scripts/'))).toEqual([])
    const text = result.outputFiles.map(f => f.text).join('')
    expect(text).not.toContain('The lab\'s name defaults to')
    expect(text).toContain('scripts') // the lab's path, computed at run time
  }, 60_000)

  it('is entered by a CLI that imports the lab neither statically nor by a literal path', async () => {
    const main = await readFile(join(PROJECT_ROOT, 'agent', 'cli', 'main.ts'), 'utf8')
    const code = main.split('\n').filter(l => !/^\s*(\/\/|\*|\/\*\*)/.test(l)).join('\n')
    expect(code).not.toMatch(/^import[^\n]*scripts\/lab/m)
    // Only in a type position (`typeof import(...)`), which the bundler drops.
    expect(code.match(/(?<!typeof )import\(\s*['"][^'"]*scripts\/lab/g)).toBeNull()
  })

  it('says so, exit 69, where there is no lab beside it (an installed agent)', async () => {
    const root = await mkdtemp(join(tmpdir(), 'dcloud-installed-'))
    try {
      await mkdir(join(root, 'dist'))
      await copyFile(join(PROJECT_ROOT, 'package.json'), join(root, 'package.json'))
      await build({ ...BUNDLE, outfile: join(root, 'dist', 'dcloud.mjs') })
      const r = spawnSync(process.execPath, [join(root, 'dist', 'dcloud.mjs'), 'lab', 'ls'], { encoding: 'utf8', timeout: 60_000 })
      expect(r.stderr).toContain(`dcloud: the lab is not part of this installation (no ${join(root, 'scripts', 'lab', 'cli.ts')})`)
      expect(r.status).toBe(EXIT.unavailable)
    } finally {
      await rm(root, { recursive: true, force: true })
    }
  }, 60_000)
})

describe('isUserError', () => {
  it('knows a UserError from another copy of errors.ts (the lab\'s, beside the bundle) by its shape', () => {
    class Foreign extends Error { exitCode = 64; hint = 'see --help' }
    expect(isUserError(new UsageError('x'))).toBe(true)
    expect(isUserError(new Foreign('x'))).toBe(true)
    expect(isUserError(new Error('x'))).toBe(false)
    expect(isUserError(Object.assign(new Error('x'), { exitCode: '64' }))).toBe(false)
    expect(isUserError({ exitCode: 64, message: 'x' })).toBe(false)
  })
})
