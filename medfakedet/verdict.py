"""The served verdicts: a model's call, or ``uncertain`` when the model should abstain.

A model abstains when the input is unlike its training images (the in-distribution check of
:mod:`medfakedet.ood` says "out") and, for synthesis8, when P(fake) lies in the grey zone
calibrated on validation. The paper's fields (``is_fake``, ``is_manipulated``) stay the model's
raw call; ``verdict`` and ``reason`` say what a user should take from it. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

SYNTHESIS8_VERDICTS = ("real", "fake", "uncertain")
DENSITY_VERDICTS = ("manipulated", "untouched", "uncertain")
#: The grey zone of an artifact calibrated before grey zones existed: empty.
NO_GREY_ZONE = (0.5, 0.5)


@dataclass(frozen=True)
class InDistribution:
    """The in-distribution check of one input.

    Attributes:
        inside: the input counts as in-distribution; None when the model has no statistics.
        score: share of the validation images at least as unusual, in [0, 1]; None likewise.
    """

    inside: bool | None = None
    score: float | None = None

    def fields(self) -> dict:
        """``in_distribution`` and ``in_distribution_score`` of a result."""
        score = None if self.score is None else round(float(self.score), 6)
        return {"in_distribution": self.inside, "in_distribution_score": score}

    def sentence(self) -> str:
        if self.inside is None:
            return "This model has no in-distribution check (trained before it existed)."
        if self.inside:
            return f"It is like the training images (in-distribution score {self.score:.2f})."
        return (
            f"The image is unlike every image the model was trained on (in-distribution score "
            f"{self.score:.2f}, below the calibrated cut-off), so its call is not reliable."
        )


#: The check of a model without statistics.
UNKNOWN = InDistribution()


def synthesis8_verdict(
    is_fake: bool,
    fake_probability: float,
    check: InDistribution = UNKNOWN,
    grey_zone: tuple[float, float] = NO_GREY_ZONE,
) -> tuple[str, str]:
    """``(verdict, reason)``: ``uncertain`` when out of distribution or when P(fake) lies strictly
    inside the grey zone; else the model's call (``fake`` / ``real``)."""
    low, high = grey_zone
    call = "fake" if is_fake else "real"
    p = f"P(fake) {fake_probability:.2f}"
    if check.inside is False:
        return "uncertain", f"{check.sentence()} The model alone would say {call} ({p})."
    if low < fake_probability < high:
        return "uncertain", (
            f"{p} lies in the grey zone {low:.2f}-{high:.2f}, where calls on the validation "
            f"images were unreliable. {check.sentence()}"
        )
    return call, f"Called {call} ({p}). {check.sentence()}"


def density_verdict(is_manipulated: bool, check: InDistribution = UNKNOWN) -> str:
    """``uncertain`` when the image is out of distribution, else the model's call."""
    if check.inside is False:
        return "uncertain"
    return "manipulated" if is_manipulated else "untouched"
