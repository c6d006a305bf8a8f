#!/usr/bin/env bash
# Overload at the edge (issue 15): GET /v1/products through the gateway at rising concurrency
# (wrk), with the services as separate processes on the broker, as production runs them. For each
# concurrency it prints the request rate, p50/p99/max over every answer, the status mix, the
# client timeouts, the resident memory of every process before and after, and what a lone client
# polling beside the crowd saw (its answers and their p50/p99): the latency a request that is let
# in keeps while the rest are shed.
#   BENCH_ADMISSION=on (default)|off   off lifts admission control at the gateway and in every
#                                      service: the behaviour before it existed
#   BENCH_OVERLOAD_CONNECTIONS         the concurrencies, default "100 1000 5000"
#   BENCH_SECONDS                      per concurrency, default 15
# Release build, a private PostgreSQL, rate limits lifted, 100 products.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
bench_dir=.testbed/bench-overload
mkdir -p "$bench_dir"
trap bench_cleanup EXIT
scripts/testbed.sh start --dir "$bench_dir" --persistent >/dev/null
# shellcheck disable=SC1091
source "$bench_dir/env"
bench_build mart
bench_start_processes

psql -q -v ON_ERROR_STOP=1 "$MART_PRODUCT_DATABASE_URL" <<SQL
INSERT INTO products (id, sku, name, price_minor, currency)
SELECT md5('bench-overload-product-' || n)::uuid, 'OVERLOAD-' || n, 'Bench product ' || n, 1000 + n * 37, 'ZAR'
FROM generate_series(1, 100) AS n;
SQL

cat >"$bench_dir/statuses.lua" <<'LUA'
-- Counts the answers by status across wrk's threads.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total, keys = {}, {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do total[status] = (total[status] or 0) + count end
  end
  for status in pairs(total) do table.insert(keys, status) end
  table.sort(keys)
  local mix = {}
  for _, status in ipairs(keys) do table.insert(mix, status .. " x" .. total[status]) end
  local errors = summary.errors
  io.write(string.format("answers %s; client timeouts %d, connect errors %d, read/write errors %d\n",
    table.concat(mix, ", "), errors.timeout, errors.connect, errors.read + errors.write))
  io.write(string.format("all answers p50 %.1f ms, p99 %.1f ms, max %.1f ms; %.0f answers/s\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.requests / (summary.duration / 1e6)))
end
LUA

bench_machine
url="http://127.0.0.1:$port/v1/products?page_size=20"
echo "== overload: GET /v1/products, mart serve × 7 on the broker, admission ${BENCH_ADMISSION:-on}, ${seconds} s each"
for connections in ${BENCH_OVERLOAD_CONNECTIONS:-100 1000 5000}; do
  echo "-- concurrency $connections"
  bench_rss "before"
  # The lone client: one request at a time, each with a 15 s timeout, for as long as wrk runs.
  python3 - "$url" "$seconds" >"$bench_dir/probe.txt" <<'PY' &
import sys, time, urllib.error, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
time.sleep(1)  # let the crowd arrive first
samples, end = [], time.monotonic() + seconds - 2
while time.monotonic() < end:
    start = time.monotonic()
    try:
        status = urllib.request.urlopen(url, timeout=15).status
    except urllib.error.HTTPError as error:
        status = error.code
    except Exception:
        status = "timeout"
    samples.append((status, (time.monotonic() - start) * 1000))
    time.sleep(0.05)
def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else float("nan")
mix = {}
for status, _ in samples:
    mix[status] = mix.get(status, 0) + 1
ok = [ms for status, ms in samples if status == 200]
shed = [ms for status, ms in samples if status == 503]
print("lone client: %s; its 200s p50 %.1f / p99 %.1f ms; its 503s p50 %.1f ms"
      % (", ".join("%s x%d" % item for item in sorted(mix.items(), key=str)), pct(ok, 50), pct(ok, 99), pct(shed, 50)))
PY
  probe=$!
  wrk -t2 -c"$connections" -d"${seconds}s" --timeout 15s -s "$bench_dir/statuses.lua" "$url" | sed -n '/^answers/,$p'
  wait "$probe" || true
  cat "$bench_dir/probe.txt"
  bench_rss "after"
  sleep 3 # let the last shed connections close before the next step
done
