#!/usr/bin/env bash
# What tracing costs (issue 17): the gateway benchmark (scripts/bench-gateway.sh) and the order
# flow on seven processes (scripts/bench-orders.sh, BENCH_MART=processes) with tracing off, then
# on at 100 % sampling, exporting over OTLP/HTTP (protobuf) to scripts/otlp-sink.py, a sink that
# answers at once. Build first (`scripts/bench-gateway.sh` builds; or BENCH_SKIP_BUILD=1 after a
# release build in .build-bench). Settings: BENCH_SECONDS (default 30), BENCH_RUNS (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_SECONDS=${BENCH_SECONDS:-30}
runs=${BENCH_RUNS:-1}
sink_port=$((20000 + RANDOM % 10000))
scripts/otlp-sink.py "$sink_port" >.testbed/otlp-sink.out 2>&1 &
sink=$!
trap 'kill $sink 2>/dev/null || true' EXIT

measure() {
  local label=$1
  echo "=== $label: gateway"
  scripts/bench-gateway.sh 2>&1 | grep -E "^==|^\(a\)|^\(b\)|requests/s|p50" || true
  echo "=== $label: order flow, mart serve x 7"
  BENCH_MART=processes BENCH_PG_CEILING=0 scripts/bench-orders.sh 2>&1 |
    grep -E "^== CPU|orders placed|placed -> PAID|errors" || true
}

for ((run = 1; run <= runs; run++)); do
  (
    unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    measure "run $run, tracing off"
  )
  (
    export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$sink_port OTEL_TRACES_SAMPLER=always_on
    measure "run $run, tracing on (100 %)"
  )
done
kill $sink
wait $sink 2>/dev/null || true
echo "=== OTLP sink: $(cat .testbed/otlp-sink.out)"
