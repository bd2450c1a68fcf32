"""The in-distribution check: Ledoit-Wolf against scikit-learn, the Mahalanobis score on seeded
Gaussian features (in-distribution vs shifted), the 95% calibration on held-out samples, the
grey zones (symmetric, and budgeted by false-"fake" and uncertain shares), the features both
models expose, and artifacts with and without the statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf
from torch.utils.data import DataLoader

from medfakedet.artifacts import ArtifactError, load_artifact, save_artifact
from medfakedet.imaging import decode_image, encode_png
from medfakedet.models import build_classifier, build_localizer
from medfakedet.ood import (
    LayerStatistics,
    OODStatistics,
    captured_features,
    ledoit_wolf,
    model_features,
)
from medfakedet.predictors import DensityPredictor, Synthesis8Predictor
from medfakedet.preprocess import CLASSIFIER_PREPROCESS, LOCALIZER_PREPROCESS
from medfakedet.schema import RESULT_MODELS
from training.abstention import budgeted_grey_zone, grey_high_interval
from training.calibration import grey_zone
from training.evaluate import open_dataset

DIM = 64


def gaussian_groups(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple:
    """``n`` samples of each of 4 groups with correlated, anisotropic noise around their means."""
    means = np.stack([np.eye(DIM)[k] * 6.0 for k in range(4)])
    mix = np.random.default_rng(7).normal(size=(DIM, DIM)) / np.sqrt(DIM)  # fixed correlation
    groups = np.repeat(np.arange(4), n)
    x = means[groups] + rng.normal(size=(4 * n, DIM)) @ mix * np.linspace(0.3, 2.0, DIM) + shift
    return x, groups


@pytest.mark.parametrize(("n", "d"), [(40, 100), (500, 20), (30, 512)])
def test_ledoit_wolf_matches_scikit_learn(n, d):
    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d)
    x -= x.mean(axis=0)
    ours, shrinkage = ledoit_wolf(x)
    theirs, expected = sklearn_ledoit_wolf(x, assume_centered=True)
    assert shrinkage == pytest.approx(expected, abs=1e-12)
    assert 0.0 < shrinkage < 1.0
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def one_layer(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"f": x}


def test_threshold_keeps_95_percent_of_held_out_in_distribution_and_rejects_shifted():
    rng = np.random.default_rng(0)
    train, groups = gaussian_groups(rng, 100)  # 400 training rows for 64 dims
    val, _ = gaussian_groups(rng, 100)
    stats = OODStatistics.fit(one_layer(train), groups, one_layer(val))
    assert stats.coverage >= 0.95
    held_out, _ = gaussian_groups(rng, 500)
    inside, scores = stats.check(one_layer(held_out))
    # Measured 0.94x (2,000 held-out rows); the calibration target is 0.95 on val.
    assert inside.mean() >= 0.93
    shifted, _ = gaussian_groups(rng, 500, shift=1.0)
    # Measured 0.000 in: a shift of 1 in every feature is far in Mahalanobis terms.
    out, out_scores = stats.check(one_layer(shifted))
    assert out.mean() <= 0.02
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    assert np.median(scores) == pytest.approx(0.5, abs=0.06)
    assert out_scores.max() == 0.0  # further than every validation image
    assert (inside == (scores > 0.05)).mean() >= 0.99  # the cut-off sits near score 0.05


def test_the_combined_score_flags_a_shift_seen_by_one_layer_only():
    rng = np.random.default_rng(3)
    train, groups = gaussian_groups(rng, 100)
    val, _ = gaussian_groups(rng, 100)
    noise = {"a": train, "b": rng.normal(size=(400, 8))}
    stats = OODStatistics.fit(noise, groups, {"a": val, "b": rng.normal(size=(400, 8))})
    held_out, _ = gaussian_groups(rng, 200)
    normal = {"a": held_out, "b": rng.normal(size=(800, 8))}
    assert stats.check(normal)[0].mean() >= 0.92
    odd = {"a": held_out, "b": rng.normal(size=(800, 8)) + 3.0}  # only layer b moved
    assert stats.check(odd)[0].mean() <= 0.02


def test_group_means_matter():
    """A sample at another group's mean is in; halfway between two groups it is out."""
    rng = np.random.default_rng(1)
    train, groups = gaussian_groups(rng, 100)
    stats = OODStatistics.fit(one_layer(train), groups, one_layer(gaussian_groups(rng, 50)[0]))
    assert stats.layers["f"].means.shape == (4, DIM)
    centres = np.stack([np.eye(DIM)[k] * 6.0 for k in range(4)])
    assert stats.check(one_layer(centres))[0].all()
    between = (centres[0] + centres[1]) / 2
    assert not stats.check(one_layer(between[None]))[0][0]
    single = LayerStatistics.fit(train, None, gaussian_groups(rng, 50)[0])  # one pooled group
    assert single.means.shape == (1, DIM)


