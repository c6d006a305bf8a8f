#!/usr/bin/env bash
# scripts/testbed.sh — a private PostgreSQL 15 cluster and a Tansu (Kafka-compatible)
# broker for Mart's tests and local runs. No Docker, no manual steps.
#
# usage:
#   scripts/testbed.sh start     [--dir DIR] [--pg-port N] [--kafka-port N | --no-kafka] [--persistent] [--no-verify]
#   scripts/testbed.sh stop      [--dir DIR] [--purge]
#   scripts/testbed.sh status    [--dir DIR]
#   scripts/testbed.sh selfcheck [--dir DIR]
#   scripts/testbed.sh env       [--dir DIR]
#
# DIR defaults to <repo>/.testbed/run. After `start`, `. DIR/env` exports
# MART_TEST_DATABASE_URL, MART_<SERVICE>_DATABASE_URL, KAFKA_BROKERS, MART_PG_BIN,
# MART_PG_DATA, MART_PG_PORT, MART_TESTBED_DIR and LD_LIBRARY_PATH (librdkafka 2.16 first).
#
#   start      runs scripts/deps.sh; initdb DIR/pgdata if needed; starts (or reuses) the
#              cluster and the broker; creates role `mart` and the six mart_* databases;
#              checks that the broker round-trips a message (skip with --no-verify);
#              writes DIR/env. Ports: the given ones, else the ones used last time in DIR
#              (if still free), else free ones. --persistent: durable cluster (fsync on).
#              --no-kafka: PostgreSQL only (no KAFKA_BROKERS in DIR/env, unless a broker
#              of DIR is already running). If start fails, whatever it started is stopped again.
#   stop       stops the broker and the cluster (idempotent); --purge also deletes DIR.
#   status     exit 0 when everything the last start asked for is running, 3 otherwise.
#   selfcheck  psql into every database as `mart`, broker round trip, consumer-group join time.
#   env        prints DIR/env.
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
CACHE="$REPO_ROOT/.testbed/cache"
TANSU="$CACHE/bin/tansu"
KAFKA_LIB_PATH="$CACHE/lib:$CACHE/pkg/confluent-kafka/confluent_kafka.libs"
PG_BIN=/usr/lib/postgresql/15/bin
DEFAULT_DIR="$REPO_ROOT/.testbed/run"
APP_ROLE=mart
DATABASES=(mart_user mart_product mart_inventory mart_order mart_payment mart_notification)
SELFCHECK_TOPIC=__testbed_selfcheck
MARKER=.mart-testbed
PG_START_TIMEOUT=30
KAFKA_START_TIMEOUT=15

# libpq/Tansu settings from the caller's environment must not redirect our own tools.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE PGSSLMODE PGOPTIONS PGDATA \
    SCHEMA_REGISTRY OTEL_EXPORTER_OTLP_ENDPOINT

