# Shared by the benchmarks that run the whole mart (scripts/bench-gateway.sh, bench-catalog.sh):
# source it from the repository root. It starts a private test bed, builds release products in
# .build-bench (a scratch path of its own, so a release build never waits on or blocks the debug
# one), runs `mart dev` with rate limits lifted on ports of its own, and stops it all on exit.
# Settings: BENCH_SECONDS (default 15) and BENCH_CONNECTIONS (default 32).
# shellcheck shell=bash

seconds=${BENCH_SECONDS:-15}
# A descriptor per connection: the load tools open thousands (concurrency 5,000), and so does the mart.
ulimit -n "$(ulimit -Hn)"
connections=${BENCH_CONNECTIONS:-32}
mart_pid=
# The processes of bench_start_processes, by name.
declare -A process_pids=()

scripts/deps.sh
for tool in wrk curl; do
  command -v "$tool" >/dev/null || { apt-get update >/dev/null && apt-get install -y "$tool" >/dev/null; }
done

# bench_testbed DIR [testbed.sh start options]: a private PostgreSQL (no broker) in DIR, its
# environment sourced, and everything stopped and removed when the script exits.
bench_testbed() {
  bench_dir=$1
  shift
  mkdir -p "$bench_dir"
  trap bench_cleanup EXIT
  scripts/testbed.sh start --dir "$bench_dir" --no-kafka "$@" >/dev/null
  # shellcheck disable=SC1091
  source "$bench_dir/env"
}

bench_cleanup() {
  [[ -z $mart_pid ]] || kill "$mart_pid" 2>/dev/null || true
  [[ -z $mart_pid ]] || wait "$mart_pid" 2>/dev/null || true
  local pid
  for pid in "${process_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${process_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/testbed.sh stop --dir "$bench_dir" --purge >/dev/null 2>&1 || true
}

# bench_build PRODUCT...: release builds; sets `bin` to their folder. BENCH_SKIP_BUILD=1 uses
# what .build-bench holds (a series of runs builds once, before the first).
bench_build() {
  local log="$bench_dir/build.log" product
  if [[ ${BENCH_SKIP_BUILD:-0} == 1 ]]; then
    bin=$(swift build -c release --scratch-path .build-bench --show-bin-path)
    return
  fi
  for product in "$@"; do
    swift build -c release --scratch-path .build-bench --product "$product" >"$log" 2>&1 || {
      tail -n 40 "$log"
      exit 1
    }
  done
  bin=$(swift build -c release --scratch-path .build-bench --show-bin-path)
}

# bench_gateway_config: the gateway's configuration for a benchmark: rate limits lifted, and with
# BENCH_ADMISSION=off admission control lifted too (the gateway's and, through the environment
# this exports, each service's), to measure overload as it was before admission control existed;
# BENCH_ADMISSION=fifo keeps the limits but not the short wait under load nor the priorities.
bench_gateway_config() {
  local admission=""
  case ${BENCH_ADMISSION:-on} in
    off)
      admission=',
  "admission": { "maxInFlight": 100000000, "maxQueued": 0, "maxQueueWait": "1ms" }'
      export MART_RPC_MAX_IN_FLIGHT=100000000 MART_RPC_MAX_QUEUED=0
      ;;
    fifo)
      # Admission control without the short wait for a standing queue (CoDel) or priorities.
      admission=',
  "admission": { "maxQueueWaitUnderLoad": "250ms", "priorityOperations": [] }'
      export MART_RPC_MAX_QUEUE_WAIT_UNDER_LOAD=500ms
      ;;
  esac
  cat >"$bench_dir/gateway.json" <<JSON
{
  "rateLimits": { "default": { "limit": 100000000, "window": "1s" } }$admission
}
JSON
}

