"""The Kubernetes manifests (deploy/k8s/): every object validates against Kubernetes' own schemas offline
(kubernetes-validate), and what the operator's guide promises of them holds: each process runs its own console
script as its storage role's service account, non-root on a read-only root filesystem, with probes, resources and
a disruption budget; secrets only by reference; and the network policies let only order workers reach Triton and
only the processes that use it reach PostgreSQL."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from faceharmony.core.settings import FILE_SETTINGS, FILE_SUFFIX, PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
# The Kubernetes release the manifests are checked against (kubernetes-validate ships its schemas).
KUBERNETES_VERSION = "1.33"
SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
SETTINGS = {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)} | {
    PREFIX + (n + FILE_SUFFIX).upper() for n in FILE_SETTINGS
}
ROLE = {
    "api": "fh-api",
    "trainer": "fh-trainer",
    "triton": "fh-orders",
    "order-worker": "fh-orders",
    "retention": "fh-retention",
    "migrate": "fh-migration",
}
# Triton's own metrics port; every other process of ours serves on FACEHARMONY_METRICS_PORT (9464).
METRICS_PORT = {"triton": 8002}
MONITORING_NAMESPACE = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
# Where each image's default command is the process (the NGC Triton image runs faceharmony-triton, Dockerfile.triton).
DEFAULT_COMMAND = {"triton": ["faceharmony-triton"]}


def objects() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def workloads() -> dict[str, dict]:
    """component -> pod spec, for every Deployment, StatefulSet and Job."""
    out = {}
    for obj in objects():
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            out[obj["metadata"]["name"]] = obj["spec"]["template"]["spec"]
    return out


def test_every_file_the_kustomization_names_exists_and_nothing_is_left_out():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("obj", objects(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_every_object_validates_against_the_kubernetes_schemas(obj):
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_each_process_runs_its_console_script_as_its_roles_service_account():
    pods = workloads()
    assert set(pods) == set(ROLE)
    accounts = {o["metadata"]["name"]: o for o in objects() if o["kind"] == "ServiceAccount"}
    assert set(accounts) == set(ROLE.values())
    for name, spec in pods.items():
        (container,) = spec["containers"]
        command = container.get("command", DEFAULT_COMMAND.get(name))
        assert command and command[0] in SCRIPTS, name
        assert spec["serviceAccountName"] == ROLE[name], name
        account = accounts[ROLE[name]]
        assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].startswith(ROLE[name] + "@")
        assert account["automountServiceAccountToken"] is False and spec["automountServiceAccountToken"] is False


def test_pods_are_non_root_read_only_and_bounded():
    for name, spec in workloads().items():
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (c,) = spec["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"] == {"drop": ["ALL"]}, name
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], name
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/var/lib/faceharmony" in mounts, name  # the data folder on an emptyDir
        if name != "migrate":
            assert c.get("livenessProbe") and (c.get("readinessProbe") or name in ("trainer", "retention")), name
        if name in ("trainer", "triton"):
            assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
            assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
        if name in ("trainer", "order-worker"):
            assert spec["terminationGracePeriodSeconds"] >= 60  # time to hand the job in hand back
    budgets = {o["metadata"]["name"] for o in objects() if o["kind"] == "PodDisruptionBudget"}
    assert budgets == {"api", "trainer", "triton", "order-worker"}
    (hpa,) = [o for o in objects() if o["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "api" and hpa["spec"]["minReplicas"] >= 2


def test_settings_are_real_and_secrets_only_by_reference():
    for obj in objects():
        if obj["kind"] == "ConfigMap":
            assert set(obj["data"]) <= SETTINGS, obj["metadata"]["name"]
            assert not set(obj["data"]) & {
                "FACEHARMONY_SECRET_KEY",
                "FACEHARMONY_DATABASE_URL",
                "FACEHARMONY_SMTP_PASSWORD",
            }
        assert obj["kind"] != "Secret", "secrets are made by the operator, never shipped"
    for name, spec in workloads().items():
        (c,) = spec["containers"]
        for env in c.get("env", []):
            assert env["name"] in SETTINGS, (name, env["name"])
            if env["name"].endswith("_FILE"):
                assert env["value"].startswith("/run/secrets/faceharmony/")
        secrets = [v for v in spec["volumes"] if "secret" in v]
        keys = {i["key"] for v in secrets for i in v["secret"]["items"]}
        assert ("secret_key" in keys) == (name in ("api", "migrate")), name
        assert ("database_url" in keys) == (name != "triton"), name


def _allowed(policies, source: str, target: str, port: int) -> bool:
    """Whether a pod of `source` may open `port` on a pod of `target` (both policies' sides must allow it)."""

    def matches(selector, component):
        return selector.get("matchLabels", {}).get("app.kubernetes.io/component", component) == component

    def rule_allows(rule, component, side):
        peers = rule.get(side)
        ports = rule.get("ports")
        if ports is not None and not any(p["port"] == port for p in ports):
            return False
        return peers is None or any("podSelector" in p and matches(p["podSelector"], component) for p in peers)

    out_ok = any(
        rule_allows(r, target, "to")
        for p in policies
        if matches(p["spec"]["podSelector"], source)
        for r in p["spec"].get("egress", [])
    )
    in_ok = any(
        rule_allows(r, source, "from")
        for p in policies
        if matches(p["spec"]["podSelector"], target)
        for r in p["spec"].get("ingress", [])
    )
    return out_ok and in_ok


def test_network_policies_let_only_order_workers_reach_triton_and_only_db_users_reach_postgres():
    policies = [o for o in objects() if o["kind"] == "NetworkPolicy"]
    (deny,) = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny["spec"]
    for source in ROLE:
        assert _allowed(policies, source, "triton", 8001) == (source == "order-worker"), source
    by_component = {p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: p for p in policies[1:]}
    for component, policy in by_component.items():
        to_db = any(any(p["port"] == 5432 for p in r.get("ports", [])) for r in policy["spec"]["egress"])
        assert to_db == (component != "triton"), component
        smtp = any(any(p["port"] == 587 for p in r.get("ports", [])) for r in policy["spec"]["egress"])
        assert smtp == (component == "api"), component
    # Nothing but the API takes connections from outside the namespace's own pods, except metrics scrapes.
    for component, policy in by_component.items():
        for rule in policy["spec"].get("ingress", []):
            if "from" not in rule:  # from anywhere: the API's gRPC port only
                assert component == "api" and [p["port"] for p in rule["ports"]] == [50051]
            else:
                peers = rule["from"]
                assert all("podSelector" in p or "namespaceSelector" in p for p in peers)
                if any("namespaceSelector" in p for p in peers):
                    assert peers == [MONITORING_NAMESPACE], component
                    assert [p["port"] for p in rule["ports"]] == [METRICS_PORT.get(component, 9464)], component


def test_every_process_serves_metrics_that_only_the_monitoring_namespace_reaches():
    """Each pod's `metrics` port, its scrape annotations and the policy admitting `monitoring` agree, and the
    settings make our processes listen there (Triton serves its own)."""
    config = next(o for o in objects() if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "faceharmony-config")
    assert config["data"]["FACEHARMONY_METRICS_PORT"] == "9464"
    assert config["data"]["FACEHARMONY_METRICS_ADDRESS"] == "0.0.0.0"
    policies = [o for o in objects() if o["kind"] == "NetworkPolicy"]
    templates = {
        o["metadata"]["name"]: o["spec"]["template"] for o in objects() if o["kind"] in ("Deployment", "StatefulSet")
    }
    assert set(templates) == {"api", "trainer", "triton", "order-worker", "retention"}
    for component, template in templates.items():
        port = METRICS_PORT.get(component, 9464)
        (container,) = template["spec"]["containers"]
        assert {"name": "metrics", "containerPort": port} in container["ports"], component
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)
        assert any(
            rule.get("from") == [MONITORING_NAMESPACE] and [p["port"] for p in rule["ports"]] == [port]
            for p in policies
            if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component") == component
            for rule in p["spec"].get("ingress", [])
        ), component
        if component != "triton":
            refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
            assert "faceharmony-config" in refs, component
            assert "--metrics-port" not in container.get("command", []), component