say() { printf 'testbed: %s\n' "$*"; }
warn() { printf 'testbed: warning: %s\n' "$*" >&2; }
die() { printf 'testbed: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# Show the end of a log file on stderr (used before dying).
show_log() {
    local file=$1
    [[ -s $file ]] || return 0
    printf -- '--- last lines of %s ---\n' "$file" >&2
    tail -n 15 "$file" >&2
    printf -- '---\n' >&2
}

now_ms() { local t; t=$(date +%s%N); printf '%s' $((t / 1000000)); }

# ------------------------------------------------------------------ arguments
DIR=""
PG_PORT_OPT=""
KAFKA_PORT_OPT=""
PERSISTENT=0
VERIFY=1
KAFKA=1
PURGE=0

parse_args() {
    local cmd=$1
    shift
    while (($#)); do
        case $1 in
            --dir) (($# >= 2)) || die "--dir needs a value"; DIR=$2; shift 2 ;;
            --dir=*) DIR=${1#*=}; shift ;;
            --pg-port | --kafka-port)
                [[ $cmd == start ]] || die "$1 is only valid for start"
                (($# >= 2)) || die "$1 needs a value"
                set_port "$1" "$2"; shift 2 ;;
            --pg-port=* | --kafka-port=*)
                [[ $cmd == start ]] || die "${1%%=*} is only valid for start"
                set_port "${1%%=*}" "${1#*=}"; shift ;;
            --persistent) [[ $cmd == start ]] || die "--persistent is only valid for start"; PERSISTENT=1; shift ;;
            --no-kafka) [[ $cmd == start ]] || die "--no-kafka is only valid for start"; KAFKA=0; shift ;;
            --no-verify) [[ $cmd == start ]] || die "--no-verify is only valid for start"; VERIFY=0; shift ;;
            --purge) [[ $cmd == stop ]] || die "--purge is only valid for stop"; PURGE=1; shift ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option for $cmd: $1 (see scripts/testbed.sh --help)" ;;
        esac
    done
    [[ $KAFKA == 1 || -z $KAFKA_PORT_OPT ]] || die "--no-kafka and --kafka-port exclude each other"
    DIR=${DIR:-$DEFAULT_DIR}
    [[ $DIR == /* ]] || DIR="$PWD/$DIR"
    # The path ends up in pg_ctl -o, socket paths and the env file: keep it plain.
    [[ $DIR =~ ^[A-Za-z0-9_./@+:-]+$ ]] || die "--dir '$DIR': only letters, digits and _ . / @ + : - are supported in the path"
    [[ $DIR != / ]] || die "--dir must not be /"
    DIR=${DIR%/}
}

set_port() {
    if ! [[ $2 =~ ^[0-9]+$ ]] || (($2 < 1 || $2 > 65535)); then die "$1: '$2' is not a port number"; fi
    if [[ $1 == --pg-port ]]; then PG_PORT_OPT=$2; else KAFKA_PORT_OPT=$2; fi
}

# Canonical DIR (after it exists) and derived paths.
set_paths() {
    if [[ -d $DIR ]]; then DIR=$(cd -- "$DIR" && pwd -P); fi
    PGDATA_DIR="$DIR/pgdata"
    SOCK_DIR="$DIR/sock"
    PG_LOG="$DIR/postgres.log"
    TANSU_LOG="$DIR/tansu.log"
    TANSU_PID="$DIR/tansu.pid"
    STATE_FILE="$DIR/state"
    ENV_FILE="$DIR/env"
}

lock_dir() {
    exec 9>"$DIR/.lock"
    flock -w 120 9 || die "another testbed.sh is working on $DIR (lock $DIR/.lock)"
}

state_get() {
    if [[ -f $STATE_FILE ]]; then sed -n "s/^$1=\([0-9a-z]*\)$/\1/p" "$STATE_FILE"; fi
}

# Run a command with every inherited file descriptor above 2 closed, so that the
# daemons it spawns hold neither our lock nor a caller's pipes (which would make
# `$(scripts/testbed.sh start)` or a CI step wait for the daemons to exit).
# Call it in a subshell: ( without_inherited_fds cmd ... ).
without_inherited_fds() {
    local fd
    for fd in /proc/"$BASHPID"/fd/*; do
        fd=${fd##*/}
        if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    "$@"
}

# A zombie counts as gone: our own child after a failed start, or a killed daemon
# that init has not reaped yet (PID 1 on this kind of machine reaps orphans only
# every second or so, and kill -0 succeeds on a zombie).
pid_alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $state != Z ]]
}

# Wait (at most $2 seconds) until process $1 has disappeared, zombie included.
wait_gone() {
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
    return 1
}

