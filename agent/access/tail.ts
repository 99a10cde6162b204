/**
 * Follows the file Caddy writes its access log to (render.ts's `logging`
 * section), whatever restarts: Caddy appends to the same file after a
 * restart, and the agent resumes where it stopped from a small cursor file
 * (the file's inode and the offset read), so lines written while the agent
 * was down are read when it is back. Caddy rolls the file at 1 MiB, keeping
 * one old file (bounded disk): a rolled file is read to its end before the
 * new one, also after a restart (found by its inode among the rolled files).
 */
import { open, readdir, rename, stat, writeFile, readFile, type FileHandle } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import type { Logger } from '../util/log.ts'

const CHUNK = 256 * 1024
/** The cursor is written at most this often (an SD card is spared a write per request); a line read again after a crash is deduped by its id. */
const CURSOR_EVERY_MS = 2000

export interface TailInit {
  /** The file Caddy writes. */
  path: string
  /** Where the position is kept across restarts. */
  cursorFile: string
  /** Complete lines, in order; the position advances once this resolves. */
  onLines: (lines: string[]) => Promise<void>
  log: Logger
  pollMs?: number
}

interface Cursor { ino: number, offset: number }

export class CaddyLogTail {
  private readonly init: TailInit
  private fh: FileHandle | null = null
  private ino = 0
  private offset = 0
  private timer: NodeJS.Timeout | undefined
  private running: Promise<void> | null = null
  private started = false
  private savedAt = 0
  private saved: string | null = null
  private lastError: string | null = null

  constructor (init: TailInit) {
    this.init = init
  }

  start (): void {
    if (this.started) return
    this.started = true
    this.schedule(0)
  }

  /** Stops, keeping the position (also after ticks driven by hand). */
  async stop (): Promise<void> {
    this.started = false
    clearTimeout(this.timer)
    await this.running?.catch(() => {})
    await this.saveCursor(true).catch(() => {})
    await this.fh?.close().catch(() => {})
    this.fh = null
  }

  private schedule (ms: number): void {
    if (!this.started) return
    this.timer = setTimeout(() => {
      this.running = this.tick().catch((err: Error) => {
        if (err.message !== this.lastError) this.init.log.warn('access log: cannot read Caddy\'s access log; retrying', { path: this.init.path, error: err.message })
        this.lastError = err.message
      }).finally(() => {
        this.running = null
        this.schedule(this.init.pollMs ?? 250)
      })
    }, ms)
  }

  /** Reads what is new; follows a roll. Exposed for tests. */
  async tick (): Promise<void> {
    if (this.fh === null && !await this.reopen()) return
    await this.drain()
    // Rolled: the name now points to a new file. The old one (still open) was read to its end just above.
    const now = await stat(this.init.path).catch(() => null)
    if (now !== null && now.ino !== this.ino) {
      await this.drain()
      await this.fh?.close().catch(() => {})
      this.fh = await open(this.init.path, 'r')
      this.ino = (await this.fh.stat()).ino
      this.offset = 0
      await this.drain()
    }
    await this.saveCursor(false)
    this.lastError = null
  }

  /** Opens the file at the saved position; a file rolled while the agent was down is finished first. */
  private async reopen (): Promise<boolean> {
    const cur = await this.loadCursor()
    const st = await stat(this.init.path).catch(() => null)
    if (st === null) return false
    if (cur !== null && cur.ino !== st.ino) {
      const rolled = await this.findRolled(cur.ino)
      if (rolled !== null) {
        this.fh = await open(rolled, 'r')
        this.ino = cur.ino
        this.offset = cur.offset
        await this.drain()
        await this.fh.close()
      }
    }
    this.fh = await open(this.init.path, 'r')
    this.ino = (await this.fh.stat()).ino
    this.offset = cur !== null && cur.ino === this.ino ? cur.offset : 0
    // Truncated under us (someone emptied it): from the start.
    if ((await this.fh.stat()).size < this.offset) this.offset = 0
    return true
  }

  /** Caddy's rolled files are `NAME-TIME.EXT` beside it. */
  private async findRolled (ino: number): Promise<string | null> {
    const dir = dirname(this.init.path)
    const base = basename(this.init.path).replace(/\.[^.]*$/, '')
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!name.startsWith(`${base}-`)) continue
      const st = await stat(join(dir, name)).catch(() => null)
      if (st?.ino === ino) return join(dir, name)
    }
    return null
  }

  /** Reads complete lines from the position to the end of the open file. */
  private async drain (): Promise<void> {
    const fh = this.fh
    if (fh === null) return
    const buf = Buffer.alloc(CHUNK)
    let partial = Buffer.alloc(0)
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, CHUNK, this.offset + partial.length)
      if (bytesRead === 0) return
      const data = Buffer.concat([partial, buf.subarray(0, bytesRead)])
      const end = data.lastIndexOf(0x0a)
      if (end < 0) {
        // A line longer than a chunk keeps growing `partial`; Caddy's lines are far smaller, so cap it.
        if (data.length > 4 * CHUNK) { this.offset += data.length; partial = Buffer.alloc(0) } else partial = data
        continue
      }
      const lines = data.subarray(0, end).toString('utf8').split('\n').filter(l => l !== '')
      await this.init.onLines(lines)
      this.offset += end + 1
      partial = Buffer.from(data.subarray(end + 1))
    }
  }

  private async loadCursor (): Promise<Cursor | null> {
    try {
      const c = JSON.parse(await readFile(this.init.cursorFile, 'utf8')) as Partial<Cursor>
      if (typeof c.ino === 'number' && typeof c.offset === 'number' && c.offset >= 0) return { ino: c.ino, offset: c.offset }
    } catch {}
    return null
  }

  private async saveCursor (force: boolean): Promise<void> {
    const text = JSON.stringify({ ino: this.ino, offset: this.offset })
    if (this.ino === 0 || text === this.saved) return
    if (!force && Date.now() - this.savedAt < CURSOR_EVERY_MS) return
    await writeFile(`${this.init.cursorFile}.tmp`, text, { mode: 0o600 })
    await rename(`${this.init.cursorFile}.tmp`, this.init.cursorFile)
    this.saved = text
    this.savedAt = Date.now()
  }
}
