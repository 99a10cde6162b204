/**
 * The replicated desired state on this node's disk: every app the user asked
 * for. Every node keeps a copy so any survivor can lead with nothing lost.
 * Only the leader changes it; followers take newer revisions from the leader.
 */
import { readFile, rename, writeFile, copyFile } from 'node:fs/promises'
import { join } from 'node:path'
import { decodeDesiredState, newerDesired, type DesiredChange, type DesiredState } from '../../proto/cluster.ts'
import { RpcError } from '../mesh/rpc.ts'
import type { Logger } from '../util/log.ts'

export const EMPTY_STATE: DesiredState = { revision: 0, term: 0, apps: [] }

/** Applies a user's change to the desired state; pure. Throws RpcError with a code a client can act on. */
export function applyChange (state: DesiredState, change: DesiredChange, term: number): DesiredState {
  const revision = state.revision + 1
  switch (change.kind) {
    case 'install': {
      if (state.apps.some(a => a.name === change.app.name)) {
        throw new RpcError('exists', `an app named ${change.app.name} is already installed; pick another --name`)
      }
      return { ...state, revision, term, apps: [...state.apps, { ...change.app, revision }] }
    }
    case 'remove': {
      if (!state.apps.some(a => a.name === change.name)) throw new RpcError('not_found', `no app named ${change.name}`)
      return { ...state, revision, term, apps: state.apps.filter(a => a.name !== change.name) }
    }
    case 'move': {
      const app = state.apps.find(a => a.name === change.name)
      if (app === undefined) throw new RpcError('not_found', `no app named ${change.name}`)
      return { ...state, revision, term, apps: state.apps.map(a => a.name === change.name ? { ...a, pinnedNode: change.node, revision } : a) }
    }
    case 'drain': {
      const drained = new Set(state.drained ?? [])
      if (change.drained) drained.add(change.node)
      else drained.delete(change.node)
      return { ...state, revision, term, drained: [...drained].sort() }
    }
    case 'relocate': {
      const app = state.apps.find(a => a.name === change.name)
      if (app === undefined) throw new RpcError('not_found', `no app named ${change.name}`)
      if (change.generation < (app.generation ?? 1)) throw new RpcError('conflict', `${change.name} is at data generation ${app.generation ?? 1} already`)
      // Not a user's change: the app's revision (what its containers are labelled with) stays.
      return { ...state, revision, term, apps: state.apps.map(a => a.name === change.name ? { ...a, generation: change.generation, relocation: change.relocation } : a) }
    }
  }
}

export class DesiredStore {
  private state: DesiredState = EMPTY_STATE
  private readonly path: string
  private readonly log: Logger
  private writing: Promise<void> = Promise.resolve()

  constructor (dataDir: string, log: Logger) {
    this.path = join(dataDir, 'desired.json')
    this.log = log
  }

  async load (): Promise<void> {
    let text: string
    try {
      text = await readFile(this.path, 'utf8')
    } catch {
      return
    }
    try {
      this.state = decodeDesiredState(JSON.parse(text))
    } catch (err) {
      // Never throw away what the user asked for: keep the unreadable file beside.
      const keep = `${this.path}.unreadable-${Date.now()}`
      await copyFile(this.path, keep)
      this.log.error('the desired state on disk is unreadable; kept it and starting empty until a peer replicates its copy', { kept: keep, error: (err as Error).message })
    }
  }

  current (): DesiredState {
    return this.state
  }

  /** Takes `next` when it is newer (by term of last change, then revision); returns whether it did. */
  async replace (next: DesiredState): Promise<boolean> {
    if (!newerDesired(next, this.state)) return false
    this.state = next
    await this.persist()
    return true
  }

  private async persist (): Promise<void> {
    const snapshot = JSON.stringify(this.state)
    // Writes are serialised and atomic (write, then rename).
    this.writing = this.writing.then(async () => {
      await writeFile(`${this.path}.tmp`, snapshot, { mode: 0o600 })
      await rename(`${this.path}.tmp`, this.path)
    })
    await this.writing
  }
}
