/**
 * Peers' answers are decoded, never cast: `why`, `logs`, `replicate`, a
 * snapshot list and a `take` each have a decoder in proto/cluster.ts, and
 * rpcCall's reading of an answer (rpcAnswerOf) turns one that does not decode
 * into `bad_response`, which the API answers 502 (agent/api/errors.ts).
 */
import { describe, expect, it } from 'vitest'
import { decodeLogsReply, decodeReplicateReply, decodeSnapshotList, decodeTakeReply, decodeWhyReply } from '../../proto/cluster.ts'
import { RpcError, rpcAnswerOf } from '../../agent/mesh/rpc.ts'

const PEER = '12D3KooWLRPJAA5o6ssZjNE7C3Bc2NJsQeeKtRJNE3qXQjYwHxGD'
const why = { app: 'notes', node: 'n2', rejections: [{ node: 'n3', reason: 'not enough memory' }], planTerm: 4, planAt: 1_700_000_000_000, detail: '' }
const snap = { id: 'a1b2c3d4', app: 'notes', time: 1_700_000_000_000, purpose: 'manual', node: 'n1', generation: 2, label: null, bytes: 4096, added: 1024, tree: 'ab12' }

describe('reply decoders', () => {
  it('take good answers as they are', () => {
    expect(decodeWhyReply(why)).toEqual(why)
    // The leader's answer keeps what the app runs with (found by the permissions lab test: a follower's `app why` lost it).
    const withGrants = { ...why, grants: ['path:/srv/x:ro'], ungranted: ['net_admin'] }
    expect(decodeWhyReply(withGrants)).toEqual(withGrants)
    expect(() => decodeWhyReply({ ...why, grants: 'net_admin' })).toThrow(/why\.grants/)
    expect(decodeWhyReply({ ...why, node: null, planTerm: null, planAt: null })).toMatchObject({ node: null, planTerm: null })
    expect(decodeLogsReply({ node: PEER, text: 'line 1\nline 2\n' })).toEqual({ node: PEER, text: 'line 1\nline 2\n' })
    expect(decodeReplicateReply({ files: 12, bytes: 4096 })).toEqual({ files: 12, bytes: 4096 })
    expect(decodeSnapshotList([snap])).toMatchObject([{ id: 'a1b2c3d4', generation: 2 }])
    expect(decodeTakeReply({ ...snap, replicatedTo: ['n2'] })).toMatchObject({ id: 'a1b2c3d4', replicatedTo: ['n2'] })
    expect(decodeTakeReply(snap).replicatedTo).toEqual([]) // an older node says none
  })

  it.each([
    ['why without rejections', () => decodeWhyReply({ ...why, rejections: undefined }), /why.rejections: must be an array/],
    ['why with a rejection that is not one', () => decodeWhyReply({ ...why, rejections: [{ node: 3 }] }), /why.rejections\[0\].node: must be a string/],
    ['why of a bad app name', () => decodeWhyReply({ ...why, app: '../etc' }), /why.app/],
    ['why with a term that is no number', () => decodeWhyReply({ ...why, planTerm: '4' }), /why.planTerm/],
    ['logs without text', () => decodeLogsReply({ node: PEER }), /logs.text: must be a string/],
    ['logs from a node that is no peer id', () => decodeLogsReply({ node: 'n1', text: '' }), /logs.node/],
    ['replicate as a bare true', () => decodeReplicateReply(true), /replicate: must be an object/],
    ['replicate with negative bytes', () => decodeReplicateReply({ files: 1, bytes: -1 }), /replicate.bytes/],
    ['a snapshot list that is not a list', () => decodeSnapshotList({}), /snapshots: must be an array/],
    ['a take whose replicas are not names', () => decodeTakeReply({ ...snap, replicatedTo: [{}] }), /snapshot.replicatedTo\[0\]/],
    ['a take whose replicas are no list', () => decodeTakeReply({ ...snap, replicatedTo: 'n2' }), /snapshot.replicatedTo: must be an array/]
  ])('refuse %s, naming the field', (_what, decode, why) => {
    expect(decode).toThrow(why)
  })
})

describe('reading an answer (rpcAnswerOf)', () => {
  const bytes = (v: unknown): Uint8Array => new TextEncoder().encode(typeof v === 'string' ? v : JSON.stringify(v))
  const refusal = (f: () => unknown): RpcError => { try { f() } catch (e) { return e as RpcError } throw new Error('accepted') }

  it('gives the decoded value', () => {
    expect(rpcAnswerOf(bytes({ ok: true, value: why }), decodeWhyReply, 'why from n2')).toEqual(why)
  })

  it('makes an answer that does not decode bad_response, naming the field', () => {
    const e = refusal(() => rpcAnswerOf(bytes({ ok: true, value: { ...why, rejections: 'none' } }), decodeWhyReply, 'why from n2'))
    expect(e).toBeInstanceOf(RpcError)
    expect(e.code).toBe('bad_response')
    expect(e.message).toBe('why from n2: why.rejections: must be an array')
    expect(refusal(() => rpcAnswerOf(bytes('{"ok": tru'), decodeWhyReply, 'x')).code).toBe('bad_response')
    expect(refusal(() => rpcAnswerOf(bytes([1, 2]), decodeWhyReply, 'x')).code).toBe('bad_response')
  })

  it('gives the peer\'s error with its code and hint, bounded', () => {
    const e = refusal(() => rpcAnswerOf(bytes({ ok: false, error: { code: 'exists', message: 'b.tar already exists', hint: 'choose another name' } }), decodeWhyReply, 'x'))
    expect({ code: e.code, message: e.message, hint: e.hint }).toEqual({ code: 'exists', message: 'b.tar already exists', hint: 'choose another name' })
    const odd = refusal(() => rpcAnswerOf(bytes({ ok: false, error: { code: 7, message: 'x'.repeat(10_000), hint: {} } }), decodeWhyReply, 'x'))
    expect({ code: odd.code, length: odd.message.length, hint: odd.hint }).toEqual({ code: 'failed', length: 4000, hint: undefined })
  })
})
