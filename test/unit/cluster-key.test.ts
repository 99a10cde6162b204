import { describe, expect, it } from 'vitest'
import { mkdtemp, readFile, stat, writeFile, chmod } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { newClusterKey, parseClusterKey, readClusterKey, writeNewClusterKey } from '../../agent/mesh/cluster-key.ts'

describe('cluster key', () => {
  it('writes a new key with mode 0600 that reads back', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dcloud-key-'))
    const file = join(dir, 'cluster.key')
    await writeNewClusterKey(file)
    expect((await stat(file)).mode & 0o777).toBe(0o600)
    expect(await readClusterKey(file)).toEqual(new Uint8Array(await readFile(file)))
  })

  it('never overwrites an existing key', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dcloud-key-'))
    const file = join(dir, 'cluster.key')
    await writeNewClusterKey(file)
    const before = await readFile(file)
    await expect(writeNewClusterKey(file)).rejects.toThrow(/already exists/)
    expect(await readFile(file)).toEqual(before)
  })

  it('makes a key that others could read private again', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'dcloud-key-'))
    const file = join(dir, 'cluster.key')
    await writeFile(file, newClusterKey())
    await chmod(file, 0o644)
    await readClusterKey(file)
    expect((await stat(file)).mode & 0o777).toBe(0o600)
  })

  it('generates different keys', () => {
    expect(Buffer.from(newClusterKey()).equals(Buffer.from(newClusterKey()))).toBe(false)
  })

  it.each([
    ['', 'empty'],
    ['/key/swarm/psk/1.0.0/\n/base16/\nabc', 'short'],
    ['/key/swarm/psk/1.0.0/\n/base64/\n' + 'a'.repeat(64), 'other encoding'],
    ['-----BEGIN OPENSSH PRIVATE KEY-----', 'an ssh key']
  ])('refuses %j (%s) with a hint', (text) => {
    expect(() => parseClusterKey(text, 'k')).toThrow(/not a cluster key file/)
  })

  it('accepts keys written by other tools (upper case, CRLF)', () => {
    const hex = 'AB'.repeat(32)
    const key = parseClusterKey(`/key/swarm/psk/1.0.0/\r\n/base16/\r\n${hex}\r\n`, 'k')
    expect(new TextDecoder().decode(key)).toBe(`/key/swarm/psk/1.0.0/\n/base16/\n${hex.toLowerCase()}`)
  })
})
