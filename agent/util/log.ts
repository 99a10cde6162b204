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
