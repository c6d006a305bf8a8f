#!/usr/bin/env bash
# The order-flow benchmark (issue 10): orders placed -> PAID per second through the JSON edge,
# paid with the sandbox provider, and p50/p99/max from the POST of the order to PAID, at
# BENCH_CONCURRENCY customers (default 32), each with one order in flight (OrderFlowBenchmark).
# Against `mart dev` built in release (every service in one process, events in-process), a
# private PostgreSQL with fsync on (orders are writes), rate limits lifted. The catalogue is
# 100 products seeded with SQL, each with ten million units so that nothing runs short.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
concurrency=${BENCH_CONCURRENCY:-32}
products=100

bench_testbed .testbed/bench-orders --persistent
bench_build mart OrderFlowBenchmark
bench_start_mart

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
echo "== order flow: mart dev (in-process events), sandbox payments, $concurrency customers, ${seconds} s"
"$bin/OrderFlowBenchmark" --url "http://127.0.0.1:$port" --products "$bench_dir/products.txt" \
  --concurrency "$concurrency" --seconds "$seconds"
