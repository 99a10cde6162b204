#!/bin/sh
# Bundles the CLI and agent into one minified ES module, dist/dcloud.mjs.
# Why: the idle agent's memory. Node's type stripping and loading some four
# hundred separate modules cost about 35 MB of resident memory that one
# bundled file does not (docs/benchmarks.md). bin/dcloud rebuilds it whenever a
# source file is newer; the build takes a fraction of a second.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/dist"
# bundle ENTRY OUT: one minified ES module, written atomically.
bundle() {
  tmp="$2.$$.tmp"
  trap 'rm -f "$tmp"' EXIT
  "$root/node_modules/.bin/esbuild" "$1" \
    --bundle --platform=node --format=esm --target=node22 --minify --log-level=warning \
    --alias:ssh2="$root/agent/runtime/no-ssh.ts" --external:cpu-features \
    --banner:js="import { createRequire as __dcloudRequire } from 'node:module'; const require = __dcloudRequire(import.meta.url);" \
    --outfile="$tmp"
  mv -f "$tmp" "$2"
}
# The watchdog first: bin/dcloud rebuilds when a source is newer than dcloud.mjs, written last.
# It is a bundle of its own so that it loads a few kilobytes, not the agent's libp2p.
bundle "$root/agent/fence/watchdog-main.ts" "$root/dist/watchdog.mjs"
bundle "$root/agent/cli/main.ts" "$root/dist/dcloud.mjs"
