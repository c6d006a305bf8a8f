#!/usr/bin/env bash
# `make run`: the whole mart on this machine, no Docker.
# Data lives in a local PostgreSQL cluster under .mart/ (git-ignored) and survives restarts.
# Database URLs already in the environment (MART_<SERVICE>_DATABASE_URL) are used as they are;
# KAFKA_BROKERS in the environment selects that broker, otherwise events stay in-process.
# Ctrl-C stops the mart and the cluster it started.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/local-env.sh
source scripts/local-env.sh

scripts/deps.sh
if needs_local_cluster; then
  # The broker is not needed for `make run` (events are delivered in-process without KAFKA_BROKERS).
  scripts/testbed.sh start --dir "$LOCAL_DIR" --persistent --no-kafka
  stop_cluster() { scripts/testbed.sh stop --dir "$LOCAL_DIR" >/dev/null 2>&1 || true; }
  trap stop_cluster EXIT
  # Keep URLs the caller set; take the local cluster's for the rest.
  export_local_database_urls
fi

export_local_key_encryption_key

swift build --product mart
bin="$(swift build --show-bin-path)/mart"
export MART_LOG_FORMAT="${MART_LOG_FORMAT:-text}"
# On this machine orders are paid with the sandbox provider (no money moves); Stripe and PayFast
# come on when their keys are in the environment (README: "Payments").
export MART_PAYMENT_SANDBOX_ENABLED="${MART_PAYMENT_SANDBOX_ENABLED:-true}"
# Without SMTP or Twilio settings (README: "Notifications"), the shop's emails and text messages
# are written as files: one .eml per email, one .txt per SMS.
export MART_NOTIFICATION_MAILBOX_DIR="${MART_NOTIFICATION_MAILBOX_DIR:-$PWD/.mart/mail}"
if [[ -z ${MART_SMTP_HOST:-}${MART_SMTP_USERNAME:-} ]]; then
  mail_line="Emails            $MART_NOTIFICATION_MAILBOX_DIR/*.eml    (no SMTP set: README \"Notifications\")"
else
  mail_line="Emails            over SMTP to ${MART_SMTP_HOST:-sandbox.smtp.mailtrap.io}"
fi
if [[ -z ${MART_TWILIO_ACCOUNT_SID:-} ]]; then
  sms_line="Text messages     $MART_NOTIFICATION_MAILBOX_DIR/*.txt"
else
  sms_line="Text messages     through Twilio"
fi
port=${MART_GATEWAY_PORT:-8000}
# The shipped gateway policy allows no browser origin; a front end in development on this machine
# (http://localhost:3000) may call this mart: a copy of the policy under .mart/ says so.
if [[ -z ${MART_GATEWAY_CONFIG:-} ]]; then
  mkdir -p .mart
  python3 - gateway/gateway.json .mart/gateway.json <<'PY'
import json, sys
policy = json.load(open(sys.argv[1]))
policy.setdefault("cors", {})["allowedOrigins"] = ["http://localhost:3000", "http://127.0.0.1:3000"]
json.dump(policy, open(sys.argv[2], "w"), indent=2)
PY
  export MART_GATEWAY_CONFIG=$PWD/.mart/gateway.json
fi
echo "mart: starting; gateway on http://127.0.0.1:$port (Ctrl-C stops everything)"
if [[ -z ${OTEL_EXPORTER_OTLP_ENDPOINT:-} && -z ${OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:-} ]]; then
  echo "mart: tracing off; to send spans to an OpenTelemetry collector (OTLP/HTTP):" \
    "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 make run"
else
  echo "mart: tracing on: spans go to ${OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:-$OTEL_EXPORTER_OTLP_ENDPOINT}"
fi
# Not exec: the trap above must stop the cluster after the mart has drained.
"$bin" dev &
mart_pid=$!

# /readyz answers 200 once every service is migrated and serving. Plain bash (no curl on a
# fresh machine): one HTTP/1.0 request over /dev/tcp.
ready() {
  local status
  # Braced, so that a refused connection (the mart still starting) prints nothing.
  { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
  printf 'GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  read -r _ status _ <&3 || status=
  exec 3<&- 3>&-
  [[ $status == 200 ]]
}

# Say what to do next once the mart is ready, in the background so that Ctrl-C still reaches it.
(
  for _ in $(seq 1 600); do
    kill -0 "$mart_pid" 2>/dev/null || exit 0
    if ready; then
      cat <<NEXT

  Mart is ready.
    API and its docs  http://127.0.0.1:$port/docs   (the OpenAPI document: /openapi.json)
    The first admin   make admin EMAIL=you@example.com        in another terminal; asks for a password
    Demo data         make seed                                after the admin: 6 categories, 50 products
                                                               with stock, and a demo customer it prints
    $mail_line
    $sms_line
    Ctrl-C here stops the mart and its database (the data stays in .mart/).

NEXT
      exit 0
    fi
    sleep 0.5
  done
  echo "mart: not ready after 5 minutes; see the log above" >&2
) &
trap 'kill -TERM $mart_pid 2>/dev/null || true' INT TERM
wait $mart_pid || true
wait $mart_pid 2>/dev/null || true
