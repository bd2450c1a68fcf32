"""Batched inference over a dataset split (optionally corrupted) -> plain numpy predictions.

Models run under :func:`medfakedet.runtime.autocast` with fp16 on CUDA, as serving runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medfakedet.density import Box
from medfakedet.preprocess import PreprocessConfig
from medfakedet.runtime import autocast
from training.common import progress
from training.corruptions import corrupt_batch


def _model_inputs(
    dataset: Any,
    batch_size: int,
    image_of: Callable[[Any], torch.Tensor],
    corruption: str | None,
    preprocess: PreprocessConfig | None,
    show_progress: bool,
) -> Iterator[tuple[torch.Tensor, Any]]:
    """``(images, batch)`` in dataset order; images corrupted when ``corruption`` is named."""
    seen = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    desc = f"predict {corruption or 'clean'}"
    for batch in progress(loader, show_progress, desc=desc, leave=False):
        x = image_of(batch)
        if corruption is not None:
            x = corrupt_batch(x, preprocess, corruption, seen)
        seen += len(x)
        yield x, batch


@torch.inference_mode()
def predict_synthesis8(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    batch_size: int = 64,
    corruption: str | None = None,
    cfg: PreprocessConfig | None = None,
    show_progress: bool = False,
) -> dict[str, np.ndarray]:
    """``{"logits": (N, 8) float64, "labels": (N,) int64}`` over ``dataset`` in order.

    ``cfg`` (default: the dataset's) undoes the normalisation for a corruption.
    """
    model.eval()
    logits, labels = [], []
    pre = cfg if cfg is not None or corruption is None else dataset.preprocess
    for x, (_, y) in _model_inputs(
        dataset, batch_size, lambda b: b[0], corruption, pre, show_progress
    ):
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype=torch.float16):
            out = model(x)
        logits.append(out.float().cpu().numpy().astype(np.float64))
        labels.append(np.asarray(y, dtype=np.int64))
    if not logits:
        raise ValueError("the split is empty: nothing to predict")
    return {"logits": np.concatenate(logits), "labels": np.concatenate(labels)}


@dataclass
class LocalizerPredictions:
    """Everything the localizer metrics need, at model resolution."""

    density: np.ndarray  # (N, S, S) float32 raw density maps
    mask_pred: np.ndarray  # (N, S, S) bool: mask head logits > 0
    gt_mask: np.ndarray  # (N, S, S) bool
    gt_boxes: list[list[Box]]
    present: np.ndarray  # (N,) bool: image is manipulated
    ids: list[str]
    loss: float | None = None


@torch.inference_mode()
def predict_localizer(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    batch_size: int = 32,
    corruption: str | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    show_progress: bool = False,
) -> LocalizerPredictions:
    """Density maps, mask-head masks and ground truth of every item of a MedFakeInpaintDataset."""
    model.eval()
    density, mask_pred, gt_mask, ids = [], [], [], []
    loss_sum, seen = 0.0, 0
    for x, batch in _model_inputs(
        dataset, batch_size, lambda b: b["image"], corruption, dataset.preprocess, show_progress
    ):
        with autocast(device, dtype=torch.float16):
            d, m = model(x.to(device))
        d, m = d.float(), m.float()
        if loss_fn is not None:
            loss = loss_fn(d, m, batch["density"].to(device), batch["mask"].to(device))
            loss_sum += float(loss) * len(x)
        seen += len(x)
        density.append(d[:, 0].cpu().numpy())
        mask_pred.append((m[:, 0] > 0).cpu().numpy())
        gt_mask.append(batch["mask"][:, 0].numpy() > 0.5)
        ids.extend(batch["id"])
    if not density:
        raise ValueError("the split is empty: nothing to predict")
    gt = np.concatenate(gt_mask)
    return LocalizerPredictions(
        density=np.concatenate(density),
        mask_pred=np.concatenate(mask_pred),
        gt_mask=gt,
        gt_boxes=[dataset.gt_boxes(i) for i in range(len(dataset))],
        present=gt.reshape(len(gt), -1).any(axis=1),
        ids=ids,
        loss=loss_sum / seen if loss_fn is not None else None,
    )
