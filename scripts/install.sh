#!/bin/bash
# Installs the Dentropy Cloud agent on this machine as a systemd service.
# Debian 12+, Ubuntu 22.04+ and Raspberry Pi OS (64-bit), amd64 or arm64.
# See docs/install.md; `scripts/install.sh --help` for the options.
#
# What it does, each step only when needed (a second run changes nothing):
#   1. installs Docker (docker.io), restic and Caddy from the system's apt sources;
#   2. unpacks the agent bundle (agent + Node 24 for this CPU) into /opt/dcloud;
#   3. creates the `dcloud` system user, in the `docker` group;
#   4. writes the cluster key it is given (or a new one: a new cluster) and the
#      agent's settings, /etc/dcloud/agent.env;
#   5. installs and enables dcloud.service, the watchdog and the front door
#      (dcloud-caddy.service; Debian's caddy.service masked), and (re)starts them
#      if anything changed.
# Exit codes follow sysexits(3), like the dcloud command.
set -euo pipefail

PREFIX=/opt/dcloud
DATA_DIR=/var/lib/dcloud
CONF_DIR=/etc/dcloud
UNIT_DIR=/etc/systemd/system
# The agent, the watchdog that fences its stateful apps when the agent is gone (docs/snapshots.md),
# the front door, Caddy configured by the agent through its admin socket, and the private DNS
# responder, answering from the zone the agent writes (docs/frontdoor.md).
UNITS="dcloud.service dcloud-watchdog.service dcloud-caddy.service dcloud-dns.service"
# Debian's units of the caddy package: its default site on :80 must not run beside our front door.
DEBIAN_CADDY_UNITS="caddy.service caddy-api.service"
UNIT=$UNIT_DIR/dcloud.service
LINK=/usr/local/bin/dcloud
USER_NAME=dcloud
KEY_HEADER='/key/swarm/psk/1.0.0/'

usage() {
  cat <<'EOF'
scripts/install.sh [options]            install or update the agent (as root)
scripts/install.sh --uninstall [--purge]

  --bundle FILE       the agent bundle to install (scripts/bundle.sh makes one); when
                      run from a checkout without it, a bundle of the checkout is made
  --key-file FILE     the cluster key to join; without it the key already installed is
                      kept, or a new one is made (a new cluster)
  --replace-key       let --key-file replace a different installed key (leaves the old cluster)
  --name NAME         the node's name in the cluster (default: the host name)
  --label KEY=VALUE   a label other nodes see (repeatable)
  --peer MULTIADDR    a peer to dial where mDNS does not reach (repeatable)
  --domain DOMAIN     the cluster's domain: apps are https://NAME.DOMAIN/ (asked on a
                      terminal when this install makes a new cluster; default
                      dcloud.home.arpa); set once the agent runs, with `dcloud domain set`
  --config FILE       install FILE as /etc/dcloud/agent.env (instead of --name/--label/--peer)
  --no-deps           do not install Docker or restic (you manage them)
  --no-start          do not start or restart services, not even the daemons packages
                      bring (for chroots and image builds); the service starts at boot
  --uninstall         remove the agent, its service and /opt/dcloud; keeps /var/lib/dcloud
                      (cluster key, node identity) and /etc/dcloud
  --purge             with --uninstall: also remove those and the dcloud user
EOF
}

say() { printf 'install: %s\n' "$*"; }
die() {
  local code=$1 msg=$2 hint=${3:-}
  printf 'install: %s\n' "$msg" >&2
  [ -n "$hint" ] && printf '  %s\n' "$hint" >&2
  exit "$code"
}

