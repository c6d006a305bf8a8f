#!/usr/bin/env bash
# scripts/validate-k8s.sh — check the Kubernetes manifests under deploy/k8s (`make k8s-check`).
#
#   scripts/validate-k8s.sh [DIR]     DIR defaults to deploy/k8s
#   scripts/validate-k8s.sh --install only make sure the validator is installed
#
#  1. every manifest file (*.yaml but the kustomizations) against the API schemas bundled in
#     kubernetes-validate (PyPI, pinned), in strict mode: an unknown field is an error, as is a
#     kind or apiVersion it has no schema for. Twice: against the oldest Kubernetes the manifests
#     claim (gRPC probes are GA from 1.27) and the newest the validator knows;
#  2. when kubectl is installed, what `kubectl kustomize` renders from DIR and DIR/migrate, the
#     same way (so `kubectl apply -k` gets what was validated);
#  3. that the environment of each process matches deploy/docker-compose.yml (variable names,
#     less the MART_*_ADDRESS ones), that every ConfigMap and Secret reference names a key of the
#     variable's own name and every ConfigMap key exists, that the migration Job gets every
#     database URL, and that each kustomization lists exactly the manifests beside it.
#
# The validator lives in a virtualenv under the git-ignored cache .testbed/cache, made on first
# use like the other test-bed tools (scripts/deps.sh). Exit status: 0 valid, 1 invalid, 2 usage
# or install failure.
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
CACHE="$REPO_ROOT/.testbed/cache"
# Changing the pin makes the next run reinstall (the version is checked on every run).
VALIDATOR=kubernetes-validate==1.37.0
VENV="$CACHE/venv-kubernetes-validate"
# The oldest Kubernetes the manifests are meant for; the newest is the validator's default.
OLDEST_KUBERNETES=1.27.0

say() { printf 'validate-k8s: %s\n' "$*" >&2; }
die() { printf 'validate-k8s: error: %s\n' "$*" >&2; exit 2; }

installed() {
    [[ -x $VENV/bin/python ]] &&
        [[ $("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('${VALIDATOR%%==*}'))" 2>/dev/null) == "${VALIDATOR#*==}" ]] &&
        "$VENV/bin/python" -c 'import yaml' 2>/dev/null
}

install_validator() {
    command -v python3 >/dev/null 2>&1 || die "python3 is required"
    installed && return 0
    mkdir -p "$CACHE"
    # Serialise concurrent runs; re-check under the lock.
    exec 9>"$CACHE/.lock-kubernetes-validate"
    flock 9
    if ! installed; then
        # kubernetes-validate depends on PyYAML, which the environment check below uses too.
        say "pip install $VALIDATOR (into ${VENV#"$REPO_ROOT"/})"
        local log
        log=$(mktemp "${TMPDIR:-/tmp}/mart-validate-k8s-pip.XXXXXX")
        rm -rf "$VENV"
        if ! { python3 -m venv "$VENV" &&
            "$VENV/bin/pip" install --disable-pip-version-check -q "$VALIDATOR"; } >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            rm -f "$log"
            die "could not install $VALIDATOR (is PyPI reachable? python3-venv installed?)"
        fi
        rm -f "$log"
    fi
    exec 9>&-
}

# validate LABEL FILE… — strict validation against both versions; any ERROR or WARN fails.
validate() {
    local label=$1
    shift
    local version output status=0
    for version in "$OLDEST_KUBERNETES" default; do
        local -a args=(--strict --quiet)
        [[ $version == default ]] || args+=(--kubernetes-version "$version")
        output=$("$VENV/bin/kubernetes-validate" "${args[@]}" "$@" 2>&1) || status=1
        # A missing schema (a typo in kind or apiVersion) is only a warning to the tool.
        if [[ -n $output ]]; then
            printf '%s\n' "$output" >&2
            status=1
        fi
    done
    ((status == 0)) || say "$label: invalid (above)"
    return "$status"
}

case ${1:-} in
    -h | --help)
        sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    --install)
        install_validator
        exit 0
        ;;
    -*) die "unknown option: $1" ;;
