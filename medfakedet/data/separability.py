"""How far blur and noise alone tell a build's fakes from its reals, per organ and approach.

Each image (read back from the build, after its encode, decoded and resized as the models see
it) is reduced to low-level statistics only: Laplacian variance, the share of spectral energy
above 1/4 and 1/2 of the Nyquist frequency, a noise sigma (MAD of a high-pass), and the mean,
spread and 90th percentile of the gradient magnitude. A cross-validated logistic regression on
these separates the reals of an organ from one approach's fakes; its ROC-AUC is the
separability (0.5: blur and noise give nothing away; 1.0: they give everything away).

``python -m medfakedet.data separability BUILD`` prints the table.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medfakedet.imaging import load_image_file, to_uint8
from medfakedet.preprocess import resize_tensor, to_channels, to_tensor

FEATURES = (
    "log_laplacian_var",
    "hf_share_quarter",
    "hf_share_half",
    "log_noise_sigma",
    "grad_mean",
    "grad_std",
    "grad_p90",
)


def lowlevel_features(image: np.ndarray) -> np.ndarray:
    """The :data:`FEATURES` of a uint8 (H, W) image."""
    x = np.asarray(image, dtype=np.float64) / 255.0
    lap = (
        x[1:-1, :-2] + x[1:-1, 2:] + x[:-2, 1:-1] + x[2:, 1:-1] - 4 * x[1:-1, 1:-1]
    )  # 4-neighbour Laplacian
    power = np.abs(np.fft.fft2(x - x.mean())) ** 2
    fy = np.abs(np.fft.fftfreq(x.shape[0]))[:, None]
    fx = np.abs(np.fft.fftfreq(x.shape[1]))[None, :]
    radius = np.maximum(fy, fx) / 0.5  # 1 = Nyquist
    total = power.sum() + 1e-12
    noise = 1.4826 * np.median(np.abs(lap - np.median(lap))) / np.sqrt(20.0)
    gy, gx = np.gradient(x)
    grad = np.hypot(gy, gx)
    return np.array(
        [
            np.log(lap.var() + 1e-10),
            power[radius > 0.25].sum() / total,
            power[radius > 0.5].sum() / total,
            np.log(noise + 1e-6),
            grad.mean(),
            grad.std(),
            np.quantile(grad, 0.9),
        ]
    )


def load_as_model_sees(path: Path, size: int) -> np.ndarray:
    """A built image decoded (16-bit PNGs scaled by 65535), gray, resized to ``size``, uint8."""
    t = resize_tensor(to_channels(to_tensor(load_image_file(path).pixels), 1), size)
    return to_uint8(t[0].numpy())


def cv_auc(features: np.ndarray, labels: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """ROC-AUC of a standardised logistic regression, out of fold (stratified ``folds``-fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(folds, np.bincount(labels).min()))
    if folds < 2:
        raise ValueError("need at least 2 images of each class to cross-validate")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(model, features, labels, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(labels, proba))


def separability(build: str | Path, size: int = 128, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{organ: {approach: AUC}}`` for the MedFake part of ``build`` (a build's --out or its
    ``medfake/`` folder), reals of the organ against each approach's fakes."""
    root = Path(build)
    if (root / "medfake").is_dir():
        root = root / "medfake"
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: pass a build's --out or its medfake/")
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    feats = {r["path"]: lowlevel_features(load_as_model_sees(root / r["path"], size)) for r in rows}
    out: dict[str, dict[str, float]] = {}
    for organ in sorted({r["organ"] for r in rows}):
        reals = [feats[r["path"]] for r in rows if r["organ"] == organ and r["label"] == "real"]
        fakes = [r for r in rows if r["organ"] == organ and r["label"] == "fake"]
        for approach in sorted({r["approach"] for r in fakes}):
            chosen = [feats[r["path"]] for r in fakes if r["approach"] == approach]
            x = np.array(reals + chosen)
            y = np.array([0] * len(reals) + [1] * len(chosen))
            out.setdefault(organ, {})[approach] = cv_auc(x, y, seed)
    return out


def format_table(aucs: dict[str, dict[str, float]]) -> str:
    """A Markdown table, organs as rows, approaches as columns, plus their mean."""
    approaches = sorted({a for row in aucs.values() for a in row})
    lines = [
        "| organ | " + " | ".join(approaches) + " |",
        "|---|" + "---|" * len(approaches),
    ]
    for organ, row in aucs.items():
        lines.append(
            f"| {organ} | "
            + " | ".join(f"{row[a]:.3f}" if a in row else "-" for a in approaches)
            + " |"
        )
    means = [np.mean([r[a] for r in aucs.values() if a in r]) for a in approaches]
    lines.append("| mean | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    return "\n".join(lines)
