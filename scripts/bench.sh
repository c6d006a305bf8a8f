#!/usr/bin/env bash
# `make bench`: the benchmarks, against a private PostgreSQL (fsync on) and the Tansu broker.
# Prints figures to paste into docs/PERFORMANCE.md with this machine's description.
set -euo pipefail
cd "$(dirname "$0")/.."
writers=${BENCH_WRITERS:-8}

scripts/deps.sh
dir=.testbed/bench
cleanup() { scripts/testbed.sh stop --dir "$dir" --purge >/dev/null 2>&1 || true; }
mkdir -p "$dir"
trap cleanup EXIT
scripts/testbed.sh start --dir "$dir" --persistent >/dev/null
# shellcheck disable=SC1091
source "$dir/env"

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "== $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# Ceiling 1: single-row insert commits per second on the same PostgreSQL.
psql -q -h 127.0.0.1 -p "$MART_PG_PORT" -U postgres -c 'DROP TABLE IF EXISTS bench_insert; CREATE TABLE bench_insert (id bigserial PRIMARY KEY, v int)' postgres
echo 'INSERT INTO bench_insert (v) VALUES (1);' >"$dir/insert.sql"
pg_tps() {
  "$MART_PG_BIN/pgbench" -n -h 127.0.0.1 -p "$MART_PG_PORT" -U postgres -c "$1" -j "$1" -T 10 -f "$dir/insert.sql" postgres 2>/dev/null |
    awk '/^tps/ {printf "%.0f", $3}'
}
tps1=$(pg_tps 1)
tpsn=$(pg_tps "$writers")
echo "pgbench single-row insert commits: $tps1/s (1 client), $tpsn/s ($writers clients)"

# A scratch path of its own, so a release build never waits on (or blocks) the debug one.
log="$dir/build.log"
swift build -c release --scratch-path .build-bench --product EventBackboneBenchmark >"$log" 2>&1 || {
  tail -n 40 "$log"
  exit 1
}
BENCH_PG_CEILING=$tpsn BENCH_WRITERS=$writers "$(swift build -c release --scratch-path .build-bench --show-bin-path)/EventBackboneBenchmark"
