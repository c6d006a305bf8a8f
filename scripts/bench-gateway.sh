#!/usr/bin/env bash
# The gateway benchmark (issue 4): requests per second and p50/p99 on loopback of
#   (a) an authenticated read through the gateway: GET /v1/users/me   (wrk)
#   (b) the same RPC called directly over gRPC: UserService.GetMe    (GRPCReadBenchmark)
#   (c) a bare Hummingbird JSON route in the same binary: /healthz   (wrk)
# against `mart dev` built in release, a private PostgreSQL, and no broker (the read path
# publishes nothing). Rate limits are lifted for the run with a gateway config of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

bench_testbed .testbed/bench-gateway
bench_build mart GRPCReadBenchmark
bench_start_mart

email="bench-$RANDOM@example.com"
curl -fs -X POST "http://127.0.0.1:$port/v1/auth/register" -H 'Content-Type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"bench-password-1\",\"fullName\":\"Bench\"}" >/dev/null
token=$(curl -fs -X POST "http://127.0.0.1:$port/v1/auth/login" -H 'Content-Type: application/json' \
  -d "{\"email\":\"$email\",\"password\":\"bench-password-1\"}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"]["accessToken"])')

bench_machine

wrk_summary "(a) gateway GET /v1/users/me" -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v1/users/me"
BENCH_TARGET=127.0.0.1:$user_port BENCH_TOKEN=$token BENCH_CONNECTIONS=$connections BENCH_SECONDS=$seconds \
  "$bin/GRPCReadBenchmark" | sed 's/^/(b) /'
wrk_summary "(c) bare route GET /healthz" "http://127.0.0.1:$port/healthz"
