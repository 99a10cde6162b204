#!/bin/sh
# Bundles the CLI and agent into one minified ES module, dist/dcloud.mjs.
# Why: the idle agent's memory. Node's type stripping and loading some four
# hundred separate modules cost about 35 MB of resident memory that one
# bundled file does not (docs/benchmarks.md). bin/dcloud rebuilds it whenever a
# source file is newer; the build takes a fraction of a second.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/dist/dcloud.mjs"
mkdir -p "$root/dist"
tmp="$out.$$.tmp"
trap 'rm -f "$tmp"' EXIT
"$root/node_modules/.bin/esbuild" "$root/agent/cli/main.ts" \
  --bundle --platform=node --format=esm --target=node22 --minify --log-level=warning \
  --alias:ssh2="$root/agent/runtime/no-ssh.ts" --external:cpu-features \
  --banner:js="import { createRequire as __dcloudRequire } from 'node:module'; const require = __dcloudRequire(import.meta.url);" \
  --outfile="$tmp"
mv -f "$tmp" "$out"
