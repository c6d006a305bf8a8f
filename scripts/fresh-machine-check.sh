#!/usr/bin/env bash
# scripts/fresh-machine-check.sh — prove that `make test` passes on a fresh machine.
#
# Usage (as root, on a Debian bookworm host with the Swift toolchain at /opt/swift):
#   scripts/fresh-machine-check.sh [--ref REF] [--repo DIR] [--with PKGS] [--keep] [--rebuild] [--log FILE]
#
#   --ref REF     commit to test (default: HEAD of --repo)
#   --repo DIR    git repository to clone from (default: the checkout this script is in)
#   --with PKGS   also install these Debian packages (space-separated) before the run; no longer
#                 the fresh baseline, but shows the failure behind a first one (e.g. --with make)
#   --keep        keep the root file system afterwards (it is still unmounted) for debugging
#   --rebuild     forget the cached roots and debootstrap again
#   --log FILE    where the output goes (default: .testbed/fresh-machine-<commit>-<time>.log)
#
# What it does:
#   1. builds a bare `debootstrap --variant=minbase bookworm` root from this machine's Debian
#      mirror (cached as .testbed/cache/fresh-root.tar), and on top of it the baseline below
#      (cached as .testbed/cache/fresh-baseline-<hash>.tar), so a rerun takes seconds to set up;
#   2. unpacks the baseline into .testbed/fresh-root (git-ignored), bind-mounts the toolchain
#      and the package mirror read-only, mounts /proc, /sys, /dev, /dev/pts, /dev/shm;
#   3. makes a clean clone of REF at /work/mart inside the root (like CI's checkout; this
#      machine keeps its checkouts under /work as well) and runs `bash .ci/run`, which is
#      `make test`, under chroot with a CI-like environment, teeing the output to the log;
#   4. prints the wall time and the exit status, and exits with that status. Everything it
#      mounted is unmounted on exit, also on failure or Ctrl-C (trap), and processes left
#      running inside the root are stopped.
#
# The baseline: a fresh machine of this kind with only Swift installed.
#   * debootstrap --variant=minbase bookworm: Debian's essential and required packages, apt.
#   * /etc/apt/sources.list.d/debian.sources copied from this machine (same mirror, with
#     bookworm-updates and bookworm-security), /etc/resolv.conf copied, a standard /etc/hosts.
#   * The Debian packages Swift's toolchain needs to run: the list the official Swift Debian 12
#     image (swift:6.x-bookworm) installs — SWIFT_RUNTIME_PACKAGES below — plus python3 and
#     python3-pip, because this kind of machine has CPython with pip. They are installed with
#     --no-install-recommends: stricter than the image, so that nothing pulled in as a
#     recommendation can hide a missing dependency (that is how libprotobuf-dev hid, issue 9).
#     Afterwards the apt lists are deleted, as in the image: `make test` must run apt-get update.
#   * The Swift 6.3 toolchain: /opt/swift, bind-mounted read-only at the same path, on PATH.
#   * The local Swift package mirror /opt/swift-packages (read-only), with this machine's git
#     `url.<mirror>.insteadOf` settings (in /etc/gitconfig, as here); this machine's pip settings
#     (PIP_* from the environment, /opt/wheels read-only when it exists); this machine's CA
#     bundle /etc/ssl/certs/ca-certificates.crt (its network's TLS proxy CA is in it).
#   * Nothing of Mart's own dependencies: no protobuf-compiler, libprotobuf-dev, librdkafka,
#     kcat, PostgreSQL, curl. The script checks this before the run; `make test` must install
#     them itself.
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
TESTBED="$REPO_ROOT/.testbed"
CACHE="$TESTBED/cache"
ROOT="$TESTBED/fresh-root"
SUITE=bookworm
CLONE_DIR=/work/mart # inside the root

SWIFT_RUNTIME_PACKAGES=(binutils git gnupg2 libc6-dev libcurl4-openssl-dev libedit2 libgcc-12-dev
    libpython3-dev libsqlite3-0 libstdc++-12-dev libxml2-dev libncurses-dev libz3-dev pkg-config
    tzdata zlib1g-dev unzip ca-certificates)
