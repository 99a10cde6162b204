/**
 * A small leveled logger: one line per event on stderr, `DCLOUD_LOG=debug` for more.
 * The agent runs under systemd, whose journal adds the time; we add it too for the lab.
 */
const LEVELS = { debug: 10, info: 20, warn: 30, error: 40 } as const
export type LogLevel = keyof typeof LEVELS

export interface Logger {
  debug: (msg: string, fields?: Record<string, unknown>) => void
  info: (msg: string, fields?: Record<string, unknown>) => void
  warn: (msg: string, fields?: Record<string, unknown>) => void
  error: (msg: string, fields?: Record<string, unknown>) => void
  child: (component: string) => Logger
}

function threshold (): number {
  const wanted = process.env.DCLOUD_LOG as LogLevel | undefined
  return LEVELS[wanted ?? 'info'] ?? LEVELS.info
}

export function createLogger (component: string, write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  const min = threshold()
  const emit = (level: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (LEVELS[level] < min) return
    let line = `${new Date().toISOString()} ${level.padEnd(5)} [${component}] ${msg}`
    if (fields !== undefined) {
      for (const [k, v] of Object.entries(fields)) line += ` ${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`
    }
    write(line + '\n')
  }
  return {
    debug: (m, f) => { emit('debug', m, f) },
    info: (m, f) => { emit('info', m, f) },
    warn: (m, f) => { emit('warn', m, f) },
    error: (m, f) => { emit('error', m, f) },
    child: (c) => createLogger(`${component}:${c}`, write)
  }
}

/**
 * Warnings about input from outside (refused requests, peers' bad messages)
 * at most `perMinute` per key a minute: a flood of bad input must not flood
 * the journal. The next line logged for a key says how many were left out
 * before it; `notLogged` counts them all, for metrics.
 */
export class ThrottledLog {
  notLogged = 0
  private readonly windows = new Map<string, { start: number, logged: number, skipped: number }>()
  private readonly log: Logger
  private readonly perMinute: number
  private readonly now: () => number

  constructor (log: Logger, opts: { perMinute?: number, now?: () => number } = {}) {
    this.log = log
    this.perMinute = opts.perMinute ?? 10
    this.now = opts.now ?? Date.now
  }

  warn (key: string, msg: string, fields: Record<string, unknown>): void {
    const now = this.now()
    let w = this.windows.get(key)
    if (w === undefined || now - w.start >= 60_000) {
      w = { start: now, logged: 0, skipped: w?.skipped ?? 0 }
      this.windows.set(key, w)
    }
    if (w.logged >= this.perMinute) { w.skipped++; this.notLogged++; return }
    w.logged++
    const out = w.skipped > 0 ? { ...fields, notLoggedBefore: w.skipped } : fields
    w.skipped = 0
    this.log.warn(msg, out)
  }
}