BUNDLE="" KEY_FILE="" CONFIG="" NODE_NAME="" DOMAIN="" REPLACE_KEY=0 NO_DEPS=0 NO_START=0 UNINSTALL=0 PURGE=0
LABELS=() PEERS=()
while [ $# -gt 0 ]; do
  case $1 in
    --bundle) BUNDLE=${2:?--bundle needs a FILE}; shift 2 ;;
    --key-file) KEY_FILE=${2:?--key-file needs a FILE}; shift 2 ;;
    --replace-key) REPLACE_KEY=1; shift ;;
    --name) NODE_NAME=${2:?--name needs a NAME}; shift 2 ;;
    --label) LABELS+=("${2:?--label needs KEY=VALUE}"); shift 2 ;;
    --peer) PEERS+=("${2:?--peer needs a MULTIADDR}"); shift 2 ;;
    --domain) DOMAIN=${2:?--domain needs a DOMAIN}; shift 2 ;;
    --config) CONFIG=${2:?--config needs a FILE}; shift 2 ;;
    --no-deps) NO_DEPS=1; shift ;;
    --no-start) NO_START=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die 64 "unknown option '$1'" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die 77 "must run as root (it installs packages, a user and a service)" "sudo $0 $*"

systemd_running() { [ "$NO_START" -eq 0 ] && [ -d /run/systemd/system ]; }

# --- uninstall ---------------------------------------------------------------
if [ "$UNINSTALL" -eq 1 ]; then
  for u in $UNITS; do
    if systemd_running; then systemctl disable --now "$u" 2>/dev/null || true
    elif [ -e "$UNIT_DIR/$u" ] && command -v systemctl >/dev/null; then systemctl disable "$u" 2>/dev/null || true
    fi
    rm -f "$UNIT_DIR/multi-user.target.wants/$u" "$UNIT_DIR/$u"
  done
  # Debian's Caddy units were masked for the front door: give them back (not started).
  for u in $DEBIAN_CADDY_UNITS; do
    if [ "$(readlink "$UNIT_DIR/$u" 2>/dev/null || true)" = /dev/null ]; then rm -f "$UNIT_DIR/$u"; fi
  done
  systemd_running && systemctl daemon-reload
  [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$PREFIX/bin/dcloud" ] && rm -f "$LINK"
  rm -rf "$PREFIX" "$PREFIX.new" "$PREFIX.old"
  if [ "$PURGE" -eq 1 ]; then
    # The front door's access log (clients' addresses) goes with the data.
    rm -rf "$DATA_DIR" "$CONF_DIR" /etc/systemd/system/dcloud.service.d /var/log/dcloud-caddy
    if getent passwd "$USER_NAME" >/dev/null; then userdel "$USER_NAME"; fi
    if getent group "$USER_NAME" >/dev/null; then groupdel "$USER_NAME" 2>/dev/null || true; fi
    say "removed the agent, its data ($DATA_DIR), its settings ($CONF_DIR) and the $USER_NAME user"
  else
    say "removed the agent and its service; kept $DATA_DIR (cluster key, node identity) and $CONF_DIR"
    say "  (--uninstall --purge removes those too)"
  fi
  say "Docker, restic, Caddy and the apps' containers and volumes are untouched"
  exit 0
fi

# --- the machine ---------------------------------------------------------------
[ -r /etc/os-release ] || die 69 "cannot tell which OS this is (no /etc/os-release)" "the installer supports Debian 12+, Ubuntu 22.04+ and Raspberry Pi OS"
# In a subshell: os-release sets NAME, VERSION and more, which would clobber ours.
# shellcheck disable=SC1091
OS_ID=$(. /etc/os-release; echo "${ID:-}") OS_VERSION=$(. /etc/os-release; echo "${VERSION_ID:-}") OS_PRETTY=$(. /etc/os-release; echo "${PRETTY_NAME:-}")
version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
case $OS_ID in
  # Debian testing and unstable have no VERSION_ID.
  debian) [ -z "$OS_VERSION" ] || version_at_least "$OS_VERSION" 12 || die 69 "Debian $OS_VERSION is too old" "Debian 12 (bookworm) or newer is needed" ;;
  ubuntu) version_at_least "${OS_VERSION:-0}" 22.04 || die 69 "Ubuntu ${OS_VERSION:-?} is too old" "Ubuntu 22.04 or newer is needed" ;;
  raspbian) die 69 "this is 32-bit Raspberry Pi OS" "the agent needs the 64-bit Raspberry Pi OS (arm64)" ;;
  *) die 69 "unsupported OS '${OS_PRETTY:-${OS_ID:-unknown}}'" "the installer supports Debian 12+, Ubuntu 22.04+ and Raspberry Pi OS (64-bit)" ;;