esac
(($# <= 1)) || die "one directory at most"
dir=${1:-$REPO_ROOT/deploy/k8s}
[[ -f $dir/kustomization.yaml ]] || die "no kustomization.yaml in $dir"
compose=$REPO_ROOT/deploy/docker-compose.yml

install_validator

mapfile -t manifests < <(find "$dir" -name '*.yaml' ! -name kustomization.yaml | sort)
((${#manifests[@]} > 0)) || die "no manifests under $dir"
failed=0
# One validator run per Kubernetes version for the files and the rendered output together: each
# run costs a Python start and the schemas' load, most of this step's time.
to_validate=("${manifests[@]}")
if command -v kubectl >/dev/null 2>&1; then
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/mart-validate-k8s.XXXXXX")
    # shellcheck disable=SC2064  # expand $tmp now
    trap "rm -rf '$tmp'" EXIT
    for kustomization in "$dir" "$dir/migrate"; do
        [[ -f $kustomization/kustomization.yaml ]] || continue
        rendered="$tmp/kustomize-${kustomization##*/}.yaml"
        if kubectl kustomize "$kustomization" >"$rendered" 2>"$tmp/err"; then
            to_validate+=("$rendered")
        else
            cat "$tmp/err" >&2
            say "kubectl kustomize ${kustomization#"$REPO_ROOT"/} failed"
            failed=1
        fi
    done
else
    say "kubectl not installed: the kustomize output is not rendered (the files are still checked)"
fi
validate "manifests" "${to_validate[@]}" || failed=1

"$VENV/bin/python" - "$dir" "$compose" <<'PY' || failed=1
"""The environment each process gets on Kubernetes against deploy/docker-compose.yml."""
import os
import re
import sys

import yaml

k8s_dir, compose_path = sys.argv[1], sys.argv[2]
problems = []

# Set on Kubernetes only, on purpose (anything else that differs is an error).
K8S_ONLY = {
    # The migration Job migrates before a rollout; compose lets each service migrate at start-up.
    "MART_AUTO_MIGRATE": "services",
}
ADDRESS = re.compile(r"^MART_[A-Z]+_ADDRESS$")


class StrictLoader(yaml.SafeLoader):
    """Refuses a key given twice in one mapping: PyYAML keeps the last silently, the API server may not."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_all(path):
    with open(path) as f:
        try:
            return [d for d in yaml.load_all(f, Loader=StrictLoader) if d]
        except yaml.YAMLError as error:
            problems.append(f"{path}: {error}")
            return []


# compose: the processes that run `serve <name>` and the names of their variables.
with open(compose_path) as f:
    compose = yaml.safe_load(f)  # PyYAML resolves the `<<:` merges of x-service
compose_env = {}
for service in compose["services"].values():
    command = service.get("command") or []
    if len(command) == 2 and command[0] == "serve":
        compose_env[command[1]] = set(service.get("environment") or {})

documents = []
for root, _, files in os.walk(k8s_dir):
    for name in sorted(files):
        path = os.path.join(root, name)
        if name == "kustomization.yaml":
            listed = set((load_all(path) or [{}])[0].get("resources") or [])
            present = {f for f in os.listdir(root) if f.endswith(".yaml") and f != name}
            for missing in sorted(present - listed):
                problems.append(f"{path}: does not list {missing}, so `kubectl apply -k` leaves it out")
            for extra in sorted(listed - present):
                if not os.path.isdir(os.path.join(root, extra)):
                    problems.append(f"{path}: lists {extra}, which is not there")
        elif name.endswith(".yaml"):
            documents += [(os.path.relpath(path, k8s_dir), d) for d in load_all(path)]

config_keys = {}
for _, d in documents:
    if d.get("kind") == "ConfigMap":
        config_keys[d["metadata"]["name"]] = set(d.get("data") or {})


def containers(d):
    spec = d.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


k8s_env = {}
migrate_env = None
for path, d in documents:
    if d.get("kind") not in ("Deployment", "Job"):
        continue
    for c in containers(d):
        where = f"{path}: {d['kind']} {d['metadata']['name']}, container {c['name']}"
        if c.get("envFrom"):
            problems.append(f"{where}: uses envFrom; name each variable under env so that this check can read them")
        names = set()
        for e in c.get("env", []):
            names.add(e["name"])
            ref = e.get("valueFrom", {})
            for kind in ("configMapKeyRef", "secretKeyRef"):
                if kind in ref and ref[kind]["key"] != e["name"]:
                    problems.append(f"{where}: {e['name']} comes from {kind} key {ref[kind]['key']}: name the key after the variable")
            if "configMapKeyRef" in ref:
                cm = ref["configMapKeyRef"]
                if cm["name"] not in config_keys:
                    problems.append(f"{where}: {e['name']} comes from ConfigMap {cm['name']}, which deploy/k8s does not define")
                elif cm["key"] not in config_keys[cm["name"]]:
                    problems.append(f"{where}: {e['name']} comes from ConfigMap {cm['name']}, which has no key {cm['key']}")
        args = c.get("args") or []
        if len(args) == 2 and args[0] == "serve":
            k8s_env[args[1]] = names
        elif args[:1] == ["migrate"]:
            migrate_env = names

for process in sorted(set(compose_env) | set(k8s_env)):
    if process not in k8s_env:
        problems.append(f"{process}: deploy/docker-compose.yml runs `serve {process}`, no Deployment in {k8s_dir} does")
        continue
    if process not in compose_env:
        problems.append(f"{process}: a Deployment runs `serve {process}`, deploy/docker-compose.yml does not")
        continue
    compose_names = {n for n in compose_env[process] if not ADDRESS.match(n)}
    k8s_names = {n for n in k8s_env[process] if not ADDRESS.match(n) and n not in K8S_ONLY}
    for name in sorted(compose_names - k8s_names):
        problems.append(f"{process}: deploy/docker-compose.yml sets {name}, the Kubernetes manifests do not")
    for name in sorted(k8s_names - compose_names):
        problems.append(f"{process}: the Kubernetes manifests set {name}, deploy/docker-compose.yml does not")

urls = {n for names in compose_env.values() for n in names if n.endswith("_DATABASE_URL")}
if migrate_env is None:
    problems.append(f"no Job in {k8s_dir} runs `migrate`")
else:
    for name in sorted(urls - migrate_env):
        problems.append(f"the migration Job does not set {name}, so `mart migrate all` would use the default URL")

for problem in problems:
    print(f"validate-k8s: {problem}", file=sys.stderr)
if problems:
    print(f"validate-k8s: {len(problems)} problem(s) in the environment of the manifests", file=sys.stderr)
sys.exit(1 if problems else 0)
PY

if ((failed)); then
    say "FAILED"
    exit 1
fi
say "ok: ${#manifests[@]} files, strict, Kubernetes $OLDEST_KUBERNETES and the validator's newest; environment matches deploy/docker-compose.yml"
