/**
 * Errors a user can act on. Each has a stable `name` to branch on and an exit
 * code from sysexits(3), so scripts can tell a usage mistake from a missing
 * dependency from a failed peer.
 */
export const EXIT = {
  ok: 0,
  failure: 1,
  usage: 64,
  dataError: 65,
  noInput: 66,
  unavailable: 69,
  software: 70,
  osError: 71,
  cantCreate: 73,
  ioError: 74,
  tempFail: 75,
  protocol: 76,
  noPermission: 77,
  config: 78
} as const

export class UserError extends Error {
  override name = 'UserError'
  readonly exitCode: number
  /** What the user can do about it. */
  readonly hint: string | undefined

  constructor (message: string, opts: { exitCode?: number, hint?: string } = {}) {
    super(message)
    this.exitCode = opts.exitCode ?? EXIT.failure
    this.hint = opts.hint
  }
}

/**
 * Whether `err` is a UserError, from this copy of the module or another (the
 * lab, loaded from the sources beside the bundled CLI, has its own classes).
 */
export function isUserError (err: unknown): err is UserError {
  if (err instanceof UserError) return true
  const e = err as Partial<UserError> | null
  return err instanceof Error && typeof e?.exitCode === 'number' && (e.hint === undefined || typeof e.hint === 'string')
}

export class UsageError extends UserError {
  override name = 'UsageError'

  constructor (message: string, hint?: string) {
    super(message, { exitCode: EXIT.usage, hint })
  }
}

export class AgentUnreachableError extends UserError {
  override name = 'AgentUnreachableError'

  constructor (where: string, cause: string) {
    super(`cannot reach the agent at ${where}: ${cause}`, {
      exitCode: EXIT.unavailable,
      hint: 'start it with `dcloud agent` (or `npm start`), or point DCLOUD_API at a running agent'
    })
  }
}

/** The disk is full (ENOSPC, EDQUOT), or would be: the API answers 507. */
export class NoSpaceError extends UserError {
  override name = 'NoSpaceError'

  constructor (message: string, hint = 'free space on the node and try again; nothing partial was left behind') {
    super(message, { exitCode: EXIT.ioError, hint })
  }
}