esac
ARCH=$(dpkg --print-architecture)
case $ARCH in amd64|arm64) ;; *) die 69 "unsupported architecture '$ARCH'" "the agent runs on amd64 and arm64" ;; esac
command -v systemctl >/dev/null || die 69 "systemd is not installed" "the agent runs as a systemd service"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# --- the bundle ----------------------------------------------------------------
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -z "$BUNDLE" ]; then
  if [ -f "$HERE/../package.json" ] && [ -f "$HERE/../agent/cli/main.ts" ] && [ -x "$HERE/bundle.sh" ]; then
    say "bundling this checkout ($(cd "$HERE/.." && pwd)) for $ARCH"
    "$HERE/bundle.sh" --quiet --arch "$ARCH" -o "$TMP/bundle.tar.gz" >/dev/null
    BUNDLE=$TMP/bundle.tar.gz
  else
    die 66 "no agent bundle given" "pass --bundle FILE (made with scripts/bundle.sh --arch $ARCH -o FILE)"
  fi
fi
[ -r "$BUNDLE" ] || die 66 "cannot read the bundle $BUNDLE"
INFO=$(tar -xzOf "$BUNDLE" dcloud/BUNDLE 2>/dev/null) || die 65 "$BUNDLE is not a dcloud bundle" "make one with scripts/bundle.sh --arch $ARCH -o FILE"
bundle_field() { printf '%s\n' "$INFO" | sed -n "s/^$1=//p"; }
B_ARCH=$(bundle_field arch) B_VERSION=$(bundle_field version)
[ "$B_ARCH" = "$ARCH" ] || die 65 "the bundle is for $B_ARCH, this machine is $ARCH" "make one for this machine: scripts/bundle.sh --arch $ARCH -o FILE"

# --- the key and settings, checked before anything is changed --------------------
canonical_key() { # prints the key file's canonical text, or fails
  local text l1 l2 l3
  text=$(tr -d '\r' <"$1") || return 1
  l1=$(printf '%s\n' "$text" | sed -n 1p) l2=$(printf '%s\n' "$text" | sed -n 2p) l3=$(printf '%s\n' "$text" | sed -n 3p)
  [ "$(printf '%s\n' "$text" | grep -c .)" -eq 3 ] && [ "$l1" = "$KEY_HEADER" ] && [ "$l2" = "/base16/" ] || return 1
  printf '%s' "$l3" | grep -Eq '^[0-9a-fA-F]{64}$' || return 1
  printf '%s\n/base16/\n%s' "$KEY_HEADER" "$(printf '%s' "$l3" | tr 'A-F' 'a-f')"
}
NEW_KEY=""
if [ -n "$KEY_FILE" ]; then
  [ -r "$KEY_FILE" ] || die 66 "cannot read the cluster key $KEY_FILE"
  NEW_KEY=$(canonical_key "$KEY_FILE") || die 78 "$KEY_FILE is not a cluster key file" "it has three lines: $KEY_HEADER, /base16/ and 64 hex digits; \`dcloud init\` makes one"
  if [ -f "$DATA_DIR/cluster.key" ] && [ "$REPLACE_KEY" -eq 0 ]; then
    OLD_KEY=$(canonical_key "$DATA_DIR/cluster.key" || true)
    [ "$OLD_KEY" = "$NEW_KEY" ] || die 73 "this node already holds another cluster key ($DATA_DIR/cluster.key)" \
      "replacing it moves the node to another cluster; pass --replace-key if that is what you want"
  fi
fi
for v in "${LABELS[@]}" "${PEERS[@]}" "$NODE_NAME"; do
  case $v in *[[:space:]\"\'\\]*) die 64 "'$v': names, labels and peers may not contain spaces, quotes or backslashes" ;; esac
done
for l in "${LABELS[@]}"; do case $l in ?*=*) ;; *) die 64 "--label $l: expected KEY=VALUE" ;; esac; done
[ -z "$CONFIG" ] || [ -r "$CONFIG" ] || die 66 "cannot read $CONFIG"

CHANGED=0 # anything the running agent would see: restart it
changed() { CHANGED=1; say "$*"; }