BASELINE_PACKAGES=("${SWIFT_RUNTIME_PACKAGES[@]}" python3 python3-pip)
# What a fresh machine must not have: `make test` (scripts/deps.sh) installs these.
MART_PACKAGES=(protobuf-compiler libprotobuf-dev librdkafka-dev librdkafka1 kcat postgresql-15
    postgresql-client-15 curl)
# Read-only bind mounts at the same path (when they exist on this machine).
BIND_RO=(/opt/swift /opt/swift-packages /opt/wheels)
# Environment passed into the chroot from this machine (when set here).
PASS_ENV=(LANG PIP_CERT PIP_DEFAULT_TIMEOUT PIP_DISABLE_PIP_VERSION_CHECK PIP_FIND_LINKS
    PYTHONUNBUFFERED PYTHONDONTWRITEBYTECODE SSL_CERT_FILE SSL_CERT_DIR GIT_SSL_CAINFO
    CURL_CA_BUNDLE REQUESTS_CA_BUNDLE)

say() { printf 'fresh-machine: %s\n' "$*"; }
die() { printf 'fresh-machine: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

REF=HEAD SRC_REPO=$REPO_ROOT KEEP=0 REBUILD=0 LOG="" EXTRA=""
while (($#)); do
    case $1 in
        --ref) REF=${2:?--ref needs a value}; shift 2 ;;
        --repo) SRC_REPO=${2:?--repo needs a value}; shift 2 ;;
        --with) EXTRA=${2?--with needs a value}; shift 2 ;;
        --log) LOG=${2:?--log needs a value}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --rebuild) REBUILD=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

((EUID == 0)) || die "run as root (debootstrap, mount and chroot need it)"
[[ -x /opt/swift/usr/bin/swift ]] || die "no Swift toolchain at /opt/swift"
SHA=$(git -C "$SRC_REPO" rev-parse --verify --quiet "$REF^{commit}") || die "$REF is not a commit in $SRC_REPO"
SHORT=${SHA:0:7}
mkdir -p "$CACHE"
LOG=${LOG:-$TESTBED/fresh-machine-$SHORT-$(date -u +%Y%m%dT%H%M%SZ).log}
LOG=$(realpath -m -- "$LOG")
mkdir -p "$(dirname -- "$LOG")"

# One run at a time per checkout: they share the root directory.
exec 9>"$CACHE/fresh-machine.lock"
flock -n 9 || die "another fresh-machine-check is running in $REPO_ROOT"

# ---------------------------------------------------------------- mounts and cleanup
# Everything mounted at or below $ROOT, deepest first.
mounts_under_root() {
    findmnt -rn -o TARGET | awk -v r="$ROOT" '$0 == r || index($0, r "/") == 1' | sort -r
}