def test_fit_refuses_bad_input():
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="coverage must be in"):
        OODStatistics.fit(one_layer(x), None, one_layer(x), coverage=0.0)
    with pytest.raises(ValueError, match="10 feature rows but 3 group ids"):
        LayerStatistics.fit(x, [0, 1, 2], x)
    stats = LayerStatistics.fit(np.random.default_rng(0).normal(size=(10, 4)), None, x)
    with pytest.raises(ValueError, match=r"expected \(N, 4\) features"):
        stats.distance(np.zeros((2, 5)))


def test_grey_zone_is_empty_for_a_confident_model_and_covers_the_muddle():
    rng = np.random.default_rng(0)
    labels = np.repeat([False, True], 200)
    confident = np.where(labels, 0.97, 0.03) + rng.uniform(-0.02, 0.02, 400)
    assert grey_zone(confident, confident > 0.5, labels) == (0.5, 0.5)
    # Wrong calls only between 0.4 and 0.6: the band grows until they are all inside it.
    muddled = confident.copy()
    muddled[:10] = rng.uniform(0.52, 0.58, 10)  # reals called fake
    muddled[200:210] = rng.uniform(0.42, 0.48, 10)  # fakes called real
    wrong = (muddled > 0.5) != labels
    low, high = grey_zone(muddled, muddled > 0.5, labels, target_accuracy=1.0)
    assert (low, high) == (0.4, 0.6)  # the narrowest band holding every wrong call
    assert ((muddled[wrong] > low) & (muddled[wrong] < high)).all()
    # 0.99 lets 4 of the 400 calls outside be wrong: a narrower band.
    assert grey_zone(muddled, muddled > 0.5, labels, target_accuracy=0.99) == (0.425, 0.575)
    # Never more than max_share of the images inside.
    coin = rng.uniform(0.0, 1.0, 400)
    low, high = grey_zone(coin, coin > 0.5, labels, max_share=0.2)
    assert ((coin > low) & (coin < high)).mean() <= 0.2 and high > 0.5


