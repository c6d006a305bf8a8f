#!/usr/bin/env bash
# scripts/validate-openapi.sh — validate an OpenAPI document with openapi-spec-validator.
#
#   scripts/validate-openapi.sh [FILE]      FILE defaults to Sources/Gateway/Generated/openapi.json
#   scripts/validate-openapi.sh --install   only make sure the validator is installed
#
# The validator (PyPI openapi-spec-validator, pinned) is pip-installed into the git-ignored
# cache .testbed/cache/pylib on first use, like the other test-bed tools (scripts/deps.sh
# installs it too), and run from there with PYTHONPATH. It detects the OpenAPI version from
# the document (3.1 here). Exit status: 0 valid, 1 invalid, 2 usage or install failure.
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
CACHE="$REPO_ROOT/.testbed/cache"
PYLIB="$CACHE/pylib"
# Changing the pin (or python3's version: the dependencies include compiled wheels) makes the
# next run reinstall (see STAMP).
VALIDATOR=openapi-spec-validator==0.9.0
STAMP="$PYLIB/.stamp"

say() { printf 'validate-openapi: %s\n' "$*" >&2; }
die() { printf 'validate-openapi: error: %s\n' "$*" >&2; exit 2; }

stamp_content() {
    printf '%s %s\n' "$VALIDATOR" "$(python3 -c 'import sys; print("python%d.%d" % sys.version_info[:2])')"
}

installed() {
    [[ -f $STAMP && $(<"$STAMP") == "$(stamp_content)" ]]
}

install_validator() {
    command -v python3 >/dev/null 2>&1 || die "python3 is required"
    installed && return 0
    mkdir -p "$CACHE"
    # Serialise concurrent runs (parallel tests, deps.sh); re-check under the lock.
    exec 9>"$CACHE/.pylib.lock"
    flock 9
    if ! installed; then
        say "pip install $VALIDATOR into ${PYLIB#"$REPO_ROOT"/}"
        local tmp log
        tmp=$(mktemp -d "$CACHE/.pylib.XXXXXX")
        log=$(mktemp "${TMPDIR:-/tmp}/mart-validate-openapi-pip.XXXXXX")
        if ! python3 -m pip install --disable-pip-version-check -q --no-warn-script-location \
            --target "$tmp" "$VALIDATOR" >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            rm -rf "$tmp" "$log"
            die "pip install $VALIDATOR failed (is PyPI reachable?)"
        fi
        rm -f "$log"
        stamp_content >"$tmp/.stamp"
        rm -rf "$PYLIB"
        mv "$tmp" "$PYLIB"
    fi
    exec 9>&-
}

case ${1:-} in
    -h | --help)
        sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    --install)
        install_validator
        exit 0
        ;;
    -*) die "unknown option: $1" ;;
esac
(($# <= 1)) || die "one file at most"
file=${1:-$REPO_ROOT/Sources/Gateway/Generated/openapi.json}
[[ -f $file ]] || die "no such file: $file"

install_validator
status=0
PYTHONPATH="$PYLIB${PYTHONPATH:+:$PYTHONPATH}" python3 -m openapi_spec_validator "$file" || status=$?
((status == 0)) || exit 1
