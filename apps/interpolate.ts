/**
 * Variable interpolation as the compose spec defines it: `$VAR`, `${VAR}`,
 * `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`,
 * `${VAR:+replacement}`, `${VAR+replacement}`, nesting inside the default
 * (`${A:-${B}}`) and `$$` for a literal dollar. A `$` followed by neither a
 * name nor `{` stays as written (`exit $?`), as the spec says.
 *
 * One difference from docker compose, on purpose: a variable that is not set
 * and has no default is an error naming it, not a silent empty string. An app
 * that starts with an empty database password is worse than one that does not
 * start.
 */
import { ValidationError } from '../proto/validate.ts'

/** Returns the variable's value, or undefined when it is not set. */
export type Lookup = (name: string) => string | undefined

export interface InterpolateOptions {
  /**
   * Variables that may stay unset: a bare `${VAR}` becomes "" instead of an
   * error (defaults still apply, as for any unset variable). Runtipi's
   * optional form fields are such variables.
   */
  optional?: (name: string) => boolean
}

export class UnsetVariableError extends ValidationError {
  override name = 'UnsetVariableError'
  readonly variable: string

  constructor (field: string, variable: string, problem = `variable ${variable} is not set: give it a value (--set ${variable}=…; empty is allowed) or a default in the file (\${${variable}:-…})`) {
    super(field, problem)
    this.variable = variable
  }
}

const NAME = /^[A-Za-z_][A-Za-z0-9_]*/

export function interpolate (text: string, lookup: Lookup, field: string, opts: InterpolateOptions = {}): string {
  let out = ''
  let i = 0
  while (i < text.length) {
    const at = text.indexOf('$', i)
    if (at === -1) return out + text.slice(i)
    out += text.slice(i, at)
    const next = text[at + 1]
    if (next === '$') {
      out += '$'
      i = at + 2
    } else if (next === '{') {
      const end = closingBrace(text, at + 2)
      if (end === -1) throw new ValidationError(field, `unterminated "\${" in "${clip(text)}"; write $$ for a literal $`)
      out += braced(text.slice(at + 2, end), lookup, field, opts)
      i = end + 1
    } else {
      const name = NAME.exec(text.slice(at + 1))?.[0]
      if (name === undefined) {
        // The spec: a "$" that starts neither a name nor "${" is kept as it is
        // (a shell's "$?" in a healthcheck, a price of "$5").
        out += '$'
        i = at + 1
        continue
      }
      out += bare(name, lookup, field, opts)
      i = at + 1 + name.length
    }
  }
  return out
}

/** Index of the "}" closing a "${" whose body starts at `from`, or -1. */
function closingBrace (text: string, from: number): number {
  let depth = 0
  for (let i = from; i < text.length; i++) {
    const c = text[i]
    if (c === '$' && text[i + 1] === '$') {
      i++
    } else if (c === '$' && text[i + 1] === '{') {
      depth++
      i++
    } else if (c === '}') {
      if (depth === 0) return i
      depth--
    }
  }
  return -1
}

function bare (name: string, lookup: Lookup, field: string, opts: InterpolateOptions): string {
  const value = lookup(name)
  if (value !== undefined) return value
  if (opts.optional?.(name) === true) return ''
  throw new UnsetVariableError(field, name)
}

function braced (body: string, lookup: Lookup, field: string, opts: InterpolateOptions): string {
  const name = NAME.exec(body)?.[0]
  if (name === undefined) throw new ValidationError(field, `invalid interpolation "\${${clip(body)}}"`)
  const rest = body.slice(name.length)
  if (rest === '') return bare(name, lookup, field, opts)
  const value = lookup(name)
  const op = /^(:-|-|:\?|\?|:\+|\+)/.exec(rest)?.[0]
  if (op === undefined) throw new ValidationError(field, `invalid interpolation "\${${clip(body)}}"`)
  // The argument is only interpolated when used, as in the shell: a default
  // that names an unset variable is harmless while the variable is set.
  const arg = (): string => interpolate(rest.slice(op.length), lookup, field, opts)
  const empty = value === undefined || value === ''
  switch (op) {
    case ':-': return empty ? arg() : value
    case '-': return value === undefined ? arg() : value
    case ':?':
    case '?':
      if (op === ':?' ? empty : value === undefined) throw new UnsetVariableError(field, name, `variable ${name} is required: ${arg() || 'not set'}`)
      return value as string
    case ':+': return empty ? '' : arg()
    default: return value === undefined ? '' : arg()
  }
}

function clip (s: string): string {
  return s.length > 40 ? `${s.slice(0, 40)}…` : s
}

/**
 * Interpolates every string value (never a key) in parsed YAML or JSON.
 * Extension fields (`x-…`) are left alone: they hold store metadata, free
 * text where a "$5" is a price, not a variable.
 */
export function interpolateValues (value: unknown, lookup: Lookup, field: string, opts: InterpolateOptions = {}): unknown {
  if (typeof value === 'string') return interpolate(value, lookup, field, opts)
  if (Array.isArray(value)) return value.map((v, i) => interpolateValues(v, lookup, `${field}[${i}]`, opts))
  if (typeof value === 'object' && value !== null) {
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(value)) {
      const v2 = k.startsWith('x-') ? v : interpolateValues(v, lookup, field === '' ? k : `${field}.${k}`, opts)
      // defineProperty, so a "__proto__" key stays a key the validator can refuse.
      Object.defineProperty(out, k, { value: v2, enumerable: true, writable: true, configurable: true })
    }
    return out
  }
  return value
}

/** Escapes a literal for a compose file: "$" becomes "$$". */
export function escapeDollars (s: string): string {
  return s.replaceAll('$', '$$$$')
}