def test_budgeted_grey_zone_holds_the_false_fake_target_within_the_uncertain_budget():
    rng = np.random.default_rng(1)
    fake = np.repeat([False, True], 500)
    inside = np.ones(1000, dtype=bool)
    # Reals mostly near 0, 4% called fake at 0.6-0.7; fakes near 1, 3% called real at 0.3-0.4.
    p = np.where(fake, rng.uniform(0.85, 1.0, 1000), rng.uniform(0.0, 0.15, 1000))
    p[:20] = rng.uniform(0.6, 0.7, 20)
    p[500:515] = rng.uniform(0.3, 0.4, 15)
    low, high = budgeted_grey_zone(p, p > 0.5, fake, inside, max_false_fake=0.01, max_uncertain=0.1)
    answered_fake = inside & (p > 0.5) & (p >= high)
    uncertain = (p > low) & (p < high)
    assert low <= 0.5 < high and answered_fake[~fake].mean() <= 0.01
    assert uncertain.mean() <= 0.1 and (low, high) == (0.355, 0.675)
    # Out-of-distribution answers spend the same budget: with 9.5% out (fakes), the band may
    # hold 0.5% only, and the false-"fake" target is missed (the budget wins; reports say so).
    inside[520 + rng.permutation(480)[:95]] = False
    low, high = budgeted_grey_zone(p, p > 0.5, fake, inside, max_false_fake=0.01, max_uncertain=0.1)
    assert (~inside | ((p > low) & (p < high))).mean() <= 0.1
    assert (inside & (p > 0.5) & (p >= high))[~fake].mean() > 0.01
    # A confident model needs no band at all.
    clear = np.where(fake, 0.99, 0.01)
    assert budgeted_grey_zone(clear, clear > 0.5, fake, np.ones(1000, bool)) == (0.5, 0.5)
    with pytest.raises(ValueError, match="same non-zero number"):
        budgeted_grey_zone(p, p > 0.5, fake[:10], inside)


def test_grey_high_interval_is_wide_when_few_reals_set_the_bound():
    """The upper bound is the P(fake) that 1% of the reals exceed: with 60 val reals (two
    views each) a few images set it, and resampling them moves it; with 3,000 it holds."""

    def answers(n_real: int, seed: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng(seed)
        clean = rng.normal(-2.5, 1.5, n_real)  # the reals' logit P(fake): 1% above about 0.73
        views = [
            np.r_[clean, np.full(20, 5.0)],
            np.r_[clean + rng.normal(0, 0.3, n_real), 5.0 * np.ones(20)],
        ]
        p = 1 / (1 + np.exp(-np.concatenate(views)))  # each image's clean view, then degraded
        fake = np.tile(np.arange(n_real + 20) >= n_real, 2)
        return p, p > 0.5, fake, np.ones(len(p), dtype=bool)

    few = grey_high_interval(*answers(60, 0), 2, 0.01, 0.5)
    many = grey_high_interval(*answers(3000, 0), 2, 0.01, 0.5)
    assert 0.5 <= few[0] <= few[1] and 0.5 <= many[0] <= many[1]
    assert few[1] - few[0] > 2 * (many[1] - many[0])
    assert few[1] - few[0] > 0.1
    with pytest.raises(ValueError, match="views"):
        grey_high_interval(*answers(60, 0), 3, 0.01, 0.5)  # 160 answers are not 3 views


@pytest.mark.parametrize(
    ("model", "x", "dims"),
    [
        (build_classifier, torch.rand(3, 3, 64, 64), {"layer1": 64, "layer4": 512}),
        (build_localizer, torch.rand(3, 1, 32, 32), {"enc1": 32, "bottleneck": 128}),
        (
            lambda: build_localizer("smp_unet:resnet18"),
            torch.rand(3, 1, 64, 64),
            {"encoder1": 64, "encoder5": 512},
        ),
    ],
)
def test_features_are_averaged_activations_at_several_depths(model, x, dims):
    torch.manual_seed(0)
    m = model().eval()
    with captured_features(m) as found:
        m(x)
    for name, dim in dims.items():
        assert [tuple(f.shape) for f in found[name]] == [(3, dim)]
    batched = model_features(m, [x[:2], x[2:]], torch.device("cpu"))
    assert set(batched) == set(found)
    for name, feats in batched.items():
        assert feats.dtype == np.float64
        # float32 through a deep encoder, in batches of 2 and 1 against one batch of 3: oneDNN
        # may pick other kernels per batch size, and CI saw 1.3e-6 apart at encoder5 (~0.02).
        expected = found[name][0].double().numpy()
        np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)
    if hasattr(m, "fc"):  # layer4's average is the penultimate feature: exactly what fc sees
        with torch.no_grad():
            logits = m(x)
        np.testing.assert_allclose(
            m.fc(found["layer4"][0]).detach().numpy(), logits.numpy(), rtol=1e-4, atol=1e-5
        )


