#!/usr/bin/env bash
# `make deploy-check`: bring deploy/docker-compose.yml up with Docker on this machine and drive it.
#
#  1. install what is missing: docker.io and debootstrap (Debian 12), Compose v2 (Debian 13's
#     docker-compose package, unpacked as a CLI plugin into .testbed/cache/docker), the test
#     broker and librdkafka 2.16 (scripts/deps.sh);
#  2. start a Docker daemon if none answers (no bridge, no iptables: this machine allows neither)
#     and stop it again at the end;
#  3. build the images deploy/docker-compose.test.yml names: a Debian base (debootstrap, cached),
#     PostgreSQL 15 from Debian, the Tansu broker, and the mart from a release build of this tree;
#  4. write a fresh deploy/.env-style file with new secrets (`mart keys services`, `mart keys kek`,
#     random passwords), refuse any service without host networking, and `up -d --wait`;
#  5. drive the stack through the gateway: an admin (`mart users create-admin` inside the user
#     container) stocks a product, a customer registers, orders, pays with the sandbox provider,
#     the order reaches PAID, and the notification service writes its emails to its mailbox;
#  6. check every container's healthcheck, and that the events crossed the broker;
#  7. `down -v`, whatever happened.
# Each step prints its time. Not part of `make test` (see docs/PERFORMANCE.md for its wall time).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT=$PWD
started=$(date +%s)
last=$started
step() {
  local now
  now=$(date +%s)
  printf '\n== %s (+%ss, %ss in)\n' "$*" $((now - last)) $((now - started))
  last=$now
}
say() { printf 'deploy-check: %s\n' "$*"; }
die() { printf 'deploy-check: error: %s\n' "$*" >&2; exit 1; }

WORK="$REPO_ROOT/.testbed/deploy"
CACHE="$REPO_ROOT/.testbed/cache"
export DOCKER_CONFIG="$CACHE/docker"
COMPOSE=(docker compose -p mart-deploy-check -f deploy/docker-compose.yml -f deploy/docker-compose.test.yml
  --env-file "$WORK/env")
# The ports the stack takes on the host (host networking): PostgreSQL, the broker, the services,
# the gateway.
PORTS=(5432 9092 8006 8005 8007 8008 8002 8009 8000)
DOCKERD_PID=""
mkdir -p "$WORK" "$CACHE"

