"""The monitoring that ships with the system (deploy/monitoring/): the alert rules pass promtool's checks and their
unit tests (alerts_test.yml), the PrometheusRule for Kubernetes holds the same groups, the alerts that guard a
promise of the privacy statement are critical, every alert is explained in the operator's guide, and every series
the dashboard and the rules read is one some process exports, and every series a process exports is on the
dashboard. A real Prometheus scraping a running system, with these rules loaded, is in tests/test_demo.py."""

from __future__ import annotations

import ast
import json
import re
import subprocess

import prometheus_client as prom
import pytest
import yaml

from tests.support.prometheus import MONITORING, ROOT, tool

ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "dashboard.json"
GUIDE = ROOT / "docker" / "README.md"
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# The alerts that fire when a promise of the statement is broken (P13-P19: deletion deadlines, final purges, a
# deleted model's adapter gone from every cache).
PRIVACY = {
    "FaceHarmonyPurgeOverdue",
    "FaceHarmonyRetentionNotRunning",
    "FaceHarmonyRetentionAbsent",
    "FaceHarmonyEvictionsOverdue",
    "FaceHarmonyPurgesNotFinal",
}


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def _triton_families() -> dict[str, str]:
    """The Triton models' custom metrics (the adapter cache's, the step scheduler's), read from the models' source
    (they import Triton's Python backend): every `NAMES` dict of a `_...Metrics` class."""
    out: dict[str, str] = {}
    for source in sorted((ROOT / "triton_models").glob("*/1/model.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Metrics"):
                for item in node.body:
                    if isinstance(item, ast.Assign) and getattr(item.targets[0], "id", "") == "NAMES":
                        names = ast.literal_eval(item.value)
                        out |= {name: kind.lower() for name, _, kind in names.values()}
    assert "faceharmony_adapter_cache_fetches_total" in out and "faceharmony_engine_running_samples" in out
    return out


def exported() -> dict[str, set[str]]:
    """Every FaceHarmony metric family -> the series names it exposes (a counter's _total, a histogram's
    _bucket/_sum/_count), from the processes' own registries."""
    from faceharmony.core import metrics
    from faceharmony.retention.metrics import Metrics

    queues = metrics.QueueCollector(lambda: {"orders": ({"queued": 0, "running": 0}, 0.0)})
    families = [*prom.REGISTRY.collect(), *queues.collect(), *Metrics().registry.collect()]
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    out = {f.name: {f.name + s for s in suffixes[f.type]} for f in families if f.name.startswith("faceharmony_")}
    out |= {name: {name} for name in _triton_families()}
    return out


def referenced(expr: str) -> set[str]:
    return {n for n in NAME.findall(expr) if n.startswith("faceharmony_")}


def test_the_rules_pass_promtool_and_their_unit_tests():
    promtool = tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0 and f"SUCCESS: {len(rules())} rules found" in check.stdout, check.stdout + check.stderr
    # The unit tests: a failing expectation makes promtool exit 1 with what it got instead.
    unit = subprocess.run(
        [promtool, "test", "rules", str(MONITORING / "alerts_test.yml")], capture_output=True, text=True
    )
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr
    config = subprocess.run(
        [promtool, "check", "config", str(MONITORING / "prometheus.yml")], capture_output=True, text=True
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_catches_a_broken_expectation(tmp_path):
    """The unit tests can fail: the same file expecting the overdue purge not to fire is refused."""
    broken = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())
    broken["rule_files"] = [str(ALERTS)]
    broken["tests"][0]["alert_rule_test"][1]["exp_alerts"] = []
    (tmp_path / "broken_test.yml").write_text(yaml.safe_dump(broken))
    unit = subprocess.run(
        [tool("promtool"), "test", "rules", str(tmp_path / "broken_test.yml")], capture_output=True, text=True
    )
    assert unit.returncode == 1 and "FaceHarmonyPurgeOverdue" in unit.stdout + unit.stderr


def test_the_kubernetes_prometheusrule_holds_the_same_groups():
    rule = yaml.safe_load((MONITORING / "k8s" / "prometheusrule.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (MONITORING / resource).is_file(), resource
    (dashboard,) = kustomization["configMapGenerator"]
    assert dashboard["files"] == ["faceharmony.json=dashboard.json"]
    assert dashboard["options"]["labels"] == {"grafana_dashboard": "1"}


def test_privacy_alerts_are_critical_and_every_alert_is_explained_in_the_guide():
    guide = GUIDE.read_text()
    alerts = guide[guide.index("### Alerts") :]
    for rule in rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert (rule["labels"]["severity"] == "critical") >= (name in PRIVACY), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert f"`{name}`" in alerts, f"{name} is not explained in docker/README.md's Alerts"
    assert PRIVACY <= {r["alert"] for r in rules()}


def test_every_series_the_dashboard_and_rules_read_is_exported_and_every_one_exported_is_shown():
    families = exported()
    series = set().union(*families.values())
    exprs = dashboard_exprs()
    for expr in exprs + [r["expr"] for r in rules()]:
        missing = referenced(expr) - series
        assert not missing, (expr, missing)
    shown = set().union(*(referenced(e) for e in exprs))
    unshown = [family for family, names in families.items() if not names & shown]
    assert not unshown, f"exported but on no dashboard panel: {unshown}"
    # The check sees what it should: a misspelt series would be caught.
    assert referenced("rate(faceharmony_imagez_total[5m])") - series == {"faceharmony_imagez_total"}


def test_the_dashboard_is_one_grid_of_prometheus_panels():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "faceharmony-overview" and board["schemaVersion"] >= 36
    (variable,) = board["templating"]["list"]
    assert variable == variable | {"name": "datasource", "type": "datasource", "query": "prometheus"}
    ids, cells = set(), set()
    for panel in board["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        mine = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert all(t["expr"] and t["datasource"] == panel["datasource"] for t in panel["targets"])


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in MONITORING.rglob("*.y*ml")))
def test_every_monitoring_file_is_valid_yaml(path):
    assert yaml.safe_load_all((ROOT / path).read_text())


def test_the_compose_and_kubernetes_job_names_are_the_ones_the_rules_read():
    jobs = {j["job_name"] for j in yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"]}
    monitor = yaml.safe_load((MONITORING / "k8s" / "podmonitor.yaml").read_text())
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (relabel,) = endpoint["relabelings"]
    assert relabel["targetLabel"] == "job" and relabel["replacement"] == "faceharmony-$1"
    components = monitor["spec"]["selector"]["matchExpressions"][0]["values"]
    assert {f"faceharmony-{c}" for c in components} == jobs
    (target_down,) = [r for r in rules() if r["alert"] == "FaceHarmonyTargetDown"]
    assert 'job=~"faceharmony-.*"' in target_down["expr"]
