/**
 * `dcloud install`: scripts/install.sh of this installation, for a machine
 * that already has the project (a checkout, or /opt/dcloud). The shell script
 * is the one implementation, because a fresh Pi or server runs it before
 * there is any Node to run us.
 */
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { PROJECT_ROOT } from '../../config.ts'
import { UserError, EXIT } from '../../util/errors.ts'

export const installHelp = `dcloud install [options]          (as root; runs scripts/install.sh)
dcloud install --uninstall [--purge]
  Installs this agent as the systemd service dcloud.service: Docker and restic
  from apt when missing, the agent and Node in /opt/dcloud, a \`dcloud\` system
  user in the docker group, the cluster key and /etc/dcloud/agent.env. Running
  it again changes nothing unless something differs.

  --bundle FILE       install this bundle instead of this checkout (scripts/bundle.sh)
  --key-file FILE     the cluster key to join (default: keep the installed one, or
                      make a new one: a new cluster)
  --replace-key       let --key-file replace a different installed key
  --name NAME         the node's name (default: the host name)
  --label KEY=VALUE   a label for this node (repeatable)
  --peer MULTIADDR    a node to dial where mDNS does not reach (repeatable)
  --config FILE       install FILE as /etc/dcloud/agent.env
  --no-deps           do not install Docker or restic
  --no-start          do not start services (chroots, image builds)
  --uninstall         remove the agent; keeps /var/lib/dcloud and /etc/dcloud
  --purge             with --uninstall: remove those and the dcloud user too`

export async function installCommand (argv: string[]): Promise<number> {
  const script = join(PROJECT_ROOT, 'scripts', 'install.sh')
  if (!existsSync(script)) throw new UserError(`this installation has no ${script}`, { exitCode: EXIT.software })
  if (process.getuid?.() !== 0) {
    throw new UserError('dcloud install must run as root (it installs packages, a user and a service)', { exitCode: EXIT.noPermission, hint: `sudo ${script} ${argv.join(' ')}`.trimEnd() })
  }
  return await new Promise<number>((resolve) => {
    const child = spawn('bash', [script, ...argv], { stdio: 'inherit' })
    child.on('error', (err) => { process.stderr.write(`dcloud: cannot run ${script}: ${err.message}\n`); resolve(EXIT.unavailable) })
    child.on('exit', (code, signal) => { resolve(code ?? (signal !== null ? 128 + 15 : 1)) })
  })
}
