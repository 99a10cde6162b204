/**
 * `dcloud/postgres:lab`: a real PostgreSQL 15 for lab tests, built here
 * because no registry is reachable from the lab. A Debian bookworm minbase
 * root filesystem made with debootstrap (server, client and pgbench, which
 * Debian ships in the server package `postgresql-15`), trimmed, plus an
 * entrypoint that initialises an empty data directory and runs the server in
 * the foreground. The tarball is built once and cached; `docker import` makes
 * it an image in a node's engine.
 *
 * The image trusts every connection without a password: it is for the lab,
 * a closed network of namespaces, and never for a real cluster.
 */
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { run, tryRun } from './sh.ts'
import { UserError, EXIT } from '../../agent/util/errors.ts'

export const POSTGRES_IMAGE = 'dcloud/postgres:lab'
/** Where `dcloud lab` keeps its test image tarballs (lab.ts builds the busybox one there). */
export const LAB_IMAGE_CACHE = '/var/lib/dcloud-lab/images'
export const PGDATA = '/var/lib/postgresql/data'
const PG_BIN = '/usr/lib/postgresql/15/bin'
const SUITE = 'bookworm'
const PACKAGES = ['postgresql-15', 'postgresql-client-15']
const ENTRYPOINT_PATH = '/usr/local/bin/dcloud-postgres-entrypoint'

/**
 * Runs as root first, only to hand the data directory to postgres, then again
 * as postgres through setpriv (which execs: nothing stays in between). The
 * server runs in the foreground under this shell, which turns Docker's SIGTERM
 * into SIGINT, a fast shutdown (sessions end, a checkpoint, exit in about a
 * second). The server's own SIGTERM is a smart shutdown, which waits for every
 * client to disconnect, so a stop with any pool or pgbench connected would
 * end in Docker's SIGKILL. An image's STOPSIGNAL would do it without the
 * shell, but `docker import` of the lab's dockerd (20.10) refuses that change.
 */
const ENTRYPOINT = `#!/bin/sh
set -eu
: "\${PGDATA:=${PGDATA}}"
export PGDATA

# Options go to the server; any other command (psql, pgbench, sh) runs instead,
# so one image serves as server and as client in the lab.
if [ "$#" -eq 0 ] || [ "\${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$1" != postgres ]; then exec "$@"; fi

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /run/postgresql
  # A new volume, or one restored from a snapshot, may belong to root; the
  # server refuses a data directory it does not own or that others can read.
  if [ "$(stat -c %U "$PGDATA")" != postgres ]; then chown -R postgres:postgres "$PGDATA"; fi
  chown postgres:postgres /run/postgresql
  chmod 0700 "$PGDATA"
  export HOME=/var/lib/postgresql
  exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$0" "$@"
fi

if [ -z "$(ls -A "$PGDATA")" ]; then
  # initdb removes what it made when it fails; only a SIGKILL in the middle
  # leaves a half-made directory, which the server then refuses loudly.
  initdb --username=postgres --auth-local=trust --auth-host=trust \\
    --encoding=UTF8 --locale=C.UTF-8 --data-checksums --no-instructions
  cat >> "$PGDATA/pg_hba.conf" <<'EOF'

# dcloud/postgres:lab: any address, no password. The lab is a closed network.
host all all 0.0.0.0/0 trust
host all all ::/0 trust
EOF
  cat >> "$PGDATA/postgresql.conf" <<'EOF'

# dcloud/postgres:lab. Durability as shipped, stated so a test relies on it:
# a commit is acknowledged only once its WAL is flushed to disk.
listen_addresses = '*'
fsync = on
synchronous_commit = on
full_page_writes = on
# LLVM is left out of the image to keep it small.
jit = off
EOF
fi

# The traps are set before the server starts, so a stop that comes first is not lost.
server=
pending=
forward () {
  if [ -n "$server" ]; then kill -"$1" "$server" 2>/dev/null || true; else pending=$1; fi
}
trap 'forward INT' TERM INT
trap 'forward QUIT' QUIT
"$@" &
server=$!
if [ -n "$pending" ]; then kill -"$pending" "$server"; fi
# wait returns early when a trapped signal arrives: wait again until the server is gone.
while :; do
  status=0
  wait "$server" || status=$?
  kill -0 "$server" 2>/dev/null || break
done
exit "$status"
`

/**
 * Run inside the new root: the cluster Debian's packaging created (the
 * entrypoint makes its own in the volume), documentation, translations, apt's
 * lists, and the LLVM (with its solver, z3) that only JIT compilation uses:
 * about 130 MB; the server loads it on demand and runs without it.
 */
