#!/bin/sh
# Dentropy Cloud's first boot on a Raspberry Pi whose card `dcloud flash` wrote.
#
#   firstboot.sh stage [--start]
#       Run as root from the card (by cloud-init's runcmd, or by firstrun.sh on
#       older images). Copies the agent bundle, the cluster key and the agent's
#       settings into /var/lib/dcloud-firstboot (root only), deletes them from
#       the card, and enables dcloud-firstboot.service; --start starts it now.
#   firstboot.sh install
#       Run by dcloud-firstboot.service once the network is up (Docker and
#       restic come from the Pi's apt sources). Runs the bundle's install.sh;
#       when it succeeds the service disables itself and the staging goes.
#       Until then it retries, at every boot too.
#
# The boot partition is FAT: no permissions, every file on it is readable by
# every user once it is mounted. So the key leaves it at the very first step,
# and if the card still holds a Wi-Fi key (cloud-init's network-config) the
# partition is mounted root-only (fmask=0077) from then on.
set -eu

STAGE=/var/lib/dcloud-firstboot
UNIT=/etc/systemd/system/dcloud-firstboot.service
WANTS=/etc/systemd/system/multi-user.target.wants/dcloud-firstboot.service

log() {
  echo "dcloud-firstboot: $*"
  logger -t dcloud-firstboot -- "$*" 2>/dev/null || true
}

# Adds fmask/dmask to the boot partition's line in /etc/fstab, so that from the
# next mount on only root can read it. Prints the mount point when it changed.
restrict_boot_mount() {
  boot=$1
  [ -f /etc/fstab ] || return 0
  awk -v mp="$boot" '$2 == mp && $3 == "vfat" && $4 !~ /fmask=/ { found = 1 } END { exit !found }' /etc/fstab || return 0
  awk -v mp="$boot" 'BEGIN { OFS = "\t" } $2 == mp && $3 == "vfat" && $4 !~ /fmask=/ { $4 = $4 ",fmask=0077,dmask=0077" } { print }' /etc/fstab >/etc/fstab.dcloud-new
  chmod 644 /etc/fstab.dcloud-new
  mv /etc/fstab.dcloud-new /etc/fstab
  echo "$boot"
}

stage() {
  src=$(cd "$(dirname "$0")" && pwd)
  boot=$(dirname "$src")
  start=0
  [ "${1:-}" = "--start" ] && start=1
  umask 077
  mkdir -p "$STAGE"
  chmod 700 "$STAGE"
  for f in bundle.tar.gz agent.env cluster.key firstboot.sh dcloud-firstboot.service; do
    if [ -f "$src/$f" ]; then
      cp "$src/$f" "$STAGE/$f.tmp"
      mv "$STAGE/$f.tmp" "$STAGE/$f"
    fi
  done
  [ -f "$STAGE/bundle.tar.gz" ] || { log "no bundle.tar.gz in $src; nothing to install"; exit 66; }
  # The secret first, then the rest of our directory: all of it is staged now.
  rm -f "$src/cluster.key"
  rm -rf "$src"
  sync
  if [ -f "$boot/network-config" ] && grep -q 'password:' "$boot/network-config"; then
    if [ -n "$(restrict_boot_mount "$boot")" ]; then
      echo "$boot" >"$STAGE/remount"
      log "the card holds the Wi-Fi key: $boot is mounted root-only from now on"
    fi
  fi
  install -m 0644 "$STAGE/dcloud-firstboot.service" "$UNIT"
  # Without a running systemd (firstrun.sh runs early) enable still works; it only links.
  systemctl enable dcloud-firstboot.service 2>/dev/null || { mkdir -p "$(dirname "$WANTS")"; ln -sf "$UNIT" "$WANTS"; }
  log "staged the agent in $STAGE; dcloud-firstboot.service installs it once the network is up"
  if [ "$start" -eq 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl start --no-block dcloud-firstboot.service
  fi
}

install_agent() {
  cd "$STAGE"
  rm -rf "$STAGE/dcloud"
  tar -xzf bundle.tar.gz dcloud/scripts/install.sh
  set -- --bundle "$STAGE/bundle.tar.gz"
  [ -f cluster.key ] && set -- "$@" --key-file "$STAGE/cluster.key"
  [ -f agent.env ] && set -- "$@" --config "$STAGE/agent.env"
  # More install.sh options, e.g. --no-start when an image builder runs this in a chroot.
  # shellcheck disable=SC2086
  set -- "$@" ${DCLOUD_INSTALL_ARGS:-}
  log "installing the agent: install.sh $*"
  bash "$STAGE/dcloud/scripts/install.sh" "$@"
  if [ -f remount ]; then
    boot=$(cat remount)
    # Apply the root-only mount now if nothing holds the partition; else at the next boot.
    if umount "$boot" 2>/dev/null; then mount "$boot" || log "could not mount $boot again; it comes back at the next boot"; fi
  fi
  systemctl disable dcloud-firstboot.service 2>/dev/null || rm -f "$WANTS"
  rm -f "$UNIT"
  cd /
  rm -rf "$STAGE"
  systemctl daemon-reload 2>/dev/null || true
  log "the agent is installed; this was the last run of dcloud-firstboot"
}

case ${1:-} in
  stage) shift; stage "$@" ;;
  install) install_agent ;;
  *) echo "usage: firstboot.sh stage [--start] | install" >&2; exit 64 ;;
esac
