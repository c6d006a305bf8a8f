#!/usr/bin/env bash
# Regenerates the code generated from proto/ (all of it committed, never edited by hand).
#
#   scripts/gen-proto.sh           regenerate in place
#   scripts/gen-proto.sh --check   regenerate into a temporary directory and fail
#                                  (exit 1) if the committed code differs
#   scripts/gen-proto.sh --baseline  accept today's proto/ as the breaking-change
#                                  baseline (proto/breaking-baseline.binpb)
#
# What is generated:
#   Sources/MartProto/*.pb.swift, *.grpc.swift   messages and gRPC stubs (public)
#   Sources/MartProto/MartAccessPolicies.swift   the access level of every RPC      }
#   Sources/Gateway/Generated/                   route table and openapi.json       } by our own
#   Sources/MartEvents/Generated/        event topics, DomainEvent          } plugin
#                                                conformances, DomainEvents.all     }
#   Sources/protoc-gen-mart-gateway/Generated/   the options that plugin reads (internal)
#
# The protoc plugins (protoc-gen-swift, protoc-gen-grpc-swift-2) are built in
# release mode from this package's own dependencies (so they always match the
# SwiftProtobuf / GRPCProtobuf runtime versions), in the ignored scratch path
# .build-tools. To use prebuilt plugins instead, set both PROTOC_GEN_SWIFT and
# PROTOC_GEN_GRPC_SWIFT_2 to their paths.
#
# protoc-gen-mart-gateway is this package's own plugin (Sources/protoc-gen-mart-gateway),
# built the same way after its Generated/ is up to date (set PROTOC_GEN_MART_GATEWAY to use a
# prebuilt one). It reads the google.api.http and mart.api.v1.access options of every Mart RPC,
# and every message of every mart/<domain>/v1/events.proto with that file's
# mart.api.v1.event_topic option, and writes MartAccessPolicies.swift,
# Sources/Gateway/Generated/ and Sources/MartEvents/Generated/ in one invocation. After
# building it, this script checks that it refuses a bad events.proto (an event without
# `EventMetadata metadata = 1`, a file without a topic), so that the guard against unregistered
# or metadata-less events cannot silently stop working.
#
# protoc is Debian's protobuf-compiler; it also provides the well-known types
# (google/protobuf/*.proto) under /usr/include. No code is generated for the
# well-known types: SwiftProtobuf already has them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly PROTO_DIR=proto
readonly OUT_DIR=Sources/MartProto
readonly WKT_INCLUDE=/usr/include
readonly TOOLS_SCRATCH=.build-tools
readonly OPTS=Visibility=Public,FileNaming=PathToUnderscores
# protoc-gen-mart-gateway's own copy of the options it reads, internal to its target.
readonly GATEWAY_PLUGIN=protoc-gen-mart-gateway
readonly PLUGIN_OUT_DIR=Sources/$GATEWAY_PLUGIN/Generated
readonly PLUGIN_OPTS=Visibility=Internal,FileNaming=PathToUnderscores
readonly PLUGIN_PROTOS=(google/api/http.proto google/api/annotations.proto google/api/field_behavior.proto
  mart/api/v1/access.proto mart/api/v1/event_topic.proto)
# What protoc-gen-mart-gateway writes (paths relative to its output directory, the repository
# layout).
readonly ACCESS_POLICIES=$OUT_DIR/MartAccessPolicies.swift
readonly GATEWAY_OUT_DIR=Sources/Gateway/Generated
readonly EVENTS_OUT_DIR=Sources/MartEvents/Generated
# The contract the breaking-change check compares proto/ against: a descriptor set committed
# beside the protos (not the merge-base with main, which a clean clone of main, as CI has, would
# compare with itself). Refreshed on purpose only, with `make proto-baseline`.
readonly BREAKING_BASELINE=$PROTO_DIR/breaking-baseline.binpb

usage() {
  sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

check=0
baseline=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  --baseline) baseline=1 ;;
  -h | --help) usage; exit 0 ;;
  *) echo "gen-proto: unknown argument: $1" >&2; usage >&2; exit 2 ;;
