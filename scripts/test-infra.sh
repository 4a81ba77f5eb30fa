#!/usr/bin/env bash
# Makes this machine ready for the test suite: the real brokers, storage and database, on
# loopback only. Idempotent: installs what is missing, starts what is not running, reuses what is.
#
#   scripts/test-infra.sh up        install + start everything, write the env file
#   scripts/test-infra.sh env       print the env file path (source it before running tests)
#   scripts/test-infra.sh status    what is running
#   scripts/test-infra.sh down      stop what this script started (not the system RabbitMQ/PostgreSQL)
#
# What it provides (all 127.0.0.1):
#   RabbitMQ        :5672  system node (Debian package), vhost tu-test (queues expire when unused)
#   RabbitMQ faults :5673  second node `tufaults@localhost` that restart tests stop and start
#   PostgreSQL      :5432  system cluster (Debian package), databases created by the tests
#   PgBouncer       :6432  Debian package, transaction pooling in front of :5432
#   tansu           :19092 Kafka-API broker (cargo install, memory storage; shared by tests).
#                          Built with the `libsql` engine too: restart tests run their own tansu
#                          on a SQLite file so it can be killed and restarted without loss.
#   Garage          :3900  S3 API (cargo install), bucket trackunit-images
#
# Binaries built from crates.io go to ~/.cargo/bin once (each takes minutes); later runs skip them.
set -euo pipefail

STATE="${TU_INFRA_DIR:-$HOME/.cache/trackunit-infra}"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
TANSU_VERSION="0.6.0"
GARAGE_VERSION="2.5.0"
TANSU_PORT="${TU_TANSU_PORT:-19092}"
FAULTS_NODE="tufaults@localhost"
FAULTS_PORT=5673
ENV_FILE="$STATE/env"

