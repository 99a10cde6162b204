/**
 * Every command's arguments, parsed strictly: node:util parseArgs in strict
 * mode, then exactly the positionals the command names. An unknown option or
 * an argument too many is a usage error (exit 64) that says which, never
 * ignored: `dcloud app move notes n2 --dry-run` once read argv by position
 * and really moved the app.
 *
 * Commands parse first and do I/O after, so a usage error never leaves
 * anything half done (test/unit/cli-args.test.ts runs every command with bad
 * arguments and no agent).
 */
import { parseArgs, type ParseArgsOptionsConfig } from 'node:util'
import { UsageError } from '../util/errors.ts'

export interface CommandArgs<O extends ParseArgsOptionsConfig, P extends readonly string[]> {
  /** The command line shown in errors, e.g. `dcloud app move NAME NODE`. */
  usage: string
  options?: O
  /** The positionals the command needs, in order, by name (NAME, NODE): exactly these many. */
  args?: P
  /** Takes any number of further positionals (`rest`), each named so in the usage. */
  rest?: string
}

type Values<O extends ParseArgsOptionsConfig> = ReturnType<typeof parseArgs<{ args: string[], options: O, strict: true, allowPositionals: true }>>['values']

export interface Parsed<O extends ParseArgsOptionsConfig, P extends readonly string[]> {
  values: Values<O>
  /** The named positionals, in order. */
  args: { readonly [K in keyof P]: string }
  rest: string[]
}

export function parseCommand<const O extends ParseArgsOptionsConfig = Record<never, never>, const P extends readonly string[] = readonly []> (argv: readonly string[], spec: CommandArgs<O, P>): Parsed<O, P> {
  // `dcloud app move NAME NODE` -> `dcloud app move`: the words before the first argument.
  const words = spec.usage.split(' ')
  const firstArg = words.findIndex(w => !/^[a-z][a-z-]*$/.test(w))
  const command = firstArg === -1 ? spec.usage : words.slice(0, firstArg).join(' ')
  const hint = `usage: ${spec.usage}; see \`${command} --help\``
  let parsed
  try {
    parsed = parseArgs({ args: [...argv], options: spec.options ?? ({} as O), strict: true, allowPositionals: true })
  } catch (err) {
    throw new UsageError(parseError(err), hint)
  }
  const names = spec.args ?? ([] as unknown as P)
  const positionals = parsed.positionals
  if (positionals.length < names.length) throw new UsageError(`missing ${names.slice(positionals.length).join(' ')}`, hint)
  if (positionals.length > names.length && spec.rest === undefined) {
    throw new UsageError(`unexpected argument${positionals.length - names.length > 1 ? 's' : ''} ${positionals.slice(names.length).map(p => `'${p}'`).join(' ')}`, hint)
  }
  return {
    values: parsed.values as Values<O>,
    args: positionals.slice(0, names.length) as unknown as { readonly [K in keyof P]: string },
    rest: positionals.slice(names.length)
  }
}

/** parseArgs' message, short: `unknown option '--dry-run'`, `option '--tail <value>' argument missing`. */
function parseError (err: unknown): string {
  const e = err as Error & { code?: string }
  if (typeof e.code !== 'string' || !e.code.startsWith('ERR_PARSE_ARGS')) throw err
  const unknown = /^Unknown option '([^']*)'/.exec(e.message)
  if (unknown !== null) return `unknown option '${unknown[1] ?? ''}'`
  const first = e.message.split('\n')[0] ?? e.message
  return first.charAt(0).toLowerCase() + first.slice(1).replace(/\.$/, '')
}

/** A whole number in [min, max] given as an option's value, or a usage error naming the option. */
export function intOption (value: string | undefined, name: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined
  const n = Number(value)
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${name} ${value}: expected a whole number from ${min} to ${max}`)
  return n
}
