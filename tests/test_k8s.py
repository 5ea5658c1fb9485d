"""The Kubernetes manifests: valid against the API schemas, and consistent with the code."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from breakglass.config import Config, parse_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
K8S_VERSION = "1.30"
BUILTIN_KINDS = {"ConfigMap", "Secret", "Service", "PersistentVolumeClaim", "Deployment"}
DURATION = re.compile(r"^(([0-9]+)(y|w|d|h|m|s|ms))+$")


def load_all(path: Path) -> list[dict[str, Any]]:
    """Every YAML document in a file."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def kustomization() -> dict[str, Any]:
    """deploy/k8s/kustomization.yaml."""
    (doc,) = load_all(K8S / "kustomization.yaml")
    return doc


def resources() -> list[dict[str, Any]]:
    """Every object the kustomization applies."""
    return [d for name in kustomization()["resources"] for d in load_all(K8S / name)]


def secret_templates() -> dict[str, dict[str, Any]]:
    """The Secret templates by name (created by hand, never applied by kustomize)."""
    return {d["metadata"]["name"]: d for d in load_all(K8S / "secrets.example.yaml")}


def one(kind: str) -> dict[str, Any]:
    """The single applied object of this kind."""
    found = [d for d in resources() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container() -> dict[str, Any]:
    """The breakglass container of the Deployment."""
    (c,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def embedded_config() -> dict[str, Any]:
    """The config.yaml the ConfigMap carries, parsed."""
    return yaml.safe_load(one("ConfigMap")["data"]["config.yaml"])


def mounts() -> dict[str, dict[str, Any]]:
    """Each volume mount's path -> the volume behind it."""
    spec = one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    return {m["mountPath"]: {**volumes[m["name"]], "mount": m} for m in container()["volumeMounts"]}


# --- the kustomization ---------------------------------------------------------------------


def test_the_kustomization_lists_every_manifest_but_the_secret_templates() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == {name for name in on_disk if not name.endswith(".example.yaml")}
    assert not {d["kind"] for d in resources()} & {"Secret"}, "an apply must never reset keys"


def test_no_manifest_names_a_namespace() -> None:
    for doc in [*resources(), *secret_templates().values()]:
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
    assert "namespace" not in kustomization()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")
def test_kubectl_kustomize_builds_the_set_with_the_image_tag_and_labels() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    built = [d for d in yaml.safe_load_all(out) if d]
    assert sorted(d["kind"] for d in built) == sorted(d["kind"] for d in resources())
    for doc in built:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "breakglass"
    (deploy,) = (d for d in built if d["kind"] == "Deployment")
    image = deploy["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"breakglass:{kustomization()['images'][0]['newTag']}"
    # Selectors stay as written, so a later label change cannot orphan the pods.
    assert deploy["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "breakglass"}


# --- schema validation, offline -------------------------------------------------------------


def builtin_objects() -> list[dict[str, Any]]:
    """Every object whose schema ships with kubernetes-validate."""
    return [d for d in [*resources(), *secret_templates().values()] if d["kind"] in BUILTIN_KINDS]


@pytest.mark.parametrize(
    "doc", builtin_objects(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_each_builtin_object_passes_the_strict_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_strict_schema_rejects_a_misspelt_field() -> None:
    bad = copy.deepcopy(one("Deployment"))
    bad["spec"]["replica"] = bad["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_the_example_ingress_passes_the_schema_and_routes_to_the_services_http_port() -> None:
    (ingress,) = load_all(K8S / "ingress.example.yaml")
    kubernetes_validate.validate(ingress, K8S_VERSION, strict=True)
    service = one("Service")
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert path["path"] == "/"
    assert embedded_config()["web"]["auth"]["mode"] == "token", "the page behind it asks for the token"


def test_every_kind_is_validated_by_schema_or_by_hand() -> None:
    kinds = {d["kind"] for d in resources()}
    assert kinds == BUILTIN_KINDS - {"Secret"} | {"ServiceMonitor", "PrometheusRule"}


# --- the Deployment -------------------------------------------------------------------------


def test_exactly_one_watchdog_runs_and_a_rollout_never_overlaps_two() -> None:
    spec = one("Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_the_pod_runs_non_root_read_only_without_capabilities() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container()["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_resources_have_requests_and_limits() -> None:
    res = container()["resources"]
    assert set(res["requests"]) == {"cpu", "memory"}
    assert set(res["limits"]) == {"cpu", "memory"}


def test_liveness_asks_healthz_and_readiness_asks_readyz_on_the_served_port() -> None:
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ports
    assert ports["http"] == embedded_config()["web"]["port"]


def test_the_routes_the_probes_ask_exist_in_the_web_app() -> None:
    source = (ROOT / "breakglass" / "web" / "health.py").read_text(encoding="utf-8")
    for path in ("/healthz", "/readyz", "/metrics"):
        assert f'"{path}"' in source, path


def test_the_api_key_comes_from_the_optional_secret() -> None:
    (env,) = [e for e in container()["env"] if e["name"] == "ANTHROPIC_API_KEY"]
    ref = env["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True
    assert ref["key"] in secret_templates()[ref["name"]]["stringData"]
    assert embedded_config()["agent"]["api_key_env"] == "ANTHROPIC_API_KEY"


def test_the_store_is_on_the_claim_and_tmp_is_a_writable_empty_dir() -> None:
    by_path = mounts()
    assert by_path["/tmp"]["emptyDir"]["sizeLimit"]
    data = by_path["/var/lib/breakglass"]
    assert data["persistentVolumeClaim"]["claimName"] == one("PersistentVolumeClaim")["metadata"][
        "name"
    ]
    store = PurePosixPath(embedded_config()["store_path"])
    assert store.parent == PurePosixPath("/var/lib/breakglass")


def test_secret_mounts_are_read_only_and_not_world_readable() -> None:
    for path, volume in mounts().items():
        if "secret" in volume:
            assert volume["mount"]["readOnly"] is True, path
            assert volume["secret"]["defaultMode"] & 0o007 == 0, path
            assert volume["secret"]["secretName"] in secret_templates(), path


# --- agreement with the Dockerfile ----------------------------------------------------------


def dockerfile_runtime() -> dict[str, str]:
    """The runtime stage's CMD, USER and EXPOSE from the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    runtime = text.split("AS runtime", 1)[1]
    found = {}
    for keyword in ("CMD", "USER", "EXPOSE"):
        match = re.search(rf"^{keyword} (.+)$", runtime, re.MULTILINE)
        assert match, keyword
        found[keyword] = match.group(1).strip()
    return found


def test_the_pod_runs_the_images_command_user_and_port() -> None:
    image = dockerfile_runtime()
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert container()["args"] == json.loads(image["CMD"])
    uid, _, gid = image["USER"].partition(":")
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid)
    assert container()["ports"][0]["containerPort"] == int(image["EXPOSE"])


def test_the_config_file_is_mounted_where_the_command_reads_it() -> None:
    config_path = container()["args"][-1]
    volume = mounts()[config_path]
    assert volume["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    assert volume["mount"]["subPath"] in one("ConfigMap")["data"]


# --- the embedded config --------------------------------------------------------------------


def test_the_embedded_config_matches_the_config_schema() -> None:
    cfg = Config.model_validate(embedded_config())
    assert cfg.targets[0].vmid == 102
    assert cfg.budget.dry_run is True, "a new install starts in shadow mode"


def test_the_embedded_config_binds_all_addresses_only_with_auth() -> None:
    from breakglass.preflight import bind_problem  # the check `serve` runs before listening

    cfg = Config.model_validate(embedded_config())
    assert cfg.web.bind == "0.0.0.0"
    assert cfg.web.auth.mode != "none"
    assert bind_problem(cfg.web) is None


def config_files(data: dict[str, Any]) -> list[str]:
    """Every file path the config names (keys, known_hosts, token files)."""
    paths = []
    for target in data["targets"]:
        for side in ("devvm", "pve"):
            paths += [target[side]["key_file"], target[side]["known_hosts"]]
    web = data["web"]
    paths += [web["auth"].get("token_file"), web.get("webhook_token_file")]
    paths += [web.get("api_token_file"), data.get("agent", {}).get("api_key_file")]
    return sorted({p for p in paths if p})


def test_every_file_the_config_names_is_a_key_of_a_mounted_secret() -> None:
    by_path = mounts()
    secrets = secret_templates()
    names = config_files(embedded_config())
    assert len(names) >= 5
    for name in names:
        path = PurePosixPath(name)
        volume = by_path.get(str(path.parent))
        assert volume is not None, f"{name}: nothing is mounted at {path.parent}"
        assert "secret" in volume, f"{name}: {path.parent} is not a Secret mount"
        assert path.name in secrets[volume["secret"]["secretName"]]["stringData"], name


def test_the_embedded_config_loads_once_its_mounts_exist(tmp_path: Path) -> None:
    # Lay the Secret templates out under tmp_path as the kubelet would under /.
    for mount_path, volume in mounts().items():
        if "secret" in volume:
            folder = tmp_path / mount_path.lstrip("/")
            folder.mkdir(parents=True)
            for key, value in secret_templates()[volume["secret"]["secretName"]][
                "stringData"
            ].items():
                (folder / key).write_text(value, encoding="utf-8")
    text = one("ConfigMap")["data"]["config.yaml"].replace("/etc/", f"{tmp_path}/etc/")
    text = text.replace("/var/lib/", f"{tmp_path}/var/lib/")
    cfg = parse_config(yaml.safe_load(text), source="configmap", base=tmp_path)
    assert cfg.targets[0].pve.key_file == tmp_path / "etc/breakglass/ssh/pve_ed25519"
    assert cfg.web.auth.token_file is not None
    assert cfg.web.auth.token_file.read_text(encoding="utf-8").startswith("placeholder")


def test_the_example_config_and_the_configmap_agree_on_paths() -> None:
    example = yaml.safe_load((ROOT / "config" / "breakglass.example.yaml").read_text("utf-8"))
    embedded = embedded_config()
    assert example["store_path"] == embedded["store_path"]
    for side in ("devvm", "pve"):
        for key in ("key_file", "known_hosts"):
            assert example["targets"][0][side][key] == embedded["targets"][0][side][key]


# --- Service, ServiceMonitor and PrometheusRule ---------------------------------------------


def test_the_service_reaches_the_pods_http_port() -> None:
    svc = one("Service")
    pod_labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container()["ports"]}
    assert port["port"] == 8787


def test_the_servicemonitor_scrapes_metrics_from_the_service() -> None:
    sm = one("ServiceMonitor")
    svc = one("Service")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(sm["spec"]) <= {"selector", "endpoints", "jobLabel", "namespaceSelector"}
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
    assert endpoint["port"] == svc["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert DURATION.match(endpoint["interval"])
    assert DURATION.match(endpoint["scrapeTimeout"])


def load_generator() -> Any:
    """deploy/k8s/gen_prometheusrule.py as a module."""
    path = K8S / "gen_prometheusrule.py"
    spec = importlib.util.spec_from_file_location("gen_prometheusrule", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prometheusrule_is_generated_from_alerts_yml_and_in_sync() -> None:
    gen = load_generator()
    committed = (K8S / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert committed == gen.render(ALERTS.read_text(encoding="utf-8")), (
        "deploy/k8s/prometheusrule.yaml is stale: run python deploy/k8s/gen_prometheusrule.py"
    )
    assert one("PrometheusRule")["spec"]["groups"] == yaml.safe_load(
        ALERTS.read_text(encoding="utf-8")
    )["groups"]


def test_the_generator_check_flag_reports_a_stale_manifest() -> None:
    proc = subprocess.run(
        [sys.executable, str(K8S / "gen_prometheusrule.py"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    gen = load_generator()
    with pytest.raises(ValueError, match="groups"):
        gen.render("groups: []\n")


def test_the_prometheusrule_has_the_structure_the_operator_reads() -> None:
    rule = one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "partial_response_strategy"}
        assert group["rules"], group["name"]
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r), r
            assert isinstance(r["expr"], str | int)
            assert str(r["expr"]).strip()
            assert set(r) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels",
                              "annotations"}, r
            if "for" in r:
                assert DURATION.match(r["for"]), r["for"]
            for value in [*r.get("labels", {}).values(), *r.get("annotations", {}).values()]:
                assert isinstance(value, str), r


def test_the_dead_man_rule_selects_the_job_the_servicemonitor_produces() -> None:
    rules = [r for g in one("PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    (dead_man,) = [r for r in rules if r.get("alert") == "BreakglassWatchdogDown"]
    jobs = set(re.findall(r'job="([^"]+)"', dead_man["expr"]))
    # Without jobLabel the Prometheus Operator names the job after the Service.
    assert "jobLabel" not in one("ServiceMonitor")["spec"]
    assert jobs == {one("Service")["metadata"]["name"]}