# ------------------------------------------------------------------ PostgreSQL
# initdb and pg_ctl refuse to run as root: run them as the postgres OS user then.
as_pg() {
    if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_initialised() { [[ -f $PGDATA_DIR/PG_VERSION ]]; }

pg_running() {
    pg_initialised && [[ -f $PGDATA_DIR/postmaster.pid ]] &&
        pid_alive "$(pg_running_pid)" &&
        as_pg "$PG_BIN/pg_ctl" status -D "$PGDATA_DIR" >/dev/null 2>&1
}

pg_running_port() { sed -n 4p "$PGDATA_DIR/postmaster.pid"; }
pg_running_pid() { sed -n 1p "$PGDATA_DIR/postmaster.pid"; }

# Make DIR usable by the postgres OS user (when we are root).
pg_prepare_dirs() {
    ((EUID == 0)) || { mkdir -p "$PGDATA_DIR" "$SOCK_DIR"; chmod 700 "$PGDATA_DIR"; return 0; }
    id postgres >/dev/null 2>&1 || die "there is no 'postgres' OS user (install postgresql-15 or run as a non-root user)"
    if ! runuser -u postgres -- test -x "$DIR"; then
        # Walk from / down to DIR. A directory postgres cannot search gets o+x (search
        # only, no listing) when it is ours and is DIR itself or a scratch directory
        # (for example the 0700 parent from `mktemp -d`); anything else is an error.
        local p="" part
        local -a parts
        IFS=/ read -ra parts <<<"${DIR#/}"
        for part in "${parts[@]}"; do
            p+="/$part"
            runuser -u postgres -- test -x "$p" && continue
            case $p/ in
                "$DIR/" | /tmp/?*/ | /var/tmp/?*/ | "${TMPDIR:-/tmp}"/?*/ | "$REPO_ROOT"/?*/)
                    if [[ -O $p ]]; then
                        chmod o+x "$p"
                        say "postgres: allowed the postgres OS user to search $p (chmod o+x)"
                        continue
                    fi
                    ;;
            esac
            die "the postgres OS user cannot reach $DIR: no search permission on $p (chmod o+x it, or choose another --dir)"
        done
    fi
    install -d -o postgres -g postgres -m 0700 "$PGDATA_DIR"
    install -d -o postgres -g postgres -m 0755 "$SOCK_DIR"
    # pg_ctl -l appends to the log as postgres.
    [[ -e $PG_LOG ]] || : >"$PG_LOG"
    chown postgres "$PG_LOG"
    # An existing cluster from an earlier run keeps its owner; fix it if DIR was copied around.
    if pg_initialised && [[ $(stat -c %U "$PGDATA_DIR/PG_VERSION") != postgres ]]; then
        chown -R postgres:postgres "$PGDATA_DIR"
    fi
}

pg_init() {
    pg_initialised && return 0
    [[ -x $PG_BIN/initdb ]] || die "$PG_BIN/initdb not found (scripts/deps.sh should have installed postgresql-15)"
    local -a opts=(-D "$PGDATA_DIR" -A trust -U postgres -E UTF8 --locale=C.UTF-8)
    ((PERSISTENT)) || opts+=(--no-sync)
    say "postgres: initdb $PGDATA_DIR"
    if ! as_pg "$PG_BIN/initdb" "${opts[@]}" </dev/null >"$DIR/initdb.log" 2>&1 9>&-; then
        show_log "$DIR/initdb.log"
        # Leave an empty directory behind so that the next start can retry.
        find "$PGDATA_DIR" -mindepth 1 -delete 2>/dev/null || true
        die "initdb failed (full log: $DIR/initdb.log)"
    fi
}