# Processes whose root directory is $ROOT (started by this script's chroot; e.g. a test bed
# left behind when the run was interrupted).
processes_in_root() {
    local p
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/root" 2>/dev/null) == "$ROOT" ]] && printf '%s\n' "${p#/proc/}"
    done
    return 0
}

release_root() {
    local -a pids
    mapfile -t pids < <(processes_in_root)
    if ((${#pids[@]} > 0)); then
        say "stopping ${#pids[@]} process(es) left in the root: ${pids[*]}"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        local i
        for i in {1..50}; do
            mapfile -t pids < <(processes_in_root)
            ((${#pids[@]} == 0)) && break
            sleep 0.2
        done
        ((${#pids[@]} == 0)) || kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    local m
    while read -r m; do
        [[ -n $m ]] || continue
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done < <(mounts_under_root)
    [[ -z $(mounts_under_root) ]] || die "still mounted under $ROOT: $(mounts_under_root | tr '\n' ' ')"
}

remove_root() {
    release_root
    # Never follow into anything mounted (there is nothing left, checked above).
    [[ ! -e $ROOT ]] || rm -rf --one-file-system -- "$ROOT"
}

cleanup() {
    local status=$?
    set +e
    release_root && say "nothing is mounted under $ROOT any more"
    if ((KEEP)); then
        say "kept the root at $ROOT (unmounted; rerun with --keep to get a mounted one, or enter it with"
        say "  mount --bind /opt/swift $ROOT/opt/swift && chroot $ROOT /bin/bash)"
    else
        remove_root
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mount_system() {
    mount -t proc proc "$ROOT/proc"
    mount -t sysfs sysfs "$ROOT/sys"
    # /dev: a bind, made a slave so that nothing mounted below it reaches this machine's /dev.
    mount --bind /dev "$ROOT/dev"
    mount --make-slave "$ROOT/dev"
    mount --bind /dev/pts "$ROOT/dev/pts"
    # PostgreSQL's shared memory: a private tmpfs rather than this machine's /dev/shm.
    mount -t tmpfs -o mode=1777,nosuid,nodev shm "$ROOT/dev/shm"
}

mount_ro() { # SRC: bind SRC read-only at the same path inside the root
    mkdir -p "$ROOT$1"
    mount --bind "$1" "$ROOT$1"
    mount -o remount,bind,ro "$ROOT$1"
}

in_root() { chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }

# ---------------------------------------------------------------- the cached roots
mirror() {
    local m
    m=$(awk -v s="$SUITE" '/^URIs:/ { u = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) { print u; exit } }' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null) || true
    [[ -n $m ]] || m=$(awk -v s="$SUITE" '$1 == "deb" && $3 == s { print $2; exit }' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null) || true
    printf '%s\n' "${m:-http://deb.debian.org/debian}"
}

pack_root() { # TARBALL
    [[ -z $(mounts_under_root) ]] || die "refusing to pack a mounted root"
    tar -C "$ROOT" --numeric-owner -cf "$1.tmp" . && mv -f "$1.tmp" "$1"
}

unpack_root() { # TARBALL
    mkdir -p "$ROOT"
    tar -C "$ROOT" --numeric-owner -xpf "$1"
}

BARE_TAR="$CACHE/fresh-root.tar"
BASE_KEY=$(printf '%s\n' "$SUITE" "$(mirror)" "${BASELINE_PACKAGES[@]}" | sha256sum | cut -c1-12)
BASE_TAR="$CACHE/fresh-baseline-$BASE_KEY.tar"

build_bare_root() {
    command -v debootstrap >/dev/null 2>&1 || {
        say "apt-get install debootstrap"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    }
    local m
    m=$(mirror)
    say "debootstrap --variant=minbase $SUITE from $m (a few minutes)"
    local dlog="$TESTBED/fresh-debootstrap.log"
    if ! debootstrap --variant=minbase "$SUITE" "$ROOT" "$m" >"$dlog" 2>&1; then
        tail -n 30 "$dlog" >&2
        die "debootstrap failed (log: $dlog)"
    fi
    pack_root "$BARE_TAR"
}

build_baseline() {
    say "baseline: apt-get install --no-install-recommends ${BASELINE_PACKAGES[*]}"
    configure_root
    mount_system
    local blog="$TESTBED/fresh-baseline.log"
    if ! in_root sh -c "apt-get update && apt-get install -y --no-install-recommends ${BASELINE_PACKAGES[*]} \
        && apt-get clean && rm -rf /var/lib/apt/lists/*" >"$blog" 2>&1; then
        tail -n 30 "$blog" >&2
        die "installing the baseline failed (log: $blog)"
    fi
    release_root
    pack_root "$BASE_TAR"
}

# What every fresh install has, and what this machine's apt uses.
configure_root() {
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    local f
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        if [[ -f $f ]]; then cp "$f" "$ROOT$f"; fi
    done
    # This machine's CA bundle: its network's TLS-intercepting proxy signs with a CA that is
    # only in this machine's bundle, and without it nothing reaches PyPI. (Done on every run,
    # after the cached baseline, so the baseline itself stays Debian's.)
    if [[ -f /etc/ssl/certs/ca-certificates.crt && -d $ROOT/etc/ssl/certs ]]; then
        cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
    fi
    [[ -s $ROOT/etc/hosts ]] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
}

prepare_root() {
    remove_root # whatever an earlier (interrupted or --keep) run left
    ((REBUILD)) && rm -f "$BARE_TAR" "$CACHE"/fresh-baseline-*.tar
    if [[ -f $BASE_TAR ]]; then
        say "baseline root from ${BASE_TAR#"$REPO_ROOT"/}"
        unpack_root "$BASE_TAR"
    else
        if [[ -f $BARE_TAR ]]; then
            say "bare root from ${BARE_TAR#"$REPO_ROOT"/}"
            unpack_root "$BARE_TAR"
        else
            build_bare_root
        fi
        rm -f "$CACHE"/fresh-baseline-*.tar # an older package list
        build_baseline
    fi
    configure_root

    # The toolchain, the package mirror, this machine's git and pip settings.
    local d
    for d in "${BIND_RO[@]}"; do
        if [[ -d $d ]]; then mount_ro "$d"; fi
    done
    # git's url.<mirror>.insteadOf, from the same scope as here (this machine has them in the
    # system file /etc/gitconfig).
    local scope file key value
    for scope in system global; do
        file=$ROOT/etc/gitconfig
        [[ $scope == global ]] && file=$ROOT/root/.gitconfig
        while read -r key value; do
            git config --file "$file" --add "$key" "$value"
        done < <(git config "--$scope" --get-regexp '^url\.' || true)
    done
    mount_system
}

check_baseline() {
    local -a present
    mapfile -t present < <(in_root dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${MART_PACKAGES[@]}" 2>/dev/null |
        awk '$2 == "ii" { print $1 }')
    ((${#present[@]} == 0)) || die "the baseline already has Mart's dependencies: ${present[*]}"
    [[ ! -e $ROOT/usr/include/google/protobuf ]] || die "the baseline already has /usr/include/google/protobuf"
    local n
    n=$(in_root dpkg-query -W -f='${db:Status-Abbrev}\n' | grep -c '^ii')
    say "baseline: Debian $(cat "$ROOT/etc/debian_version"), $n packages, none of: ${MART_PACKAGES[*]}"
    say "baseline: $(in_root /opt/swift/usr/bin/swift --version 2>/dev/null | head -n1), $(in_root python3 --version), $(in_root python3 -m pip --version | cut -d' ' -f1-2)"
    say "baseline: make is $(in_root sh -c 'command -v make || echo absent')"
}

install_extra() {
    [[ -n $EXTRA ]] || return 0
    say "NOT the fresh baseline: --with $EXTRA (apt-get install --no-install-recommends)"
    local xlog="$TESTBED/fresh-extra.log"
    # shellcheck disable=SC2086  # a space-separated list of package names
    if ! in_root sh -c "apt-get update && apt-get install -y --no-install-recommends $EXTRA" >"$xlog" 2>&1; then
        tail -n 20 "$xlog" >&2
        die "apt-get install $EXTRA failed (log: $xlog)"
    fi
}

# ---------------------------------------------------------------- the run
started=$(date +%s)
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
say "$(date -u '+%Y-%m-%d %H:%M:%S UTC'): commit $SHA ($(git -C "$SRC_REPO" log -1 --format=%s "$SHA"))"
prepare_root
check_baseline
install_extra

git clone --quiet --no-hardlinks --no-checkout "$SRC_REPO" "$ROOT$CLONE_DIR"
git -C "$ROOT$CLONE_DIR" checkout --quiet --detach "$SHA" 2>/dev/null || {
    git -C "$ROOT$CLONE_DIR" fetch --quiet "$SRC_REPO" "$SHA"
    git -C "$ROOT$CLONE_DIR" checkout --quiet --detach "$SHA"
}
say "clean clone of $SHORT at $CLONE_DIR; setup took $(($(date +%s) - started))s"

env_args=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb CI=true DEBIAN_FRONTEND=noninteractive
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/swift/usr/bin)
for v in "${PASS_ENV[@]}"; do
    if [[ -n ${!v:-} ]]; then env_args+=("$v=${!v}"); fi
done

say "chroot: cd $CLONE_DIR && bash .ci/run"
run_started=$(date +%s)
status=0
chroot "$ROOT" /usr/bin/env -i "${env_args[@]}" /bin/bash -c "cd $CLONE_DIR && exec bash .ci/run" </dev/null || status=$?
finished=$(date +%s)
say "commit $SHORT: make test exited with status $status after $((finished - run_started))s" \
    "(wall time with setup: $((finished - started))s); log: $LOG"
exit "$status"
