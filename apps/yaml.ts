/**
 * Reading untrusted YAML (compose files from other people's stores). YAML 1.2
 * core schema, as compose uses it: "8080:80" stays a string, `yes` is not a
 * boolean. Merge keys (`<<: *base`) work; duplicate keys, unknown tags and
 * alias bombs are refused before they cost memory.
 */
import { parseDocument } from 'yaml'
import { OversizedError, ValidationError } from '../proto/validate.ts'

/** Larger than any compose file in the stores we import (the biggest is ~120 KiB). */
export const MAX_FILE_BYTES = 1024 * 1024

/**
 * Aliases a document may expand. Compose files use a handful (x-common
 * blocks); "billion laughs" needs thousands.
 */
export const MAX_ALIASES = 200

/**
 * `0440` as an octal number, as compose reads it (go-yaml keeps YAML 1.1's
 * octals): a file mode written the way every compose example writes it. YAML
 * 1.2 alone would read 440, a different mode.
 */
const LEGACY_OCTAL = { identify: () => false, default: true, tag: 'tag:yaml.org,2002:int', format: 'OCT', test: /^0[0-7]+$/, resolve: (s: string) => parseInt(s, 8) }

export function loadYaml (text: string, source: string): unknown {
  const size = Buffer.byteLength(text, 'utf8')
  if (size > MAX_FILE_BYTES) throw new OversizedError(source, size, MAX_FILE_BYTES)
  let doc
  try {
    doc = parseDocument(text, { version: '1.2', merge: true, uniqueKeys: true, prettyErrors: true, customTags: tags => [LEGACY_OCTAL, ...tags] })
  } catch (err) {
    throw new ValidationError(source, `is not valid YAML: ${(err as Error).message}`)
  }
  const problem = doc.errors[0] ?? doc.warnings[0]
  if (problem !== undefined) throw new ValidationError(source, `is not valid YAML: ${firstLine(problem.message)}`)
  try {
    return doc.toJS({ maxAliasCount: MAX_ALIASES })
  } catch (err) {
    // yaml throws ReferenceError for alias bombs; a RangeError would be nesting deep enough to exhaust the stack.
    const msg = (err as Error).message
    if (/alias count/i.test(msg)) throw new ValidationError(source, `expands more than ${MAX_ALIASES} YAML aliases (a "billion laughs" document?)`)
    throw new ValidationError(source, `is not valid YAML: ${firstLine(msg)}`)
  }
}

function firstLine (s: string): string {
  return s.split('\n')[0] ?? s
}
