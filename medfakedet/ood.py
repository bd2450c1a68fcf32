"""Is an input like the images a model was trained on? Mahalanobis distances on its features.

The features are a network's globally averaged activations at several depths (Lee et al. 2018,
"feature ensemble"): ResNet18's ``layer1`` .. ``layer4`` for synthesis8 (``layer4``'s average is
the 512-d penultimate feature), the U-Net's ``enc1``, ``enc2`` and ``bottleneck`` for the
localizer. At each depth, each group (a class, or the one group of brain slices) has its own
mean; the covariance is shared and shrunk towards a scaled identity (Ledoit-Wolf), which keeps
it invertible with fewer training images than dimensions. An input's distance at a depth is its
smallest squared Mahalanobis distance to a group mean; its score there is the share of the
validation images at least as far. The combined score is the smallest over the depths: early
layers see texture and intensity statistics (a real scan against a phantom), late ones content.

Measured on the phantom-trained quick synthesis8 (val calibrated to keep 95% in): the 512-d
penultimate feature alone calls 79% of the real scans of real-dev out of distribution; the
combined score 97%, with 95% of the phantom test split in.

Training fits the statistics on the training images and calibrates the threshold on validation
(``training.calibration.fit_ood``); the artifact stores them (tensors ``ood.*`` in
``model.safetensors``, the threshold in ``artifact.json``). numpy + torch only, no scikit-learn.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medfakedet.runtime import autocast

#: Prefix of the statistics' tensor names in ``model.safetensors``.
TENSOR_PREFIX = "ood."
#: Share of in-distribution validation images that the threshold keeps "in" (issue #10).
DEFAULT_COVERAGE = 0.95


def ledoit_wolf(centered: np.ndarray) -> tuple[np.ndarray, float]:
    """The Ledoit-Wolf shrunk covariance of rows already centred, and its shrinkage in [0, 1].

    ``(1 - s) * S + s * mu * I`` with ``S`` the empirical covariance, ``mu = trace(S) / d`` and
    ``s`` the Ledoit-Wolf (2004) estimate (scikit-learn's ``ledoit_wolf`` with
    ``assume_centered=True`` gives the same matrix).
    """
    x = np.asarray(centered, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need a (n >= 2, d) array of features, got shape {x.shape}")
    n, d = x.shape
    cov = x.T @ x / n
    mu = np.trace(cov) / d
    x2 = x**2
    # beta: estimated squared error of S (sum of its entries' variances); delta: ||S - mu I||^2.
    beta = (np.sum(x2.T @ x2) / n - np.sum(cov**2)) / n
    delta = np.sum(cov**2) - 2.0 * mu * np.trace(cov) + d * mu**2
    beta = min(beta, delta)
    shrinkage = 0.0 if delta <= 0 else float(beta / delta)
    shrunk = (1.0 - shrinkage) * cov
    shrunk[np.diag_indices(d)] += shrinkage * mu
    return shrunk, shrinkage


def _share_at_least(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Share of the sorted ``reference`` that is >= each value."""
    below = np.searchsorted(reference, np.asarray(values, dtype=np.float64), side="left")
    return 1.0 - below / len(reference)


@dataclass
class LayerStatistics:
    """One depth: group means, the shared precision matrix, and the validation distances.

    Attributes:
        means: (K, D) feature mean of each group.
        precision: (D, D) inverse of the shared shrunk covariance.
        reference: sorted distances of the validation images (the score's scale).
    """

    means: np.ndarray
    precision: np.ndarray
    reference: np.ndarray

    @classmethod
    def fit(
        cls, features: np.ndarray, groups: Sequence[int] | None, val_features: np.ndarray
    ) -> LayerStatistics:
        """Means and covariance from training ``features`` (one row per image, ``groups`` its
        group ids; None: one group); the score's scale from ``val_features``."""
        x = np.asarray(features, dtype=np.float64)
        g = np.zeros(len(x), dtype=np.int64) if groups is None else np.asarray(groups)
        if len(g) != len(x):
            raise ValueError(f"{len(x)} feature rows but {len(g)} group ids")
        keys = np.unique(g)
        means = np.stack([x[g == k].mean(axis=0) for k in keys])
        cov, _ = ledoit_wolf(x - means[np.searchsorted(keys, g)])
        layer = cls(means, np.linalg.inv(cov), np.zeros(0))
        layer.reference = np.sort(layer.distance(val_features))
        if len(layer.reference) == 0:
            raise ValueError("no validation features to calibrate on")
        return layer

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) smallest squared Mahalanobis distance of each row to a group mean."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.means.shape[1]:
            raise ValueError(f"expected (N, {self.means.shape[1]}) features, got {x.shape}")
        diff = x[:, None, :] - self.means[None, :, :]  # (N, K, D)
        # (diff @ P) . diff as one matrix product: the same numbers as einsum("nkd,de,nke->nk"),
        # whose loop took 5 ms per image of a served batch of 16 at D=512 (issue #12). In torch,
        # not numpy: numpy's OpenBLAS starts threads of its own beside torch's, and on 2 cores
        # that oversubscription doubled the served p50 at batch 1 and put p90 at ~100 ms.
        d = torch.from_numpy(diff)
        dist = ((d @ torch.from_numpy(self.precision)) * d).sum(dim=2)
        return dist.min(dim=1).values.numpy()

    def score(self, features: np.ndarray) -> np.ndarray:
        """(N,) share of the validation images at least as far (1: typical, 0: beyond all)."""
        return _share_at_least(self.reference, self.distance(features))