def fitted(model: torch.nn.Module, train: torch.Tensor, val: torch.Tensor) -> OODStatistics:
    """Statistics of the model's own features of ``train`` (one group), threshold on ``val``."""
    cpu = torch.device("cpu")
    return OODStatistics.fit(
        model_features(model, [train], cpu), None, model_features(model, [val], cpu)
    )


def ramp_png(seed: int, size: int = 96) -> bytes:
    """A smooth ramp of random contrast and offset with a little noise: one image family."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0.0, 1.0, size * size).reshape(size, size)
    ramp = base * rng.uniform(0.4, 0.8) + rng.uniform(0.0, 0.2) + rng.normal(0, 0.02, base.shape)
    return encode_png(np.clip(ramp, 0, 1).astype(np.float32))


def noise_png(seed: int, size: int = 96) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_png(rng.uniform(0, 1, (size, size)).astype(np.float32))


@pytest.mark.parametrize("task", ["synthesis8", "manipulation_density"])
def test_artifact_round_trip_with_and_without_statistics(tmp_path, task):
    torch.manual_seed(0)
    if task == "synthesis8":
        model, arch, pre = build_classifier().eval(), "resnet18", CLASSIFIER_PREPROCESS
        predictor_cls = Synthesis8Predictor
        cal = {"temperature": 1.5, "grey_low": 0.45, "grey_high": 0.55}
    else:
        model, arch, pre = build_localizer().eval(), "unet_density", LOCALIZER_PREPROCESS
        predictor_cls = DensityPredictor
        cal = {}
    old_cal = {k: v for k, v in cal.items() if not k.startswith("grey")}  # before grey zones
    plain = save_artifact(
        tmp_path / "plain", model, task=task, arch=arch, preprocess=pre, calibration=old_cal
    )
    # Statistics from the model's own features of smooth ramps: ramps are in, noise is out.
    probe = predictor_cls.from_artifact(plain)
    ramps = probe._inputs([decode_image(ramp_png(s)) for s in range(64)])
    stats = fitted(model, ramps[:40], ramps[40:])
    with_ood = save_artifact(
        tmp_path / "ood", model, task=task, arch=arch, preprocess=pre, calibration=cal, ood=stats
    )
    meta = json.loads((with_ood / "artifact.json").read_text())
    assert meta["calibration"]["ood_threshold"] == stats.threshold
    art = load_artifact(with_ood)
    assert set(art.ood.layers) == set(stats.layers) and len(stats.layers) >= 3
    for name, layer in stats.layers.items():
        for key in ("means", "precision", "reference"):
            np.testing.assert_array_equal(getattr(art.ood.layers[name], key), getattr(layer, key))
    np.testing.assert_array_equal(art.ood.reference, stats.reference)
    assert art.ood.threshold == stats.threshold
    assert load_artifact(plain).ood is None  # an older artifact loads and never abstains

    uploads = [ramp_png(100), noise_png(1)]
    old = predictor_cls.from_artifact(plain).predict(uploads)
    new = predictor_cls.from_artifact(with_ood).predict(uploads)
    for body in (*old, *new):
        RESULT_MODELS[task].model_validate(body)
    assert [b["in_distribution"] for b in old] == [None, None]
    assert "uncertain" not in [b["verdict"] for b in old]
    assert [b["in_distribution"] for b in new] == [True, False]
    assert new[1]["verdict"] == "uncertain" and new[1]["in_distribution_score"] == 0.0
    assert new[0]["in_distribution_score"] > 0.05
    # The paper's fields are the same with and without the check.
    for key in ("is_fake", "fake_probability", "class_name", "is_manipulated", "presence_score"):
        if key in old[0]:
            assert [b[key] for b in old] == [b[key] for b in new]
    if task == "manipulation_density":
        assert new[1]["count"] == 0 and new[1]["boxes"] == []
    else:
        explained = Synthesis8Predictor.from_artifact(with_ood).explain(uploads)
        assert [e["verdict"] for e in explained] == [new[0]["verdict"], "uncertain"]
        assert explained[0]["in_distribution_score"] == pytest.approx(
            new[0]["in_distribution_score"], abs=0.05
        )


def test_statistics_without_threshold_are_refused(tmp_path):
    torch.manual_seed(0)
    model = build_localizer().eval()
    stats = fitted(model, torch.rand(8, 1, 32, 32), torch.rand(4, 1, 32, 32))
    out = save_artifact(
        tmp_path / "a",
        model,
        task="manipulation_density",
        arch="unet_density",
        preprocess=LOCALIZER_PREPROCESS,
        ood=stats,
    )
    meta = json.loads((out / "artifact.json").read_text())
    del meta["calibration"]["ood_threshold"]
    (out / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="in-distribution statistics without ood_threshold"):
        load_artifact(out)


# ------------------------------------------------ the phantom-trained models (issue #10 point 3)
REAL_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-dev"
#: Measured on models built and trained as the session's (tests/conftest.py: the same build,
#: the quick presets): test split in 0.950 (synthesis8, 120 images; calibrated to 0.958 on val)
#: and 1.000 (localizer); uncertain on all 1,029 real-dev scans 0.974 (synthesis8: 17 fake, 10
#: real) and on its 397 brain MRI 1.000 (localizer). The real-dev floors are the issue's 90%.
FLOORS = {
    "synthesis8_test_in": 0.925,
    "localizer_test_in": 0.95,
    "synthesis8_real_dev_uncertain": 0.90,
    "localizer_real_dev_uncertain": 0.90,
}


def split_in_distribution_share(artifact_dir: Path, data: Path) -> float:
    """Share of the test split of ``data`` that the artifact's check counts as in."""
    art = load_artifact(artifact_dir)
    dataset, _ = open_dataset(art, data, "test")
    images = (b[0] if isinstance(b, list | tuple) else b["image"] for b in DataLoader(dataset, 64))
    inside, _ = art.ood.check(model_features(art.model, images, torch.device("cpu")))
    return float(np.mean(inside))