# --- 1. Docker and restic ------------------------------------------------------
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
MISSING=()
if ! command -v dockerd >/dev/null && ! have_pkg docker.io && ! have_pkg docker-ce; then
  # AppArmor's parser: Docker cannot start containers on an AppArmor kernel without it.
  MISSING+=(docker.io apparmor ca-certificates)
fi
command -v restic >/dev/null || MISSING+=(restic)
# The front door (docs/frontdoor.md): Debian's Caddy, no plugins needed.
[ -x /usr/bin/caddy ] || MISSING+=(caddy)
if [ "${#MISSING[@]}" -gt 0 ]; then
  if [ "$NO_DEPS" -eq 1 ]; then
    say "not installing ${MISSING[*]} (--no-deps); the agent needs Docker to run apps, restic for snapshots and Caddy (/usr/bin/caddy) for the front door"
  else
    say "installing ${MISSING[*]} from the system's apt sources"
    POLICY=/usr/sbin/policy-rc.d
    if [ "$NO_START" -eq 1 ] && [ ! -e "$POLICY" ]; then
      # Debian's way to keep package scripts from starting daemons (a chroot has no init to start them under).
      printf '#!/bin/sh\nexit 101\n' >"$POLICY"; chmod 755 "$POLICY"
      trap 'rm -f "$POLICY"; rm -rf "$TMP"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_try() { apt-get -q -o Dpkg::Use-Pty=0 install -y --no-install-recommends "${MISSING[@]}"; }
    if ! apt_try >"$TMP/apt.log" 2>&1; then
      apt-get -q update >>"$TMP/apt.log" 2>&1 || true
      apt_try >>"$TMP/apt.log" 2>&1 || { tail -n 20 "$TMP/apt.log" >&2; die 69 "apt-get could not install ${MISSING[*]}" "check the network and the apt sources, or install them yourself and rerun with --no-deps"; }
    fi
    if [ "$NO_START" -eq 1 ] && [ -e "$POLICY" ] && grep -q 'exit 101' "$POLICY" && [ "$(wc -l <"$POLICY")" -eq 2 ]; then rm -f "$POLICY"; fi
    CHANGED=1
  fi
fi
getent group docker >/dev/null || { groupadd --system docker; changed "created the docker group"; }

# --- 2. the agent in /opt/dcloud -------------------------------------------------
tar -xzOf "$BUNDLE" dcloud/MANIFEST >"$TMP/MANIFEST" || die 65 "$BUNDLE has no MANIFEST" "remake it with scripts/bundle.sh"
if [ -f "$PREFIX/MANIFEST" ] && cmp -s "$TMP/MANIFEST" "$PREFIX/MANIFEST" && (cd "$PREFIX" && sha256sum --quiet --strict -c MANIFEST >/dev/null 2>&1); then
  say "the agent $B_VERSION in $PREFIX is up to date"
else
  rm -rf "$PREFIX.new" "$PREFIX.old"
  mkdir -p "$PREFIX.new"
  tar -xzf "$BUNDLE" -C "$PREFIX.new" --strip-components=1 --no-same-owner
  (cd "$PREFIX.new" && sha256sum --quiet --strict -c MANIFEST) || { rm -rf "$PREFIX.new"; die 65 "$BUNDLE is damaged (its files do not match its MANIFEST)"; }
  NODE_BIN=$(ls "$PREFIX.new"/node_modules/node-linux-*/bin/node 2>/dev/null | head -n1)
  "$NODE_BIN" -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 22 ? 0 : 1)' 2>/dev/null \
    || { rm -rf "$PREFIX.new"; die 69 "the bundle's Node does not run on this machine" "is the bundle for $ARCH, and glibc 2.28 or newer installed?"; }
  chown -R root:root "$PREFIX.new"
  chmod -R go-w "$PREFIX.new"
  [ -d "$PREFIX" ] && mv "$PREFIX" "$PREFIX.old"
  mv "$PREFIX.new" "$PREFIX"
  rm -rf "$PREFIX.old"
  changed "installed the agent $B_VERSION ($ARCH) in $PREFIX"
fi
if [ "$(readlink "$LINK" 2>/dev/null || true)" != "$PREFIX/bin/dcloud" ]; then
  mkdir -p "$(dirname "$LINK")"
  ln -sfn "$PREFIX/bin/dcloud" "$LINK"
  say "linked $LINK"
