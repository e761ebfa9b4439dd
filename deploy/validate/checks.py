"""Checks of deploy/ that no off-the-shelf linter makes; run by scripts/validate-deploy.sh.

    python deploy/validate/checks.py yaml-parses
    python deploy/validate/checks.py settings
    python deploy/validate/checks.py k8s RENDERED.yaml
    python deploy/validate/checks.py dashboard OUT_RULES.yaml     # structure + a rules file of its PromQL
    python deploy/validate/checks.py metric-names
    python deploy/validate/checks.py healthcheck                # deploy/healthcheck.py against a stub endpoint

Each prints what it checked and exits 1 on the first kind of problem it finds (listing them all).
The truth is read from the source tree, never copied: metric names and labels from
src/couponrush/observability/metrics.py, setting names from src/couponrush/config.py (both parsed
with ``ast``, nothing imported, so no project install is needed).
Needs PyYAML (the validation venv has it).
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
METRICS_PY = ROOT / "src/couponrush/observability/metrics.py"
CONFIG_PY = ROOT / "src/couponrush/config.py"
DASHBOARD = DEPLOY / "observability/dashboard.json"
ALERTS = DEPLOY / "observability/alerts.yaml"

# Labels Prometheus attaches to every scraped series (prometheus.yaml / prometheus-k8s.yaml).
TARGET_LABELS = {"job", "instance", "namespace", "pod"}
# Series that come from outside couponrush: Prometheus itself and kube-state-metrics.
EXTERNAL_SERIES = {
    "up": set(),
    "kube_deployment_status_replicas_unavailable": {"deployment"},
    "kube_deployment_status_replicas_available": {"deployment"},
}
# Grafana's built-in interval variables become a fixed range for promtool; template variables a regex.
GRAFANA_INTERVALS = re.compile(r"\$(?:__rate_interval|__interval|__range)\b|\$\{(?:__rate_interval|__interval|__range)\}")
GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def fail(problems: list[str], what: str) -> int:
    if problems:
        for p in problems:
            print(f"  FAIL: {p}")
        print(f"{what}: {len(problems)} problem(s)")
        return 1
    print(f"{what}: ok")
    return 0


# --- what the service defines --------------------------------------------------------------------


def exported_series(metrics_py: Path = METRICS_PY) -> dict[str, set[str]]:
    """Series name -> label names, for every metric constructed in metrics.py."""
    kinds = {"Counter", "Gauge", "Histogram", "Summary", "GaugeMetricFamily", "CounterMetricFamily"}
    series: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(metrics_py.read_text())):
        if not isinstance(node, ast.Call):
            continue
        kind = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        if kind not in kinds or not node.args or not isinstance(node.args[0], ast.Constant):
            continue
        name = str(node.args[0].value)
        label_node = node.args[2] if len(node.args) > 2 else None
        for kw in node.keywords:
            if kw.arg in ("labels", "labelnames"):
                label_node = kw.value
        labels = set()
        if isinstance(label_node, (ast.List, ast.Tuple)):
            labels = {str(e.value) for e in label_node.elts if isinstance(e, ast.Constant)}
        if kind in ("Counter", "CounterMetricFamily"):
            series[name.removesuffix("_total") + "_total"] = labels
        elif kind in ("Histogram", "Summary"):
            series[name + "_bucket"] = labels | {"le"}
            series[name + "_sum"] = labels
            series[name + "_count"] = labels
        else:
            series[name] = labels
    return series


def known_settings(config_py: Path = CONFIG_PY) -> set[str]:
    """COUPONRUSH_* variable names: the annotated fields of ``class Settings``."""
    for node in ast.walk(ast.parse(config_py.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == "Settings":
            return {
                "COUPONRUSH_" + stmt.target.id.upper()
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and stmt.target.id != "model_config"
            }
    raise SystemExit(f"no class Settings in {config_py}")


# --- PromQL ----------------------------------------------------------------------------------------


def rule_expressions(path: Path) -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            yield f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep theirs inside


def dashboard_expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            yield f"dashboard panel {panel['id']} '{panel.get('title')}' {target.get('refId')}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", text or "")
            if match:  # label_values(<selector>, <label>): the selector must be PromQL, the label its label
                yield f"dashboard variable {variable['name']}", f"count by ({match.group(2)}) ({match.group(1)})"


def as_promql(expr: str) -> str:
    """A Grafana expression as plain PromQL: interval variables -> 5m, template variables -> '.*'."""
    expr = GRAFANA_INTERVALS.sub("5m", expr)
    return GRAFANA_VARIABLE.sub(".*", expr)


SELECTOR = re.compile(r"\b((?:couponrush|kube)_[a-zA-Z0-9_:]*|up)\b\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def name_problems(where: str, expr: str, series: dict[str, set[str]]) -> list[str]:
    problems: list[str] = []
    in_expr: dict[str, set[str]] = {}
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # no selector inside a string
    for match in SELECTOR.finditer(stripped):
        name = match.group(1)
        labels = series.get(name, EXTERNAL_SERIES.get(name))
        if labels is None:
            problems.append(f"{where}: unknown series {name}")
            continue
        in_expr[name] = labels
    # matchers: checked against the labels of the series they select
    for match in SELECTOR.finditer(expr):
        name, braces = match.group(1), match.group(2)
        if braces and name in in_expr:
            for label in MATCHER.findall(braces):
                if label not in in_expr[name] | TARGET_LABELS | {"__name__"}:
                    problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(in_expr[name])})")
    # grouping: each label must exist on some series of the expression
    available = set().union(*in_expr.values()) | TARGET_LABELS if in_expr else TARGET_LABELS
    for group in GROUPING.findall(stripped):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in available:
                problems.append(f"{where}: groups by {label!r}, which none of {sorted(in_expr)} has")
    return problems


# --- commands --------------------------------------------------------------------------------------


def cmd_yaml_parses() -> int:
    problems = []
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    for path in files:
        try:
            list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            problems.append(f"{path.relative_to(ROOT)}: {exc}")
    for path in sorted(DEPLOY.rglob("*.json")):
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            problems.append(f"{path.relative_to(ROOT)}: {exc}")
    return fail(problems, f"every YAML/JSON file under deploy/ parses ({len(files)} YAML)")


def cmd_settings() -> int:
    """Every COUPONRUSH_* name written anywhere under deploy/ is a real setting (a typo is silently ignored)."""
    known = known_settings()
    problems = []
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix not in (".json",)):
        if path.name == ".env":
            continue  # the operator's secrets: never read
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for name in re.findall(r"\bCOUPONRUSH_[A-Z0-9_]*[A-Z0-9]\b", line):
                if name not in known:
                    problems.append(f"{path.relative_to(ROOT)}:{lineno}: {name} is not a setting of src/couponrush/config.py")
    return fail(problems, f"COUPONRUSH_* names under deploy/ are settings ({len(known)} known)")


PORT_SETTING = {"api": "COUPONRUSH_HTTP_PORT", "relay": "COUPONRUSH_RELAY_METRICS_PORT", "worker": "COUPONRUSH_WORKER_METRICS_PORT"}


def cmd_k8s(rendered: str) -> int:
    """Cross-references the schemas cannot see, on the `kubectl kustomize` output."""
    docs = [d for d in yaml.safe_load_all(Path(rendered).read_text()) if d]
    problems: list[str] = []
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    config = {k: v for cm in by_kind.get("ConfigMap", {}).values() for k, v in cm.get("data", {}).items()}
    workloads = {**by_kind.get("Deployment", {}), **by_kind.get("Job", {})}

    def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    for name, workload in workloads.items():
        spec = workload["spec"]
        template = spec["template"]
        labels = template["metadata"].get("labels", {})
        selector = spec.get("selector", {}).get("matchLabels")
        if selector is not None and not matches(selector, labels):
            problems.append(f"{name}: selector {selector} does not match its pod labels {labels}")
        for container in template["spec"]["containers"]:
            for source in container.get("envFrom", []):
                for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if ref in source and source[ref]["name"] not in by_kind.get(kind, {}):
                        problems.append(f"{name}: envFrom {kind} {source[ref]['name']} is not defined")
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problems.append(f"{name}: {probe} uses port {port!r}, not a port of the container")
            role = (container.get("args") or [None])[0]
            if role in PORT_SETTING and workload["kind"] == "Deployment":
                setting = PORT_SETTING[role]
                wanted = int(config.get(setting, {"api": 8000, "relay": 9101, "worker": 9102}[role]))
                if wanted not in ports.values():
                    problems.append(f"{name}: {setting}={wanted} but the container declares ports {ports}")
                scrape = template["metadata"].get("annotations", {}).get("prometheus.io/port")
                if scrape is not None and int(scrape) != wanted:
                    problems.append(f"{name}: prometheus.io/port {scrape} != {setting}={wanted}")
                for probe in ("readinessProbe", "livenessProbe"):
                    path = container.get(probe, {}).get("httpGet", {}).get("path")
                    if path not in ("/health/ready", "/health/live"):
                        problems.append(f"{name}: {probe} path {path!r} is not a couponrush health endpoint")
    for kind in ("Service", "PodDisruptionBudget"):
        for name, obj in by_kind.get(kind, {}).items():
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector) if kind == "PodDisruptionBudget" else selector
            targets = [w for w in workloads.values() if w["kind"] == "Deployment"
                       and matches(selector, w["spec"]["template"]["metadata"].get("labels", {}))]
            if not targets:
                problems.append(f"{kind} {name}: selector {selector} selects no Deployment's pods")
            if kind == "Service":
                for port in obj["spec"]["ports"]:
                    target = port.get("targetPort")
                    if isinstance(target, str):
                        names = {p.get("name") for w in targets for c in w["spec"]["template"]["spec"]["containers"]
                                 for p in c.get("ports", [])}
                        if target not in names:
                            problems.append(f"Service {name}: targetPort {target!r} is no container port name")
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["name"] not in by_kind.get(ref["kind"], {}):
            problems.append(f"HPA {name}: scale target {ref['kind']}/{ref['name']} is not defined")
        elif "replicas" in by_kind[ref["kind"]][ref["name"]]["spec"]:
            problems.append(f"HPA {name}: {ref['name']} states replicas, which every apply would reset")
    worker = by_kind.get("Deployment", {}).get("couponrush-worker")
    partitions = int(config.get("COUPONRUSH_KAFKA_PARTITIONS", 3))
    if worker and isinstance(worker["spec"].get("replicas", 1), int) and worker["spec"].get("replicas", 1) > partitions:
        problems.append(f"couponrush-worker: {worker['spec']['replicas']} replicas > {partitions} partitions (idle workers)")
    return fail(problems, f"Kubernetes cross-references ({len(docs)} objects)")


def cmd_dashboard(out_rules: str) -> int:
    """The dashboard's structure, and its expressions as a rules file for `promtool check rules`."""
    dashboard = json.loads(DASHBOARD.read_text())
    problems: list[str] = []
    ids = [p.get("id") for p in dashboard_panels(dashboard)]
    if len(ids) != len(set(ids)) or None in ids:
        problems.append(f"panel ids are not unique: {ids}")
    if not dashboard.get("uid") or not dashboard.get("title"):
        problems.append("the dashboard needs a uid and a title")
    variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    for panel in dashboard_panels(dashboard):
        grid = panel.get("gridPos", {})
        if not all(k in grid for k in "hwxy") or grid["x"] + grid["w"] > 24:
            problems.append(f"panel {panel.get('id')}: bad gridPos {grid}")
        if panel.get("type") == "row":
            continue
        if not panel.get("targets"):
            problems.append(f"panel {panel['id']} '{panel.get('title')}' has no query")
        for target in panel.get("targets", []):
            if not target.get("expr", "").strip():
                problems.append(f"panel {panel['id']} target {target.get('refId')}: empty expr")
        for expr in [t.get("expr", "") for t in panel.get("targets", [])] + [str(panel.get("datasource"))]:
            for named, plain in GRAFANA_VARIABLE.findall(expr):
                name = named or plain
                if not name.startswith("__") and name not in variables:
                    problems.append(f"panel {panel['id']}: uses ${name}, which is no dashboard variable")
    rules = [
        {"record": f"dashboard:check_{i}", "expr": as_promql(expr)}
        for i, (_, expr) in enumerate(dashboard_expressions(dashboard))
    ]
    Path(out_rules).write_text(yaml.safe_dump({"groups": [{"name": "dashboard-expressions", "rules": rules}]}))
    return fail(problems, f"dashboard structure ({len(ids)} panels; {len(rules)} expressions written to {out_rules})")


