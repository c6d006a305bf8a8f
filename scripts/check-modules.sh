#!/usr/bin/env bash
# The module graph reads as the architecture (README, "Layout"):
#   MartProto → MartCore → MartDatabase → MartEvents → MartRuntime → services → mart
#                   └────────────────────────────────→ Gateway ─────────────────↗
# This check keeps the gateway out of persistence and events: it walks the targets Gateway
# depends on, transitively, and fails if PostgreSQL (postgres-nio), librdkafka (Kafka, CRdKafka)
# or a module built on them is among them. Run by `make lint`.
set -euo pipefail
cd "$(dirname "$0")/.."

swift package dump-package | python3 -c '
import json, sys

package = json.load(sys.stdin)
targets = {target["name"]: target for target in package["targets"]}
forbidden_targets = {"MartDatabase", "MartEvents", "MartRuntime", "Kafka", "CRdKafka"}
forbidden_products = {"PostgresNIO"}

def dependencies(name):
    for dependency in targets[name]["dependencies"]:
        if "byName" in dependency:
            yield "target", dependency["byName"][0]
        elif "target" in dependency:
            yield "target", dependency["target"][0]
        elif "product" in dependency:
            yield "product", dependency["product"][0]

def check(root):
    seen, stack, problems = set(), [(root, [root])], []
    while stack:
        name, path = stack.pop()
        for kind, dependency in dependencies(name):
            chain = " → ".join(path + [dependency])
            if kind == "product":
                if dependency in forbidden_products:
                    problems.append(chain)
                continue
            if dependency in forbidden_targets:
                problems.append(chain)
            if dependency in targets and dependency not in seen:
                seen.add(dependency)
                stack.append((dependency, path + [dependency]))
    return problems

problems = check("Gateway")
for chain in problems:
    print(f"check-modules: the gateway must not link persistence or events: {chain}", file=sys.stderr)
sys.exit(1 if problems else 0)
'
