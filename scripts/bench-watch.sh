#!/usr/bin/env bash
# Samples a running order-flow benchmark (scripts/bench-orders.sh) from beside it, every INTERVAL
# seconds, COUNT times: the order saga's open steps by kind with how long the oldest due one has
# waited, the orders by status, the unpublished outbox rows of order, payment and inventory with
# the oldest one's age, and each process's resident memory. Where a run's time goes when
# placed -> PAID grows (issue 15: the saga backlog at 40 orders/s, the soak's growing order
# service). Usage, from the repository root, while the benchmark runs:
#   scripts/bench-watch.sh [.testbed/bench-orders] [INTERVAL=15] [COUNT=20]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.testbed/bench-orders}
interval=${2:-15}
count=${3:-20}
# shellcheck disable=SC1091
source "$dir/env"
for ((i = 1; i <= count; i++)); do
  echo "== $(date -u +%H:%M:%S)"
  psql -At -F ' ' "$MART_ORDER_DATABASE_URL" -c "
    SELECT 'saga', kind, count(*),
           round(coalesce(extract(epoch FROM now() - min(due_at) FILTER (WHERE due_at <= now())), 0)::numeric, 2)
    FROM order_saga_steps WHERE done_at IS NULL GROUP BY kind" | tr '\n' ';'
  echo
  psql -At -F ' ' "$MART_ORDER_DATABASE_URL" -c "SELECT 'orders', status, count(*) FROM orders GROUP BY status" |
    tr '\n' ';'
  echo
  for service in order payment inventory; do
    url_variable="MART_${service^^}_DATABASE_URL"
    echo -n "outbox $service: "
    psql -At -F ' ' "${!url_variable}" -c "
      SELECT count(*), round(coalesce(extract(epoch FROM now() - min(created_at)), 0)::numeric, 2)
      FROM outbox WHERE published_at IS NULL"
  done
  ps -eo rss,args | awk '/mart serve/ && !/awk/ {printf "%s %d MB  ", $NF, $1 / 1024} END {print ""}'
  ((i == count)) || sleep "$interval"
done