def cmd_metric_names() -> int:
    series = exported_series()
    if not series:
        return fail(["no metric found in " + str(METRICS_PY)], "metric names")
    problems: list[str] = []
    expressions: Iterable[tuple[str, str]] = [
        *rule_expressions(ALERTS),
        *((w, as_promql(e)) for w, e in dashboard_expressions(json.loads(DASHBOARD.read_text()))),
    ]
    count = 0
    for where, expr in expressions:
        count += 1
        problems += name_problems(where, expr, series)
    return fail(problems, f"series and labels of {count} expressions exist in metrics.py ({len(series)} series)")


def cmd_healthcheck() -> int:
    """deploy/healthcheck.py (the image's HEALTHCHECK) against a local stub: live 200, ready 503."""
    import http.server
    import os
    import subprocess
    import threading

    class Stub(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response({"/health/live": 200, "/health/ready": 503}.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = str(server.server_address[1])
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COUPONRUSH_", "HEALTHCHECK_"))}
    cases = [  # (environment, argument, expected exit status)
        ({"HEALTHCHECK_ROLE": "relay", "COUPONRUSH_RELAY_METRICS_PORT": port}, "live", 0),
        ({"HEALTHCHECK_ROLE": "relay", "COUPONRUSH_RELAY_METRICS_PORT": port}, "ready", 1),
        ({"HEALTHCHECK_ROLE": "worker", "COUPONRUSH_WORKER_METRICS_PORT": port}, "live", 0),
        ({"HEALTHCHECK_ROLE": "api", "COUPONRUSH_HTTP_PORT": port, "COUPONRUSH_HTTP_HOST": "0.0.0.0"}, "live", 0),
        ({"HEALTHCHECK_ROLE": "api", "COUPONRUSH_HTTP_PORT": port}, "ready", 1),
        ({"HEALTHCHECK_ROLE": "worker", "HEALTHCHECK_PORT": port}, "live", 0),
        ({"HEALTHCHECK_ROLE": "worker", "COUPONRUSH_WORKER_METRICS_PORT": "0"}, "live", 0),  # endpoint off
        ({"HEALTHCHECK_ROLE": "migrate"}, "live", 0),  # one-shot: nothing to probe
        ({"HEALTHCHECK_ROLE": "relay", "COUPONRUSH_RELAY_METRICS_PORT": "1"}, "live", 1),  # nobody listens
        ({"HEALTHCHECK_ROLE": "relay"}, "sideways", 2),
    ]
    problems = []
    try:
        for env, arg, expected in cases:
            done = subprocess.run(
                [sys.executable, str(DEPLOY / "healthcheck.py"), arg], env={**base, **env},
                capture_output=True, text=True, timeout=20,
            )
            if done.returncode != expected:
                problems.append(f"{env} {arg}: exit {done.returncode}, expected {expected} ({done.stdout}{done.stderr})")
    finally:
        server.shutdown()
    sys.path.insert(0, str(DEPLOY))
    from healthcheck import _role_of  # type: ignore[import-not-found]

    for argv, role in (
        (["/opt/couponrush/bin/python", "/opt/couponrush/bin/couponrush", "worker"], "worker"),
        (["/sbin/docker-init", "--", "couponrush", "api", "--workers", "2"], "api"),
        (["python3", "-m", "http.server"], None),
    ):
        if _role_of(argv) != role:
            problems.append(f"role of {argv}: {_role_of(argv)!r}, expected {role!r}")
    return fail(problems, f"health check script ({len(cases)} cases against a stub endpoint)")


def main(argv: list[str]) -> int:
    commands = {
        "yaml-parses": cmd_yaml_parses,
        "settings": cmd_settings,
        "k8s": cmd_k8s,
        "dashboard": cmd_dashboard,
        "metric-names": cmd_metric_names,
        "healthcheck": cmd_healthcheck,
    }
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    return commands[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
