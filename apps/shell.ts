/**
 * Splits a compose `command:` or `entrypoint:` string into words the way
 * compose does (shell quoting rules, no shell): the words become the
 * container's argv, nothing expands `*`, `$HOME` or `&&`.
 */
import { ValidationError } from '../proto/validate.ts'

export interface SplitResult {
  words: string[]
  /** Shell operators found outside quotes: passed on as plain words, which is rarely what the author meant. */
  operators: string[]
}

const OPERATORS = new Set(['&&', '||', '|', ';', '>', '>>', '<', '&'])

export function splitShellWords (text: string, field: string): SplitResult {
  const words: string[] = []
  const operators: string[] = []
  let word = ''
  let inWord = false
  let i = 0
  const push = (): void => {
    if (!inWord) return
    words.push(word)
    if (OPERATORS.has(word)) operators.push(word)
    word = ''
    inWord = false
  }
  while (i < text.length) {
    const c = text[i] as string
    if (c === ' ' || c === '\t' || c === '\n' || c === '\r') {
      push()
      i++
    } else if (c === '\'') {
      const end = text.indexOf('\'', i + 1)
      if (end === -1) throw new ValidationError(field, 'has an unterminated \' quote')
      word += text.slice(i + 1, end)
      inWord = true
      i = end + 1
    } else if (c === '"') {
      i++
      inWord = true
      for (;;) {
        if (i >= text.length) throw new ValidationError(field, 'has an unterminated " quote')
        const d = text[i] as string
        if (d === '"') { i++; break }
        // Inside double quotes a backslash only escapes what the shell lets it escape.
        if (d === '\\' && i + 1 < text.length && '"\\$`\n'.includes(text[i + 1] as string)) {
          if (text[i + 1] !== '\n') word += text[i + 1] as string
          i += 2
        } else {
          word += d
          i++
        }
      }
    } else if (c === '\\') {
      if (i + 1 >= text.length) throw new ValidationError(field, 'ends with a lone backslash')
      if (text[i + 1] !== '\n') { word += text[i + 1] as string; inWord = true }
      i += 2
    } else {
      word += c
      inWord = true
      i++
    }
  }
  push()
  return { words, operators }
}

/** Quotes argv back into one string that splitShellWords turns into the same words. */
export function joinShellWords (words: string[]): string {
  return words.map(w => /^[A-Za-z0-9_@%+=:,./-]+$/.test(w) ? w : `'${w.replaceAll('\'', '\'\\\'\'')}'`).join(' ')
}
