/**
 * Asking the owner for an app's permissions, for `dcloud app install` and
 * `dcloud restore`: the same words, flags and refusals for both.
 */
import { createInterface } from 'node:readline/promises'
import type { AppManifest } from '../../proto/app.ts'
import { checkGrants, requestedPermissions, type StorageRequest } from '../../proto/permissions.ts'
import { ValidationError } from '../../proto/validate.ts'
import { EXIT, UserError } from '../util/errors.ts'

/**
 * The permissions to send with an install or a restore: what `--grant` says (`all`, or
 * names), else the owner's answer on a terminal. Without either (a script,
 * or `--yes` alone), an app that asks for any is refused here with the
 * `--grant` it needs; the agent refuses it anyway.
 */
export async function askGrants (manifest: AppManifest, given: string[], yes: boolean, storage?: StorageRequest, verb = 'installed'): Promise<string[]> {
  const requested = requestedPermissions(manifest, storage)
  if (requested.length === 0) return []
  const lines = requested.map(p => `  ${p.name.padEnd(28)} ${p.dangerous ? '!! ' : ''}${manifest.name} asks to ${p.description}`)
  const named = given.flatMap(g => g.split(',')).map(g => g.trim()).filter(g => g !== '')
  if (named.length > 0) {
    if (named.includes('all')) return requested.map(p => p.name)
    try {
      checkGrants(manifest, named, '--grant', true, storage)
    } catch (err) {
      if (err instanceof ValidationError) throw new UserError(err.message, { exitCode: EXIT.usage, hint: `${manifest.name} asks for:\n${lines.join('\n')}` })
      throw err
    }
    return [...new Set(named)].sort()
  }
  const all = requested.map(p => p.name).join(',')
  if (yes || !process.stdin.isTTY) {
    throw new UserError(`${manifest.name} asks for permissions that were not granted:\n${lines.join('\n')}`, { exitCode: EXIT.usage, hint: `grant them with --grant ${all} (or --grant all); --yes grants none` })
  }
  process.stderr.write(`${manifest.name} asks for these permissions (!! = it takes the node itself):\n${lines.join('\n')}\n`)
  const rl = createInterface({ input: process.stdin, output: process.stderr })
  const answer = await rl.question('Grant them all? [y/N] ').finally(() => { rl.close() })
  if (!/^y(es)?$/i.test(answer.trim())) throw new UserError(`${manifest.name} was not ${verb}: its permissions were not granted`, { exitCode: EXIT.usage, hint: `grant some with --grant NAME,… (it installs only with every permission it asks for: ${all})` })
  return requested.map(p => p.name)
}