# bench_start_mart: `mart dev` with the rate limits lifted, every port its own (so that a
# `make run` on this machine is not in the way), until /readyz answers. Sets `port` (the
# gateway's) and `user_port`, `product_port`, `inventory_port`.
bench_start_mart() {
  bench_gateway_config
  port=$((20000 + RANDOM % 10000))
  user_port=$((port + 1))
  product_port=$((port + 2))
  inventory_port=$((port + 3))
  # The order service's key, so that a benchmark can call inventory as the order service does;
  # `mart dev` makes up the others.
  MART_ORDER_SERVICE_KEY=$("$bin/mart" keys services | sed -n 's/^MART_ORDER_SERVICE_KEY=//p')
  export MART_ORDER_SERVICE_KEY
  MART_GATEWAY_PORT=$port MART_USER_PORT=$user_port MART_PRODUCT_PORT=$product_port \
    MART_INVENTORY_PORT=$inventory_port MART_ORDER_PORT=$((port + 4)) MART_PAYMENT_PORT=$((port + 5)) \
    MART_NOTIFICATION_PORT=$((port + 6)) MART_GATEWAY_CONFIG=$bench_dir/gateway.json MART_LOG_LEVEL=warning MART_PAYMENT_SANDBOX_ENABLED=true \
    "$bin/mart" dev >"$bench_dir/mart.log" 2>&1 &
  mart_pid=$!
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || {
    tail -n 40 "$bench_dir/mart.log"
    exit 1
  }
}

# Ports (the gateway's, the services' above it and their metrics ports 1000 above those) stay
# below 32768, where Linux picks the ephemeral ports of outgoing connections: after a run with
# thousands of connections, a random port above it was found taken ("Address already in use").