install_packages() {
  local -a missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  ((${#missing[@]} == 0)) && return 0
  say "apt-get install ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Compose v2 is not packaged for Debian 12; Debian 13's build of it runs here as a CLI plugin.
install_compose() {
  local plugin="$DOCKER_CONFIG/cli-plugins/docker-compose"
  [[ -x $plugin ]] && return 0
  say "Compose v2: apt-get download docker-compose (Debian 13), unpacked as a CLI plugin"
  local tmp
  tmp=$(mktemp -d)
  chmod 755 "$tmp" # apt's download user (_apt) writes into it
  mkdir -p "$tmp/lists/partial" "$DOCKER_CONFIG/cli-plugins"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    >"$tmp/sources.list"
  local -a apt_options=(-o "Dir::Etc::sourcelist=$tmp/sources.list" -o Dir::Etc::sourceparts=-
    -o "Dir::State::Lists=$tmp/lists" -o APT::Get::List-Cleanup=0)
  apt-get "${apt_options[@]}" update -qq >/dev/null
  (cd "$tmp" && apt-get "${apt_options[@]}" download docker-compose >/dev/null 2>&1)
  dpkg-deb -x "$tmp"/docker-compose_*.deb "$tmp/x"
  install -m 0755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-compose" "$plugin"
  rm -rf "$tmp"
}

start_daemon() {
  docker info >/dev/null 2>&1 && return 0
  say "starting dockerd (no bridge, no iptables; log $WORK/dockerd.log)"
  dockerd --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  local deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd exited"; }
    ((SECONDS < deadline)) || die "dockerd does not answer after 60 s"
    sleep 0.5
  done
}

cleanup() {
  local status=$?
  if [[ -f $WORK/env ]] && docker info >/dev/null 2>&1; then
    if ((status != 0)); then
      say "failed: the last lines of each container's log"
      "${COMPOSE[@]}" logs --no-color --tail 15 2>/dev/null || true
    fi
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  if [[ -n $DOCKERD_PID ]]; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
  fi
  rm -f "$WORK/env"
  exit "$status"
}

# A minimal Debian 12 to build every test image on (no registry to pull one from), made once.
base_image() {
  docker image inspect mart-base:bookworm >/dev/null 2>&1 && return 0
  local tarball="$CACHE/mart-base-bookworm.tar"
  if [[ ! -f $tarball ]]; then
    say "debootstrap --variant=minbase bookworm"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 ||
      { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    tar -C "$WORK/rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$WORK/rootfs"
  fi
  docker import "$tarball" mart-base:bookworm >/dev/null
}

# build IMAGE DOCKERFILE FILE...: a build context of just these files.
build() {
  local image=$1 dockerfile=$2
  shift 2
  local context="$WORK/context-${image//[\/:]/-}"
  rm -rf "$context"
  mkdir -p "$context"
  cp -a "$@" "$context/"
  # (The legacy builder's deprecation notice is all it prints on stderr when the build works.)
  docker build --network=host -q -t "$image" -f "$dockerfile" "$context" >/dev/null 2>"$WORK/docker-build.log" ||
    { cat "$WORK/docker-build.log" >&2; die "docker build of $image failed"; }
  printf '  %-28s %s\n' "$image" "$(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
}

write_env() {
  local mart=$1
  random() { head -c 24 /dev/urandom | base64 | tr -d '/+='; }
  {
    echo "POSTGRES_PASSWORD=$(random)"
    for service in USER PRODUCT INVENTORY ORDER PAYMENT NOTIFICATION; do
      echo "MART_${service}_DB_PASSWORD=$(random)"
    done
    "$mart" keys services
    echo "MART_USER_KEY_ENCRYPTION_KEYS=$("$mart" keys kek)"
    echo "MART_GATEWAY_ADMIN_TOKEN=$(random)$(random)"
    echo "KAFKA_UI_USERNAME=operator"
    echo "KAFKA_UI_PASSWORD=$(random)"
    echo "MART_PAYMENT_SANDBOX_ENABLED=true"
    # The test broker's first consumer-group join takes ~23 s with librdkafka's defaults.
    echo "MART_KAFKA_PROPERTIES=session.timeout.ms=6000,heartbeat.interval.ms=500,topic.metadata.refresh.interval.ms=2000"
    echo "MART_NOTIFICATION_EMAIL_FROM=Mart <no-reply@shop.example>"
  } >"$WORK/env"
  chmod 600 "$WORK/env"
}

# Every service on the host's network, or nothing starts: this machine allows no bridge, and a
# bridge network reaching private addresses is exactly what it refuses.
check_host_networking() {
  "${COMPOSE[@]}" config --format json | python3 -c '
import json, sys
services = json.load(sys.stdin)["services"]
bad = sorted(name for name, service in services.items() if service.get("network_mode") != "host")
if bad:
    sys.exit("deploy-check: refusing to start: without host networking: " + ", ".join(bad))
print("  %d services, every one on the host network" % len(services))
'
}

check_ports_free() {
  local port busy=()
  for port in "${PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then busy+=("$port"); fi
  done
  ((${#busy[@]} == 0)) || die "ports in use on this machine: ${busy[*]} (the stack uses host networking)"
}

main() {
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  step "dependencies"
  scripts/deps.sh
  install_packages
  install_compose
  docker compose version

  step "docker daemon"
  start_daemon

  step "release build (swift build -c release --static-swift-stdlib)"
  swift build -c release --scratch-path .build-deploy --product mart --static-swift-stdlib >"$WORK/build.log" 2>&1 ||
    { tail -40 "$WORK/build.log" >&2; die "the release build failed"; }
  local bin
  bin=$(swift build -c release --scratch-path .build-deploy --show-bin-path)

  step "images"
  base_image
  local libs="$CACHE/pkg/confluent-kafka/confluent_kafka.libs"
  mkdir -p "$WORK/librdkafka"
  cp -a "$libs"/. "$WORK/librdkafka/"
  ln -sfn "$(basename "$(readlink -f "$CACHE/lib/librdkafka.so.1")")" "$WORK/librdkafka/librdkafka.so.1"
  # Stripped as deploy/Dockerfile strips it: the symbols of the debug info take half its size.
  strip -o "$WORK/mart" "$bin/mart"
  build mart-test/mart:latest deploy/test/mart.Dockerfile "$WORK/mart" gateway/gateway.json "$WORK/librdkafka"
  build mart-test/postgres:15 deploy/test/postgres.Dockerfile deploy/test/postgres-entrypoint.sh
  build mart-test/tansu:latest deploy/test/tansu.Dockerfile "$CACHE/bin/tansu"

  step "configuration"
  # Without deploy/.env's secrets compose must refuse to start, naming what is missing.
  local refusal
  if refusal=$(docker compose -f deploy/docker-compose.yml --env-file /dev/null config 2>&1 >/dev/null); then
    die "compose accepted an empty .env: some secret has a default"
  fi
  say "an empty .env is refused: ${refusal##*: }"
  write_env "$bin/mart"
  check_host_networking
  check_ports_free

  step "up -d --wait"
  local up_started=$SECONDS
  "${COMPOSE[@]}" up -d --wait --no-build --quiet-pull
  say "ready $((SECONDS - up_started)) s after up"
  "${COMPOSE[@]}" ps --format 'table {{.Service}}\t{{.Status}}'

  step "drive the shop through the gateway"
  local admin_password
  admin_password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  printf '%s\n' "$admin_password" |
    "${COMPOSE[@]}" exec -T user mart users create-admin --email admin@shop.example --password-stdin
  ADMIN_PASSWORD=$admin_password GATEWAY=http://127.0.0.1:8000 ORDER_NUMBER_FILE="$WORK/order-number" \
    python3 scripts/deploy-drive.py

  step "health and events"
  local component
  for component in user product inventory order payment notification gateway; do
    "${COMPOSE[@]}" exec -T "$component" mart health "$component"
  done
  # The mailbox of the notification service: the emails about this very order (placed, paid),
  # which it can only have learnt of from the order service's events, through Kafka.
  local mails number
  number=$(<"$WORK/order-number")
  mails=$("${COMPOSE[@]}" exec -T notification sh -c "grep -l '$number' /var/lib/mart/mail/*.eml | wc -l")
  say "the notification service wrote $mails email(s) about order $number"
  ((mails >= 2)) || die "expected the order's placed and paid emails in the mailbox, found $mails"
  PYTHONPATH="$CACHE/pkg/confluent-kafka" LD_LIBRARY_PATH="$CACHE/lib:$libs" python3 - <<'PY'
# What crossed the broker: every mart topic and how many events it holds. The order's events can
# only have reached the notification service through it (each service is its own container).
from confluent_kafka import Consumer, TopicPartition
consumer = Consumer({"bootstrap.servers": "127.0.0.1:9092", "group.id": "deploy-check"})
topics = consumer.list_topics(timeout=10).topics
counts = {}
for name in sorted(topics):
    if not name.startswith("mart."):
        continue
    total = 0
    for partition in topics[name].partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=10)
        total += high - low
    counts[name] = total
consumer.close()
for name, total in counts.items():
    print(f"  {name:28} {total} event(s)")
needed = ["mart.users.v1", "mart.orders.v1", "mart.payments.v1", "mart.inventory.v1"]
empty = [name for name in needed if counts.get(name, 0) == 0]
if empty:
    raise SystemExit("deploy-check: no events on " + ", ".join(empty))
PY

  step "down -v"
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null
  rm -f "$WORK/env"
  say "passed in $(($(date +%s) - started)) s"
}

main "$@"
