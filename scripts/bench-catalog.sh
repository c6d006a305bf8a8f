#!/usr/bin/env bash
# The catalog and inventory benchmark (issue 5):
#   (a) ReserveStock per second over gRPC with a service token, many concurrent callers, one unit
#       per reservation, each for an order id of its own: (a1) all on one hot product, (a2) spread
#       over 1,000 products                                                  (ReservationBenchmark)
#   (b) ListProducts through the gateway on a 10,000-product catalog, requests per second and
#       p50/p99: (b1) the first page of the plain list, (b2) a category filter (20 categories in
#       turn), (b3) a full-text search (12 queries in turn)                    (wrk)
# against `mart dev` built in release, a private PostgreSQL (fsync on: reservations are writes) and
# no broker (events are delivered in-process). Rate limits are lifted for the run with a gateway
# config of its own. The catalog is seeded with SQL (no events, so the stock rows of the 1,001
# reserved products are seeded with SQL too, each with the ledger row the schema's triggers want).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
products=10000

# fsync on: reservations are writes.
bench_testbed .testbed/bench-catalog --persistent
bench_build mart ReservationBenchmark
bench_start_mart

# The catalog: 20 categories and 10,000 active products with searchable names and descriptions
# (ids md5('bench-product-<n>'), so that the inventory seed can name the same products).
psql -q -v ON_ERROR_STOP=1 "$MART_PRODUCT_DATABASE_URL" <<SQL
BEGIN;
INSERT INTO categories (name, slug)
SELECT 'Category ' || n, 'category-' || n FROM generate_series(1, 20) AS n;
INSERT INTO products (id, sku, name, description, price_minor, currency, category_id, brand, attributes,
                      created_at, updated_at)
SELECT md5('bench-product-' || n)::uuid,
       'BENCH-' || lpad(n::text, 5, '0'),
       initcap(w.adjectives[1 + n % 10] || ' ' || w.colours[1 + (n / 10) % 8] || ' ' || w.nouns[1 + (n / 80) % 20])
         || ' ' || n,
       'A ' || w.adjectives[1 + (n * 7) % 10] || ' ' || w.nouns[1 + n % 20] || ' in ' || w.colours[1 + n % 8]
         || ', made to last and easy to clean. Item ' || n || '.',
       100 + (n * 7919) % 500000, 'ZAR', c.id, 'Brand ' || (1 + n % 50),
       jsonb_build_object('colour', w.colours[1 + n % 8]),
       now() - n * interval '1 second', now() - n * interval '1 second'
FROM generate_series(1, $products) AS n
CROSS JOIN (SELECT
  ARRAY['kettle', 'toaster', 'mug', 'blender', 'pan', 'knife', 'lamp', 'chair', 'table', 'towel',
        'pillow', 'blanket', 'shirt', 'jacket', 'sneaker', 'backpack', 'watch', 'speaker', 'charger',
        'cable'] AS nouns,
  ARRAY['steel', 'cotton', 'wooden', 'compact', 'classic', 'premium', 'eco', 'smart', 'vintage',
        'travel'] AS adjectives,
  ARRAY['red', 'blue', 'black', 'white', 'green', 'grey', 'yellow', 'orange'] AS colours) AS w
JOIN categories AS c ON c.slug = 'category-' || (1 + n % 20);
COMMIT;
ANALYZE categories;
ANALYZE products;
SQL

# Stock for the first 1,001 products (the hot one and 1,000 for the spread run): a million units
# each, so that no reservation runs short, with the restock movement the ledger triggers check.
psql -q -v ON_ERROR_STOP=1 "$MART_INVENTORY_DATABASE_URL" <<'SQL'
BEGIN;
INSERT INTO stock (product_id, on_hand)
SELECT md5('bench-product-' || n)::uuid, 1000000 FROM generate_series(1, 1001) AS n;
INSERT INTO stock_movements (product_id, kind, reason, on_hand_delta, reserved_delta, on_hand_after,
                             reserved_after, actor_user_id, note)
SELECT md5('bench-product-' || n)::uuid, 'adjustment', 'restock', 1000000, 0, 1000000, 0,
       '00000000-0000-0000-0000-000000000001', 'bench-catalog seed'
FROM generate_series(1, 1001) AS n;
COMMIT;
ANALYZE stock;
SQL
psql -At -v ON_ERROR_STOP=1 "$MART_INVENTORY_DATABASE_URL" \
  -c "SELECT md5('bench-product-' || n)::uuid FROM generate_series(1, 1001) AS n ORDER BY n" >"$bench_dir/products.txt"

# The URLs of (b2) and (b3), taken in turn by each wrk thread.
base="http://127.0.0.1:$port"
mapfile -t categories < <(psql -At "$MART_PRODUCT_DATABASE_URL" -c "SELECT id FROM categories ORDER BY name")
queries=(kettle "steel kettle" lamp "blue lamp" "wooden chair" towel "premium speaker" backpack "red mug"
  "travel charger" "easy to clean" "vintage watch")
lua_paths() {
  echo "local paths = {"
  for path in "$@"; do echo "  \"$path\","; done
  cat <<'LUA'
}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
LUA
}
category_paths=()
for id in "${categories[@]}"; do category_paths+=("/v1/products?category_id=$id"); done
search_paths=()
for query in "${queries[@]}"; do search_paths+=("/v1/products?query=${query// /%20}"); done
lua_paths "${category_paths[@]}" >"$bench_dir/category.lua"
lua_paths "${search_paths[@]}" >"$bench_dir/search.lua"

# Sanity: every URL answers 200 with a full page before anything is timed.
count() { curl -fs "$base$1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("products", [])))'; }
listed=$(count "/v1/products")
in_category=$(count "${category_paths[0]}")
found=$(count "${search_paths[0]}")
[[ $listed == 20 && $in_category == 20 && $found == 20 ]] || {
  echo "unexpected pages: list $listed, category $in_category, search $found" >&2
  exit 1
}

bench_machine
echo "== $products products, 20 categories"

wrk_summary "(b1) gateway GET /v1/products (first page, newest)" "$base/v1/products"
wrk_summary "(b2) gateway GET /v1/products?category_id=… (20 categories)" -s "$bench_dir/category.lua" "$base"
wrk_summary "(b3) gateway GET /v1/products?query=… (12 searches)" -s "$bench_dir/search.lua" "$base"

# The writes last, so that the reads above run on a quiet database.
BENCH_TARGET=127.0.0.1:$inventory_port BENCH_PRODUCTS_FILE=$bench_dir/products.txt BENCH_CONNECTIONS=$connections \
  BENCH_SECONDS=$seconds "$bin/ReservationBenchmark"
