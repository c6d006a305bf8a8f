#!/usr/bin/env bash
# The order-flow benchmark (issues 10 and 15): orders placed -> PAID per second through the JSON
# edge, paid with the sandbox provider, and p50/p99/max from the POST of the order to PAID
# (OrderFlowBenchmark), with each request type's latency and the errors by class.
#   BENCH_MART=dev (default)   `mart dev`: every service in one process, events in-process
#   BENCH_MART=processes       `mart serve` per service and the gateway, on the Tansu broker, as
#                              production runs it (each process with its own database pool)
#   BENCH_LOOP=closed (default) BENCH_CONCURRENCY customers (default 32), one order in flight each
#   BENCH_LOOP=open            BENCH_RATE orders arriving per second (default 20), whatever the
#                              mart's speed
#   BENCH_SECONDS (default 15), BENCH_ACCOUNTS (default: one per customer, at most 100)
#   BENCH_PROFILE=1            sample every process with perf during the run; print where the CPU went
#   BENCH_PG_CEILING=0         skip the PostgreSQL ceiling (pgbench, 10 s) printed beside the figures
# Release build, a private PostgreSQL with fsync on (orders are writes), rate limits lifted. The
# catalogue is 100 products seeded with SQL, each with ten million units so that nothing runs
# short. Each process's resident memory is printed before and after the run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
concurrency=${BENCH_CONCURRENCY:-32}
loop=${BENCH_LOOP:-closed}
rate=${BENCH_RATE:-20}
accounts=${BENCH_ACCOUNTS:-0}
mart_mode=${BENCH_MART:-dev}
products=100

case $mart_mode in
  dev)
    bench_testbed .testbed/bench-orders --persistent
    bench_build mart OrderFlowBenchmark
    bench_start_mart
    ;;
  processes)
    # The broker too: events cross it between the processes.
    bench_dir=.testbed/bench-orders
    mkdir -p "$bench_dir"
    trap bench_cleanup EXIT
    scripts/testbed.sh start --dir "$bench_dir" --persistent >/dev/null
    # shellcheck disable=SC1091
    source "$bench_dir/env"
    bench_build mart OrderFlowBenchmark
    bench_start_processes
    ;;
  *)
    echo "BENCH_MART must be dev or processes" >&2
    exit 2
    ;;
esac

psql -q -v ON_ERROR_STOP=1 "$MART_PRODUCT_DATABASE_URL" <<SQL
INSERT INTO products (id, sku, name, price_minor, currency)
SELECT md5('bench-order-product-' || n)::uuid, 'ORDER-BENCH-' || n, 'Bench product ' || n, 1000 + n * 37, 'ZAR'
FROM generate_series(1, $products) AS n;
SQL
psql -q -v ON_ERROR_STOP=1 "$MART_INVENTORY_DATABASE_URL" <<SQL
BEGIN;
INSERT INTO stock (product_id, on_hand)
SELECT md5('bench-order-product-' || n)::uuid, 10000000 FROM generate_series(1, $products) AS n;
INSERT INTO stock_movements (product_id, kind, reason, on_hand_delta, reserved_delta, on_hand_after,
                             reserved_after, actor_user_id, note)
SELECT md5('bench-order-product-' || n)::uuid, 'adjustment', 'restock', 10000000, 0, 10000000, 0,
       '00000000-0000-0000-0000-000000000001', 'bench-orders seed'
FROM generate_series(1, $products) AS n;
COMMIT;
SQL
psql -At -v ON_ERROR_STOP=1 "$MART_PRODUCT_DATABASE_URL" \
  -c "SELECT id FROM products WHERE sku LIKE 'ORDER-BENCH-%' ORDER BY sku" >"$bench_dir/products.txt"

bench_machine
[[ ${BENCH_PG_CEILING:-1} == 0 ]] || bench_pg_ceiling 8
if [[ $mart_mode == dev ]]; then what="mart dev (in-process events)"; else what="mart serve × 7 on the Tansu broker"; fi
if [[ $loop == closed ]]; then load="$concurrency customers (closed loop)"; else load="$rate orders/s arriving (open loop)"; fi
echo "== order flow: $what, sandbox payments, $load, ${seconds} s"
bench_rss "before"
bench_cpu_mark
if [[ ${BENCH_PROFILE:-0} == 1 ]]; then
  # Every process on the machine, sampled with call stacks, over the middle third of the run:
  # after the driver's sign-ups (scrypt, which otherwise dominates) and before the last orders.
  # Use BENCH_SECONDS of 40 or more, so that the sign-ups are over by then.
  (sleep $((seconds / 2)) && perf record -a -g -F 199 -o "$bench_dir/perf.data" -- sleep $((seconds / 3)) \
    >"$bench_dir/perf.log" 2>&1) &
  profiler=$!
fi
"$bin/OrderFlowBenchmark" --url "http://127.0.0.1:$port" --products "$bench_dir/products.txt" \
  --mode "$loop" --concurrency "$concurrency" --rate "$rate" --accounts "$accounts" --seconds "$seconds"
bench_rss "after"
bench_cpu_report
if [[ ${BENCH_PROFILE:-0} == 1 ]]; then
  wait "$profiler"
  # `head` closes the pipe before perf has written everything: not a failure.
  echo "== profile: CPU by library"
  { perf report -i "$bench_dir/perf.data" --no-children --sort dso --stdio 2>/dev/null || true; } |
    grep -E '^ +[0-9]' | head -15 || true
  echo "== profile: the hottest functions (self time; thread names: r-initiated-qos and oot.default-qos"
  echo "   are Swift's task executors, NIO-* event loops, tokio-rt-worker the broker)"
  { perf report -i "$bench_dir/perf.data" --no-children --sort comm,dso,sym --stdio 2>/dev/null || true; } |
    grep -E '^ +[0-9]' | head -40 | swift demangle --simplified | cut -c1-220 || true
fi