fi

# --- 3. the dcloud user ------------------------------------------------------------
if ! getent passwd "$USER_NAME" >/dev/null; then
  useradd --system --user-group --home-dir "$DATA_DIR" --no-create-home --shell /usr/sbin/nologin --comment "Dentropy Cloud agent" "$USER_NAME"
  changed "created the system user $USER_NAME"
fi
# The group reaches the API socket (/run/dcloud/api.sock); useradd --user-group made it.
getent group "$USER_NAME" >/dev/null || { groupadd --system "$USER_NAME"; changed "created the $USER_NAME group"; }
if ! id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx docker; then
  usermod -aG docker "$USER_NAME"
  changed "added $USER_NAME to the docker group"
fi

# --- 4. data directory, cluster key, settings ----------------------------------------
owner_mode() { stat -c '%U:%G %a' "$1" 2>/dev/null || true; }
if [ "$(owner_mode "$DATA_DIR")" != "$USER_NAME:$USER_NAME 700" ]; then
  install -d -o "$USER_NAME" -g "$USER_NAME" -m 0700 "$DATA_DIR"
  changed "prepared $DATA_DIR"
fi
KEY=$DATA_DIR/cluster.key
if [ -n "$NEW_KEY" ]; then
  if [ "$(canonical_key "$KEY" 2>/dev/null || true)" != "$NEW_KEY" ]; then
    (umask 077; printf '%s' "$NEW_KEY" >"$KEY.new")
    chown "$USER_NAME:$USER_NAME" "$KEY.new"
    mv "$KEY.new" "$KEY"
    changed "installed the cluster key from $KEY_FILE"
  fi
elif [ ! -f "$KEY" ]; then
  "$PREFIX/bin/dcloud" init --key-file "$KEY" >/dev/null
  chown "$USER_NAME:$USER_NAME" "$KEY"
  changed "created a NEW cluster: its key is $KEY"
  say "  to add machines to this cluster, copy that file to them and install with --key-file"
  # A new cluster's first start: its domain is asked for once, where someone can answer.
  if [ -z "$DOMAIN" ] && [ -t 0 ]; then
    read -r -p "install: the cluster's domain (apps will be https://NAME.DOMAIN/; Enter for dcloud.home.arpa): " DOMAIN || DOMAIN=""
  fi
fi
if [ "$(owner_mode "$KEY")" != "$USER_NAME:$USER_NAME 600" ]; then
  chown "$USER_NAME:$USER_NAME" "$KEY"; chmod 0600 "$KEY"
  changed "fixed the owner and mode of $KEY"
fi

CONF=$CONF_DIR/agent.env
WANT_CONF=""
if [ -n "$CONFIG" ]; then
  WANT_CONF=$(cat "$CONFIG")
