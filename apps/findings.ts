/**
 * What validation finds besides outright errors. Warnings: accepted, but not
 * honoured as written. Refusals: well-formed, but the runtime cannot honour
 * them; collected so one message lists them all.
 */
import { ValidationError } from '../proto/validate.ts'

/**
 * What validation found besides outright errors: warnings (accepted, not
 * honoured as written) and refusals (things the runtime cannot honour).
 * Refusals are collected rather than thrown one at a time, so the user learns
 * every field an app cannot have in one go; the caller throws them together
 * (throwRefusals) once the whole file has been read.
 */
export class Findings {
  readonly warnings: string[] = []
  readonly refusals: Array<{ field: string, problem: string }> = []

  warn (field: string, message: string): void {
    const line = `${field}: ${message}`
    if (!this.warnings.includes(line)) this.warnings.push(line)
  }

  refuse (field: string, problem: string): void {
    if (!this.refusals.some(r => r.field === field)) this.refusals.push({ field, problem })
  }

  /** Runs `fn`, recording an Unsupported it throws as a refusal; undefined then. Other errors pass. */
  unsupported<T> (fn: () => T): T | undefined {
    try {
      return fn()
    } catch (err) {
      if (!(err instanceof Unsupported)) throw err
      this.refuse(err.field, problemOf(err))
      return undefined
    }
  }

  throwRefusals (): void {
    if (this.refusals.length > 0) throw new RefusedError(this.refusals)
  }
}

/** Something well-formed the runtime cannot honour: collected as a refusal where the caller can go on. */
export class Unsupported extends ValidationError {
  override name = 'Unsupported'
}

/** The problem part of a ValidationError's message (after "field: "). */
export function problemOf (err: ValidationError): string {
  return err.message.startsWith(`${err.field}: `) ? err.message.slice(err.field.length + 2) : err.message
}

/** Everything the runtime cannot honour in one app, field by field; `field` is the first. */
export class RefusedError extends ValidationError {
  override name = 'RefusedError'
  readonly refusals: Array<{ field: string, problem: string }>

  constructor (refusals: Array<{ field: string, problem: string }>) {
    const [first] = refusals as [{ field: string, problem: string }]
    super(first.field, refusals.length === 1 ? first.problem : `${first.problem}\n${refusals.slice(1).map(r => `  also ${r.field}: ${r.problem}`).join('\n')}`)
    this.refusals = refusals
  }
}
