/**
 * Debian packages an integration test needs. CI starts from a fresh machine,
 * so a test installs what it uses rather than assuming it: `await
 * need(['mtools'])` installs the missing ones with apt-get (running
 * `apt-get update` once if apt does not know a package yet), and fails with
 * a clear message when it cannot (not root, no apt).
 */
import { execFile } from 'node:child_process'
import { existsSync, writeFileSync, mkdirSync } from 'node:fs'

interface Result { code: number, out: string }

async function sh (cmd: string, args: string[], timeoutMs = 600_000): Promise<Result> {
  return await new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 32 * 1024 * 1024, env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 127
      resolve({ code, out: `${String(stdout)}${String(stderr)}` })
    })
  })
}

export async function isInstalled (pkg: string): Promise<boolean> {
  const r = await sh('dpkg-query', ['-W', '-f=${Status}', pkg])
  return r.code === 0 && r.out.includes('install ok installed')
}

/** Post-install steps that keep a package from changing this machine beyond the test. */
const AFTER_INSTALL: Record<string, () => void> = {
  // Installed only for `cloud-init schema`; it must never configure this machine at its next boot.
  'cloud-init': () => {
    mkdirSync('/etc/cloud', { recursive: true })
    if (!existsSync('/etc/cloud/cloud-init.disabled')) writeFileSync('/etc/cloud/cloud-init.disabled', 'disabled by the dcloud test suite: installed only for `cloud-init schema`\n')
  }
}

let updated = false

export async function need (packages: string[]): Promise<void> {
  const missing: string[] = []
  for (const p of packages) if (!(await isInstalled(p))) missing.push(p)
  if (missing.length > 0) await install(missing)
  // Only for packages we installed: a machine that already had them keeps its own settings.
  for (const p of missing) AFTER_INSTALL[p]?.()
}

async function install (missing: string[]): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw new Error(`this test needs the Debian packages ${missing.join(', ')}; run it as root (it installs them) or install them: sudo apt-get install -y ${missing.join(' ')}`)
  }
  if (!existsSync('/usr/bin/apt-get')) throw new Error(`this test needs ${missing.join(', ')} and this machine has no apt-get`)
  const attempt = async (): Promise<Result> => await sh('apt-get', ['-q', '-o', 'Dpkg::Use-Pty=0', 'install', '-y', '--no-install-recommends', ...missing])
  let r = await attempt()
  if (r.code !== 0 && !updated) {
    updated = true
    await sh('apt-get', ['-q', 'update'])
    r = await attempt()
  }
  if (r.code !== 0) throw new Error(`apt-get install ${missing.join(' ')} failed (exit ${r.code}):\n${r.out.split('\n').slice(-15).join('\n')}`)
}
