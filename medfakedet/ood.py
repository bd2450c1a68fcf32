"""Is an input like the images a model was trained on? A Mahalanobis distance on its features.

The features are a model's penultimate activations: ResNet18's 512-d ``avgpool`` output (the
input of ``fc``) for synthesis8, the global average of the U-Net bottleneck for the localizer.
Each group (an organ, or the one group of brain slices) has its own mean; the covariance is
shared and shrunk towards a scaled identity (Ledoit-Wolf), which keeps it invertible with fewer
training images than feature dimensions. The distance of an input is the smallest squared
Mahalanobis distance to a group mean.

Training fits the statistics on the training images and calibrates the threshold on validation
(``training.calibration.calibrate_ood``); the artifact stores them (tensors ``ood.*`` in
``model.safetensors``, the threshold in ``artifact.json``). numpy + torch only, no scikit-learn.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
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


@dataclass
class OODStatistics:
    """Group means, the shared precision matrix, and the calibrated distance threshold.

    Attributes:
        means: (K, D) feature mean of each group.
        precision: (D, D) inverse of the shared shrunk covariance.
        reference: sorted distances of the in-distribution validation images (the score's scale).
        threshold: largest distance still counted in-distribution.
    """

    means: np.ndarray
    precision: np.ndarray
    reference: np.ndarray
    threshold: float

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        groups: Sequence[int] | None,
        val_features: np.ndarray,
        coverage: float = DEFAULT_COVERAGE,
    ) -> OODStatistics:
        """Means and covariance from training ``features`` (one row per image, ``groups`` its
        group ids; None: one group), threshold from ``val_features`` so that at least
        ``coverage`` of them count as in-distribution."""
        if not 0.0 < coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {coverage}")
        x = np.asarray(features, dtype=np.float64)
        g = np.zeros(len(x), dtype=np.int64) if groups is None else np.asarray(groups)
        if len(g) != len(x):
            raise ValueError(f"{len(x)} feature rows but {len(g)} group ids")
        keys = np.unique(g)
        means = np.stack([x[g == k].mean(axis=0) for k in keys])
        centered = x - means[np.searchsorted(keys, g)]
        cov, _ = ledoit_wolf(centered)
        stats = cls(means, np.linalg.inv(cov), np.zeros(0), float("inf"))
        reference = np.sort(stats.distance(val_features))
        if len(reference) == 0:
            raise ValueError("no validation features to calibrate the threshold on")
        # "higher": the threshold is an observed distance, so at least `coverage` are <= it.
        threshold = float(np.quantile(reference, coverage, method="higher"))
        return cls(means, stats.precision, reference, threshold)

    @property
    def coverage(self) -> float:
        """Share of the validation images counted in-distribution (>= the calibrated target)."""
        return float(np.mean(self.reference <= self.threshold))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """(N,) smallest squared Mahalanobis distance of each row to a group mean."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.means.shape[1]:
            raise ValueError(f"expected (N, {self.means.shape[1]}) features, got {x.shape}")
        diff = x[:, None, :] - self.means[None, :, :]  # (N, K, D)
        d2 = np.einsum("nkd,de,nke->nk", diff, self.precision, diff)
        return d2.min(axis=1)

    def score(self, distances: np.ndarray) -> np.ndarray:
        """(N,) in-distribution score in [0, 1]: the share of the validation images that are at
        least as far from the training images (1: typical, 0: further than all of them)."""
        d = np.asarray(distances, dtype=np.float64)
        below = np.searchsorted(self.reference, d, side="left")
        return 1.0 - below / len(self.reference)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors stored in ``model.safetensors`` (float64; the threshold goes to JSON)."""
        arrays = {"means": self.means, "precision": self.precision, "reference": self.reference}
        return {
            TENSOR_PREFIX + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], threshold: float) -> OODStatistics:
        """The statistics back from :meth:`to_tensors` and the stored threshold."""
        arrays = {k: tensors[TENSOR_PREFIX + k].double().numpy() for k in ("means", "precision")}
        reference = tensors[TENSOR_PREFIX + "reference"].double().numpy()
        means, precision = arrays["means"], arrays["precision"]
        d = means.shape[1] if means.ndim == 2 else -1
        if (
            means.ndim != 2
            or precision.shape != (d, d)
            or reference.ndim != 1
            or not len(reference)
        ):
            raise ValueError(
                f"inconsistent statistics: means {tuple(means.shape)}, precision "
                f"{tuple(precision.shape)}, reference {tuple(reference.shape)}"
            )
        return cls(means, precision, np.sort(reference), float(threshold))


def feature_module(model: nn.Module) -> tuple[nn.Module, bool]:
    """The module whose activations are the features, and whether they are its input (True:
    ResNet's ``fc``) or its output (the U-Nets' bottleneck / deepest encoder stage)."""
    if hasattr(model, "fc"):
        return model.fc, True
    if hasattr(model, "bottleneck"):
        return model.bottleneck, False
    if hasattr(model, "net") and hasattr(model.net, "encoder"):
        return model.net.encoder, False
    raise ValueError(f"no feature layer known for {type(model).__name__}")


def _pooled(t: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    if isinstance(t, list | tuple):  # smp encoders return every stage; the last is the deepest
        t = t[-1]
    t = t.detach().float()
    return t.mean(dim=(2, 3)) if t.ndim == 4 else t.flatten(1)


@contextmanager
def captured_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the (N, D) features of every forward of ``model`` inside the block, in order."""
    module, from_input = feature_module(model)
    found: list[torch.Tensor] = []
    if from_input:
        hook = module.register_forward_pre_hook(
            lambda _m, args: found.append(_pooled(args[0]).cpu())
        )
    else:
        hook = module.register_forward_hook(lambda _m, _i, out: found.append(_pooled(out).cpu()))
    try:
        yield found
    finally:
        hook.remove()


@torch.inference_mode()
def model_features(
    model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device
) -> np.ndarray:
    """(N, D) float64 features of every image of ``batches`` (model inputs), in order."""
    model.eval()
    with captured_features(model) as found:
        for x in batches:
            with autocast(device, dtype=torch.float16):
                model(x.to(device))
    if not found:
        raise ValueError("no images: nothing to take features from")
    return torch.cat(found).double().numpy()
