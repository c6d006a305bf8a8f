#!/usr/bin/env bash
# `make run`: the whole mart on this machine, no Docker.
# Data lives in a local PostgreSQL cluster under .mart/ (git-ignored) and survives restarts.
# Database URLs already in the environment (MART_<SERVICE>_DATABASE_URL) are used as they are;
# KAFKA_BROKERS in the environment selects that broker, otherwise events stay in-process.
# Ctrl-C stops the mart and the cluster it started.
set -euo pipefail
cd "$(dirname "$0")/.."

services=(user product inventory order payment notification)
need_cluster=false
for service in "${services[@]}"; do
  var="MART_${service^^}_DATABASE_URL"
  [[ -n "${!var:-}" ]] || need_cluster=true
done

scripts/deps.sh
dir=.mart
if $need_cluster; then
  # The broker is not needed for `make run` (events are delivered in-process without KAFKA_BROKERS).
  scripts/testbed.sh start --dir "$dir" --persistent --no-kafka
  stop_cluster() { scripts/testbed.sh stop --dir "$dir" >/dev/null 2>&1 || true; }
  trap stop_cluster EXIT
  # Keep URLs the caller set; take the local cluster's for the rest.
  while IFS= read -r line; do
    [[ $line =~ ^export\ (MART_[A-Z]+_DATABASE_URL)=(.*)$ ]] || continue
    var=${BASH_REMATCH[1]}
    [[ -n "${!var:-}" ]] || export "$var=$(eval "printf '%s' ${BASH_REMATCH[2]}")"
  done <"$dir/env"
fi

swift build --product mart
bin="$(swift build --show-bin-path)/mart"
export MART_LOG_FORMAT="${MART_LOG_FORMAT:-text}"
echo "mart: gateway on http://127.0.0.1:${MART_GATEWAY_PORT:-8000} (Ctrl-C stops everything)"
# Not exec: the trap above must stop the cluster after the mart has drained.
"$bin" dev &
mart_pid=$!
trap 'kill -TERM $mart_pid 2>/dev/null || true' INT TERM
wait $mart_pid || true
wait $mart_pid 2>/dev/null || true