def test_phantom_trained_models_count_their_own_test_split_in(trained_artifacts):
    """Images like the training images are in: the test split (see FLOORS)."""
    data = trained_artifacts["data"]
    for task, key in (("synthesis8", "synthesis8"), ("manipulation_density", "localizer")):
        meta = json.loads((trained_artifacts[task] / "artifact.json").read_text())
        assert meta["metrics"]["val"]["in_distribution_share"] >= 0.95
        share = split_in_distribution_share(trained_artifacts[task], data)
        assert share >= FLOORS[f"{key}_test_in"], (task, share)


@pytest.mark.skipif(not REAL_DEV.is_dir(), reason="../shared/data/real-dev is absent")
def test_phantom_trained_models_answer_uncertain_on_real_scans(trained_artifacts):
    """Models trained on the embedded phantoms must not call real scans fake or manipulated
    (issue #10: uncertain for at least 90% of real-dev). Every third scan, to stay quick."""
    files = sorted(p for p in REAL_DEV.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    files = files[::3]
    brains = [p for p in files if p.relative_to(REAL_DEV).parts[0] == "brain"]
    clf = Synthesis8Predictor.from_artifact(trained_artifacts["synthesis8"])
    loc = DensityPredictor.from_artifact(trained_artifacts["manipulation_density"])
    for predictor, paths, key in ((clf, files, "synthesis8"), (loc, brains, "localizer")):
        answers = [r for i in range(0, len(paths), 32) for r in predictor.predict(
            [p.read_bytes() for p in paths[i : i + 32]]
        )]  # fmt: skip
        verdicts = [r["verdict"] for r in answers if isinstance(r, dict)]
        assert len(verdicts) >= 0.99 * len(paths)
        uncertain = verdicts.count("uncertain") / len(verdicts)
        assert uncertain >= FLOORS[f"{key}_real_dev_uncertain"], (key, uncertain)
