"""The one declaration of the served contract: request parameters, errors, results, postprocessing.

Torch-free (numpy, scipy via :mod:`medfakedet.density`, pydantic), so request parsing, the CLI,
load tests and evaluation can import it without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medfakedet.density import Box, density_to_boxes, presence_score


@dataclass(frozen=True)
class Findings:
    """What a density map says, at the map's own resolution.

    Attributes:
        manipulated: ``presence_score >= presence_threshold``.
        presence_score: the maximum of the raw map.
        boxes: regions reaching ``threshold`` with at least ``min_area`` pixels whose own peak
            reaches the presence threshold, highest score first.
    """

    manipulated: bool
    presence_score: float
    boxes: list[Box] = field(default_factory=list)


def detect_regions(
    density: np.ndarray, threshold: float, min_area: int, presence_threshold: float
) -> Findings:
    """The served rule, used by serving and evaluation alike.

    A region counts only when its own peak reaches the presence threshold (hysteresis), so every
    box is a region the model calls manipulated, and faint blobs give no box.
    """
    score = presence_score(density)
    boxes = density_to_boxes(density, threshold, min_area, min_peak=presence_threshold)
    return Findings(bool(score >= presence_threshold), score, boxes)
