"""synthesis8's abstention, calibrated for uploads: the in-distribution statistics and the P(fake)
grey zone fitted on clean images and on degraded copies drawn by the training augmentation.

An upload arrives re-encoded (JPEG at some quality, resampled, 16-bit or not). Fitted on clean
images only, the in-distribution check calls many of those "out", and the grey zone is tuned to
clean probabilities: ``uncertain`` and false "fake" answers both grow under re-encoding. Here
the statistics' means and covariance come from clean training images plus ``draws`` degraded
copies of a fixed subset of them, the cut-off from the validation images plus as many
degraded copies of each, and the grey zone (:func:`budgeted_grey_zone`) from the validation
answers of all of them: at most ``max_false_fake`` of the real images answered ``fake``, within
an ``uncertain`` budget. Validation only; test never tunes anything.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from medfakedet.metrics import softmax
from medfakedet.ood import OODStatistics, captured_features, model_features, stacked
from training.calibration import fit_temperature
from training.common import fixed_subset
from training.inference import predict_synthesis8

#: Training images the statistics see: clean ones, and per degraded draw (a fixed seeded
#: subset: on a loaded 2-core CPU a forward pass runs at about 5 images/s, and the statistics
#: settle with a few hundred images per class-shared covariance).
CLEAN_TRAIN_IMAGES = 640
DEGRADED_TRAIN_IMAGES = 256


def budgeted_grey_zone(
    fake_probability: Sequence[float],
    called_fake: Sequence[bool],
    is_fake: Sequence[bool],
    inside: Sequence[bool],
    max_false_fake: float = 0.01,
    max_uncertain: float = 0.1,
    target_accuracy: float = 0.98,
    step: float = 0.005,
) -> tuple[float, float]:
    """The band ``(low, high)``, ``low <= 0.5 <= high``, of P(fake) answered ``uncertain``,
    fit on validation images (``inside``: their in-distribution check; an image out is
    answered ``uncertain`` whatever its P(fake)).

    ``high``: the lowest threshold at which at most ``max_false_fake`` of the real images are
    answered ``fake`` (in-distribution, called fake, P(fake) >= ``high``), but never so high
    that the out-of-distribution share and the band ``(0.5, high)`` hold more than
    ``max_uncertain`` of all images: when the model cannot meet both, the uncertain budget
    wins and the false-"fake" rate is what it is. ``low``: widened from 0.5 while the
    ``real`` answers are right less often than ``target_accuracy``, within the same budget.
    """
    p = np.asarray(fake_probability, dtype=np.float64)
    called = np.asarray(called_fake, dtype=bool)
    fake = np.asarray(is_fake, dtype=bool)
    ins = np.asarray(inside, dtype=bool)
    if not len(p) == len(called) == len(fake) == len(ins) or len(p) == 0:
        raise ValueError("need the same non-zero number of probabilities, calls, labels, checks")
    if not 0 <= max_false_fake < 1 or not 0 < max_uncertain <= 1:
        raise ValueError("max_false_fake must be in [0, 1) and max_uncertain in (0, 1]")
    n, real = len(p), ~fake
    out_share = float(np.mean(~ins))

    def uncertain(low: float, high: float) -> float:
        return out_share + float(np.sum(ins & (p > low) & (p < high))) / n

    high = 0.5
    for t in np.arange(0.5, 1.0 + step / 2, step):
        if uncertain(0.5, t) > max_uncertain:
            break
        high = float(t)
        answered_fake = ins & called & (p >= t)
        if not real.any() or np.mean(answered_fake[real]) <= max_false_fake:
            break
    low = 0.5
    for t in np.arange(0.5, -step / 2, -step):
        if uncertain(t, high) > max_uncertain:
            break
        low = float(t)
        answered_real = ins & ~called & (p <= t)
        if not answered_real.any() or np.mean(real[answered_real]) >= target_accuracy:
            break
    return round(low, 6), round(high, 6)


def grey_high_interval(
    fake_probability: np.ndarray,
    called_fake: np.ndarray,
    is_fake: np.ndarray,
    inside: np.ndarray,
    views: int,
    max_false_fake: float,
    max_uncertain: float,
    resamples: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """The 5th and 95th percentiles of :func:`budgeted_grey_zone`'s ``high`` over bootstrap
    resamples of the validation images (each drawn with all its ``views``, which the arrays
    hold one after the other: clean, then each degraded draw).

    ``high`` is an extreme quantile (the real images' P(fake) that ``max_false_fake`` exceed),
    set by a handful of the val reals. Measured on four trained models (session 27), the 90%
    intervals spanned 0.90-0.99, 0.83-0.98, 0.80-0.99 and 0.71-0.97, and the served
    false-"fake" and fake rates follow the bound. The interval says how far one training's
    operating point can be trusted; it changes nothing that is served.
    """
    arrays = [np.asarray(a) for a in (fake_probability, called_fake, is_fake, inside)]
    n = len(arrays[0]) // views
    if n == 0 or n * views != len(arrays[0]):
        raise ValueError(f"{len(arrays[0])} answers are not {views} views of the same images")
    rng = np.random.default_rng(seed)
    highs = []
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        rows = (pick[None, :] + n * np.arange(views)[:, None]).ravel()
        zone = budgeted_grey_zone(*(a[rows] for a in arrays), max_false_fake, max_uncertain)
        highs.append(zone[1])
    return float(np.percentile(highs, 5)), float(np.percentile(highs, 95))


def degraded_draws(dataset: Any, draws: int) -> Iterator[Any]:
    """``dataset`` (which degrades its items) at ``draws`` distinct augmentation epochs, one
    after the other: each is another seeded draw of degradations."""
    for k in range(draws):
        dataset.set_epoch(10_000 + k)  # far from the training epochs' draws
        yield dataset


def _features(model: nn.Module, dataset: Any, device: torch.device, batch: int) -> dict:
    loader = DataLoader(dataset, batch_size=batch, shuffle=False)
    return model_features(model, (b[0] for b in loader), device)


def _concat(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def calibrate_abstention(
    model: nn.Module,
    clean_train: Any,
    degraded_train: Any,
    train_idx: Sequence[int],
    clean_val: Any,
    degraded_val: Any,
    device: torch.device,
    batch_size: int = 128,
    draws: int = 2,
    coverage: float = 0.95,
    max_false_fake: float = 0.01,
    max_uncertain: float = 0.1,
    seed: int = 42,
) -> tuple[OODStatistics, float, tuple[float, float], dict[str, float]]:
    """``(statistics, temperature, (grey_low, grey_high), validation shares)``.

    ``clean_train`` / ``degraded_train`` and ``clean_val`` / ``degraded_val``: the splits
    without and with the training degradations; ``draws``: degraded copies of each. The
    temperature is fitted on the clean and degraded val images together: on clean val alone a
    model that separates every image sharpens without limit (:func:`fit_temperature`), while
    uploads come re-encoded and resized."""
    train_idx = list(train_idx)
    labels = np.asarray(clean_train.targets)
    clean = [train_idx[i] for i in fixed_subset(len(train_idx), CLEAN_TRAIN_IMAGES, seed + 1)]
    feats = [_features(model, Subset(clean_train, clean), device, batch_size)]
    groups = [labels[clean]]
    pick = [train_idx[i] for i in fixed_subset(len(train_idx), DEGRADED_TRAIN_IMAGES, seed)]
    for view in degraded_draws(degraded_train, draws):
        feats.append(_features(model, Subset(view, pick), device, batch_size))
        groups.append(labels[pick])
    logits, val_labels = [], []
    with captured_features(model) as found:
        for ds in chain([clean_val], degraded_draws(degraded_val, draws)):  # lazily: one view
            p = predict_synthesis8(model, ds, device, batch_size)
            logits.append(p["logits"])
            val_labels.append(p["labels"])
    val_feats = stacked(found)
    stats = OODStatistics.fit(_concat(feats), np.concatenate(groups), val_feats, coverage)
    inside, _ = stats.check(val_feats)
    y = np.concatenate(val_labels)
    temperature = fit_temperature(np.concatenate(logits), y)
    probs = softmax(np.concatenate(logits), temperature)
    p_fake, called, is_fake = probs[:, 1::2].sum(axis=1), probs.argmax(axis=1) % 2 == 1, y % 2 == 1
    low, high = budgeted_grey_zone(p_fake, called, is_fake, inside, max_false_fake, max_uncertain)
    interval = grey_high_interval(
        p_fake, called, is_fake, inside, 1 + draws, max_false_fake, max_uncertain, seed=seed
    )
    uncertain = ~inside | ((p_fake > low) & (p_fake < high))
    answered_fake = inside & called & (p_fake >= high)
    shares = {
        "val_images_clean_and_degraded": int(len(y)),
        "val_real_answered_fake": float(answered_fake[~is_fake].mean()),
        "val_uncertain": float(uncertain.mean()),
        "val_fake_answered_fake": float(answered_fake[is_fake].mean()),
        "val_grey_high_p05": interval[0],
        "val_grey_high_p95": interval[1],
    }
    return stats, temperature, (low, high), shares
