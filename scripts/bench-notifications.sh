#!/usr/bin/env bash
# The notification benchmark (issue 12): how many emails per second the notification service's
# sender delivers to a local SMTP server (aiosmtpd with STARTTLS and AUTH, as Mailtrap is reached),
# and how long an event takes from its publication to the server's acceptance, p50/p99, at a paced
# rate. The service runs in-process in a release build (NotificationDeliveryBenchmark) with its own
# database on a private PostgreSQL (fsync on) and the in-process event transport.
#   BENCH_EMAILS (default 2000), BENCH_RATE (events/s, default 50), BENCH_SECONDS (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
connections=n/a
seconds=${BENCH_SECONDS:-20}

bench_testbed .testbed/bench-notifications --persistent
bench_build NotificationDeliveryBenchmark
bench_machine
echo "== notification delivery: $bin/NotificationDeliveryBenchmark"
MART_TEST_LOG_LEVEL=error "$bin/NotificationDeliveryBenchmark"
