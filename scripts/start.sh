#!/bin/sh
# `npm start`: a one-node cluster in the foreground, on this machine's Docker
# engine: the front door (Debian's Caddy, started with nothing but its admin
# API on a Unix socket, as dcloud-caddy.service starts it) and the agent, which
# configures it. Apps are reached at https://NAME.DOMAIN through the front
# door only: their web ports are not published on the node.
#
#   scripts/start.sh [AGENT_ARGS...]      (npm start -- --no-mdns)
#
# Environment: DCLOUD_CADDY_ADMIN, the admin socket (default
# /run/dcloud-caddy/admin.sock, where the agent looks for it with the system
# data directory). A Caddy already answering there (dcloud-caddy.service on an
# installed node) is used as it is. The agent's --https-port and --http-port
# (default 443 and 80) are where the front door listens.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
"$here/setup.sh" --docker

socket=${DCLOUD_CADDY_ADMIN:-/run/dcloud-caddy/admin.sock}
caddy_pid=
if ! curl -s --max-time 2 --unix-socket "$socket" -o /dev/null http://localhost/config/ 2>/dev/null; then
  dir=$(dirname "$socket")
  mkdir -p "$dir" && chmod 0750 "$dir"
  rm -f "$socket"
  boot="$dir/bootstrap.json"
  printf '{"admin": {"listen": "unix/%s", "config": {"persist": false}}}\n' "$socket" > "$boot"
  HOME="$dir" XDG_DATA_HOME="$dir/data" XDG_CONFIG_HOME="$dir/config" caddy run --config "$boot" 2>>"$dir/caddy.log" &
  caddy_pid=$!
  # Stopped with the agent (or if this script fails): nothing of npm start outlives it.
  trap 'kill "$caddy_pid" 2>/dev/null || true' EXIT
  tries=0
  until curl -s --max-time 1 --unix-socket "$socket" -o /dev/null http://localhost/config/ 2>/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -ge 50 ] || ! kill -0 "$caddy_pid" 2>/dev/null; then echo "npm start: Caddy did not start; see $dir/caddy.log" >&2; exit 69; fi
    sleep 0.1
  done
fi
"$here/../bin/dcloud" agent --caddy-admin "$socket" "$@" &
agent=$!
# Ctrl-C or a TERM stops the agent (a background job ignores SIGINT itself), then Caddy.
trap 'kill -TERM "$agent" 2>/dev/null || true' INT TERM
status=0
wait "$agent" || status=$?
# A trapped signal ends `wait` early: wait for the agent's own end.
while kill -0 "$agent" 2>/dev/null; do wait "$agent" || status=$?; done
exit "$status"