elif [ -n "$NODE_NAME" ] || [ "${#LABELS[@]}" -gt 0 ] || [ "${#PEERS[@]}" -gt 0 ] || [ ! -f "$CONF" ]; then
  ARGS="" NAME_LINE="#DCLOUD_NAME="
  [ -z "$NODE_NAME" ] || NAME_LINE="DCLOUD_NAME=$NODE_NAME"
  for l in "${LABELS[@]}"; do ARGS="$ARGS --label $l"; done
  for p in "${PEERS[@]}"; do ARGS="$ARGS --peer $p"; done
  WANT_CONF=$(cat <<EOF
# Settings of the Dentropy Cloud agent (systemd EnvironmentFile of dcloud.service).
# After a change: systemctl restart dcloud
# The node's name in the cluster (default: the host name).
$NAME_LINE
# More \`dcloud agent\` options, e.g. --label ssd=true --peer /ip4/192.0.2.10/tcp/7370
DCLOUD_AGENT_ARGS=${ARGS# }
EOF
)
fi
if [ -n "$WANT_CONF" ] && [ "$(cat "$CONF" 2>/dev/null || true)" != "$WANT_CONF" ]; then
  [ -d "$CONF_DIR" ] || install -d -m 0755 "$CONF_DIR"
  printf '%s\n' "$WANT_CONF" >"$CONF.new"
  chmod 0644 "$CONF.new"
  mv "$CONF.new" "$CONF"
  changed "wrote $CONF"
fi

# --- 5. the services -----------------------------------------------------------------
# Debian's caddy.service serves its own page on :80 and would hold the ports: stopped and masked
# (a link to /dev/null: nothing starts it, not even a package upgrade). Works without systemd too.
for u in $DEBIAN_CADDY_UNITS; do
  if [ "$(readlink "$UNIT_DIR/$u" 2>/dev/null || true)" != /dev/null ]; then
    if systemd_running; then systemctl disable --now "$u" >/dev/null 2>&1 || true; fi
    rm -f "$UNIT_DIR/multi-user.target.wants/$u"
    ln -sfn /dev/null "$UNIT_DIR/$u"
    changed "masked Debian's $u (the front door, dcloud-caddy.service, serves ports 80 and 443)"
  fi
done
for u in $UNITS; do
  if ! cmp -s "$PREFIX/scripts/systemd/$u" "$UNIT_DIR/$u"; then
    install -m 0644 "$PREFIX/scripts/systemd/$u" "$UNIT_DIR/$u"
    changed "installed $UNIT_DIR/$u"
  fi
  wants=$UNIT_DIR/multi-user.target.wants/$u
  if [ ! -L "$wants" ]; then
    # Works without a running systemd (in a chroot) too: it only makes the symlink.
    systemctl enable "$u" 2>/dev/null || { mkdir -p "$(dirname "$wants")"; ln -sfn "$UNIT_DIR/$u" "$wants"; }
    say "enabled $u (it starts at boot)"
  fi
done

if systemd_running; then
  systemctl daemon-reload
  systemctl is-active --quiet docker.service || systemctl enable --now docker.service || say "warning: Docker did not start; see: journalctl -u docker"
  if [ "$CHANGED" -eq 1 ] || ! systemctl is-active --quiet dcloud-watchdog.service; then
    systemctl restart dcloud-watchdog.service
  fi
  if [ "$CHANGED" -eq 1 ] || ! systemctl is-active --quiet dcloud-caddy.service; then
    systemctl restart dcloud-caddy.service || say "warning: the front door did not start; see: journalctl -u dcloud-caddy (is another program on port 80 or 443?)"
  fi
  if [ "$CHANGED" -eq 1 ] || ! systemctl is-active --quiet dcloud-dns.service; then
    systemctl restart dcloud-dns.service || say "warning: the private DNS did not start; see: journalctl -u dcloud-dns (is another DNS server on port 53? see docs/frontdoor.md)"
  fi
  if [ "$CHANGED" -eq 1 ] || ! systemctl is-active --quiet dcloud.service; then
    systemctl restart dcloud.service
    say "started dcloud.service; see it with: sudo dcloud status   (logs: journalctl -u dcloud -f)"
  else
    say "dcloud.service is running; nothing changed"
  fi
  if [ -n "$DOMAIN" ]; then
    # The domain is the cluster's, in its replicated state: set through the agent once it leads or follows a leader.
    set_ok=0
    for _ in $(seq 30); do
      if out=$("$PREFIX/bin/dcloud" domain set "$DOMAIN" 2>&1); then set_ok=1; break; fi
      case "$out" in *"already"*) set_ok=1; break ;; *"unreachable"*|*"no scheduler"*|*"no_leader"*|*"unavailable"*|*"cannot reach"*) sleep 2 ;; *) break ;; esac
    done
    if [ "$set_ok" -eq 1 ]; then say "the cluster's domain is $DOMAIN: apps are https://NAME.$DOMAIN/"
    else say "warning: the domain was not set: ${out:-no answer}"; say "  set it later with: sudo dcloud domain set $DOMAIN"; fi
  fi
else
  say "not starting services (--no-start, or systemd is not running); dcloud.service starts at the next boot"
  if [ -n "$DOMAIN" ]; then say "once it runs, set the cluster's domain with: sudo dcloud domain set $DOMAIN"; fi
fi
say "to let a user run dcloud without sudo: usermod -aG $USER_NAME USER (then log in again);"
say "  members of the $USER_NAME group control this node and its apps, as members of the docker group do"