log() { printf '[test-infra] %s\n' "$*" >&2; }
die() { printf '[test-infra] ERROR: %s\n' "$*" >&2; exit 1; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2 tries=${3:-100}
  for _ in $(seq "$tries"); do listening "$port" && return 0; sleep 0.2; done
  die "$what did not come up on 127.0.0.1:$port (see $STATE/*.log)"
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Runs a command that leaves a daemon behind, with no inherited descriptors but its log: a daemon
# that kept a pipe of our caller open (even a stray one bash holds) would keep the caller waiting.
# Synchronous: the command must itself return once the daemon runs (-detached, -d, setsid -f).
detached() { # logfile command...
  local logfile=$1; shift
  (
    exec </dev/null >>"$logfile" 2>&1
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
    done
    "$@"
  )
}

apt_install() {
  command -v apt-get >/dev/null || die "need $* but apt-get is not available; install it by hand"
  log "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null \
    || { as_root apt-get update >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

cargo_install() { # name version [cargo install flags...]
  local name=$1 version=$2; shift 2
  local marker="$STATE/installed-$name"
  local want="$version $*"
  # The marker records the features it was built with; a different set means a rebuild.
  if [ -x "$CARGO_BIN/$name" ] && "$CARGO_BIN/$name" --version 2>/dev/null | grep -q "$version" \
     && [ "$(cat "$marker" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  log "building $name $version from crates.io (one time, several minutes)"
  cargo install "$name" --version "$version" --locked --force "$@" >"$STATE/install-$name.log" 2>&1 \
    || die "cargo install $name failed; see $STATE/install-$name.log"
  echo "$want" >"$marker"
}

rabbit_vhost() { # node
  local node=$1
  rabbitmqctl -q -n "$node" add_vhost tu-test 2>/dev/null || true
  rabbitmqctl -q -n "$node" set_permissions -p tu-test guest '.*' '.*' '.*' >/dev/null
  # Test queues have unique names; unused ones disappear after 15 minutes.
  rabbitmqctl -q -n "$node" set_policy -p tu-test test-expiry '.*' '{"expires":900000}' --apply-to queues >/dev/null
}

up_rabbitmq() {
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  if ! listening 5672; then
    log "starting RabbitMQ"
    detached "$STATE/rabbitmq.log" as_root rabbitmq-server -detached
    wait_port 5672 RabbitMQ 300
  fi
  rabbitmqctl -q await_startup >/dev/null 2>&1 || true
  rabbit_vhost rabbit@localhost

  # The faults node: a separate RabbitMQ the restart tests may stop and start at will.
  if ! listening "$FAULTS_PORT"; then
    log "starting RabbitMQ faults node $FAULTS_NODE on :$FAULTS_PORT"
    # Under the rabbitmq user's home: the node runs as that user and cannot enter ours.
    local dir=/var/lib/rabbitmq/trackunit-faults
    as_root mkdir -p "$dir/mnesia" "$dir/log"
    echo "listeners.tcp.local = 127.0.0.1:$FAULTS_PORT" | as_root tee "$dir/rabbitmq.conf" >/dev/null
    echo "[]." | as_root tee "$dir/enabled_plugins" >/dev/null
    as_root chown -R rabbitmq:rabbitmq "$dir"
    # The Debian wrapper re-runs itself as user rabbitmq with `su`, which keeps these variables.
    (cd /tmp && detached "$STATE/rabbitmq-faults.log" as_root env RABBITMQ_NODENAME="$FAULTS_NODE" \
      RABBITMQ_DIST_PORT=25673 RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
      RABBITMQ_CONFIG_FILE="$dir/rabbitmq" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
      RABBITMQ_PID_FILE="$dir/pid" rabbitmq-server -detached)
    wait_port "$FAULTS_PORT" "RabbitMQ faults node" 300
  fi
  rabbitmqctl -q -n "$FAULTS_NODE" await_startup >/dev/null 2>&1 || true
  rabbitmqctl -q -n "$FAULTS_NODE" start_app >/dev/null 2>&1 || true
  rabbit_vhost "$FAULTS_NODE"
}

up_postgres() {
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  if ! listening 5432; then
    log "starting PostgreSQL"
    local version
    version=$(ls /etc/postgresql | sort -V | tail -1)
    detached "$STATE/postgresql.log" as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_port 5432 PostgreSQL
  fi
  psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null \
    || die "PostgreSQL on :5432 does not accept user postgres without a password (trust auth expected)"
}

up_pgbouncer() {
  command -v pgbouncer >/dev/null || apt_install pgbouncer
  if ! listening 6432; then
    log "starting PgBouncer (transaction pooling) on :6432"
    # PgBouncer refuses to run as root; it runs as postgres, in postgres' home.
    local dir=/var/lib/postgresql/trackunit-pgbouncer
    as_root mkdir -p "$dir"
    as_root tee "$dir/pgbouncer.ini" >/dev/null <<CONF
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 6432
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
ignore_startup_parameters = extra_float_digits,options
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
CONF
    echo '"postgres" ""' | as_root tee "$dir/userlist.txt" >/dev/null
    as_root chown -R postgres:postgres "$dir"
    detached "$STATE/pgbouncer.log" as_root su postgres -s /bin/sh -c "pgbouncer -d $dir/pgbouncer.ini"
    wait_port 6432 PgBouncer
  fi
}

up_tansu() {
  cargo_install tansu "$TANSU_VERSION" --features dynostore,libsql
  if ! listening "$TANSU_PORT"; then
    log "starting tansu on :$TANSU_PORT"
    (cd "$STATE" && detached "$STATE/tansu.log" setsid -f "$CARGO_BIN/tansu" broker \
      --listener-url "tcp://127.0.0.1:$TANSU_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" \
      --storage-engine memory://tansu/)
    wait_port "$TANSU_PORT" tansu
  fi
}

garage_cmd() { "$CARGO_BIN/garage" -c "$STATE/garage/garage.toml" "$@"; }

up_garage() {
  cargo_install garage "$GARAGE_VERSION"
  local dir="$STATE/garage"
  mkdir -p "$dir/meta" "$dir/data"
  if [ ! -f "$dir/credentials" ]; then
    umask 077
    {
      echo "GARAGE_RPC_SECRET=$(openssl rand -hex 32)"
      echo "GARAGE_ADMIN=$(openssl rand -hex 16)"
      echo "S3_ACCESS_KEY=GK$(openssl rand -hex 12)"
      echo "S3_SECRET_KEY=$(openssl rand -hex 32)"
    } >"$dir/credentials"
  fi
  # shellcheck disable=SC1091
  . "$dir/credentials"
  if [ ! -f "$dir/garage.toml" ]; then
    umask 077
    cat >"$dir/garage.toml" <<CONF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$GARAGE_RPC_SECRET"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:3900"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:3903"
admin_token = "$GARAGE_ADMIN"
CONF
  fi
  if ! listening 3900; then
    log "starting Garage on :3900"
    (cd "$dir" && GARAGE_DEFAULT_ACCESS_KEY="$S3_ACCESS_KEY" GARAGE_DEFAULT_SECRET_KEY="$S3_SECRET_KEY" \
      GARAGE_DEFAULT_BUCKET=trackunit-images detached "$STATE/garage.log" setsid -f "$CARGO_BIN/garage" \
      -c "$dir/garage.toml" server --single-node --default-bucket)
    wait_port 3900 Garage
    for _ in $(seq 50); do garage_cmd bucket info trackunit-images >/dev/null 2>&1 && break; sleep 0.2; done
  fi
}

write_env() {
  # shellcheck disable=SC1091
  . "$STATE/garage/credentials"
  umask 077
  cat >"$ENV_FILE" <<ENV
export TU_TEST_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/tu-test'
export TU_TEST_AMQP_FAULTS_URL='amqp://guest:guest@127.0.0.1:$FAULTS_PORT/tu-test'
export TU_TEST_RABBIT_FAULTS_NODE='$FAULTS_NODE'
export TU_TEST_KAFKA_BROKERS='127.0.0.1:$TANSU_PORT'
export TU_TANSU_BIN='$CARGO_BIN/tansu'
export TU_TEST_DATABASE_URL='postgres://postgres@127.0.0.1:5432/postgres'
export TU_TEST_PGBOUNCER_URL='postgres://postgres@127.0.0.1:6432'
export TU_TEST_S3_ENDPOINT='http://127.0.0.1:3900'
export TU_TEST_S3_REGION='garage'
export TU_TEST_S3_BUCKET='trackunit-images'
export TU_TEST_S3_ACCESS_KEY='$S3_ACCESS_KEY'
export TU_TEST_S3_SECRET_KEY='$S3_SECRET_KEY'
ENV
}

status() {
  for entry in "5672 RabbitMQ" "$FAULTS_PORT RabbitMQ-faults" "5432 PostgreSQL" "6432 PgBouncer" "$TANSU_PORT tansu" "3900 Garage"; do
    set -- $entry
    if listening "$1"; then echo "up    $2 (:$1)"; else echo "down  $2 (:$1)"; fi
  done
}

down() {
  pkill -f "$CARGO_BIN/tansu broker --listener-url tcp://127.0.0.1:$TANSU_PORT" 2>/dev/null || true
  pkill -f "$CARGO_BIN/garage -c $STATE/garage/garage.toml server" 2>/dev/null || true
  rabbitmqctl -q -n "$FAULTS_NODE" stop >/dev/null 2>&1 || true
  log "stopped tansu, Garage and the RabbitMQ faults node"
}

mkdir -p "$STATE"
case "${1:-up}" in
  up)
    command -v openssl >/dev/null || apt_install openssl
    up_rabbitmq
    up_postgres
    up_pgbouncer
    up_garage
    up_tansu
    write_env
    status >&2
    echo "$ENV_FILE"
    ;;
  env) echo "$ENV_FILE" ;;
  status) status ;;
  down) down ;;
  *) die "usage: $0 up|env|status|down" ;;
esac
