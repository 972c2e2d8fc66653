#!/usr/bin/env bash
# The replicas the replica-lag tests watch, made if they are missing and left
# running (idempotent; concurrent callers wait for each other on a lock):
#
# - a PostgreSQL standby on 127.0.0.1:5433, streaming from the server on 5432;
# - a MariaDB primary with its binary log on 127.0.0.1:3307 and its replica on
#   3308 (the server on 3306 keeps its binary log off; this pair is the tests').
#
# The tests run it themselves (tests/it/support.rs, `ensure_replicas`), so the
# README's test command passes on a fresh machine; `.ci/run` runs it too. Needs
# root (it runs the servers as the postgres and mysql users), as on every
# machine of this project.
set -euo pipefail

log() { printf '[replicas] %s\n' "$*" >&2; }

wait_for() { # name, probe command...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "FATAL: $name did not answer within 60 s"
  exit 1
}

# One caller at a time. The servers started below must not inherit the lock's
# descriptor (9>&-), or they would hold it for as long as they run.
exec 9>/tmp/datamig-replicas.lock
flock 9

# A PostgreSQL standby streaming from the server on 5432, on 127.0.0.1:5433, for
# the replica-lag throttle's test (it pauses the standby's replay). Started once
# and left running; remade if it is down.
standby_dir=/var/lib/postgresql/datamig-standby
standby_up() { psql -h 127.0.0.1 -p 5433 -U postgres -d postgres -Atc 'SELECT pg_is_in_recovery()' | grep -qx t; }
# Up and streaming, and not hopelessly behind (a benchmark writes tens of GB of
# WAL; replaying it would take the tests' time and a core): else it is remade.
standby_fresh() {
  standby_up || return 1
  local behind
  behind=$(psql -h 127.0.0.1 -U postgres -d test -Atc \
    "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 1e15)::bigint FROM pg_stat_replication")
  [ "${behind:-1000000000000000}" -lt 1073741824 ]
}
if ! standby_fresh >/dev/null 2>&1; then
  log "the PostgreSQL standby on 5433 is down or far behind; making it"
  hba=$(psql -h 127.0.0.1 -U postgres -d test -Atc 'SHOW hba_file')
  if ! grep -qE '^host[[:space:]]+replication[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
    echo 'host replication all 127.0.0.1/32 trust' >>"$hba"
    psql -h 127.0.0.1 -U postgres -d test -Atc 'SELECT pg_reload_conf()' >/dev/null
  fi
  bin=$(psql -h 127.0.0.1 -U postgres -d test -Atc "SELECT setting FROM pg_config WHERE name = 'BINDIR'")
  if [ -f "$standby_dir/postmaster.pid" ]; then
    runuser -u postgres -- "$bin/pg_ctl" -D "$standby_dir" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$standby_dir"
  runuser -u postgres -- "$bin/pg_basebackup" -h 127.0.0.1 -p 5432 -U postgres -D "$standby_dir" -R -X stream -c fast
  cat >"$standby_dir/postgresql.conf" <<CONF
port = 5433
listen_addresses = '127.0.0.1'
unix_socket_directories = '/tmp'
hot_standby = on
shared_buffers = 32MB
CONF
  # A hot standby needs at least the primary's values of these.
  for setting in max_connections max_worker_processes max_wal_senders max_prepared_transactions max_locks_per_transaction; do
    echo "$setting = $(psql -h 127.0.0.1 -U postgres -d test -Atc "SHOW $setting")" >>"$standby_dir/postgresql.conf"
  done
  printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$standby_dir/pg_hba.conf"
  chown postgres:postgres "$standby_dir/postgresql.conf" "$standby_dir/pg_hba.conf"
  runuser -u postgres -- "$bin/pg_ctl" -D "$standby_dir" -l "$standby_dir/server.log" -w start >/dev/null 9>&-
fi
wait_for "the PostgreSQL standby" standby_up

# A MariaDB primary (binary log on) on 127.0.0.1:3307 and its replica on 3308,
# for the replica-lag throttle's test (it stops the replica's SQL thread). The
# server on 3306 keeps its binary log off; this pair is the tests' own.
pair=/var/lib/datamig-mariadb
pair_up() { # port
  mariadb -uroot -h127.0.0.1 -P"$1" -e 'SELECT 1' >/dev/null 2>&1
}
replicating() {
  local status
  status=$(mariadb -uroot -h127.0.0.1 -P3308 -e 'SHOW SLAVE STATUS\G' 2>/dev/null) || return 1
  grep -q 'Slave_IO_Running: Yes' <<<"$status" && grep -q 'Slave_SQL_Running: Yes' <<<"$status"
}
start_pair_server() { # name, port, server id, extra options...
  local name=$1 port=$2 id=$3; shift 3
  local dir=$pair/$name
  pair_up "$port" && return 0
  log "MariaDB $name on $port is down; starting it"
  if [ ! -d "$dir/mysql" ]; then
    mkdir -p "$dir" && chown mysql:mysql "$pair" "$dir"
    mariadb-install-db --user=mysql --datadir="$dir" --auth-root-authentication-method=normal \
      --skip-test-db >"$pair/$name-install.log" 2>&1
  fi
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$dir" --port="$port" \
    --bind-address=127.0.0.1 --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" \
    --log-error="$dir/error.log" --server-id="$id" --innodb-buffer-pool-size=64M "$@" \
    </dev/null >/dev/null 2>&1 9>&- &
}
mkdir -p "$pair"
start_pair_server primary 3307 1 --log-bin="$pair/primary/binlog" --binlog-format=ROW
start_pair_server replica 3308 2 --read-only=1 --relay-log="$pair/replica/relay"
wait_for "the MariaDB primary on 3307" pair_up 3307
wait_for "the MariaDB replica on 3308" pair_up 3308
if ! replicating; then
  mariadb -uroot -h127.0.0.1 -P3308 -e "STOP SLAVE; CHANGE MASTER TO MASTER_HOST='127.0.0.1', \
    MASTER_PORT=3307, MASTER_USER='root', MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos; START SLAVE"
fi
wait_for "MariaDB replication 3307 -> 3308" replicating

log "the replicas are up"
