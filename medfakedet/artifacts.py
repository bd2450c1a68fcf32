"""Trained-model artifacts: ``model.safetensors`` + ``artifact.json``; no pickle anywhere.

The JSON holds everything serving needs besides the weights: task, architecture, the
:class:`~medfakedet.preprocess.PreprocessConfig` used in training, class names, calibration
(temperature, thresholds), metrics, a training summary and a version. Loading rebuilds the
architecture and refuses any missing, unexpected or mis-shaped tensor (the original silently
skipped mismatched weights, which serves a half-random model).

The in-distribution statistics (:class:`~medfakedet.ood.OODStatistics`), when trained, are the
``ood.*`` tensors of the same safetensors file, with ``ood_threshold`` in the calibration. An
artifact without them still loads: its ``ood`` is None and serving never abstains for it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medfakedet import __version__
from medfakedet.density import RegionScorer
from medfakedet.hashing import file_sha256
from medfakedet.labels import CLASS_NAMES
from medfakedet.models import build_model
from medfakedet.ood import TENSOR_PREFIX, OODStatistics
from medfakedet.preprocess import PreprocessConfig

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "artifact.json"
TASKS = ("synthesis8", "manipulation_density")
DEFAULT_CALIBRATION = {
    "synthesis8": {"temperature": 1.0},
    "manipulation_density": {"presence_threshold": 0.28, "box_threshold": 0.28, "min_area": 20},
}


class ArtifactError(RuntimeError):
    """An artifact is missing, malformed or does not match its architecture."""


@dataclass
class Artifact:
    """A loaded artifact: the model in eval mode plus its metadata."""

    model: nn.Module
    task: str
    arch: str
    preprocess: PreprocessConfig
    class_names: list[str] | None
    calibration: dict[str, Any]
    version: str
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    ood: OODStatistics | None = None  # None: trained before the statistics existed
    weights_sha256: str = ""  # of model.safetensors as loaded: the audit trail's model hash


def _check_calibration(task: str, calibration: dict[str, Any]) -> dict[str, Any]:
    merged = {**DEFAULT_CALIBRATION[task], **calibration}
    if task == "manipulation_density" and "region_scorer" in merged:
        try:
            merged["region_scorer"] = RegionScorer.from_dict(merged["region_scorer"]).to_dict()
        except ValueError as exc:
            raise ArtifactError(f"calibration region_scorer: {exc}") from None
    for key, value in merged.items():
        if key == "region_scorer":
            continue
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ArtifactError(f"calibration {key}={value!r} is not a finite number")
    if task == "synthesis8" and merged["temperature"] <= 0:
        raise ArtifactError(f"temperature must be > 0, got {merged['temperature']}")
    return merged


def save_artifact(
    out_dir: str | Path,
    model: nn.Module,
    *,
    task: str,
    arch: str,
    preprocess: PreprocessConfig,
    class_names: list[str] | tuple[str, ...] | None = None,
    calibration: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    version: str = "1.0",
    ood: OODStatistics | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``artifact.json`` into ``out_dir``; return the folder.

    ``ood`` adds the in-distribution statistics (tensors ``ood.*``, ``ood_threshold`` in the
    calibration)."""
    if task not in TASKS:
        raise ArtifactError(f"unknown task {task!r}; expected one of {TASKS}")
    if task == "synthesis8" and class_names is None:
        class_names = list(CLASS_NAMES)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    calibration = dict(calibration or {})
    if ood is not None:
        state.update(ood.to_tensors())
        calibration["ood_threshold"] = ood.threshold
    save_file(state, str(out / WEIGHTS_FILE), metadata={"task": task, "arch": arch})
    meta = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "arch": arch,
        "version": str(version),
        "preprocess": preprocess.to_dict(),
        "class_names": list(class_names) if class_names is not None else None,
        "calibration": _check_calibration(task, calibration),
        "metrics": metrics or {},
        "training": training or {},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "medfakedet_version": __version__,
        "torch_version": torch.__version__,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def read_meta(artifact_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``artifact.json`` without touching the weights."""
    path = Path(artifact_dir) / META_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} not found: is {artifact_dir} a medfakedet artifact folder?")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from None
    missing = {"format_version", "task", "arch", "preprocess", "calibration", "version"} - set(meta)
    if missing:
        raise ArtifactError(f"{path} lacks keys {sorted(missing)}")
    if meta["format_version"] != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {meta['format_version']}; this code reads {FORMAT_VERSION}"
        )
    if meta["task"] not in TASKS:
        raise ArtifactError(f"{path}: unknown task {meta['task']!r}; expected one of {TASKS}")
    return meta


def load_artifact(artifact_dir: str | Path, device: str | torch.device = "cpu") -> Artifact:
    """Rebuild the architecture, load the weights strictly and return the model in eval mode."""
    meta = read_meta(artifact_dir)
    task, arch = meta["task"], meta["arch"]
    try:
        model = build_model(task, arch)
    except ValueError as e:
        raise ArtifactError(f"artifact {artifact_dir}: {e}") from None
    weights = Path(artifact_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{weights} not found")
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"{weights} could not be read: {e}") from None
    ood = _read_ood(state, meta["calibration"], f"artifact {artifact_dir}")
    _check_state(model, state, f"{artifact_dir} ({task}, arch {arch})")
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    try:
        preprocess = PreprocessConfig.from_dict(meta["preprocess"])
    except (KeyError, ValueError, TypeError) as e:
        raise ArtifactError(f"artifact {artifact_dir}: bad preprocess config: {e}") from None
    class_names = meta.get("class_names")
    if task == "synthesis8" and class_names is not None:
        n_out = state["fc.weight"].shape[0]
        if len(class_names) != n_out:
            raise ArtifactError(
                f"artifact {artifact_dir}: {len(class_names)} class names for {n_out} outputs"
            )
    return Artifact(
        model=model,
        task=task,
        arch=arch,
        preprocess=preprocess,
        class_names=class_names,
        calibration=_check_calibration(task, meta["calibration"]),
        version=str(meta["version"]),
        metrics=meta.get("metrics", {}),
        training=meta.get("training", {}),
        meta=meta,
        ood=ood,
        weights_sha256=file_sha256(weights),
    )


def _read_ood(
    state: dict[str, torch.Tensor], calibration: dict[str, Any], what: str
) -> OODStatistics | None:
    """Pop the ``ood.*`` tensors out of ``state``: the statistics, or None when there are none."""
    tensors = {k: state.pop(k) for k in [k for k in state if k.startswith(TENSOR_PREFIX)]}
    if not tensors:
        return None
    if "ood_threshold" not in calibration:
        raise ArtifactError(f"{what}: in-distribution statistics without ood_threshold")
    try:
        return OODStatistics.from_tensors(tensors, calibration["ood_threshold"])
    except (KeyError, ValueError) as e:
        raise ArtifactError(f"{what}: bad in-distribution statistics: {e}") from None


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing tensors: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_preview(unexpected)}")
    for name in sorted(set(expected) & set(state)):
        if tuple(expected[name].shape) != tuple(state[name].shape):
            problems.append(
                f"{name} has shape {tuple(state[name].shape)}, "
                f"the architecture expects {tuple(expected[name].shape)}"
            )
    if problems:
        raise ArtifactError(
            f"weights do not match {what}: "
            + "; ".join(problems[:8])
            + ". Was the artifact trained with another architecture or number of classes?"
        )


def _preview(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")
