"""The Kubernetes manifests and the Dockerfile: schema-valid, GPU-aware, non-root, pinned.

Every manifest listed in the base kustomization is validated offline (strict, Kubernetes
1.30 schemas bundled with ``kubernetes-validate``); when ``kubectl`` is on PATH the base and
the CPU overlay are also rendered with ``kubectl kustomize`` and the rendered output is checked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "config" / "k8s"
BASE = K8S / "base"
CPU = K8S / "overlays" / "cpu"
K8S_VERSION = "1.30.0"


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def _base_files() -> list[Path]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [BASE / name for name in kustomization["resources"]]


def _render(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not on PATH: rendering with kustomize is not checked")
    out = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return _docs(out.stdout)


def _deployment(docs: list[dict]) -> dict:
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    return dep


def _validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", _base_files(), ids=lambda p: p.name)
def test_every_base_manifest_validates_strictly(path: Path) -> None:
    docs = _docs(path.read_text())
    assert docs, f"{path} is empty"
    for doc in docs:
        _validate(doc)


def test_strict_validation_rejects_a_typo() -> None:
    """Guard the guard: an unknown field must fail, or the test above proves nothing."""
    dep = _deployment(_docs((BASE / "deployment.yaml").read_text()))
    dep["spec"]["template"]["spec"]["containers"][0]["startupProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(dep)


def _check_torchserve_pod(dep: dict, *, gpu: bool) -> None:
    pod = dep["spec"]["template"]["spec"]
    (ts,) = [c for c in pod["containers"] if c["name"] == "torchserve"]

    # Non-root, no privilege, read-only root filesystem.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        # Pinned image: an explicit tag (or digest), never :latest.
        image = c["image"]
        assert re.search(r":[\w.-]+$|@sha256:[0-9a-f]{64}$", image), f"unpinned image {image}"
        assert not image.endswith(":latest"), image
        assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]

    # startupProbe is its own check (models READY), distinct from readiness/liveness (/ping).
    startup, ready, live = ts["startupProbe"], ts["readinessProbe"], ts["livenessProbe"]
    assert startup != ready and startup != live
    assert "probe.py" in " ".join(startup["exec"]["command"])
    assert ready["httpGet"]["path"] == "/ping" and live["httpGet"]["path"] == "/ping"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120

    # The model store volume is filled by the init container.
    (init,) = pod["initContainers"]
    assert any(m["name"] == "model-store" for m in init["volumeMounts"])
    assert any(m["name"] == "model-store" for m in ts["volumeMounts"])

    limits, requests = ts["resources"]["limits"], ts["resources"]["requests"]
    if gpu:
        assert limits["nvidia.com/gpu"] == 1 and requests["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert ts["image"].endswith("-gpu")
    else:
        assert "nvidia.com/gpu" not in limits and "nvidia.com/gpu" not in requests
        assert "nodeSelector" not in pod and "tolerations" not in pod
        assert ts["image"].endswith("-cpu")


def test_base_deployment_file_is_gpu_non_root_and_pinned() -> None:
    _check_torchserve_pod(_deployment(_docs((BASE / "deployment.yaml").read_text())), gpu=True)


def test_configmap_keeps_management_on_loopback_and_loads_both_models() -> None:
    (cm,) = _docs((BASE / "configmap.yaml").read_text())
    props = dict(
        line.split("=", 1)
        for line in cm["data"]["config.properties"].splitlines()
        if line and not line.startswith("#")
    )
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["enable_model_api"] == "false"
    assert "synthesis8.mar" in props["load_models"]
    assert "manipulation_density.mar" in props["load_models"]
    compile(cm["data"]["probe.py"], "probe.py", "exec")  # the startup probe script parses


def test_network_policy_denies_egress_and_limits_ingress_ports() -> None:
    (np_,) = _docs((BASE / "networkpolicy.yaml").read_text())
    assert set(np_["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert np_["spec"]["egress"] == []
    ports = {p["port"] for rule in np_["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {8080, 8082}  # never the management port 8081


@pytest.mark.parametrize(("path", "gpu"), [(BASE, True), (CPU, False)], ids=["base", "cpu"])
def test_kustomize_renders_valid_manifests(path: Path, gpu: bool) -> None:
    docs = _render(path)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Namespace",
            "NetworkPolicy",
            "Service",
            "ServiceAccount",
        ]
    )
    for doc in docs:
        _validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "medfakedet"
    dep = _deployment(docs)
    _check_torchserve_pod(dep, gpu=gpu)
    # The Service and NetworkPolicy select the Deployment's pods.
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for doc in docs:
        selector = (doc["spec"].get("selector") if doc["kind"] == "Service" else None) or (
            doc["spec"]["podSelector"]["matchLabels"] if doc["kind"] == "NetworkPolicy" else None
        )
        if selector:
            assert selector.items() <= pod_labels.items(), doc["kind"]


def test_dockerfile_is_pinned_non_root_and_ships_the_archives() -> None:
    text = (ROOT / "config" / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base, "the base image must be a build arg with a pinned default"
    assert re.search(r":\d+\.\d+\.\d+", base.group(1)) and "latest" not in base.group(1)
    assert re.search(r"^ARG VARIANT=cpu$", text, re.MULTILINE)
    assert "gpu)" in text  # the GPU variant of the torch install
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r"^COPY .*model_store/\*\.mar ", text, re.MULTILINE)
    assert "torch==${TORCH_VERSION}" in text
    ignore = (ROOT / "config" / "Dockerfile.dockerignore").read_text().split()
    assert ignore[0:1] == ["*"] or "*" in ignore  # build context limited to what is copied


def test_dockerfile_copies_only_what_the_build_context_sends_and_no_training_stack() -> None:
    text = (ROOT / "config" / "Dockerfile").read_text()
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / "config" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    sources = []
    for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE):
        words = [w for w in line.split() if not w.startswith("--")]
        if not words[0].startswith("<<"):  # a here-document is not read from the context
            sources += words[:-1]
    assert sources, "no COPY found"
    # pyproject's `readme` must be in the context too, or `pip install .` fails in the build
    assert {"pyproject.toml", "README.md"} <= set(sources)
    for src in sources:
        assert src.rstrip("/") in allowed, f"COPY {src} is excluded by Dockerfile.dockerignore"
    installs = re.findall(r'pip install "?\.\[([\w,]+)\]', text)
    assert installs == ["serve"], installs  # serving extra only: no [train] stack in the image
