/** Writing benchmark results into docs/benchmarks.md, one section per benchmark, the others left as they are. */
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { PROJECT_ROOT } from '../../agent/config.ts'

const FILE = join(PROJECT_ROOT, 'docs', 'benchmarks.md')

export async function writeBenchSection (id: string, title: string, body: string): Promise<void> {
  let text = ''
  try { text = await readFile(FILE, 'utf8') } catch {}
  if (text === '') text = '# Benchmarks\n\nWritten by `npm run bench:*`; each section is replaced by its own benchmark\'s latest run.\n'
  const start = `<!-- bench:${id}:start -->`
  const end = `<!-- bench:${id}:end -->`
  const section = `${start}\n## ${title}\n\n${body}\n${end}`
  const from = text.indexOf(start)
  const to = text.indexOf(end)
  text = from !== -1 && to > from ? text.slice(0, from) + section + text.slice(to + end.length) : `${text.trimEnd()}\n\n${section}\n`
  await writeFile(FILE, text)
}

export function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[mid]! : ((s[mid - 1]! + s[mid]!) / 2)
}

export function fmtMs (ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`
}

/** What went wrong in a run, as the end of its section: a benchmark reports a product failure instead of throwing. */
export function problemLines (problems: string[]): string[] {
  return problems.length > 0 ? ['', 'Problems in this run:', '', ...problems.map(p => `- ${p.replace(/\n/g, ' ')}`)] : []
}