@dataclass
class OODStatistics:
    """The statistics of every depth and the calibrated cut-off of the combined score.

    Attributes:
        layers: the :class:`LayerStatistics` of each feature depth, by name.
        reference: sorted combined scores of the validation images.
        threshold: the smallest combined score still counted in-distribution.
    """

    layers: dict[str, LayerStatistics]
    reference: np.ndarray
    threshold: float

    @classmethod
    def fit(
        cls,
        features: Mapping[str, np.ndarray],
        groups: Sequence[int] | None,
        val_features: Mapping[str, np.ndarray],
        coverage: float = DEFAULT_COVERAGE,
    ) -> OODStatistics:
        """Fit every depth of ``features`` on training rows (``groups``: their group ids), and
        set the cut-off so that at least ``coverage`` of ``val_features`` count as in."""
        if not 0.0 < coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {coverage}")
        layers = {k: LayerStatistics.fit(x, groups, val_features[k]) for k, x in features.items()}
        stats = cls(layers, np.zeros(0), 0.0)
        stats.reference = np.sort(stats.combined(val_features))
        # "lower": the cut-off is an observed score, so at least `coverage` are >= it.
        stats.threshold = float(np.quantile(stats.reference, 1.0 - coverage, method="lower"))
        return stats

    @property
    def coverage(self) -> float:
        """Share of the validation images counted in-distribution (>= the calibrated target)."""
        return float(np.mean(self.reference >= self.threshold))

    def combined(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N,) the smallest per-depth score of each row."""
        return np.min([layer.score(features[k]) for k, layer in self.layers.items()], axis=0)

    def check(self, features: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(inside, score)`` of each row: in-distribution or not, and the in-distribution
        score in [0, 1]: the share of the validation images whose combined score is no higher
        (about 1 - coverage at the cut-off, 0 when further than every validation image)."""
        combined = self.combined(features)
        higher = np.searchsorted(self.reference, combined, side="right")
        return combined >= self.threshold, higher / len(self.reference)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors stored in ``model.safetensors`` (float64; the threshold goes to JSON)."""
        arrays = {"reference": self.reference}
        for name, layer in self.layers.items():
            for key in ("means", "precision", "reference"):
                arrays[f"{name}.{key}"] = getattr(layer, key)
        return {
            TENSOR_PREFIX + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()
        }

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], threshold: float) -> OODStatistics:
        """The statistics back from :meth:`to_tensors` and the stored threshold."""
        arrays = {k[len(TENSOR_PREFIX) :]: v.double().numpy() for k, v in tensors.items()}
        names = sorted({k.rsplit(".", 1)[0] for k in arrays if k.endswith(".means")})
        layers = {}
        for name in names:
            means, precision, reference = (
                arrays[f"{name}.{k}"] for k in ("means", "precision", "reference")
            )
            d = means.shape[1] if means.ndim == 2 else -1
            if precision.shape != (d, d) or reference.ndim != 1 or not len(reference):
                raise ValueError(
                    f"inconsistent statistics of {name}: means {tuple(means.shape)}, precision "
                    f"{tuple(precision.shape)}, reference {tuple(reference.shape)}"
                )
            layers[name] = LayerStatistics(means, precision, np.sort(reference))
        if not layers or arrays["reference"].ndim != 1 or not len(arrays["reference"]):
            raise ValueError("no feature layers or no combined reference")
        return cls(layers, np.sort(arrays["reference"]), float(threshold))


def feature_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules whose (globally averaged) outputs are the features, by name."""
    if hasattr(model, "fc"):  # torchvision ResNet
        return {k: getattr(model, k) for k in ("layer1", "layer2", "layer3", "layer4")}
    if hasattr(model, "bottleneck"):  # UNetDensity
        return {k: getattr(model, k) for k in ("enc1", "enc2", "bottleneck")}
    if hasattr(model, "net") and hasattr(model.net, "encoder"):  # smp U-Net: every stage
        return {"encoder": model.net.encoder}
    raise ValueError(f"no feature layers known for {type(model).__name__}")


def _pooled(name: str, out: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    stages = {f"{name}{i}": t for i, t in enumerate(out)} if isinstance(out, list | tuple) else {}
    stages = {k: t for k, t in stages.items() if t.shape[1] > 3} or {name: out}  # skip the input
    return {k: _float(t).mean(dim=(2, 3)).cpu() for k, t in stages.items()}


def _float(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 (an int8 path's activations are quantized tensors)."""
    return t.detach().dequantize() if t.is_quantized else t.detach().float()


@contextmanager
def captured_features(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Collect the (N, D) features of every forward of ``model`` inside the block, in order:
    one list of tensors per feature layer."""
    found: dict[str, list[torch.Tensor]] = {}

    def keep(name: str, out: torch.Tensor | Sequence[torch.Tensor]) -> None:
        for key, t in _pooled(name, out).items():
            found.setdefault(key, []).append(t)

    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: keep(name, out))
        for name, module in feature_modules(model).items()
    ]
    try:
        yield found
    finally:
        for hook in hooks:
            hook.remove()


def stacked(found: Mapping[str, list[torch.Tensor]]) -> dict[str, np.ndarray]:
    """The captured features as one (N, D) float64 array per layer."""
    if not found:
        raise ValueError("no images: nothing to take features from")
    return {k: torch.cat(v).double().numpy() for k, v in found.items()}


@torch.inference_mode()
def model_features(
    model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device
) -> dict[str, np.ndarray]:
    """(N, D) float64 features per layer of every image of ``batches`` (model inputs)."""
    model.eval()
    with captured_features(model) as found:
        for x in batches:
            with autocast(device, dtype=torch.float16):
                model(x.to(device))
    return stacked(found)