esac

log() { echo "gen-proto: $*" >&2; }

# 1. protoc.
if ! command -v protoc >/dev/null 2>&1; then
  log "protoc not found; installing Debian's protobuf-compiler"
  apt-get update
  apt-get install -y protobuf-compiler
fi
if [[ ! -f "$WKT_INCLUDE/google/protobuf/timestamp.proto" ]]; then
  log "well-known types not found under $WKT_INCLUDE (expected from protobuf-compiler / libprotobuf-dev)"
  exit 1
fi

# 2. The plugins.
if [[ -n "${PROTOC_GEN_SWIFT:-}" && -n "${PROTOC_GEN_GRPC_SWIFT_2:-}" ]]; then
  gen_swift=$PROTOC_GEN_SWIFT
  gen_grpc=$PROTOC_GEN_GRPC_SWIFT_2
else
  # One --product per invocation; build output goes to stderr so that it
  # does not mix with anything a caller parses.
  swift build -c release --scratch-path "$TOOLS_SCRATCH" --product protoc-gen-swift >&2
  swift build -c release --scratch-path "$TOOLS_SCRATCH" --product protoc-gen-grpc-swift-2 >&2
  bin=$(swift build -c release --scratch-path "$TOOLS_SCRATCH" --show-bin-path)
  gen_swift=$bin/protoc-gen-swift
  gen_grpc=$bin/protoc-gen-grpc-swift-2
fi
for plugin in "$gen_swift" "$gen_grpc"; do
  if [[ ! -x "$plugin" ]]; then
    log "plugin not found or not executable: $plugin"
    exit 1
  fi
done

# Every .proto under proto/ except vendored well-known types, as paths
# relative to proto/, in a locale-independent order.
protos=()
while IFS= read -r file; do
  protos+=("$file")
done < <(cd "$PROTO_DIR" && find . -type f -name '*.proto' -not -path './google/protobuf/*' \
  | sed 's|^\./||' | LC_ALL=C sort)
