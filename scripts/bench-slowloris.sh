#!/usr/bin/env bash
# The slowloris measurement (issue 13): how many slow connections the gateway holds, and whether a
# normal client is still answered, while scripts/slowloris.py opens connections that send a partial
# request header one byte every few seconds. Runs `mart serve gateway` alone (no services, no
# database: /healthz needs none) from the debug build, on a port of its own.
#   SLOWLORIS_CONNECTIONS (default 4000), SLOWLORIS_RATE (new connections/s, default 100),
#   SLOWLORIS_INTERVAL (s between bytes, default 5), SLOWLORIS_SECONDS (default 60),
#   GATEWAY_FILE_LIMIT (the gateway's open-file limit, default: this shell's `ulimit -n`),
#   MART_GATEWAY_CONFIG (a gateway policy file, e.g. with other timeouts), SCRATCH_PATH (default .build).
set -euo pipefail
cd "$(dirname "$0")/.."

scratch=${SCRATCH_PATH:-.build}
log=$(mktemp)
swift build --product mart --scratch-path "$scratch" >"$log" 2>&1 || {
  cat "$log"
  exit 1
}
bin="$(swift build --scratch-path "$scratch" --show-bin-path 2>/dev/null)/mart"
port=$((20000 + RANDOM % 20000))
gateway_pid=
cleanup() {
  [[ -z $gateway_pid ]] || kill "$gateway_pid" 2>/dev/null || true
  [[ -z $gateway_pid ]] || wait "$gateway_pid" 2>/dev/null || true
  rm -f "$log"
}
trap cleanup EXIT

file_limit=${GATEWAY_FILE_LIMIT:-$(ulimit -n)}
# The gateway's key set; nothing it is asked here needs a service.
eval "$("$bin" keys services | sed 's/^/export /')"
(
  ulimit -n "$file_limit"
  MART_GATEWAY_PORT=$port MART_LOG_LEVEL=error exec "$bin" serve gateway
) >"$log" 2>&1 &
gateway_pid=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$port/healthz" >/dev/null || {
  cat "$log"
  exit 1
}

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "== $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), debug build; gateway open-file limit $file_limit"
python3 scripts/slowloris.py --port "$port" --connections "${SLOWLORIS_CONNECTIONS:-4000}" \
  --rate "${SLOWLORIS_RATE:-100}" --interval "${SLOWLORIS_INTERVAL:-5}" --duration "${SLOWLORIS_SECONDS:-60}"
kill -0 "$gateway_pid" 2>/dev/null || {
  echo "the gateway died:"
  tail -n 20 "$log"
}
