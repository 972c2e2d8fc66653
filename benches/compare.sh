#!/bin/bash
# Two builds of datamig measured in one sitting, alternating (BENCHMARKS.md,
# "before and after"): each checkout's release datamig-bench, in the order
# before, after (pass 1) then after, before (pass 2), per database.
#
#   bash benches/compare.sh BEFORE_DIR AFTER_DIR OUT_DIR [datamig-bench flags...]
#   bash benches/compare.sh ../old . /tmp/cmp --rows 1000000 --rounds 1 --only main,delete,workers
#
# Each checkout must have been built: cargo build --release --bin datamig-fixtures --bin datamig-bench
# (with CARGO_TARGET_DIR, say where: BEFORE_BIN / AFTER_BIN override the binaries).
# DBS (default "postgres mariadb") picks the databases.
set -euo pipefail
before=$(cd "$1" && pwd); after=$(cd "$2" && pwd); out=$3; shift 3
mkdir -p "$out"
bin_of() { # build → its datamig-bench
  case $1 in
    before) echo "${BEFORE_BIN:-$before/target/release/datamig-bench}" ;;
    after) echo "${AFTER_BIN:-$after/target/release/datamig-bench}" ;;
  esac
}
dir_of() { [ "$1" = before ] && echo "$before" || echo "$after"; }
run() { # build db pass flags...
  local build=$1 db=$2 pass=$3 t0
  shift 3
  t0=$(date +%s)
  (cd "$(dir_of "$build")" && "$(bin_of "$build")" --db "$db" "$@") \
    >"$out/$build-$db-$pass.md" 2>"$out/$build-$db-$pass.err"
  echo "$build $db pass $pass: $(( $(date +%s) - t0 )) s" | tee -a "$out/progress.log"
}
for db in ${DBS:-postgres mariadb}; do
  run before "$db" 1 "$@"; run after "$db" 1 "$@"
  run after "$db" 2 "$@"; run before "$db" 2 "$@"
done
