/**
 * The host's side of a benchmark's probe: a process started through
 * `dcloud lab exec|client` in a lab namespace (the only place the nodes'
 * addresses are reachable), printing one JSON line per observation. Lines are
 * kept as they come; closing its stdin asks it to stop.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { DCLOUD } from '../../test/lab/harness.ts'

export class ProbeProcess<T> {
  readonly lines: T[] = []
  private readonly child: ChildProcess
  private stderr = ''
  private closed = false
  private readonly exited: Promise<void>

  /** `args`: dcloud's arguments; `accept`: the line's value to keep, or undefined to drop it. */
  constructor (args: string[], accept: (m: Record<string, unknown>) => T | undefined) {
    this.child = spawn(DCLOUD, args, { stdio: ['pipe', 'pipe', 'pipe'] })
    this.child.stderr?.on('data', (b: Buffer) => { this.stderr = (this.stderr + b.toString()).slice(-4096) })
    createInterface({ input: this.child.stdout as NodeJS.ReadableStream }).on('line', line => {
      try {
        const v = accept(JSON.parse(line) as Record<string, unknown>)
        if (v !== undefined) this.lines.push(v)
      } catch {}
    })
    this.exited = new Promise(resolve => { this.child.on('close', () => { this.closed = true; resolve() }) })
  }

  /** Throws, with what the probe printed on stderr, once it has exited: a wait on its lines ends at once. */
  check (): void {
    if (this.closed) throw new Error(`probe exited: ${this.stderr.trim()}`)
  }

  async stop (): Promise<void> {
    this.child.stdin?.end()
    const t = setTimeout(() => { this.child.kill('SIGKILL') }, 10_000)
    await this.exited
    clearTimeout(t)
  }
}

/**
 * The probe's side: runs `finish` once when the host closes the probe's stdin
 * (or sends SIGTERM), then exits once every line is written.
 */
export function stopWhenAsked (finish: () => Promise<void>): void {
  let stopping = false
  const stop = async (): Promise<void> => {
    if (stopping) return
    stopping = true
    await finish()
    process.stdout.write('', () => process.exit(0))
  }
  process.stdin.on('end', () => { void stop() })
  process.stdin.on('close', () => { void stop() })
  process.stdin.resume()
  process.on('SIGTERM', () => { void stop() })
}
