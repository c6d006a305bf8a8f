#!/usr/bin/env bash
# The gateway benchmark (issue 4): requests per second and p50/p99 on loopback of
#   (a) an authenticated read through the gateway: GET /v1/users/me   (wrk)
#   (b) the same RPC called directly over gRPC: UserService.GetMe    (GRPCReadBenchmark)
#   (c) a bare Hummingbird JSON route in the same binary: /healthz   (wrk)
# against `mart dev` built in release, a private PostgreSQL, and no broker (the read path
# publishes nothing). Rate limits are lifted for the run with a gateway config of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${BENCH_SECONDS:-15}
connections=${BENCH_CONNECTIONS:-32}

scripts/deps.sh
for tool in wrk curl; do
  command -v "$tool" >/dev/null || { apt-get update >/dev/null && apt-get install -y "$tool" >/dev/null; }
done

dir=.testbed/bench-gateway
mart_pid=
cleanup() {
  [[ -z $mart_pid ]] || kill "$mart_pid" 2>/dev/null || true
  [[ -z $mart_pid ]] || wait "$mart_pid" 2>/dev/null || true
  scripts/testbed.sh stop --dir "$dir" --purge >/dev/null 2>&1 || true
}
mkdir -p "$dir"
trap cleanup EXIT
scripts/testbed.sh start --dir "$dir" --no-kafka >/dev/null
# shellcheck disable=SC1091
source "$dir/env"

log="$dir/build.log"
for product in mart GRPCReadBenchmark; do
  swift build -c release --scratch-path .build-bench --product "$product" >"$log" 2>&1 || {
    tail -n 40 "$log"
    exit 1
  }
done
bin=$(swift build -c release --scratch-path .build-bench --show-bin-path)

cat >"$dir/gateway.json" <<'JSON'
{
  "rateLimits": { "default": { "limit": 100000000, "window": "1s" } }
}
JSON
port=$((20000 + RANDOM % 20000))
user_port=$((port + 1))
MART_GATEWAY_PORT=$port MART_USER_PORT=$user_port MART_GATEWAY_CONFIG=$dir/gateway.json MART_LOG_LEVEL=warning \
  "$bin/mart" dev >"$dir/mart.log" 2>&1 &
mart_pid=$!
for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { tail -n 40 "$dir/mart.log"; exit 1; }

email="bench-$RANDOM@example.com"
token=$(curl -fs -X POST "http://127.0.0.1:$port/v1/auth/register" -H 'Content-Type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"bench-password-1\",\"fullName\":\"Bench\"}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"]["accessToken"])')

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "== $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); ${connections} connections, ${seconds} s each"

# wrk_summary NAME ARGS...: one line of requests/s, p50 and p99.
wrk_summary() {
  local name=$1
  shift
  wrk -t2 -c"$connections" -d"${seconds}s" --latency "$@" | awk -v name="$name" '
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /^Requests\/sec/ {rps=$2}
    /Non-2xx/ {bad=$NF}
    END {printf "%s: %.0f req/s, p50 %s, p99 %s%s\n", name, rps, p50, p99, (bad ? ", NON-2XX " bad : "")}'
}
wrk_summary "(a) gateway GET /v1/users/me" -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/users/me"
BENCH_TARGET=127.0.0.1:$user_port BENCH_TOKEN=$token BENCH_CONNECTIONS=$connections BENCH_SECONDS=$seconds \
  "$bin/GRPCReadBenchmark" | sed 's/^/(b) /'
wrk_summary "(c) bare route GET /healthz" "http://127.0.0.1:$port/healthz"