pg_start() {
    local port=$1
    local sock=$SOCK_DIR
    # sun_path holds 107 bytes; without a usable socket directory, run TCP-only.
    if ((${#sock} + ${#port} + 12 > 107)); then
        warn "$SOCK_DIR is too long for a Unix socket path: PostgreSQL will listen on TCP only"
        sock=""
    fi
    local pg_opts="-p $port -k $sock -c listen_addresses=127.0.0.1 -c max_connections=300"
    [[ -n $sock ]] || pg_opts="-p $port -c unix_socket_directories= -c listen_addresses=127.0.0.1 -c max_connections=300"
    ((PERSISTENT)) || pg_opts+=" -c fsync=off"
    # A postmaster that was killed may linger as a zombie; its pid file would block the start.
    local old_pid
    old_pid=$(pg_running_pid 2>/dev/null || true)
    if [[ $old_pid =~ ^[0-9]+$ ]] && ! pid_alive "$old_pid"; then wait_gone "$old_pid" 10 || true; fi
    STARTED_PG=1
    if ! (without_inherited_fds as_pg "$PG_BIN/pg_ctl" start -D "$PGDATA_DIR" -l "$PG_LOG" -w -t "$PG_START_TIMEOUT" -s -o "$pg_opts") </dev/null >"$DIR/pg_ctl.log" 2>&1; then
        cat "$DIR/pg_ctl.log" >&2
        show_log "$PG_LOG"
        die "PostgreSQL did not start on 127.0.0.1:$port within ${PG_START_TIMEOUT}s (log: $PG_LOG)"
    fi
    local deadline=$((SECONDS + PG_START_TIMEOUT))
    until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -t 1; do
        ((SECONDS < deadline)) || { show_log "$PG_LOG"; die "PostgreSQL on 127.0.0.1:$port does not answer pg_isready"; }
        sleep 0.1
    done
    local mode=" (fsync=off)"
    ((PERSISTENT)) && mode=""
    say "postgres: started on 127.0.0.1:$port$mode, log $PG_LOG"
}

pg_stop() {
    local mode=${1:-fast}
    pg_running || return 0
    if ! as_pg "$PG_BIN/pg_ctl" stop -D "$PGDATA_DIR" -m "$mode" -w -t 60 -s >/dev/null 2>&1; then
        warn "pg_ctl stop -m $mode failed; trying -m immediate"
        as_pg "$PG_BIN/pg_ctl" stop -D "$PGDATA_DIR" -m immediate -w -t 30 -s >/dev/null 2>&1 ||
            die "could not stop PostgreSQL in $PGDATA_DIR"
    fi
    say "postgres: stopped"
}

psql_admin() {
    local port=$1
    shift
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"
}

pg_setup_databases() {
    local port=$1 list missing out
    list=$(printf "'%s'," "${DATABASES[@]}")
    list=${list%,}
    local q_missing="SELECT coalesce(string_agg(d, ' '), '') FROM unnest(ARRAY[$list]) AS d WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d)"
    missing=$(psql_admin "$port" -At -c "$q_missing") || die "cannot connect as postgres to 127.0.0.1:$port"
    if ! out=$(psql_admin "$port" -At 2>&1 <<SQL
SELECT 'CREATE ROLE $APP_ROLE LOGIN CREATEDB'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$APP_ROLE') \gexec
SELECT format('CREATE DATABASE %I OWNER $APP_ROLE', d)
  FROM unnest(ARRAY[$list]) AS d
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d) \gexec
SQL
    ); then
        printf '%s\n' "$out" >&2
        die "could not create role $APP_ROLE and the databases"
    fi
    [[ -z $missing ]] || say "postgres: created role $APP_ROLE and databases: $missing"
    missing=$(psql_admin "$port" -At -c "$q_missing")
    [[ -z $missing ]] || die "databases still missing after setup: $missing"
}

# ------------------------------------------------------------------ Tansu
tansu_pid() {
    [[ -f $TANSU_PID ]] || return 1
    local pid
    pid=$(<"$TANSU_PID")
    [[ $pid =~ ^[0-9]+$ ]] && pid_alive "$pid" &&
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == tansu ]] || return 1
    printf '%s' "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

tansu_start() {
    local port=$1
    [[ -x $TANSU ]] || die "$TANSU is missing (scripts/deps.sh should have fetched it)"
    : >>"$TANSU_LOG"
    printf '\n=== %s tansu broker on 127.0.0.1:%s ===\n' "$(date -Is)" "$port" >>"$TANSU_LOG"
    # setsid: a Ctrl-C in the terminal that ran `start` (or make) must not kill the broker.
    (without_inherited_fds exec setsid "$TANSU" broker \
        --cluster-id mart-testbed \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/) \
        </dev/null >>"$TANSU_LOG" 2>&1 &
    local pid=$!
    STARTED_TANSU=$pid
    printf '%s\n' "$pid" >"$TANSU_PID"
    local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    until port_open "$port"; do
        if ! pid_alive "$pid"; then
            show_log "$TANSU_LOG"
            rm -f "$TANSU_PID"
            die "tansu exited during start-up (port 127.0.0.1:$port taken?)"
        fi
        ((SECONDS < deadline)) || { show_log "$TANSU_LOG"; die "tansu does not accept connections on 127.0.0.1:$port after ${KAFKA_START_TIMEOUT}s"; }
        sleep 0.05
    done
    say "tansu: started on 127.0.0.1:$port (pid $pid, memory storage), log $TANSU_LOG"
}

# Tansu keeps everything in memory, so there is nothing to flush: its graceful
# shutdown takes about 2 s, which we do not wait for (SIGKILL after 0.3 s).
tansu_stop() {
    local pid=${1:-}
    if [[ -z $pid ]] && ! pid=$(tansu_pid); then
        rm -f "$TANSU_PID"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 6; i++)); do
        pid_alive "$pid" || break
        sleep 0.05
    done
    if pid_alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            pid_alive "$pid" || break
            sleep 0.05
        done
    fi
    pid_alive "$pid" && die "could not stop tansu (pid $pid)"
    rm -f "$TANSU_PID"
    say "tansu: stopped"
}


