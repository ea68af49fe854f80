# shellcheck shell=bash
# Finding, installing and starting PostgreSQL and Redis for scripts/run and scripts/test.
# Sourced, not run. Every function prints what it does on stderr and fails loudly.

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# port_open HOST PORT: whether something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# as_root CMD...: runs CMD as root (directly, or with sudo).
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to run: $* (install sudo or run as root)"
  fi
}

apt_install() {
  log "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# pg_bin_dir: the newest PostgreSQL server binaries, installing Debian's postgresql when missing.
pg_bin_dir() {
  local initdb
  initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$initdb" ]; then
    apt_install postgresql >&2
    initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
    [ -n "$initdb" ] || die "postgresql installed but no initdb found under /usr/lib/postgresql"
  fi
  dirname "$initdb"
}

# run_as_pg_owner CMD...: initdb and postgres refuse to run as root; use the postgres user then.
run_as_pg_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# start_private_postgres DIR PORT: a private cluster in DIR on 127.0.0.1:PORT, trust auth for
# local connections, user postgres. Initialized on first use, started when not running.
start_private_postgres() {
  local dir=$1 port=$2 bin
  bin=$(pg_bin_dir)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$dir"; chmod 700 "$dir"; fi
  if [ ! -f "$dir/PG_VERSION" ]; then
    log "initializing a private PostgreSQL cluster in $dir"
    run_as_pg_owner "$bin/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 \
      --locale=C.UTF-8 >/dev/null || die "initdb failed"
  fi
  if port_open 127.0.0.1 "$port"; then
    log "PostgreSQL already answers on 127.0.0.1:$port"
    return 0
  fi
  log "starting the private PostgreSQL on 127.0.0.1:$port"
  run_as_pg_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $dir -c max_connections=300 -c shared_buffers=256MB" start >/dev/null \
    || die "PostgreSQL did not start; see $dir/server.log"
}

# stop_private_postgres DIR
stop_private_postgres() {
  local bin
  bin=$(pg_bin_dir)
  run_as_pg_owner "$bin/pg_ctl" -D "$1" -m fast -w stop >/dev/null 2>&1 || true
}

# ensure_postgres_5432 DATA_DIR: PostgreSQL on 127.0.0.1:5432 for the tests: the running one, the
# machine's Debian cluster, or a private cluster under DATA_DIR.
ensure_postgres_5432() {
  port_open 127.0.0.1 5432 && return 0
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql)" ]; then
    log "starting the machine's PostgreSQL cluster"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
    for _ in $(seq 1 30); do port_open 127.0.0.1 5432 && return 0; sleep 1; done
  fi
  start_private_postgres "$1" 5432
}

# ensure_redis: Redis on 127.0.0.1:6379, installed and started when missing. The binary is
# installed even when a Redis already answers: the restart test starts a private one.
ensure_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  port_open 127.0.0.1 6379 && return 0
  log "starting Redis on 127.0.0.1:6379 (no persistence)"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 1 30); do port_open 127.0.0.1 6379 && return 0; sleep 0.5; done
  die "Redis did not start on 127.0.0.1:6379"
}

# wait_http URL SECONDS: polls until URL answers 200.
wait_http() {
  local url=$1 seconds=$2
  for _ in $(seq 1 $((seconds * 4))); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.25
  done
  return 1
}
