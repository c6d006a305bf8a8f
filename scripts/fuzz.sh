#!/usr/bin/env bash
# scripts/fuzz.sh — `make fuzz`: schemathesis against the running mart's /openapi.json, once with a
# customer's token and once with an admin's, so that the admin operations are exercised past the
# permission check. It fails on any 5xx and on any response the document does not describe.
#
#   scripts/fuzz.sh
#
# It builds `mart` (debug, scratch path .build), starts a private PostgreSQL (no broker) in
# .testbed/run-schemathesis and `mart dev` on ports of its own with the rate limits lifted and the
# sandbox payment provider on, makes an admin with `mart users create-admin` and a customer through
# Register + Login, loads the demo shop (`mart seed demo`) so that the reads have data, runs
# schemathesis (PyPI, pinned, in the venv .testbed/cache/venv-schemathesis) twice and stops
# everything on exit. Reports (JUnit, and the failures as pytest files) go to
# .testbed/run-schemathesis/report-{customer,admin} and are removed with the test bed on exit
# unless FUZZ_KEEP=1.
# Settings: FUZZ_EXAMPLES (test cases per operation and phase, default 200), FUZZ_SEED (a
# schemathesis seed, to reproduce a run), FUZZ_WORKERS (default 1).
#
# The checks, and the few findings configured away, are in scripts/schemathesis.toml: only the
# response-side checks run; the request-side ones belong to the work on the API document.
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO_ROOT"

SCHEMATHESIS=schemathesis==4.32.5
VENV="$REPO_ROOT/.testbed/cache/venv-schemathesis"
examples=${FUZZ_EXAMPLES:-200}
# One worker: with two, schemathesis' generator threads race in CPython 3.11's ast module
# ("AST constructor recursion depth mismatch", a runtime error of the tool, not a finding).
workers=${FUZZ_WORKERS:-1}

say() { printf 'fuzz: %s\n' "$*"; }
die() { printf 'fuzz: error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

# schemathesis in a virtualenv of its own, made once, like the other PyPI tools (scripts/deps.sh).
install_schemathesis() {
  local want=${SCHEMATHESIS#*==}
  if [[ -x $VENV/bin/st ]] &&
    [[ $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null) == "$want" ]]; then
    return 0
  fi
  say "pip install $SCHEMATHESIS (into ${VENV#"$REPO_ROOT"/})"
  local log
  log=$(mktemp "${TMPDIR:-/tmp}/mart-fuzz-pip.XXXXXX")
  rm -rf "$VENV"
  if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install --disable-pip-version-check -q "$SCHEMATHESIS"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "could not install $SCHEMATHESIS (is PyPI reachable? python3-venv installed?)"
  fi
  rm -f "$log"
}

# api METHOD PATH JSON [TOKEN]: the response body; fails on a non-2xx answer.
api() {
  local -a auth=()
  [[ -z ${4:-} ]] || auth=(-H "Authorization: Bearer $4")
  curl -fsS -X "$1" "http://127.0.0.1:$port$2" -H 'Content-Type: application/json' "${auth[@]}" -d "$3"
}

# login EMAIL PASSWORD: an access token.
login() {
  api POST /v1/auth/login "{\"email\":\"$1\",\"password\":\"$2\"}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["tokens"]["accessToken"])'
}

# fuzz_as NAME TOKEN: one schemathesis run; its exit status.
fuzz_as() {
  local name=$1 token=$2 started=$SECONDS status=0
  local -a seed=()
  [[ -z ${FUZZ_SEED:-} ]] || seed=(--seed "$FUZZ_SEED")
  say "schemathesis as the $name: $examples examples per operation and phase, $workers workers"
  "$VENV/bin/st" --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
    --url "http://127.0.0.1:$port" \
    -H "Authorization: Bearer $token" \
    --max-examples "$examples" \
    --workers "$workers" \
    --request-timeout 15 \
    --generation-database none \
    --no-color \
    --report junit,pytest --report-dir "$bench_dir/report-$name" \
    "${seed[@]}" >"$bench_dir/schemathesis-$name.log" 2>&1 || status=$?
  # The summary at the end of schemathesis' output: failures (if any), then the counts.
  sed -n '/^=* *\(FAILURES\|ERRORS\|SUMMARY\) *=*$/,$p' "$bench_dir/schemathesis-$name.log"
  local cases
  cases=$(sed -n '/^Test cases:/{n;s/^ *//;p;q}' "$bench_dir/schemathesis-$name.log")
  results+=("$name: exit $status after $((SECONDS - started)) s; test cases: ${cases:-none}")
  return "$status"
}

fuzz_cleanup() {
  if [[ ${FUZZ_KEEP:-0} == 1 ]]; then
    [[ -z $mart_pid ]] || kill "$mart_pid" 2>/dev/null || true
    [[ -z $mart_pid ]] || wait "$mart_pid" 2>/dev/null || true
    scripts/testbed.sh stop --dir "$bench_dir" >/dev/null 2>&1 || true
    say "kept $bench_dir (logs and reports)"
  else
    bench_cleanup
  fi
}

main() {
  local started=$SECONDS
  install_schemathesis
  say "swift build --product mart (debug)"
  swift build --product mart --scratch-path "$REPO_ROOT/.build" >/dev/null 2>"$REPO_ROOT/.testbed/fuzz-build.log" || {
    tail -n 40 "$REPO_ROOT/.testbed/fuzz-build.log" >&2
    die "the build failed"
  }
  bin=$(swift build --scratch-path "$REPO_ROOT/.build" --show-bin-path)

  # A fresh test bed each time: one kept by FUZZ_KEEP=1 already has the admin, and create-admin
  # rightly refuses to make it again.
  scripts/testbed.sh stop --dir "$REPO_ROOT/.testbed/run-schemathesis" --purge >/dev/null
  bench_testbed "$REPO_ROOT/.testbed/run-schemathesis"
  trap fuzz_cleanup EXIT
  bench_start_mart
  say "mart dev on 127.0.0.1:$port (log $bench_dir/mart.log)"

  # Passwords made here, never fixed: the test bed is private, but no account gets a known one.
  local admin_email=fuzz-admin@example.com customer_email=fuzz-customer@example.com admin_pw customer_pw
  admin_pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  customer_pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  printf '%s\n' "$admin_pw" | "$bin/mart" users create-admin --email "$admin_email" --password-stdin \
    >>"$bench_dir/setup.log" 2>&1
  "$bin/mart" seed demo --admin-email "$admin_email" >>"$bench_dir/setup.log" 2>&1
  api POST /v1/auth/register \
    "{\"email\":\"$customer_email\",\"password\":\"$customer_pw\",\"fullName\":\"Fuzz Customer\"}" >/dev/null

  results=()
  local failed=0
  # Log in right before each run: an access token lasts 15 minutes. (An assignment of its own, so
  # that a failed login stops the script instead of fuzzing with no token.)
  local token
  token=$(login "$customer_email" "$customer_pw")
  fuzz_as customer "$token" || failed=1
  token=$(login "$admin_email" "$admin_pw")
  fuzz_as admin "$token" || failed=1

  say "summary (machine: $(nproc) cores; $((SECONDS - started)) s in all):"
  printf '  %s\n' "${results[@]}"
  if ((failed)); then
    say "FAILED: see the failures above; logs in $bench_dir (FUZZ_KEEP=1 keeps them)"
    exit 1
  fi
  say "passed: no 5xx, every response as the document describes"
}

main "$@"