# bench_start_processes: the mart as production runs it: `mart serve` for each service and the
# gateway, separate processes (each with its own database pool) on the test bed's broker, with
# the rate limits lifted, until the gateway's /readyz answers. Sets `port` (the gateway's) and
# `process_pids`. The test bed must have been started with its broker.
bench_start_processes() {
  bench_gateway_config
  port=$((20000 + RANDOM % 10000))
  local -A ports=([user]=$((port + 1)) [product]=$((port + 2)) [inventory]=$((port + 3)) [order]=$((port + 4))
    [payment]=$((port + 5)) [notification]=$((port + 6)))
  local keys name upper
  keys=$("$bin/mart" keys services)
  local -a common=(MART_LOG_LEVEL=warning MART_PAYMENT_SANDBOX_ENABLED=true MART_GATEWAY_PORT="$port"
    "MART_SERVICE_PUBLIC_KEYS=$(sed -n 's/^MART_SERVICE_PUBLIC_KEYS=//p' <<<"$keys")")
  for name in "${!ports[@]}"; do
    upper=${name^^}
    common+=("MART_${upper}_PORT=${ports[$name]}" "MART_${upper}_ADDRESS=127.0.0.1:${ports[$name]}")
  done
  for name in user product inventory order payment notification gateway; do
    upper=${name^^}
    local key_variable="MART_${upper}_SERVICE_KEY"
    [[ $name == gateway ]] && key_variable=MART_GATEWAY_KEY
    env "${common[@]}" "$key_variable=$(sed -n "s/^$key_variable=//p" <<<"$keys")" \
      MART_GATEWAY_CONFIG="$bench_dir/gateway.json" MART_NOTIFICATION_MAILBOX_DIR="$bench_dir/mail" \
      "$bin/mart" serve "$name" >"$bench_dir/$name.log" 2>&1 &
    process_pids[$name]=$!
  done
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || {
    tail -n 20 "$bench_dir"/*.log
    exit 1
  }
}

# bench_pg_ceiling [CLIENTS]: this PostgreSQL's single-row insert commits per second with
# CLIENTS (default 8) pgbench clients for 10 s: the ceiling a figure is read against, measured in
# the same run. Needs the test bed's environment.
bench_pg_ceiling() {
  local clients=${1:-8}
  psql -q -h 127.0.0.1 -p "$MART_PG_PORT" -U postgres \
    -c 'DROP TABLE IF EXISTS bench_insert; CREATE TABLE bench_insert (id bigserial PRIMARY KEY, v int)' postgres
  echo 'INSERT INTO bench_insert (v) VALUES (1);' >"$bench_dir/insert.sql"
  "$MART_PG_BIN/pgbench" -n -h 127.0.0.1 -p "$MART_PG_PORT" -U postgres -c "$clients" -j "$clients" -T 10 \
    -f "$bench_dir/insert.sql" postgres 2>/dev/null | awk -v c="$clients" '/^tps/ {printf "== PostgreSQL ceiling: %.0f single-row insert commits/s (pgbench, %d clients)\n", $3, c}'
}

# bench_cpu_mark / bench_cpu_report: the CPU time (user + system) each mart process, the broker
# and PostgreSQL (its postmaster and backends) used between the two calls: where the work of a
# run went. A backend that ends between the two calls is not counted (the mart's pools keep
# theirs open).
declare -A cpu_marks=()
bench_cpu_ticks() { # PID: utime + stime of the process, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
bench_cpu_postgres() { # this test bed's PostgreSQL: its postmaster and its backends, no other cluster's
  local postmaster total=0 pid
  postmaster=$(head -n 1 "$MART_PG_DATA/postmaster.pid" 2>/dev/null) || { echo 0; return; }
  for pid in "$postmaster" $(pgrep -P "$postmaster"); do
    total=$((total + $(bench_cpu_ticks "$pid")))
  done
  echo "$total"
}
bench_cpu_mark() {
  local name
  for name in "${!process_pids[@]}"; do cpu_marks[$name]=$(bench_cpu_ticks "${process_pids[$name]}"); done
  [[ -z $mart_pid ]] || cpu_marks[mart]=$(bench_cpu_ticks "$mart_pid")
  cpu_marks[postgres]=$(bench_cpu_postgres)
  cpu_marks[tansu]=$(bench_cpu_ticks "$(cat "$bench_dir/tansu.pid" 2>/dev/null || echo 0)")
}
bench_cpu_report() {
  local name ticks line="" hz
  hz=$(getconf CLK_TCK)
  for name in user product inventory order payment notification gateway mart postgres tansu; do
    [[ -n ${cpu_marks[$name]:-} ]] || continue
    case $name in
      postgres) ticks=$(bench_cpu_postgres) ;;
      tansu) ticks=$(bench_cpu_ticks "$(cat "$bench_dir/tansu.pid" 2>/dev/null || echo 0)") ;;
      mart) ticks=$(bench_cpu_ticks "$mart_pid") ;;
      *) ticks=$(bench_cpu_ticks "${process_pids[$name]}") ;;
    esac
    line+=" $name $(awk -v t=$((ticks - cpu_marks[$name])) -v hz="$hz" 'BEGIN {printf "%.1f s", t / hz}')"
  done
  echo "== CPU used during the run:$line"
}

# bench_rss LABEL: the resident memory of each running mart process, one line.
bench_rss() {
  local label=$1 name line=""
  if ((${#process_pids[@]} > 0)); then
    for name in user product inventory order payment notification gateway; do
      line+=" $name $(awk '/VmRSS/ {printf "%.0f MB", $2 / 1024}' "/proc/${process_pids[$name]}/status" 2>/dev/null)"
    done
  elif [[ -n $mart_pid ]]; then
    line=" mart dev $(awk '/VmRSS/ {printf "%.0f MB", $2 / 1024}' "/proc/$mart_pid/status" 2>/dev/null)"
  fi
  echo "== RSS $label:$line"
}

bench_machine() {
  echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "== $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); ${connections} connections, ${seconds} s each"
}

# wrk_summary NAME ARGS...: one line of requests/s, p50 and p99 (and any non-2xx count).
wrk_summary() {
  local name=$1
  shift
  wrk -t2 -c"$connections" -d"${seconds}s" --latency "$@" | awk -v name="$name" '
    /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} /^Requests\/sec/ {rps=$2}
    /Non-2xx/ {bad=$NF}
    END {printf "%s: %.0f req/s, p50 %s, p99 %s%s\n", name, rps, p50, p99, (bad ? ", NON-2XX " bad : "")}'
}
