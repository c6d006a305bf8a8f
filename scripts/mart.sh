#!/usr/bin/env bash
# scripts/mart.sh ARGS...: runs `mart ARGS...` (debug build) against the databases `make run`
# uses: the local cluster under .mart/ for every service whose MART_<SERVICE>_DATABASE_URL is
# not set. `make admin` and `make seed` are this script; so a command printed by `make run`
# works as printed, with no environment to source first.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/local-env.sh
source scripts/local-env.sh

if needs_local_cluster; then
  if [[ ! -f $LOCAL_DIR/env ]] || ! scripts/testbed.sh status --dir "$LOCAL_DIR" >/dev/null 2>&1; then
    echo "mart: the local database of \`make run\` is not running: start \`make run\` (in another terminal) first," >&2
    echo "      or set MART_<SERVICE>_DATABASE_URL for the databases to use" >&2
    exit 1
  fi
  export_local_database_urls
fi
swift build --product mart 2>&1 | grep -E 'error|warning: unre' >&2 || true
bin="$(swift build --show-bin-path)/mart"
[[ -x $bin ]] || { echo "mart: the build failed (run \`swift build --product mart\`)" >&2; exit 1; }
export MART_LOG_FORMAT="${MART_LOG_FORMAT:-text}" MART_LOG_LEVEL="${MART_LOG_LEVEL:-warning}"
exec "$bin" "$@"
