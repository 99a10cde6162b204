/**
 * Images on the node's engine: presence, `docker save` / `docker load` as
 * streams (so an image can travel from peer to peer without touching the
 * disk), and a pull that gives up quickly when no registry answers: an
 * offline homelab must not wait minutes before asking its peers.
 */
import type Docker from 'dockerode'
import { isImageRef } from '../../proto/runtime.ts'

export class ImageError extends Error {
  override name = 'ImageError'
}

/** The HTTP status of a Docker API error, if it has one. */
export function dockerStatus (err: unknown): number | undefined {
  const code = (err as { statusCode?: unknown } | null)?.statusCode
  return typeof code === 'number' ? code : undefined
}

/** Races a Docker call that ignores AbortSignal (dockerode's image inspect) against the signal. */
export async function raceSignal<T> (promise: Promise<T>, signal: AbortSignal): Promise<T> {
  signal.throwIfAborted()
  let onAbort: (() => void) | undefined
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => { reject(signal.reason) }
    signal.addEventListener('abort', onAbort, { once: true })
  })
  try {
    return await Promise.race([promise, aborted])
  } finally {
    if (onAbort !== undefined) signal.removeEventListener('abort', onAbort)
    // The loser may still settle; nobody listens to it any more.
    promise.catch(() => {})
  }
}

/** The image's id (`sha256:...`), or null when the engine has no image by that reference. */
export async function imageId (docker: Docker, ref: string, signal: AbortSignal): Promise<string | null> {
  try {
    const info = await raceSignal(docker.getImage(ref).inspect(), signal)
    return info.Id
  } catch (err) {
    if (dockerStatus(err) === 404) return null
    throw err
  }
}

export async function hasImage (docker: Docker, ref: string, signal: AbortSignal): Promise<boolean> {
  return await imageId(docker, ref, signal) !== null
}

/** The image's size in bytes (what `docker save` will roughly weigh), or null when absent. */
export async function imageSize (docker: Docker, ref: string, signal: AbortSignal): Promise<number | null> {
  try {
    const info = await raceSignal(docker.getImage(ref).inspect(), signal)
    return typeof info.Size === 'number' ? info.Size : null
  } catch (err) {
    if (dockerStatus(err) === 404) return null
    throw err
  }
}

/** Repo tags of every image on the engine (`name:tag`), sorted; untagged images are left out. */
export async function listImages (docker: Docker, signal: AbortSignal): Promise<string[]> {
  const images = await docker.listImages({ abortSignal: signal } as object)
  return images.flatMap(i => i.RepoTags ?? []).filter(t => t !== '<none>:<none>').sort()
}

/**
 * `docker save REF` as a stream of tar bytes. Aborting the signal destroys
 * the stream (and so the request to the engine).
 */
export async function saveImage (docker: Docker, ref: string, signal: AbortSignal): Promise<NodeJS.ReadableStream> {
  signal.throwIfAborted()
  const stream = await raceSignal(docker.getImage(ref).get(), signal) as NodeJS.ReadableStream & { destroy: (err?: Error) => void }
  const onAbort = (): void => { stream.destroy(signal.reason instanceof Error ? signal.reason : new Error('aborted')) }
  if (signal.aborted) onAbort()
  else signal.addEventListener('abort', onAbort, { once: true })
  stream.once('close', () => { signal.removeEventListener('abort', onAbort) })
  return stream
}

/**
 * `docker load` from a stream of tar bytes. Resolves with the references the
 * engine reports loaded, after checking that `ref` (when given) now exists.
 *
 * Docker tags an image only after every layer is in and matches the image's
 * config, and releases layers no image holds: a stream that breaks or is
 * aborted midway leaves no half-loaded image behind.
 */
export async function loadImage (docker: Docker, stream: NodeJS.ReadableStream, signal: AbortSignal, ref?: string): Promise<string[]> {
  signal.throwIfAborted()
  const response = await docker.loadImage(stream, { abortSignal: signal, quiet: true } as object)
  const loaded: string[] = []
  let failure: string | null = null
  let rest = ''
  const onLine = (line: string): void => {
    if (line.trim() === '') return
    let msg: { stream?: unknown, error?: unknown, errorDetail?: { message?: unknown } }
    try {
      msg = JSON.parse(line) as typeof msg
    } catch {
      return
    }
    if (typeof msg.error === 'string') failure = msg.error
    if (typeof msg.stream === 'string') {
      const m = /Loaded image(?: ID)?: (\S+)/.exec(msg.stream)
      if (m?.[1] !== undefined) loaded.push(m[1])
    }
  }
  try {
    for await (const chunk of response as AsyncIterable<Buffer | string>) {
      rest += chunk.toString()
      const lines = rest.split('\n')
      rest = lines.pop() ?? ''
      for (const line of lines) onLine(line)
    }
    onLine(rest)
  } catch (err) {
    throw new ImageError(`docker load failed: ${(err as Error).message}`)
  }
  if (failure !== null) throw new ImageError(`docker load failed: ${String(failure)}`)
  if (ref !== undefined && !(await hasImage(docker, ref, signal))) {
    throw new ImageError(`docker load finished but ${ref} is not on the engine (the archive held ${loaded.length > 0 ? loaded.join(', ') : 'no tagged image'})`)
  }
  return loaded
}

export interface PullOptions {
  signal: AbortSignal
  /** Give up when the engine reports no progress for this long. Default 15 s. */
  idleMs?: number
  progress?: (line: string) => void
}

/**
 * `docker pull REF`, failing fast: the engine's own errors (no route, no such
 * host, unauthorized, manifest unknown) come back within a second on an
 * offline machine; a registry that accepts the connection and then says
 * nothing is cut off after `idleMs` without progress.
 */
export async function pullImage (docker: Docker, ref: string, opts: PullOptions): Promise<void> {
  if (!isImageRef(ref)) throw new ImageError(`'${ref}' is not a Docker image reference`)
  const idleMs = opts.idleMs ?? 15_000
  const idle = new AbortController()
  const signal = AbortSignal.any([opts.signal, idle.signal])
  let timer = setTimeout(() => { idle.abort(new ImageError(`no progress from the registry for ${idleMs / 1000} s`)) }, idleMs)
  const touch = (): void => {
    clearTimeout(timer)
    timer = setTimeout(() => { idle.abort(new ImageError(`no progress from the registry for ${idleMs / 1000} s`)) }, idleMs)
  }
  try {
    const stream = await docker.pull(ref, { abortSignal: signal })
    let failure: string | null = null
    let rest = ''
    try {
      for await (const chunk of stream as AsyncIterable<Buffer | string>) {
        touch()
        rest += chunk.toString()
        const lines = rest.split('\n')
        rest = lines.pop() ?? ''
        for (const line of lines) {
          try {
            const msg = JSON.parse(line) as { status?: unknown, error?: unknown }
            if (typeof msg.error === 'string') failure = msg.error
            else if (typeof msg.status === 'string') opts.progress?.(msg.status)
          } catch { /* a partial or foreign line: progress only */ }
        }
      }
    } catch (err) {
      if (idle.signal.aborted) throw idle.signal.reason as Error
      throw err
    }
    if (failure !== null) throw new ImageError(failure)
  } catch (err) {
    if (idle.signal.aborted && !opts.signal.aborted) throw idle.signal.reason as Error
    throw err
  } finally {
    clearTimeout(timer)
  }
}
