#!/usr/bin/env bash
# Measures two promises of `datamig run`, for the README and the issue notes:
#   1. memory is bounded by the batch size: peak RSS of backfill_emails over N and 5N rows;
#   2. resuming does only the remaining work: a run resumed at 90% against a full run.
#
# Usage (from the repository root, after `cargo build --release`):
#   bash benches/resume_and_memory.sh sqlite            # a temporary SQLite file
#   bash benches/resume_and_memory.sh postgres          # database datamig_bench on 127.0.0.1:5432
#   bash benches/resume_and_memory.sh mariadb           # database datamig_bench on 127.0.0.1:3306
# ROWS (default 1000000) and BATCH (default 5000) may be set in the environment.
set -euo pipefail
kind=${1:-sqlite}
rows=${ROWS:-1000000}
batch=${BATCH:-5000}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release/datamig
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/migrations" "$work/"
cd "$work"

sql() { # run one SQL statement against the bench database
  case $kind in
    sqlite) python3 -c "import sqlite3,sys; c=sqlite3.connect('bench.db'); r=c.execute(sys.argv[1]).fetchall(); c.commit(); print(r[0][0] if r else '')" "$1" ;;
    postgres) psql -h 127.0.0.1 -U postgres -d datamig_bench -Atqc "$1" ;;
    mariadb) mariadb -uroot -h127.0.0.1 -N datamig_bench -e "$1" ;;
  esac
}

fresh() {
  case $kind in
    sqlite) rm -f bench.db*; export DATABASE_URL=sqlite:bench.db ;;
    postgres) psql -h 127.0.0.1 -U postgres -d test -qc 'DROP DATABASE IF EXISTS datamig_bench' -c 'CREATE DATABASE datamig_bench'
              export DATABASE_URL=postgres://postgres@127.0.0.1:5432/datamig_bench ;;
    mariadb) mariadb -uroot -h127.0.0.1 -e 'DROP DATABASE IF EXISTS datamig_bench; CREATE DATABASE datamig_bench'
             export DATABASE_URL=mysql://root@127.0.0.1:3306/datamig_bench ;;
    *) echo "usage: $0 sqlite|postgres|mariadb" >&2; exit 2 ;;
  esac
  "$bin" schema upgrade head >/dev/null
  "$bin" run seed_demo_users --arg "rows=$1" --batch 50000 --progress none >/dev/null 2>&1
}

# Prints "seconds peak_rss_kb" of a full backfill.
full_run() {
  /usr/bin/time -f "%e %M" -o time.txt "$bin" run backfill_emails --batch "$batch" --progress none --restart >/dev/null 2>&1
  cat time.txt
}

echo "datamig resume and memory check: $kind, batch $batch, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
for n in "$rows" $((rows * 5)); do
  fresh "$n"
  read -r secs rss < <(full_run)
  echo "full run, $n rows: ${secs} s, peak RSS ${rss} KB"
  if [ "$n" = "$rows" ]; then
    # Interrupt a fresh run at 90% with SIGTERM, then time the resume.
    sql "UPDATE users SET email_normalized = NULL" >/dev/null
    "$bin" run backfill_emails --batch "$batch" --progress none --restart >/dev/null 2>&1 &
    pid=$!
    until [ "$(sql "SELECT coalesce(max(rows_done), 0) FROM datamig_runs WHERE state = 'running'")" -ge $((n * 9 / 10)) ]; do
      sleep 0.05
    done
    kill -TERM "$pid"; wait "$pid" || true
    done_rows=$(sql "SELECT rows_done FROM datamig_runs ORDER BY id DESC LIMIT 1")
    /usr/bin/time -f "%e" -o time.txt "$bin" run backfill_emails --batch "$batch" --progress none >/dev/null 2>&1
    echo "resumed at $done_rows of $n rows: $(cat time.txt) s (full run: ${secs} s)"
  fi
done
