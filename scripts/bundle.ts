/**
 * scripts/bundle.sh: makes the agent bundle that scripts/install.sh and
 * `dcloud flash` install from (see agent/install/bundle.ts for what is in it).
 */
import { parseArgs } from 'node:util'
import { debianArch, fileSize, makeBundle, type BundleArch } from '../agent/install/bundle.ts'
import { bytes } from '../agent/cli/format.ts'
import { UsageError, UserError } from '../agent/util/errors.ts'

const help = `scripts/bundle.sh [--arch amd64|arm64] -o FILE [--node-tarball TGZ]
  Packs this checkout's agent, its production node_modules and Node for ARCH
  (default: this machine's) into FILE (.tar.gz) for scripts/install.sh --bundle
  and dcloud flash --bundle. Node for another CPU is fetched once with
  \`npm pack node-linux-ARCH\`; --node-tarball gives that tarball offline.`

async function main (argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      arch: { type: 'string' },
      out: { type: 'string', short: 'o' },
      'node-tarball': { type: 'string' },
      quiet: { type: 'boolean', short: 'q', default: false },
      help: { type: 'boolean', short: 'h', default: false }
    }
  })
  if (values.help === true) { process.stdout.write(help + '\n'); return 0 }
  if (values.out === undefined) throw new UsageError('-o FILE is required', 'e.g. scripts/bundle.sh --arch arm64 -o dcloud-arm64.tar.gz')
  const arch = values.arch ?? debianArch()
  if (arch !== 'amd64' && arch !== 'arm64') throw new UsageError(`--arch ${arch}: expected amd64 or arm64`)
  const started = Date.now()
  const info = await makeBundle({
    arch: arch as BundleArch,
    out: values.out,
    nodeTarball: values['node-tarball'],
    progress: values.quiet === true ? undefined : (l) => { process.stderr.write(`bundle: ${l}\n`) }
  })
  process.stdout.write(`${values.out}: ${info.name} ${info.version} for ${info.arch} (${info.layout}), Node ${info.node}, ${bytes(await fileSize(values.out))} (${((Date.now() - started) / 1000).toFixed(1)} s)\n`)
  return 0
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code }, (err: unknown) => {
  if (err instanceof UserError) {
    process.stderr.write(`bundle: ${err.message}\n`)
    if (err.hint !== undefined) process.stderr.write(`  ${err.hint}\n`)
    process.exitCode = err.exitCode
    return
  }
  const e = err as Error & { code?: string }
  if (typeof e.code === 'string' && e.code.startsWith('ERR_PARSE_ARGS')) {
    process.stderr.write(`bundle: ${e.message}\n${help}\n`)
    process.exitCode = 64
    return
  }
  process.stderr.write(`bundle: internal error: ${e.stack ?? String(err)}\n`)
  process.exitCode = 70
})