if [[ ${#protos[@]} -eq 0 ]]; then
  log "no .proto files under $PROTO_DIR"
  exit 1
fi

# generate DIR: writes the generated Swift for every proto into DIR.
generate() {
  local dir=$1
  protoc \
    -I "$PROTO_DIR" -I "$WKT_INCLUDE" \
    --plugin=protoc-gen-swift="$gen_swift" \
    --plugin=protoc-gen-grpc-swift-2="$gen_grpc" \
    --swift_out="$dir" --swift_opt="$OPTS" \
    --grpc-swift-2_out="$dir" --grpc-swift-2_opt="$OPTS" \
    "${protos[@]}"
  # Drop gRPC outputs of files that declare no service, should the plugin
  # emit them (an empty or import-only file).
  local f
  for f in "$dir"/*.grpc.swift; do
    [[ -e "$f" ]] || continue
    if ! grep -q 'GRPCCore.ServiceDescriptor' "$f"; then
      rm -f "$f"
    fi
  done
}

# generate_plugin_options DIR: writes protoc-gen-mart-gateway's internal copy of
# the option extensions it reads into DIR.
generate_plugin_options() {
  local dir=$1
  protoc \
    -I "$PROTO_DIR" -I "$WKT_INCLUDE" \
    --plugin=protoc-gen-swift="$gen_swift" \
    --swift_out="$dir" --swift_opt="$PLUGIN_OPTS" \
    "${PLUGIN_PROTOS[@]}"
}

# generate_gateway ROOT: runs protoc-gen-mart-gateway over every proto; its
# outputs land under ROOT at their repository paths.
generate_gateway() {
  local root=$1
  protoc \
    -I "$PROTO_DIR" -I "$WKT_INCLUDE" \
    --plugin=protoc-gen-mart-gateway="$gen_gateway" \
    --mart-gateway_out="$root" \
    "${protos[@]}"
}

# check_plugin_refuses_bad_callers DIR: the least-privilege rule between services cannot
# silently stop working: generation fails for an internal RPC that names no callers, a public
# one that names some, and one that names its own service.
check_plugin_refuses_bad_callers() {
  local dir=$1 out
  mkdir -p "$dir/protos/bad" "$dir/out"
  cat >"$dir/protos/bad/callers.proto" <<'PROTO'
syntax = "proto3";
package mart.order.v1;
import "google/protobuf/empty.proto";
import "mart/api/v1/access.proto";
service BadCallers {
  rpc NoCallers(google.protobuf.Empty) returns (google.protobuf.Empty) {
    option (mart.api.v1.access) = ACCESS_INTERNAL;
  }
  rpc PublicWithCallers(google.protobuf.Empty) returns (google.protobuf.Empty) {
    option (mart.api.v1.access) = ACCESS_PUBLIC;
    option (mart.api.v1.callers) = SERVICE_PAYMENT;
  }
  rpc CallsItself(google.protobuf.Empty) returns (google.protobuf.Empty) {
    option (mart.api.v1.access) = ACCESS_INTERNAL;
    option (mart.api.v1.callers) = SERVICE_ORDER;
  }
  rpc Fine(google.protobuf.Empty) returns (google.protobuf.Empty) {
    option (mart.api.v1.access) = ACCESS_INTERNAL;
    option (mart.api.v1.callers) = SERVICE_PAYMENT;
  }
}
PROTO
  if out=$(protoc -I "$dir/protos" -I "$PROTO_DIR" -I "$WKT_INCLUDE" \
    --plugin=protoc-gen-mart-gateway="$gen_gateway" --mart-gateway_out="$dir/out" \
    mart/api/v1/access.proto google/rpc/status.proto bad/callers.proto 2>&1); then
    log "$GATEWAY_PLUGIN accepted RPCs with missing or misplaced (mart.api.v1.callers)"
    exit 1
  fi
  expect_refusal "$out" "rpc mart.order.v1.BadCallers.Fine" \
    "NoCallers is open to services but has no (mart.api.v1.callers)" \
    "PublicWithCallers names (mart.api.v1.callers) but its access does not admit services" \
    "CallsItself names its own service as a caller"
}

# expect_refusal OUTPUT VALID EXPECTED...: fails unless the plugin's OUTPUT says every EXPECTED
# problem and does not name VALID, the one good input beside the bad ones.
expect_refusal() {
  local out=$1 valid=$2 expected
  shift 2
  for expected in "$@"; do
    if ! grep -qF -- "$expected" <<<"$out"; then
      log "$GATEWAY_PLUGIN failed on bad input without saying: $expected"
      echo "$out" >&2
      exit 1
    fi
  done
  if grep -qF -- "$valid" <<<"$out"; then
    log "$GATEWAY_PLUGIN refused $valid, which is valid"
    echo "$out" >&2
    exit 1
  fi
}

# descriptor_set OUT ROOT FILE...: the descriptor set of FILE... (paths under ROOT), with
# everything they import, as the breaking-change check reads it.
descriptor_set() {
  local out=$1 root=$2
  shift 2
  protoc -I "$root" -I "$PROTO_DIR" -I "$WKT_INCLUDE" --include_imports --descriptor_set_out="$out" "$@"
}

# check_breaking DIR: proto/ against the committed baseline; fails naming every change that
# would break a reader built from the baseline.
check_breaking() {
  local dir=$1
  mkdir -p "$dir"
  descriptor_set "$dir/current.binpb" "$PROTO_DIR" "${protos[@]}"
  if [[ $baseline -eq 1 ]]; then
    cp "$dir/current.binpb" "$BREAKING_BASELINE"
    log "breaking-change baseline written to $BREAKING_BASELINE"
    return
  fi
  if [[ ! -f $BREAKING_BASELINE ]]; then
    log "no breaking-change baseline at $BREAKING_BASELINE: run make proto-baseline"
    exit 1
  fi
  "$gen_gateway" --check-breaking "$BREAKING_BASELINE" "$dir/current.binpb"
}

# check_breaking_rules DIR: each rule of the breaking-change check on a small proto pair, so that
# none can silently stop working: a change that breaks must fail saying what, an addition pass.
check_breaking_rules() {
  local dir=$1
  local head='syntax = "proto3"; package mart.rule.v1;'
  local http='import "google/api/annotations.proto";'
  breaking_case() {
    local name=$1 expected=$2 before=$3 after=$4 side out
    mkdir -p "$dir/$name/before/rule" "$dir/$name/after/rule"
    printf '%s\n' "$before" >"$dir/$name/before/rule/rule.proto"
    printf '%s\n' "$after" >"$dir/$name/after/rule/rule.proto"
    for side in before after; do
      descriptor_set "$dir/$name/$side.binpb" "$dir/$name/$side" rule/rule.proto
    done
    if out=$("$gen_gateway" --check-breaking "$dir/$name/before.binpb" "$dir/$name/after.binpb" 2>&1); then
      if [[ $expected != pass ]]; then
        log "the breaking-change check let through $name: expected \"$expected\""
        exit 1
      fi
    elif [[ $expected == pass ]]; then
      log "the breaking-change check refused $name, which only adds:"
      echo "$out" >&2
      exit 1
    elif ! grep -qF -- "$expected" <<<"$out" || ! grep -qF -- "new package version" <<<"$out"; then
      log "the breaking-change check refused $name without saying: $expected"
      echo "$out" >&2
      exit 1
    fi
  }
  breaking_case field-removed "field mart.rule.v1.M.b (2) removed without reserving its number and name" \
    "$head message M { string a = 1; string b = 2; }" "$head message M { string a = 1; }"
  breaking_case field-removed-reserved pass \
    "$head message M { string a = 1; string b = 2; }" "$head message M { string a = 1; reserved 2; reserved \"b\"; }"
  breaking_case number-reused "field mart.rule.v1.M.c reuses the reserved number 2" \
    "$head message M { string a = 1; reserved 2; reserved \"b\"; }" "$head message M { string a = 1; string c = 2; }"
  breaking_case type-changed "field mart.rule.v1.M.a (1): type changed" \
    "$head message M { string a = 1; }" "$head message M { int64 a = 1; }"
  breaking_case cardinality-changed "field mart.rule.v1.M.a (1): cardinality changed" \
    "$head message M { string a = 1; }" "$head message M { repeated string a = 1; }"
  breaking_case json-name-changed "field mart.rule.v1.M.a (1): name or JSON name changed" \
    "$head message M { string a = 1; }" "$head message M { string a = 1 [json_name = \"x\"]; }"
  breaking_case enum-value-removed "enum value mart.rule.v1.E.E_ONE (1) removed" \
    "$head enum E { E_UNSPECIFIED = 0; E_ONE = 1; }" "$head enum E { E_UNSPECIFIED = 0; }"
  breaking_case enum-value-renumbered "enum value mart.rule.v1.E.E_ONE renumbered from 1 to 2" \
    "$head enum E { E_UNSPECIFIED = 0; E_ONE = 1; }" "$head enum E { E_UNSPECIFIED = 0; E_ONE = 2; }"
  breaking_case message-renamed "message mart.rule.v1.M removed or renamed" \
    "$head message M { string a = 1; }" "$head message N { string a = 1; }"
  breaking_case service-removed "service mart.rule.v1.S removed or renamed" \
    "$head message M {} service S { rpc Do(M) returns (M); }" "$head message M {}"
  breaking_case rpc-renamed "rpc mart.rule.v1.S.Do removed or renamed" \
    "$head message M {} service S { rpc Do(M) returns (M); }" "$head message M {} service S { rpc Done(M) returns (M); }"
  breaking_case rpc-type-changed "rpc mart.rule.v1.S.Do: request or response type changed" \
    "$head message M {} message N {} service S { rpc Do(M) returns (M); }" \
    "$head message M {} message N {} service S { rpc Do(N) returns (M); }"
  breaking_case http-path-changed "rpc mart.rule.v1.S.Do: google.api.http changed from GET /v1/m to GET /v1/ms" \
    "$head $http message M {} service S { rpc Do(M) returns (M) { option (google.api.http) = { get: \"/v1/m\" }; } }" \
    "$head $http message M {} service S { rpc Do(M) returns (M) { option (google.api.http) = { get: \"/v1/ms\" }; } }"
  breaking_case http-verb-changed "google.api.http changed from GET /v1/m to POST /v1/m" \
    "$head $http message M {} service S { rpc Do(M) returns (M) { option (google.api.http) = { get: \"/v1/m\" }; } }" \
    "$head $http message M {} service S { rpc Do(M) returns (M) { option (google.api.http) = { post: \"/v1/m\" }; } }"
  breaking_case package-changed "file rule/rule.proto: package changed from mart.rule.v1 to mart.rule.v2" \
    "$head message M { string a = 1; }" 'syntax = "proto3"; package mart.rule.v2; message M { string a = 1; }'
  breaking_case additions pass \
    "$head enum E { E_UNSPECIFIED = 0; } message M { string a = 1; } service S { rpc Do(M) returns (M); }" \
    "$head enum E { E_UNSPECIFIED = 0; E_ONE = 1; } message M { string a = 1; string b = 2; } message N {}
     service S { rpc Do(M) returns (M); rpc Other(N) returns (N); }"
}

# check_plugin_refuses_bad_events DIR: runs protoc-gen-mart-gateway on two bad
# events.proto files written into DIR and fails unless generation fails naming
# both problems: a message whose field 1 is not the event metadata, and a file
# without a topic.
check_plugin_refuses_bad_events() {
  local dir=$1 out
  mkdir -p "$dir/protos/mart/bad/v1" "$dir/protos/mart/untopical/v1" "$dir/out"
  cat >"$dir/protos/mart/bad/v1/events.proto" <<'PROTO'
syntax = "proto3";
package mart.bad.v1;
import "mart/api/v1/event_topic.proto";
import "mart/common/v1/common.proto";
option (mart.api.v1.event_topic) = "mart.bad.v1";
message Fine { mart.common.v1.EventMetadata metadata = 1; }
message NoMetadata { string id = 1; }
PROTO
  cat >"$dir/protos/mart/untopical/v1/events.proto" <<'PROTO'
syntax = "proto3";
package mart.untopical.v1;
import "mart/common/v1/common.proto";
message Something { mart.common.v1.EventMetadata metadata = 1; }
PROTO
  # access.proto and status.proto: the plugin needs them among its inputs.
  if out=$(protoc -I "$dir/protos" -I "$PROTO_DIR" -I "$WKT_INCLUDE" \
    --plugin=protoc-gen-mart-gateway="$gen_gateway" --mart-gateway_out="$dir/out" \
    mart/api/v1/access.proto google/rpc/status.proto mart/bad/v1/events.proto mart/untopical/v1/events.proto \
    2>&1); then
    log "$GATEWAY_PLUGIN accepted an event without EventMetadata metadata = 1 and an events.proto without a topic"
    exit 1
  fi
  expect_refusal "$out" "mart.bad.v1.Fine" \
    "message mart.bad.v1.NoMetadata in mart/bad/v1/events.proto: field 1 is \`id\`" \
    "mart/untopical/v1/events.proto has no (mart.api.v1.event_topic) option"
}

# copy_generated SRC DST: copies only generated files (*.pb.swift,
# *.grpc.swift, MartAccessPolicies.swift) from SRC to DST.
copy_generated() {
  local src=$1 dst=$2 f
  for f in "$src"/*.pb.swift "$src"/*.grpc.swift "$src/${ACCESS_POLICIES##*/}"; do
    [[ -e "$f" ]] || continue
    cp "$f" "$dst/"
  done
}

# copy_dir SRC DST: copies every file of SRC (a directory that holds only
# generated files) to DST.
copy_dir() {
  local src=$1 dst=$2 f
  for f in "$src"/*; do
    [[ -e "$f" ]] || continue
    cp "$f" "$dst/"
  done
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# new/ and old/ mirror the repository layout of everything generated.
mkdir -p "$tmp/new/$OUT_DIR" "$tmp/new/$PLUGIN_OUT_DIR" "$tmp/new/$GATEWAY_OUT_DIR" "$tmp/new/$EVENTS_OUT_DIR" \
  "$tmp/old/$OUT_DIR" "$tmp/old/$PLUGIN_OUT_DIR" "$tmp/old/$GATEWAY_OUT_DIR" "$tmp/old/$EVENTS_OUT_DIR"

# 3. Generate into a temporary directory first, so that a protoc error leaves
# the committed code untouched.
generate "$tmp/new/$OUT_DIR"
generate_plugin_options "$tmp/new/$PLUGIN_OUT_DIR"

# 4. Our own plugin, compiled against its options code: in place, the fresh one
# (installed first); with --check, the committed one (compared below).
if [[ $check -eq 0 ]]; then
  mkdir -p "$PLUGIN_OUT_DIR"
  rm -f "$PLUGIN_OUT_DIR"/*
  copy_dir "$tmp/new/$PLUGIN_OUT_DIR" "$PLUGIN_OUT_DIR"
fi
if [[ -n "${PROTOC_GEN_MART_GATEWAY:-}" ]]; then
  gen_gateway=$PROTOC_GEN_MART_GATEWAY
else
  swift build -c release --scratch-path "$TOOLS_SCRATCH" --product "$GATEWAY_PLUGIN" >&2
  gen_gateway=$(swift build -c release --scratch-path "$TOOLS_SCRATCH" --show-bin-path)/$GATEWAY_PLUGIN
fi
if [[ ! -x "$gen_gateway" ]]; then
  log "plugin not found or not executable: $gen_gateway"
  exit 1
fi
generate_gateway "$tmp/new"
check_plugin_refuses_bad_events "$tmp/bad"
check_plugin_refuses_bad_callers "$tmp/bad-callers"
check_breaking_rules "$tmp/breaking-rules"
check_breaking "$tmp/breaking"
[[ $baseline -eq 0 ]] || exit 0

if [[ $check -eq 1 ]]; then
  mkdir -p "$OUT_DIR" "$PLUGIN_OUT_DIR" "$GATEWAY_OUT_DIR"
  copy_generated "$OUT_DIR" "$tmp/old/$OUT_DIR"
  copy_dir "$PLUGIN_OUT_DIR" "$tmp/old/$PLUGIN_OUT_DIR"
  copy_dir "$GATEWAY_OUT_DIR" "$tmp/old/$GATEWAY_OUT_DIR"
  copy_dir "$EVENTS_OUT_DIR" "$tmp/old/$EVENTS_OUT_DIR"
  if ! diff -r "$tmp/old" "$tmp/new" >"$tmp/diff.txt"; then
    head -n 200 "$tmp/diff.txt" >&2
    echo "gen-proto: generated code differs from proto/: run make proto and commit" >&2
    exit 1
  fi
  log "generated code is up to date (${#protos[@]} proto files)"
  exit 0
fi

mkdir -p "$OUT_DIR" "$GATEWAY_OUT_DIR" "$EVENTS_OUT_DIR"
rm -f "$OUT_DIR"/*.pb.swift "$OUT_DIR"/*.grpc.swift "$ACCESS_POLICIES" "$GATEWAY_OUT_DIR"/* "$EVENTS_OUT_DIR"/*
copy_generated "$tmp/new/$OUT_DIR" "$OUT_DIR"
copy_dir "$tmp/new/$GATEWAY_OUT_DIR" "$GATEWAY_OUT_DIR"
copy_dir "$tmp/new/$EVENTS_OUT_DIR" "$EVENTS_OUT_DIR"
count=$(find "$OUT_DIR" "$PLUGIN_OUT_DIR" "$GATEWAY_OUT_DIR" "$EVENTS_OUT_DIR" -maxdepth 1 -type f | wc -l)
log "generated ${count// /} files in $OUT_DIR, $PLUGIN_OUT_DIR, $GATEWAY_OUT_DIR and $EVENTS_OUT_DIR" \
  "from ${#protos[@]} proto files"
