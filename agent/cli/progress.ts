/**
 * Progress of a long transfer on stderr: bytes of total, percent and rate.
 * On a terminal one line rewritten in place (`\r`) a few times a second;
 * otherwise (a log, a pipe) one line a second, so scripts and tests can read it.
 */
import { bytes } from './format.ts'

export interface ProgressOptions {
  out?: NodeJS.WriteStream | { write: (s: string) => unknown, isTTY?: boolean }
  /** Rewrite one line in place; default: when `out` is a terminal. */
  tty?: boolean
  now?: () => number
}

export class Progress {
  private readonly label: string
  private readonly out: { write: (s: string) => unknown }
  private readonly tty: boolean
  private readonly now: () => number
  private started: number
  private last = 0
  private done = 0
  private total: number | null = null
  private shown = false

  constructor (label: string, opts: ProgressOptions = {}) {
    this.label = label
    this.out = opts.out ?? process.stderr
    this.tty = opts.tty ?? (opts.out ?? process.stderr).isTTY === true
    this.now = opts.now ?? Date.now
    this.started = this.now()
  }

  /** Starts the clock again: the transfer begins now (after a wait for the other side). */
  restart (): void {
    this.started = this.now()
    this.last = 0
  }

  /** Bytes done so far, of `total` when known; prints when it is time to. */
  update (done: number, total: number | null): void {
    this.done = done
    this.total = total
    const t = this.now()
    if (t - this.last < (this.tty ? 200 : 1000)) return
    this.last = t
    this.print(false)
  }

  /** The final line: what moved, in how long, at what rate. */
  finish (): { bytes: number, seconds: number, bytesPerSecond: number } {
    this.print(true)
    const seconds = this.seconds()
    return { bytes: this.done, seconds, bytesPerSecond: seconds > 0 ? Math.round(this.done / seconds) : 0 }
  }

  /** Ends a `\r` line left open (before printing something else after a failure). */
  abandon (): void {
    if (this.tty && this.shown) this.out.write('\n')
    this.shown = false
  }

  private seconds (): number {
    return (this.now() - this.started) / 1000
  }

  private print (final: boolean): void {
    const s = this.seconds()
    const rate = s > 0 ? this.done / s : 0
    const of = this.total !== null ? ` of ${bytes(this.total)} (${this.total > 0 ? Math.floor(this.done * 100 / this.total) : 100}%)` : ''
    const line = `${this.label}: ${bytes(this.done)}${of}${final ? ` in ${s.toFixed(1)} s` : ''}, ${bytes(Math.round(rate))}/s`
    if (this.tty) {
      this.out.write(`\r\x1b[K${line}${final ? '\n' : ''}`)
      this.shown = !final
    } else {
      this.out.write(line + '\n')
    }
  }
}
