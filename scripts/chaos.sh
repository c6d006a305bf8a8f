#!/usr/bin/env bash
# `make chaos` (issue 15): the mart as seven processes (`mart serve <service>` and the gateway) on
# a private PostgreSQL and a Tansu broker, driven with orders while processes are killed, the
# broker is frozen and PostgreSQL is stopped; then drained and checked against its invariants
# (scripts/chaos.py does the driving, the faults, the checks and the report).
#
# Settings (environment): CHAOS_ORDERS (default 2000; 200 for a short run), CHAOS_RATE (orders
# started per second, default 12), CHAOS_THREADS (client threads, default 24), CHAOS_KILLS
# (SIGKILLs per process, default 3), CHAOS_TERMS (SIGTERMs per process, default 1),
# CHAOS_PAYMENT_WINDOW (the order's payment deadline, default 25s), CHAOS_DRAIN_TIMEOUT (seconds,
# default 240), CHAOS_BROKER_FREEZE and CHAOS_PG_STOP (seconds, default 20 and 10), CHAOS_SEED
# (random seed), CHAOS_KEEP=1 (leave the test bed running afterwards), CHAOS_MART_BINARY (a `mart`
# already built, instead of the release build in .build-chaos).
# The report is printed and written to .testbed/chaos/report.txt; the exit status is 1 when an
# invariant failed.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=$PWD/.testbed/chaos
scratch=$PWD/.build-chaos
mkdir -p "$dir"

cleanup() {
  if [[ ${CHAOS_KEEP:-0} != 1 ]]; then scripts/testbed.sh stop --dir "$dir" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if [[ -n ${CHAOS_MART_BINARY:-} ]]; then
  # `make test` runs the short version on the debug build it has just made.
  bin=$CHAOS_MART_BINARY
else
  echo "chaos: release build ($scratch)"
  swift build -c release --scratch-path "$scratch" --product mart >"$dir/build.log" 2>&1 ||
    { tail -n 40 "$dir/build.log" >&2; exit 1; }
  bin=$(swift build -c release --scratch-path "$scratch" --show-bin-path)/mart
fi

echo "chaos: test bed (PostgreSQL + Tansu) in $dir"
# A fresh cluster and broker each run: the invariants are about this run's data only.
scripts/testbed.sh stop --dir "$dir" --purge >/dev/null 2>&1 || true
mkdir -p "$dir"
scripts/testbed.sh start --dir "$dir" >"$dir/testbed.log" 2>&1 || { cat "$dir/testbed.log" >&2; exit 1; }
# shellcheck disable=SC1091
source "$dir/env"

# Secrets, fresh per run: one private key per process (chaos.py gives each only its own) and the
# user service's key-encryption key (the test bed's).
"$bin" keys services >"$dir/keys.env"

cache=$PWD/.testbed/cache
export PYTHONPATH="$cache/pkg/confluent-kafka${PYTHONPATH:+:$PYTHONPATH}"
export CHAOS_DIR=$dir CHAOS_BIN=$bin
python3 scripts/chaos.py
