/**
 * dcloud: one command for the agent, the cluster and the lab.
 * Exit codes follow sysexits(3): 64 usage, 69 unavailable, 78 config, ...
 */
import { agentCommand, agentHelp } from './commands/agent.ts'
import { initCommand, initHelp } from './commands/init.ts'
import { statusCommand, statusHelp } from './commands/status.ts'
import { appCommand, appHelp } from './commands/app.ts'
import { flashCommand, flashHelp } from './commands/flash.ts'
import { installCommand, installHelp } from './commands/install.ts'
import { backupCommand, backupHelp, restoreCommand, restoreHelp, snapshotCommand, snapshotHelp } from './commands/snapshot.ts'
import { nodeCommand, nodeHelp } from './commands/node.ts'
import { domainCommand, domainHelp } from './commands/domain.ts'
import { dnsServerCommand, dnsServerHelp } from './commands/dns-server.ts'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { AGENT_VERSION, PROJECT_ROOT } from '../config.ts'
import { EXIT, UserError, isUserError } from '../util/errors.ts'
import { parseCommand } from './args.ts'

interface Command {
  run: (argv: string[]) => Promise<number>
  /** A function for commands loaded on demand. */
  help: string | (() => Promise<string>)
  summary: string
}

/**
 * The lab (and its chaos runs) is a tool, not part of the agent: loaded only
 * when asked for, from the checkout's sources (Node strips their types). The
 * specifier is computed so that the bundler leaves it out of dist/dcloud.mjs
 * (test/unit/cli-bundle.test.ts): an installed agent carries no lab.
 */
const LAB_ENTRY = join(PROJECT_ROOT, 'scripts', 'lab', 'cli.ts')
const loadLab = async (): Promise<typeof import('../../scripts/lab/cli.ts')> => {
  if (!existsSync(LAB_ENTRY)) throw new UserError(`the lab is not part of this installation (no ${LAB_ENTRY})`, { exitCode: EXIT.unavailable, hint: 'run `dcloud lab` from a checkout of dcloud (git clone, then npm ci)' })
  return await import(pathToFileURL(LAB_ENTRY).href) as typeof import('../../scripts/lab/cli.ts')
}

const commands: Record<string, Command> = {
  agent: { run: agentCommand, help: agentHelp, summary: 'run this node\'s agent' },
  init: { run: initCommand, help: initHelp, summary: 'create a new cluster key' },
  status: { run: statusCommand, help: statusHelp, summary: 'show the cluster\'s nodes' },
  app: { run: appCommand, help: appHelp, summary: 'install, list, move and remove apps' },
  snapshot: { run: snapshotCommand, help: snapshotHelp, summary: 'take, list and restore snapshots of an app\'s data' },
  backup: { run: backupCommand, help: backupHelp, summary: 'write an app and its data into one file' },
  restore: { run: restoreCommand, help: restoreHelp, summary: 'bring an app back from a backup file, on any cluster' },
  node: { run: nodeCommand, help: nodeHelp, summary: 'drain a node of its apps, or take it back' },
  domain: { run: domainCommand, help: domainHelp, summary: 'the cluster\'s domain (apps are NAME.DOMAIN) and its CA root' },
  'dns-server': { run: dnsServerCommand, help: dnsServerHelp, summary: 'answer DNS for the cluster\'s domain (dcloud-dns.service runs it)' },
  install: { run: installCommand, help: installHelp, summary: 'install this agent as a service on this machine' },
  flash: { run: flashCommand, help: flashHelp, summary: 'make a Raspberry Pi SD card or image join the cluster at first boot' },
  lab: { run: async (argv) => await (await loadLab()).labCommand(argv), help: async () => (await loadLab()).labHelp, summary: 'a cluster of namespaced nodes on this machine; chaos runs' },
  version: { run: async (argv) => { parseCommand(argv, { usage: 'dcloud version' }); process.stdout.write(`dcloud ${AGENT_VERSION}\n`); return 0 }, help: 'dcloud version', summary: 'print the version' }
}

function usage (): string {
  const lines = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
  return `usage: dcloud COMMAND [options]\n\n${lines.join('\n')}\n\n'dcloud COMMAND --help' for a command's options.\n`
}

async function main (argv: string[]): Promise<number> {
  const [name, ...rest] = argv
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage())
    return name === undefined ? EXIT.usage : 0
  }
  if (name === '--version') return await commands.version!.run([])
  const command = commands[name]
  if (command === undefined) {
    process.stderr.write(`dcloud: unknown command '${name}'\n\n${usage()}`)
    return EXIT.usage
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write((typeof command.help === 'string' ? command.help : await command.help()) + '\n')
    return 0
  }
  return await command.run(rest)
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code }, (err: unknown) => {
  // isUserError: the lab's errors come from its own copy of errors.ts (it is loaded from the sources, not the bundle).
  if (isUserError(err)) {
    process.stderr.write(`dcloud: ${err.message}\n`)
    if (err.hint !== undefined) process.stderr.write(`  ${err.hint}\n`)
    process.exitCode = err.exitCode
    return
  }
  const e = err as Error
  process.stderr.write(`dcloud: internal error: ${e.stack ?? String(err)}\n`)
  process.exitCode = EXIT.software
})
