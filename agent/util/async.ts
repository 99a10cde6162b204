/**
 * The agent's small async tools, each written once: a sleep that an
 * AbortSignal ends, a mutex per key, and an idle watchdog (a signal that
 * aborts when nothing has moved for a while). Not to be confused with the
 * fencing watchdog (agent/fence/watchdog.ts), a process of its own.
 */
import { setTimeout as delay } from 'node:timers/promises'

/** Waits `ms`; rejects with the signal's reason when it aborts first. */
export async function sleep (ms: number, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted()
  try {
    await delay(ms, undefined, { signal })
  } catch (err) {
    throw signal.aborted ? signal.reason : err
  }
}

/**
 * A mutex per key (an app): `run(key, fn)` runs fn once every earlier holder
 * of the same key is done, whether it succeeded or failed; other keys do not
 * wait. `acquire` fits the `lock` option of serveRepos and pullRepo:
 * `lock: (app) => mutex.acquire(app)`.
 */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>()

  /** Waits for the key and returns its release (calling it twice is harmless). */
  async acquire (key: string): Promise<() => void> {
    const previous = this.tails.get(key) ?? Promise.resolve()
    let free!: () => void
    const mine = new Promise<void>(resolve => { free = resolve })
    const tail = previous.then(() => mine)
    this.tails.set(key, tail)
    await previous
    let released = false
    return () => {
      if (released) return
      released = true
      free()
      // Nobody queued behind us: forget the key, so the map does not grow with every key ever locked.
      if (this.tails.get(key) === tail) this.tails.delete(key)
    }
  }

  async run<T> (key: string, fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire(key)
    try {
      return await fn()
    } finally {
      release()
    }
  }

  isLocked (key: string): boolean {
    return this.tails.has(key)
  }
}

/**
 * Aborts `signal` with `reason()` when `touch()` has not been called for
 * `ms`: a transfer whose bytes stopped moving. Unless `armed`, the clock
 * starts at the first touch. Its timer never keeps the process alive.
 */
export class Watchdog {
  private readonly controller = new AbortController()
  private readonly ms: number
  private readonly reason: () => Error
  private timer: NodeJS.Timeout | undefined

  constructor (ms: number, reason: () => Error, armed = true) {
    this.ms = ms
    this.reason = reason
    if (armed) this.timer = this.arm()
  }

  get signal (): AbortSignal {
    return this.controller.signal
  }

  private arm (): NodeJS.Timeout {
    const t = setTimeout(() => { this.controller.abort(this.reason()) }, this.ms)
    t.unref()
    return t
  }

  touch (): void {
    clearTimeout(this.timer)
    if (!this.controller.signal.aborted) this.timer = this.arm()
  }

  stop (): void {
    clearTimeout(this.timer)
  }
}
