#!/usr/bin/env bash
# `make test`: everything CI does, on a fresh machine or a warm one.
#  1. install what is missing (Debian packages, the test broker and librdkafka 2.16 from PyPI);
#     validate the Kubernetes manifests (seconds, so before anything slow);
#  2. check the style; start a private PostgreSQL cluster and a Kafka-protocol broker (torn down
#     on exit);
#  3. build once (debug, with tests), and fail if the committed generated code differs from
#     proto/ (regenerated with the plugins of that build);
#  4. run every test against the cluster and the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" $(($(date +%s) - started)); }

step "dependencies"
scripts/deps.sh

step "Kubernetes manifests (deploy/k8s)"
scripts/validate-k8s.sh

step "alert rules (promtool)"
promtool check rules deploy/observability/alerts.yml

step "style (swift-format)"
make --no-print-directory lint

step "test bed"
dir=".testbed/run-test-$$"
cleanup() { scripts/testbed.sh stop --dir "$dir" --purge >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM
scripts/testbed.sh start --dir "$dir"
# shellcheck disable=SC1091
source "$dir/env"

step "build"
swift build --build-tests
bin="$(swift build --show-bin-path)"
MART_BINARY="$bin/mart"
export MART_BINARY

step "generated code matches proto/"
# The protoc plugins, built in this debug build: they share its SwiftProtobuf and code-generator
# modules, where `make proto`'s release build of them (.build-tools) compiles all of that a second
# time, which cost a clean run about a minute and a half. The generated code is the same.
swift build --product protoc-gen-swift
swift build --product protoc-gen-grpc-swift-2
PROTOC_GEN_SWIFT="$bin/protoc-gen-swift" PROTOC_GEN_GRPC_SWIFT_2="$bin/protoc-gen-grpc-swift-2" \
  PROTOC_GEN_MART_GATEWAY="$bin/protoc-gen-mart-gateway" scripts/gen-proto.sh --check

step "tests"
# The suite takes about a minute; a run that is still going after 20 is stuck, and saying so
# beats waiting out CI's limit.
# At most four tests at a time: the suites start whole services (scrypt, gRPC, PostgreSQL, a
# broker) on two cores, and with every test at once, start-ups and polls that take a second
# alone took over half a minute. Four keeps the run about as short and the machine responsive.
# Output is line-buffered so that a stuck run's log shows which tests had not finished.
export SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH=${SWT_EXPERIMENTAL_MAXIMUM_PARALLELIZATION_WIDTH:-4}
status=0
timeout --kill-after=30 1200 stdbuf -oL -eL swift test --skip-build || status=$?
if [[ $status -ne 0 ]]; then
  [[ $status -ne 124 ]] || echo "make test: the test run did not finish within 20 minutes (stuck)" >&2
  exit "$status"
fi

step "tests on private PostgreSQL clusters (stopped, frozen, restarted), each suite in a process of its own"
# PrivateCluster.testsEnabled: sharing a process with other tests, DatabaseOutageTests sometimes
# never finishes after its cluster restarts (not understood yet); alone it always has.
for suite in DatabaseOutageTests ShutdownUnderFaultTests; do
  MART_PRIVATE_CLUSTER_TESTS=1 timeout --kill-after=30 300 stdbuf -oL -eL \
    swift test --skip-build --filter "$suite" || status=$?
  if [[ $status -ne 0 ]]; then
    [[ $status -ne 124 ]] || echo "make test: $suite did not finish within 5 minutes (stuck)" >&2
    exit "$status"
  fi
done
step "done"
