/**
 * Every key a compose file may hold, and what happens to it: honoured
 * (mapped onto what the runtime does), ignored with a warning (the runtime
 * decides it itself, or it changes nothing an app can rely on), or refused with
 * the reason. compose.ts applies these tables; docs/apps.md is written from
 * them (a test checks it names every key).
 */

export interface KeyRule {
  rule: 'honoured' | 'ignored' | 'refused'
  /** Why it is ignored or refused; what it maps to when honoured. */
  why: string
}

export const PRIVILEGE = 'widens what the container may do on the node; Dentropy does not grant that to an app'
/** Keys that are permissions (proto/permissions.ts): honoured only when the owner grants them at install. */
export const WHEN_GRANTED = 'honoured when granted: a permission the owner grants at install (docs/apps.md, Permissions)'
/** Compose secrets come from a file next to the compose file or a variable of the machine running compose. */
export const SECRETS = 'a secret comes from a file next to the compose file or a variable of the machine running compose, which are not shipped to nodes; Dentropy has no secret store yet (a non-secret file can be a config with content:)'
export const NO_FIELD = 'the runtime cannot set it yet (no field in the app manifest); an app that depends on it would misbehave'

/** Service keys of the compose spec and what happens to each. docs/apps.md is written from this table. */
export const SERVICE_KEYS: Record<string, KeyRule> = {
  image: { rule: 'honoured', why: 'required: nodes pull or receive images, they never build' },
  command: { rule: 'honoured', why: 'string (split like a shell, no shell runs) or list' },
  entrypoint: { rule: 'honoured', why: 'string or list, like command' },
  environment: { rule: 'honoured', why: 'map or list of "K=V"' },
  ports: { rule: 'honoured', why: 'short and long syntax, ranges; host ports must be unique in the app' },
  expose: { rule: 'honoured', why: 'services share one network and reach each other on every port; expose marks the web port' },
  volumes: { rule: 'honoured', why: 'named volumes (declared at top level), short and long syntax; absolute bind mounts are honoured when granted (path:…, dangerous_path:…, docker_socket)' },
  healthcheck: { rule: 'honoured', why: 'test in all forms, durations, retries, disable' },
  depends_on: { rule: 'honoured', why: 'list or map; unknown services and cycles are errors' },
  restart: { rule: 'honoured', why: 'no, always, on-failure, unless-stopped' },
  labels: { rule: 'honoured', why: 'map or list; dcloud.* is reserved for the runtime' },
  user: { rule: 'honoured', why: 'uid, uid:gid or names' },
  networks: { rule: 'honoured', why: 'every service joins the app\'s one network; per-network aliases and addresses are refused' },
  network_mode: { rule: 'honoured', why: `bridge/default (the app network); host is ${WHEN_GRANTED} (host_network); none, service: and container: are refused` },
  deploy: { rule: 'honoured', why: 'resources.reservations/limits (memory, cpus) become the app\'s requests; replicas: 1' },
  mem_reservation: { rule: 'honoured', why: 'a memory request when deploy.resources has none' },
  mem_limit: { rule: 'honoured', why: 'a memory request when nothing else gives one (not enforced as a limit)' },
  cpus: { rule: 'honoured', why: 'a CPU request when deploy.resources has none (not enforced as a limit)' },
  platform: { rule: 'honoured', why: 'restricts the app\'s architectures' },
  profiles: { rule: 'honoured', why: 'as in compose, a service with profiles is not started by default: it is left out' },
  scale: { rule: 'honoured', why: 'only 1' },
  privileged: { rule: 'honoured', why: `${WHEN_GRANTED} (privileged)` },
  cap_add: { rule: 'honoured', why: `${WHEN_GRANTED} (one per capability: net_admin, …)` },
  security_opt: { rule: 'honoured', why: 'only no-new-privileges (it takes power away); seccomp, apparmor, label and every other option are refused: they widen what the container may do on the node' },
  devices: { rule: 'honoured', why: `${WHEN_GRANTED} (device:/dev/…); the app runs only on nodes that have the device` },
  device_cgroup_rules: { rule: 'refused', why: PRIVILEGE },
  gpus: { rule: 'refused', why: 'ties the app to one machine\'s hardware; no GPU scheduling yet' },
  runtime: { rule: 'refused', why: 'nodes run the default OCI runtime only' },
  pid: { rule: 'refused', why: PRIVILEGE },
  ipc: { rule: 'refused', why: PRIVILEGE },
  uts: { rule: 'refused', why: PRIVILEGE },
  userns_mode: { rule: 'refused', why: PRIVILEGE },
  cgroup: { rule: 'refused', why: PRIVILEGE },
  cgroup_parent: { rule: 'refused', why: PRIVILEGE },
  sysctls: { rule: 'honoured', why: `${WHEN_GRANTED} (sysctl:NAME)` },
  isolation: { rule: 'refused', why: 'Windows only' },
  oom_kill_disable: { rule: 'refused', why: 'a runaway app could take the node (and its agent) down' },
  use_api_socket: { rule: 'refused', why: PRIVILEGE },
  build: { rule: 'refused', why: 'nodes never build: build the image, then load it or push it to a registry, and name it in image' },
  env_file: { rule: 'refused', why: 'the app is one file: write the variables into environment' },
  label_file: { rule: 'refused', why: 'the app is one file: write the labels into labels' },
  configs: { rule: 'honoured', why: 'configs with content: (short or long syntax, target and mode), written on the node and mounted read-only; file: and environment: configs are refused' },
  secrets: { rule: 'refused', why: SECRETS },
  extends: { rule: 'refused', why: 'merge the files into one before installing' },
  volumes_from: { rule: 'refused', why: 'mount the named volume in both services instead' },
  links: { rule: 'honoured', why: 'services reach each other by name anyway; a link alias other than the service name is refused' },
  external_links: { rule: 'refused', why: 'an app cannot reach into containers it does not own' },
  extra_hosts: { rule: 'honoured', why: 'list of "host:ip" or "host=ip", or a map; host-gateway is the node\'s own address' },
  dns: { rule: 'refused', why: NO_FIELD },
  dns_opt: { rule: 'refused', why: NO_FIELD },
  dns_search: { rule: 'refused', why: NO_FIELD },
  mac_address: { rule: 'refused', why: 'ties the app to one network identity' },
  working_dir: { rule: 'honoured', why: 'an absolute path' },
  tty: { rule: 'honoured', why: 'true or false' },
  stdin_open: { rule: 'honoured', why: 'true or false' },
  shm_size: { rule: 'honoured', why: 'a size such as 256m' },
  tmpfs: { rule: 'honoured', why: 'a path or a list, with options (size, mode, uid, gid, noexec, …; suid and dev refused); volumes of type tmpfs too' },
  read_only: { rule: 'honoured', why: 'a read-only root filesystem' },
  ulimits: { rule: 'honoured', why: 'a number (soft and hard) or {soft, hard}; -1 is unlimited' },
  cap_drop: { rule: 'honoured', why: 'capability names (with or without CAP_), or ALL' },
  group_add: { rule: 'refused', why: NO_FIELD },
  storage_opt: { rule: 'refused', why: NO_FIELD },
  blkio_config: { rule: 'refused', why: NO_FIELD },
  cpuset: { rule: 'refused', why: NO_FIELD },
  cpu_rt_period: { rule: 'refused', why: NO_FIELD },
  cpu_rt_runtime: { rule: 'refused', why: NO_FIELD },
  attach: { rule: 'refused', why: 'only meaningful to an interactive docker compose up' },
  post_start: { rule: 'refused', why: NO_FIELD },
  pre_stop: { rule: 'refused', why: NO_FIELD },
  develop: { rule: 'refused', why: 'docker compose watch is a development tool' },
  credential_spec: { rule: 'refused', why: 'Windows only' },
  provider: { rule: 'refused', why: 'compose provider services run plugins on the client' },
  container_name: { rule: 'ignored', why: 'the runtime names containers itself (an app can be installed twice); other services reach it by service name' },
  hostname: { rule: 'ignored', why: 'the runtime sets hostnames; other services reach it by service name' },
  domainname: { rule: 'ignored', why: 'the runtime sets hostnames' },
  cpu_shares: { rule: 'ignored', why: 'a relative weight under contention; the scheduler places apps by their requests instead' },
  cpu_count: { rule: 'ignored', why: 'Windows only' },
  cpu_percent: { rule: 'ignored', why: 'Windows only' },
  cpu_period: { rule: 'ignored', why: 'CPU limits are not enforced; the scheduler places apps by their requests' },
  cpu_quota: { rule: 'ignored', why: 'CPU limits are not enforced; the scheduler places apps by their requests' },
  pids_limit: { rule: 'ignored', why: 'limits are not enforced yet' },
  memswap_limit: { rule: 'ignored', why: 'limits are not enforced yet' },
  mem_swappiness: { rule: 'ignored', why: 'the node\'s default applies' },
  oom_score_adj: { rule: 'ignored', why: 'the node\'s default applies' },
  logging: { rule: 'ignored', why: 'containers log to the node engine\'s default driver' },
  stop_grace_period: { rule: 'ignored', why: 'the runtime stops containers with its own grace period' },
  stop_signal: { rule: 'ignored', why: 'the runtime stops containers with SIGTERM, then SIGKILL' },
  init: { rule: 'ignored', why: 'no init process is injected; zombie processes are the image\'s concern' },
  pull_policy: { rule: 'ignored', why: 'the runtime pulls images (or ships them from a peer) when a node lacks them' },
  annotations: { rule: 'ignored', why: 'OCI annotations carry no behaviour' }
}

export const TOP_LEVEL_KEYS: Record<string, KeyRule> = {
  services: { rule: 'honoured', why: 'required, at least one' },
  volumes: { rule: 'honoured', why: 'named volumes; driver local only; external volumes refused' },
  networks: { rule: 'honoured', why: 'all become the app\'s one bridge network; external, internal and custom IPAM refused' },
  name: { rule: 'ignored', why: 'the project name is the app id (x-dcloud.id) or the instance name' },
  version: { rule: 'ignored', why: 'obsolete in the compose spec' },
  configs: { rule: 'honoured', why: 'content: only, carried in the manifest (at most 256 KiB each, 1 MiB in all); file: (not shipped to nodes), environment: and external refused' },
  secrets: { rule: 'refused', why: SECRETS },
  include: { rule: 'refused', why: 'merge the files into one before installing' },
  models: { rule: 'refused', why: 'compose model runners are not supported' }
}