# Produce one unique message to partition 0 and read back the last message there.
kafka_roundtrip() {
    local port=$1 token got
    command -v kcat >/dev/null 2>&1 || die "kcat is missing (scripts/deps.sh should have installed it)"
    token="testbed-$(date +%s%N)-$$"
    if ! printf '%s\n' "$token" | timeout 20 env LD_LIBRARY_PATH="$KAFKA_LIB_PATH" \
        kcat -P -b "127.0.0.1:$port" -t "$SELFCHECK_TOPIC" -p 0 -X message.timeout.ms=10000 >"$DIR/kcat.log" 2>&1; then
        cat "$DIR/kcat.log" >&2
        die "could not produce a message to the broker on 127.0.0.1:$port"
    fi
    got=$(timeout 20 env LD_LIBRARY_PATH="$KAFKA_LIB_PATH" \
        kcat -C -b "127.0.0.1:$port" -t "$SELFCHECK_TOPIC" -p 0 -o -1 -c 1 -q 2>"$DIR/kcat.log") || true
    if [[ $got != "$token" ]]; then
        cat "$DIR/kcat.log" >&2
        die "the broker on 127.0.0.1:$port did not return the produced message (got '${got:0:80}')"
    fi
    rm -f "$DIR/kcat.log"
}

# ------------------------------------------------------------------ ports
# choose_ports PG_SPEC KAFKA_SPEC: spec is fixed:N (must be free), prefer:N (else any),
# any, keep:N (already in use by our own server) or none. Prints "PGPORT KPORT"
# (BUSY for a fixed port in use, - for none).
choose_ports() {
    python3 - "$@" <<'PY'
import socket, sys
held, out = [], []
def try_bind(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    held.append(s)
    return s.getsockname()[1]
for spec in sys.argv[1:]:
    mode, _, n = spec.partition(":")
    if mode == "keep":
        out.append(n); continue
    if mode == "none":
        out.append("-"); continue
    port = try_bind(int(n)) if mode in ("fixed", "prefer") else None
    if port is None and mode == "fixed":
        out.append("BUSY"); continue
    if port is None:
        port = try_bind(0)
    out.append(str(port))
print(" ".join(out))
PY
}

# ------------------------------------------------------------------ env file
write_env() {
    local pgport=$1 kport=$2 tmp db upper
    tmp=$(mktemp "$DIR/.env.XXXXXX")
    {
        printf '# Written by scripts/testbed.sh start on %s. Use: . %s\n' "$(date -Is)" "$ENV_FILE"
        printf 'export MART_TESTBED_DIR=%s\n' "$DIR"
        printf 'export MART_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:%s/postgres\n' "$pgport"
        for db in "${DATABASES[@]}"; do
            upper=${db#mart_}
            upper=${upper^^}
            printf 'export MART_%s_DATABASE_URL=postgres://%s@127.0.0.1:%s/%s\n' "$upper" "$APP_ROLE" "$pgport" "$db"
        done
        [[ -z $kport ]] || printf 'export KAFKA_BROKERS=127.0.0.1:%s\n' "$kport"
        # Tansu holds a first JoinGroup for about session.timeout.ms/2 and answers waiting
        # fetches on a timer: short settings keep group joins (~3 s) and hops quick. A short
        # metadata refresh lets a consumer that subscribed before its topic existed see it soon.
        [[ -z $kport ]] || printf 'export MART_KAFKA_PROPERTIES=%s\n' \
            'session.timeout.ms=6000,heartbeat.interval.ms=500,fetch.wait.max.ms=20,topic.metadata.refresh.interval.ms=2000'
        # The user service's key-encryption key, fresh per test bed: never a fixed secret.
        printf 'export MART_USER_KEY_ENCRYPTION_KEYS=testbed:%s\n' "$(head -c 32 /dev/urandom | base64 -w0)"
        printf 'export MART_TANSU_BIN=%s\n' "$TANSU"
        # Stripe's API on loopback (each payment test starts its own, on a port of its own).
        printf 'export MART_LOCALSTRIPE_BIN=%s\n' "$CACHE/venv-localstripe/bin/localstripe"
        # The SMTP tests' server (scripts/smtp-test-server.py) runs on this python, which has aiosmtpd.
        printf 'export MART_AIOSMTPD_PYTHON=%s\n' "$CACHE/venv-aiosmtpd/bin/python"
        printf 'export MART_PG_BIN=%s\n' "$PG_BIN"
        printf 'export MART_PG_DATA=%s\n' "$PGDATA_DIR"
        printf 'export MART_PG_PORT=%s\n' "$pgport"
        # shellcheck disable=SC2016  # expanded when the file is sourced
        printf 'export LD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}\n' "$KAFKA_LIB_PATH"
    } >"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$ENV_FILE"
    local kafka=on
    [[ -n $kport ]] || kafka=off
    printf 'PG_PORT=%s\nKAFKA_PORT=%s\nKAFKA=%s\n' "$pgport" "$kport" "$kafka" >"$STATE_FILE"
}

# ------------------------------------------------------------------ commands
STARTED_PG=0
STARTED_TANSU=0

on_start_exit() {
    local rc=$?
    ((rc == 0)) && return 0
    trap - INT TERM
    if ((STARTED_TANSU)); then tansu_stop "$STARTED_TANSU" >/dev/null 2>&1 || true; fi
    if ((STARTED_PG)); then pg_stop fast >/dev/null 2>&1 || pg_stop immediate >/dev/null 2>&1 || true; fi
    if ((STARTED_TANSU || STARTED_PG)); then
        printf 'testbed: start failed: stopped what this run had started\n' >&2
    fi
    exit "$rc"
}

cmd_start() {
    local t0 t_deps
    t0=$(now_ms)
    "$REPO_ROOT/scripts/deps.sh" || die "scripts/deps.sh failed"
    t_deps=$(now_ms)
    command -v python3 >/dev/null 2>&1 || die "python3 is required (to pick free ports)"

    mkdir -p "$DIR"
    set_paths
    [[ -e $DIR/$MARKER ]] || : >"$DIR/$MARKER"
    lock_dir
    trap on_start_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    # --- ports: running server > --*-port > last time's port (if free) > any free port
    local pg_spec k_spec pgport kport tpid=""
    if pg_running; then
        pgport=$(pg_running_port)
        [[ -z $PG_PORT_OPT || $PG_PORT_OPT == "$pgport" ]] ||
            die "PostgreSQL in $PGDATA_DIR is already running on port $pgport, not $PG_PORT_OPT (stop it first)"
        pg_spec="keep:$pgport"
    elif [[ -n $PG_PORT_OPT ]]; then
        pg_spec="fixed:$PG_PORT_OPT"
    elif [[ -n $(state_get PG_PORT) ]]; then
        pg_spec="prefer:$(state_get PG_PORT)"
    else
        pg_spec="any"
    fi
    if tpid=$(tansu_pid); then
        kport=$(state_get KAFKA_PORT)
        [[ -n $kport ]] || die "tansu is running (pid $tpid) but $STATE_FILE has no port; run: scripts/testbed.sh stop --dir $DIR"
        [[ -z $KAFKA_PORT_OPT || $KAFKA_PORT_OPT == "$kport" ]] ||
            die "tansu for $DIR is already running on port $kport, not $KAFKA_PORT_OPT (stop it first)"
        k_spec="keep:$kport"
    elif ((!KAFKA)); then
        k_spec="none"
    elif [[ -n $KAFKA_PORT_OPT ]]; then
        k_spec="fixed:$KAFKA_PORT_OPT"
    elif [[ -n $(state_get KAFKA_PORT) ]]; then
        k_spec="prefer:$(state_get KAFKA_PORT)"
    else
        k_spec="any"
    fi
    [[ $pg_spec != "fixed:$KAFKA_PORT_OPT" ]] || die "--pg-port and --kafka-port must differ"
    read -r pgport kport < <(choose_ports "$pg_spec" "$k_spec")
    [[ $pgport != BUSY ]] || die "port 127.0.0.1:$PG_PORT_OPT (--pg-port) is already in use"
    [[ $kport != BUSY ]] || die "port 127.0.0.1:$KAFKA_PORT_OPT (--kafka-port) is already in use"
    [[ $pgport =~ ^[0-9]+$ && $kport =~ ^([0-9]+|-)$ ]] || die "could not choose ports (got '$pgport' '$kport')"
    [[ $kport != - ]] || kport=""

    # --- PostgreSQL
    if [[ $pg_spec == keep:* ]]; then
        say "postgres: reusing the cluster running on 127.0.0.1:$pgport (pid $(pg_running_pid))"
    else
        pg_prepare_dirs
        pg_init
        pg_start "$pgport"
    fi
    pg_setup_databases "$pgport"
    local t_pg
    t_pg=$(now_ms)

    # --- Tansu
    if [[ $k_spec == keep:* ]]; then
        say "tansu: reusing the broker running on 127.0.0.1:$kport (pid $tpid)"
    elif [[ $k_spec != none ]]; then
        tansu_start "$kport"
    fi
    if [[ -n $kport ]] && ((VERIFY)); then kafka_roundtrip "$kport"; fi
    local t_k
    t_k=$(now_ms)

    write_env "$pgport" "$kport"
    local what="tansu $((t_k - t_pg))"
    [[ -z $kport ]] && what="no broker"
    [[ -n $kport ]] && ((VERIFY)) && what="tansu + round trip $((t_k - t_pg))"
    say "ready in $((t_k - t0)) ms (deps $((t_deps - t0)), postgres $((t_pg - t_deps)), $what): . $ENV_FILE"
    trap - EXIT INT TERM
}

cmd_stop() {
    set_paths
    if [[ ! -d $DIR ]]; then
        say "nothing to stop: $DIR does not exist"
        return 0
    fi
    if ((PURGE)) && [[ ! -e $DIR/$MARKER && -n $(ls -A "$DIR" 2>/dev/null) ]]; then
        die "refusing to purge $DIR: it is not a test bed directory (no $MARKER)"
    fi
    lock_dir
    if tansu_pid >/dev/null; then tansu_stop; else rm -f "$TANSU_PID"; say "tansu: not running"; fi
    if pg_running; then pg_stop fast; else say "postgres: not running"; fi
    if ((PURGE)); then
        rm -rf -- "$DIR"
        say "purged $DIR"
    fi
}

cmd_status() {
    set_paths
    local up=0 pid
    if pg_running; then
        say "postgres: running on 127.0.0.1:$(pg_running_port) (pid $(pg_running_pid)), data $PGDATA_DIR"
        up=$((up + 1))
    elif pg_initialised; then
        say "postgres: stopped (data $PGDATA_DIR)"
    else
        say "postgres: not initialised ($PGDATA_DIR)"
    fi
    if pid=$(tansu_pid); then
        say "tansu: running on 127.0.0.1:$(state_get KAFKA_PORT) (pid $pid)"
        up=$((up + 1))
    elif [[ $(state_get KAFKA) == off ]]; then
        say "tansu: not requested (start --no-kafka)"
        up=$((up + 1))
    else
        say "tansu: stopped"
    fi
    if [[ -f $ENV_FILE ]]; then say "env: $ENV_FILE"; fi
    ((up == 2)) || return 3
}

cmd_selfcheck() {
    set_paths
    pg_running || die "PostgreSQL for $DIR is not running (scripts/testbed.sh start --dir $DIR)"
    local kafka=1
    if ! tansu_pid >/dev/null; then
        [[ $(state_get KAFKA) == off ]] || die "tansu for $DIR is not running (scripts/testbed.sh start --dir $DIR)"
        kafka=0
    fi
    local pgport kport db t0 t1
    pgport=$(pg_running_port)
    kport=$(state_get KAFKA_PORT)
    psql_admin "$pgport" -At -c 'select 1' >/dev/null || die "cannot connect as postgres to 127.0.0.1:$pgport/postgres"
    for db in "${DATABASES[@]}"; do
        [[ $("$PG_BIN/psql" -X -At -h 127.0.0.1 -p "$pgport" -U "$APP_ROLE" -d "$db" -c 'select current_user' 2>&1) == "$APP_ROLE" ]] ||
            die "cannot connect as $APP_ROLE to 127.0.0.1:$pgport/$db"
    done
    say "postgres: connected as $APP_ROLE to ${DATABASES[*]}"
    if ((!kafka)); then
        say "tansu: not requested (start --no-kafka)"
        return 0
    fi
    t0=$(now_ms)
    kafka_roundtrip "$kport"
    t1=$(now_ms)
    say "tansu: produce + consume round trip ok ($((t1 - t0)) ms)"
    # A consumer-group member (subscribe, join, sync, fetch) with short group timeouts.
    local got
    t0=$(now_ms)
    got=$(timeout 60 env LD_LIBRARY_PATH="$KAFKA_LIB_PATH" kcat -b "127.0.0.1:$kport" \
        -G "testbed-selfcheck-$$-$t0" "$SELFCHECK_TOPIC" -c 1 -q \
        -X auto.offset.reset=earliest -X session.timeout.ms=6000 -X heartbeat.interval.ms=500 \
        -X fetch.wait.max.ms=20 2>/dev/null) || true
    t1=$(now_ms)
    [[ -n $got ]] || die "a consumer group member did not receive a message within 60 s"
    say "tansu: consumer group join + first message in $((t1 - t0)) ms (session.timeout.ms=6000)"
}

cmd_env() {
    set_paths
    [[ -f $ENV_FILE ]] || die "$ENV_FILE does not exist (run: scripts/testbed.sh start --dir $DIR)"
    cat "$ENV_FILE"
}

main() {
    (($#)) || { usage >&2; exit 2; }
    local cmd=$1
    shift
    case $cmd in
        start | stop | status | selfcheck | env) parse_args "$cmd" "$@" ;;
        -h | --help | help) usage; exit 0 ;;
        *) usage >&2; die "unknown command: $cmd" ;;
    esac
    "cmd_$cmd"
}

main "$@"
