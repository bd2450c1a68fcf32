import numpy as np
import pytest

from medfakedet import labels


def test_paper_class_order():
    assert labels.CLASS_NAMES == (
        "brain_real",
        "brain_fake",
        "chest_real",
        "chest_fake",
        "kidney_real",
        "kidney_fake",
        "lung_real",
        "lung_fake",
    )


@pytest.mark.parametrize(
    ("organ", "fake", "idx"), [("brain", False, 0), ("chest", True, 3), ("lung", True, 7)]
)
def test_class_index_round_trip(organ, fake, idx):
    assert labels.class_index(organ, fake) == idx
    assert labels.organ_of(idx) == organ
    assert labels.organ_of(labels.CLASS_NAMES[idx]) == organ
    assert labels.is_fake_class(idx) is fake


def test_unknown_names_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown organ 'liver'"):
        labels.class_index("liver", False)
    with pytest.raises(ValueError, match="out of range"):
        labels.organ_of(8)
    with pytest.raises(ValueError, match="unknown class name"):
        labels.is_fake_class("brain")


def test_fake_and_organ_probabilities():
    probs = np.array(
        [
            [0.1, 0.2, 0.05, 0.05, 0.3, 0.1, 0.1, 0.1],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.75],
        ]
    )
    np.testing.assert_allclose(labels.fake_probability(probs), [0.45, 0.75])
    np.testing.assert_allclose(
        labels.organ_probabilities(probs), [[0.3, 0.1, 0.4, 0.2], [0, 0, 0, 1.0]]
    )
    with pytest.raises(ValueError, match="last axis 8"):
        labels.fake_probability(np.ones((2, 4)))
