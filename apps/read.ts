/** Reading values of parsed YAML or JSON, naming the field when they are not what compose allows. */
import { ValidationError, isRecord } from '../proto/validate.ts'

/** A value that asks for nothing: `privileged: false`, `cap_add: []`. */
export function isDefaultValue (v: unknown): boolean {
  return v === false || v === null || (Array.isArray(v) && v.length === 0) || (isRecord(v) && Object.keys(v).length === 0)
}

/** A scalar as compose reads it: numbers and booleans become their text. */
export function scalar (v: unknown, field: string): string {
  if (typeof v === 'string') return v
  if (typeof v === 'number' || typeof v === 'boolean') return String(v)
  throw new ValidationError(field, 'must be a string')
}


export function list (v: unknown, field: string, max = 1024): unknown[] {
  if (!Array.isArray(v)) throw new ValidationError(field, 'must be a list')
  if (v.length > max) throw new ValidationError(field, `more than ${max} items`)
  return v
}

export function bool (v: unknown, field: string): boolean {
  if (typeof v === 'boolean') return v
  if (v === 'true') return true
  if (v === 'false') return false
  throw new ValidationError(field, 'must be true or false')
}
