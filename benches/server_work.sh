#!/bin/bash
# What the MariaDB server does for one backfill_emails run, per build: SHOW GLOBAL
# STATUS before and after each run (statements, rows read and written, fsyncs),
# builds alternating. Timing on a shared machine varies; these counts do not.
#
#   bash benches/server_work.sh BEFORE_FIXTURES AFTER_FIXTURES [ROWS]
#   bash benches/server_work.sh ../old/target/release/datamig-fixtures target/release/datamig-fixtures 300000
#
# PAIRS (default 2) sets how many before/after pairs run; the last line gives each
# build's median time.
#
# Run from the project's root (its migrations seed the table). Uses, and drops, the
# database datamig_server_work on the local MariaDB (root, no password).
set -euo pipefail
before=$1; after=$2; rows=${3:-300000}
db=datamig_server_work; url="mysql://root@127.0.0.1:3306/$db"
mysql -uroot -e "DROP DATABASE IF EXISTS $db; CREATE DATABASE $db"
trap 'mysql -uroot -e "DROP DATABASE IF EXISTS $db"' EXIT
"$after" --database-url "$url" schema upgrade head >/dev/null
"$after" --database-url "$url" run seed_demo_users --arg rows="$rows" --batch 10000 --quiet >/dev/null
mysql -uroot "$db" -e "CREATE TABLE users_seed AS SELECT * FROM users"
status() {
  mysql -uroot -N -e "SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions','Com_begin','Com_commit',
    'Com_select','Com_update','Com_insert','Com_set_option','Com_stmt_prepare','Com_stmt_execute',
    'Handler_read_key','Handler_read_next','Handler_update','Innodb_data_fsyncs')"
}
s0=$(mktemp); s1=$(mktemp)
times_before=(); times_after=()
for _ in $(seq "${PAIRS:-2}"); do for build in before after; do
  bin=$before; [ "$build" = after ] && bin=$after
  mysql -uroot "$db" -e "TRUNCATE users; INSERT INTO users SELECT * FROM users_seed; ANALYZE TABLE users" >/dev/null
  status | sort >"$s0"
  t0=$(date +%s%N)
  "$bin" --database-url "$url" run backfill_emails --batch 5000 --restart --quiet --analyze never >/dev/null
  t1=$(date +%s%N)
  status | sort >"$s1"
  ms=$(( (t1 - t0) / 1000000 ))
  if [ "$build" = before ]; then times_before+=("$ms"); else times_after+=("$ms"); fi
  echo "$build: $ms ms  $(join "$s0" "$s1" | awk '{printf "%s=%d ", $1, $3-$2}')"
done; done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }
echo "median: before $(median "${times_before[@]}") ms, after $(median "${times_after[@]}") ms"