const FINISH = `set -eu
rm -rf /var/lib/postgresql/15 /etc/postgresql/15 /var/log/postgresql/*
install -d -o postgres -g postgres -m 0700 ${PGDATA}
install -d -o postgres -g postgres -m 2775 /run/postgresql
rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/lintian /usr/share/locale/* /usr/share/i18n /usr/share/postgresql/15/man
rm -rf ${PG_BIN}/../lib/llvmjit.so ${PG_BIN}/../lib/llvmjit_types.bc ${PG_BIN}/../lib/bitcode
find /usr/lib \\( -name 'libLLVM-*.so*' -o -name 'libz3.so*' \\) -delete
rm -rf /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/lib/apt/lists/* /var/cache/debconf/*-old /var/lib/dpkg/*-old /tmp/* /var/tmp/*
find /var/log -type f -exec truncate -s 0 {} +
# Every program and module of the server must still load without what was removed.
if ldd ${PG_BIN}/* ${PG_BIN}/../lib/*.so 2>/dev/null | grep 'not found'; then exit 1; fi
exit 0
`

const CHANGES = [
  `ENV PATH=${PG_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
  `ENV PGDATA=${PGDATA}`,
  'ENV LANG=C.UTF-8',
  `ENTRYPOINT ["${ENTRYPOINT_PATH}"]`,
  'CMD ["postgres"]',
  'EXPOSE 5432'
]

/** Names the tarball after everything that goes into it, so a changed recipe builds anew. */
function recipeHash (): string {
  return createHash('sha256').update(JSON.stringify([SUITE, PACKAGES, ENTRYPOINT, FINISH])).digest('hex').slice(0, 12)
}

/**
 * Builds (once, cached in `cacheDir`) the root filesystem tarball of
 * `dcloud/postgres:lab`. Needs root, debootstrap and Debian's mirror; the
 * first build takes about a minute (more on a slow mirror).
 */
export async function buildPostgresRootfs (cacheDir = LAB_IMAGE_CACHE, progress: (line: string) => void = () => {}): Promise<string> {
  const name = `postgres-rootfs-${recipeHash()}.tar`
  const tar = join(cacheDir, name)
  if (existsSync(tar)) return tar
  if ((await tryRun('sh', ['-c', 'command -v debootstrap'])).code !== 0) {
    throw new UserError('building the postgres test image needs debootstrap', { exitCode: EXIT.unavailable, hint: 'apt-get install debootstrap' })
  }
  await mkdir(cacheDir, { recursive: true })
  const work = await mkdtemp(join(cacheDir, 'postgres-build-'))
  const root = join(work, 'root')
  // Per process: two test runs building at once must not write one file.
  const partial = `${tar}.tmp-${process.pid}`
  try {
    progress(`debootstrap ${SUITE} with ${PACKAGES.join(', ')} into ${root}`)
    // In a mount namespace of its own: the /proc, /sys and /dev mounts
    // debootstrap makes in the target vanish with it, even if it is killed.
    const boot = await tryRun('unshare', ['--mount', '--propagation', 'private', '--', 'debootstrap', '--variant=minbase', `--include=${PACKAGES.join(',')}`, SUITE, root], { timeoutMs: 1_800_000 })
    if (boot.code !== 0) {
      const tail = `${boot.stdout}${boot.stderr}`.trim().split('\n').slice(-20).join('\n')
      throw new UserError(`debootstrap of the postgres test image failed (exit ${boot.code}):\n${tail}`, { exitCode: EXIT.osError })
    }
    await writeFile(join(root, ENTRYPOINT_PATH), ENTRYPOINT)
    await chmod(join(root, ENTRYPOINT_PATH), 0o755)
    progress('trimming the root filesystem')
    await run('unshare', ['--mount', '--propagation', 'private', '--', 'chroot', root, 'sh', '-c', FINISH], { timeoutMs: 300_000 })
    progress(`packing ${tar}`)
    // Numeric owners: the files of postgres must keep the uid the image's /etc/passwd gives it.
    // /dev, /proc and /sys stay empty: the engine provides them.
    await run('tar', ['-C', root, '--numeric-owner', '--exclude=./dev/*', '--exclude=./proc/*', '--exclude=./sys/*', '-cf', partial, '.'], { timeoutMs: 600_000 })
    await rename(partial, tar)
  } finally {
    await rm(work, { recursive: true, force: true })
    await rm(partial, { force: true })
  }
  // Tarballs of older recipes are dead weight (a few hundred MB each).
  for (const f of await readdir(cacheDir)) {
    if (/^postgres-rootfs-[0-9a-f]{12}\.tar$/.test(f) && f !== name) await rm(join(cacheDir, f), { force: true })
  }
  return tar
}

/** Imports the tarball into the engine behind `socket` as `image`, with the settings a Dockerfile would give it. */
export async function loadPostgresImage (socket: string, tar: string, image = POSTGRES_IMAGE): Promise<void> {
  const changes = CHANGES.flatMap(c => ['--change', c])
  await run('docker', ['-H', `unix://${socket}`, 'import', ...changes, tar, image], { timeoutMs: 600_000 })
}
