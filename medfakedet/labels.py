"""The eight synthesis classes in the paper's fixed order, and helpers over them."""

from __future__ import annotations

import numpy as np

ORGANS: tuple[str, ...] = ("brain", "chest", "kidney", "lung")
SOURCES: tuple[str, ...] = ("real", "fake")

#: Paper order: organ-major, real before fake. Never reorder: trained weights depend on it.
CLASS_NAMES: tuple[str, ...] = tuple(f"{organ}_{src}" for organ in ORGANS for src in SOURCES)
NUM_CLASSES = len(CLASS_NAMES)
FAKE_CLASS_INDICES: tuple[int, ...] = tuple(
    i for i, n in enumerate(CLASS_NAMES) if n.endswith("_fake")
)


def _index(idx_or_name: int | str) -> int:
    if isinstance(idx_or_name, str):
        try:
            return CLASS_NAMES.index(idx_or_name)
        except ValueError:
            raise ValueError(
                f"unknown class name {idx_or_name!r}; expected one of {', '.join(CLASS_NAMES)}"
            ) from None
    idx = int(idx_or_name)
    if not 0 <= idx < NUM_CLASSES:
        raise ValueError(f"class index {idx} out of range 0..{NUM_CLASSES - 1}")
    return idx


def class_index(organ: str, is_fake: bool) -> int:
    """Index of the class for ``organ`` (one of ORGANS) and real/fake."""
    if organ not in ORGANS:
        raise ValueError(f"unknown organ {organ!r}; expected one of {', '.join(ORGANS)}")
    return ORGANS.index(organ) * 2 + int(bool(is_fake))


def organ_of(idx_or_name: int | str) -> str:
    """Organ of a class given by index or name."""
    return ORGANS[_index(idx_or_name) // 2]


def is_fake_class(idx_or_name: int | str) -> bool:
    """True for the four ``*_fake`` classes."""
    return _index(idx_or_name) % 2 == 1


def fake_probability(probs: np.ndarray) -> np.ndarray:
    """P(fake) = sum of the four fake-class probabilities, over the last axis of ``probs``."""
    probs = np.asarray(probs)
    _check_last_axis(probs)
    return probs[..., list(FAKE_CLASS_INDICES)].sum(axis=-1)


def organ_probabilities(probs: np.ndarray) -> np.ndarray:
    """Per-organ probability (real + fake of each organ), shape ``[..., 4]`` in ORGANS order."""
    probs = np.asarray(probs)
    _check_last_axis(probs)
    return probs.reshape(*probs.shape[:-1], len(ORGANS), len(SOURCES)).sum(axis=-1)


def _check_last_axis(probs: np.ndarray) -> None:
    if probs.shape[-1:] != (NUM_CLASSES,):
        raise ValueError(f"expected probabilities with last axis {NUM_CLASSES}, got {probs.shape}")
