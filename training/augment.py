"""The degradation-augmentation fields both trainers' configs share (issue #10: no shortcut cues).

``Synthesis8Config`` and ``LocalizerConfig`` inherit :class:`DegradationFields`; the trainer
hands :meth:`DegradationFields.degradation` to the train split only, where
:class:`medfakedet.degrade.Degradation` applies down-up resize, blur, noise and JPEG
recompression at random, after the source changes (gamma, zoom, window, processing) when those
are on (every draw from the item's generator, so runs are reproducible). All probabilities 0 (the
default): no degradation, the paper's recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from medfakedet.degrade import (
    EQUALIZE_WEIGHT,
    GAMMA_RANGE,
    JPEG_QUALITY_RANGE,
    SCALE_RANGE,
    UNSHARP_GAIN,
    UNSHARP_SIGMA,
    WINDOW_WIDTH,
    ZOOM_RANGE,
    Degradation,
)


def build_problems(build: Callable[[], object], prefix: str = "") -> list[str]:
    """``[prefix + why]`` when ``build()`` refuses its fields with a ValueError, else []."""
    try:
        build()
    except ValueError as exc:
        return [f"{prefix}{exc}"]
    return []


@dataclass(frozen=True)
class DegradationFields:
    """Probabilities and ranges of the training degradations (``aug_*`` config keys)."""

    aug_jpeg_p: float = 0.0  # JPEG recompression probability
    aug_jpeg_quality: tuple[int, int] = JPEG_QUALITY_RANGE
    aug_blur_p: float = 0.0  # Gaussian blur probability
    aug_blur_sigma: tuple[float, float] = (0.3, 1.2)  # pixels at the model size
    aug_resize_p: float = 0.0  # down-up (or up-down) resize probability
    aug_resize_scale: tuple[float, float] = SCALE_RANGE  # log-uniform factor
    aug_noise_p: float = 0.0  # Gaussian noise probability
    aug_noise_sigma: tuple[float, float] = (0.005, 0.03)
    aug_gamma_p: float = 0.0  # another display curve (CT window, X-ray processing)
    aug_gamma_range: tuple[float, float] = GAMMA_RANGE  # log-uniform exponent
    aug_zoom_p: float = 0.0  # another field of view: a random crop resized back
    aug_zoom_range: tuple[float, float] = ZOOM_RANGE  # log-uniform, 1/z of each side kept
    aug_window_p: float = 0.0  # another intensity window (a CT re-windowed): a linear stretch
    aug_window_width: tuple[float, float] = WINDOW_WIDTH  # share of the gray range, log-uniform
    aug_process_p: float = 0.0  # another processing: an unsharp mask or an equalisation blend
    aug_unsharp_sigma: tuple[float, float] = UNSHARP_SIGMA  # pixels at the model size, log-uniform
    aug_unsharp_gain: tuple[float, float] = UNSHARP_GAIN
    aug_equalize_weight: tuple[float, float] = EQUALIZE_WEIGHT

    def degradation_problems(self) -> list[str]:
        """What is wrong with these fields, for the config's ``validate`` ([] when fine)."""
        return build_problems(self.degradation)

    def degradation(self) -> Degradation:
        """The :class:`~medfakedet.degrade.Degradation` these fields describe (checked)."""
        return Degradation(
            jpeg_p=self.aug_jpeg_p,
            jpeg_quality=tuple(self.aug_jpeg_quality),
            blur_p=self.aug_blur_p,
            blur_sigma=tuple(self.aug_blur_sigma),
            resize_p=self.aug_resize_p,
            resize_scale=tuple(self.aug_resize_scale),
            noise_p=self.aug_noise_p,
            noise_sigma=tuple(self.aug_noise_sigma),
            gamma_p=self.aug_gamma_p,
            gamma_range=tuple(self.aug_gamma_range),
            zoom_p=self.aug_zoom_p,
            zoom_range=tuple(self.aug_zoom_range),
            window_p=self.aug_window_p,
            window_width=tuple(self.aug_window_width),
            process_p=self.aug_process_p,
            unsharp_sigma=tuple(self.aug_unsharp_sigma),
            unsharp_gain=tuple(self.aug_unsharp_gain),
            equalize_weight=tuple(self.aug_equalize_weight),
        )
