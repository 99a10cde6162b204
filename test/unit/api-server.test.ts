import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ApiServer, authorize } from '../../agent/api/server.ts'
import { apiGet } from '../../agent/cli/client.ts'
import { createLogger } from '../../agent/util/log.ts'
import { UserError } from '../../agent/util/errors.ts'

const token = Buffer.from('s3cret-token')

describe('API authorization', () => {
  it.each([
    [false, '10.0.0.5', undefined, null], // Unix socket: file permissions decide
    [true, '127.0.0.1', undefined, null],
    [true, '::1', undefined, null],
    [true, '::ffff:127.0.0.1', undefined, null],
    [true, '10.213.0.12', undefined, 'unauthorized'],
    [true, '10.213.0.12', 'Basic abc', 'unauthorized'],
    [true, '10.213.0.12', 'Bearer wrong', 'forbidden'],
    [true, '10.213.0.12', 'Bearer s3cret-tokeX', 'forbidden'],
    [true, '10.213.0.12', 'Bearer s3cret-token', null]
  ] as const)('over TCP %s from %s with %s: %s', (overTcp, remoteAddress, authorization, expected) => {
    expect(authorize({ overTcp, remoteAddress, authorization, token })).toBe(expected)
  })
})

describe('API server', () => {
  let dir: string
  let server: ApiServer
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dcloud-api-'))
    server = new ApiServer({
      socketPath: join(dir, 'api.sock'),
      tcp: '127.0.0.1:0',
      token: token.toString(),
      log: createLogger('test', () => {}),
      routes: {
        'GET /v1/health': () => ({ ok: true }),
        'GET /v1/boom': () => { throw new Error('kaput') }
      }
    })
    await server.start()
  })
  afterAll(async () => {
    await server.stop()
    await server.stop() // stopping twice is safe
    await rm(dir, { recursive: true, force: true })
  })

  it('answers over the Unix socket', async () => {
    expect(await apiGet('/v1/health', { socketPath: join(dir, 'api.sock'), describe: 'test' })).toEqual({ ok: true })
  })

  it('turns unknown paths and failing handlers into catalogued errors', async () => {
    const target = { socketPath: join(dir, 'api.sock'), describe: 'test' }
    await expect(apiGet('/v1/nope', target)).rejects.toThrow(/not_found/)
    await expect(apiGet('/v1/boom', target)).rejects.toThrow(/internal/)
  })

  it('says clearly when no agent answers', async () => {
    const err = await apiGet('/v1/health', { socketPath: join(dir, 'missing.sock'), describe: 'unix:missing' }).catch(e => e)
    expect(err).toBeInstanceOf(UserError)
    expect((err as UserError).exitCode).toBe(69)
    expect((err as UserError).hint).toMatch(/dcloud agent/)
  })
})
