"""Predictors over small random-weight artifacts: schemas, batching, per-item errors, Grad-CAM,
box coordinates, and that the archived package imports without the source tree."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medfakedet.artifacts import ArtifactError, save_artifact
from medfakedet.density import REGION_FEATURES, RegionScorer
from medfakedet.deploy import stage_archive_files
from medfakedet.imaging import decode_image, encode_png
from medfakedet.labels import CLASS_NAMES
from medfakedet.models import build_classifier
from medfakedet.predictors import DensityPredictor, Synthesis8Predictor
from medfakedet.preprocess import CLASSIFIER_PREPROCESS, LOCALIZER_PREPROCESS
from medfakedet.schema import DensityParams, PredictionError


@pytest.fixture(scope="module")
def s8_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_artifact(
        tmp_path_factory.mktemp("s8"),
        build_classifier(),
        task="synthesis8",
        arch="resnet18",
        preprocess=CLASSIFIER_PREPROCESS,
        calibration={"temperature": 2.0},
        version="7.1",
    )


@pytest.fixture(scope="module")
def density_dir(tmp_path_factory):
    """A localizer whose density is sigmoid(40 (x - 0.5)): bright pixels are 'manipulated'."""
    spec = importlib.util.spec_from_file_location(
        "serving_conftest", Path(__file__).parent / "integration" / "conftest.py"
    )
    helpers = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = helpers  # its dataclasses look their module up
    spec.loader.exec_module(helpers)
    return save_artifact(
        tmp_path_factory.mktemp("md"),
        helpers.bright_region_localizer(),
        task="manipulation_density",
        arch="unet_density",
        preprocess=LOCALIZER_PREPROCESS,
        calibration={"presence_threshold": 0.5, "box_threshold": 0.28, "min_area": 20},
        version="3.0",
    )


def rect_png(size: int, box: tuple[int, int, int, int]) -> bytes:
    img = np.full((size, size), 0.1, np.float32)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 0.9
    return encode_png(img)


def test_synthesis8_batch_schema_errors_and_temperature(s8_dir):
    p = Synthesis8Predictor.from_artifact(s8_dir)
    rng = np.random.default_rng(0)
    good = [encode_png(rng.random((50 + 10 * i, 70), dtype=np.float32)) for i in range(3)]
    results = p.predict([good[0], b"", good[1], b"not an image", good[2]])
    assert [type(r).__name__ for r in results] == ["dict", "PredictionError"] * 2 + ["dict"]
    assert results[1].status == 400 and "empty" in results[1].message
    assert results[3].status == 400 and "not a recognised image" in results[3].message
    r = results[0]
    assert list(r["probabilities"]) == list(CLASS_NAMES)
    assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert r["model_version"] == "7.1" and r["class_name"] == CLASS_NAMES[r["class_id"]]
    # batched == one at a time, and the temperature (2.0) is applied
    alone = p.predict([good[2]])[0]
    assert alone["probabilities"] == pytest.approx(results[4]["probabilities"], abs=1e-5)
    x = p._inputs([decode_image(good[0])])
    with torch.no_grad():
        expected = torch.softmax(p.model(x) / 2.0, dim=1)[0].numpy()
    assert list(r["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-5)


def test_gradcam_explanation(s8_dir):
    p = Synthesis8Predictor.from_artifact(s8_dir)
    img = rect_png(96, (10, 10, 50, 60))
    explained, plain = p.answer([img, img], [True, False])
    assert explained["class_id"] == plain["class_id"]
    assert explained["explanation"] == {
        "method": "grad-cam",
        "layer": "layer4",
        "target_class": plain["class_name"],
    }
    heat = Image.open(io.BytesIO(base64.b64decode(explained["heatmap_png"])))
    assert (heat.size, heat.mode) == ((96, 96), "RGB")
    assert "heatmap_png" not in plain
    assert isinstance(p.explain([b""])[0], PredictionError)


def test_density_boxes_in_uploaded_coordinates_with_per_item_params(density_dir):
    p = DensityPredictor.from_artifact(density_dir)
    assert p.defaults == DensityParams(0.28, 20, False) and p.max_area == 128 * 128
    small = rect_png(128, (40, 32, 80, 64))
    large = rect_png(512, (160, 128, 320, 256))
    wide = encode_png(np.kron(decode_image(small).pixels[..., 0], np.ones((1, 3), np.float32)))
    plain = encode_png(np.full((64, 64), 0.2, np.float32))
    results = p.predict(
        [small, large, wide, plain, b"\x89PNG\r\n\x1a\n"],
        [None, DensityParams(0.5, 0, True), None, None, None],
    )
    boxes = [[(b["x1"], b["y1"], b["x2"], b["y2"]) for b in r["boxes"]] for r in results[:4]]
    assert boxes[0] == [(40, 32, 80, 64)]
    assert boxes[1] == [(160, 128, 320, 256)]
    assert boxes[2] == [(120, 32, 240, 64)]  # x scaled by 3, y unchanged
    assert boxes[3] == []
    assert results[0]["is_manipulated"] and not results[3]["is_manipulated"]
    assert "No manipulation detected" in results[3]["message"]
    assert results[1]["threshold"] == 0.5 and results[1]["min_area"] == 0
    assert results[0]["image_size"] == {"width": 128, "height": 128}
    density = Image.open(io.BytesIO(base64.b64decode(results[1]["density_png"])))
    assert (density.size, density.mode) == ((128, 128), "L")
    assert np.asarray(density)[40, 50] == 255 and np.asarray(density)[5, 5] == 0
    assert "density_png" not in results[0]
    assert isinstance(results[4], PredictionError) and results[4].status == 400


def test_min_area_is_counted_on_the_model_grid(density_dir):
    p = DensityPredictor.from_artifact(density_dir)
    tiny = rect_png(512, (0, 0, 16, 16))  # 16x16 px uploaded = 4x4 = 16 model pixels
    assert p.predict([tiny], [DensityParams(0.28, 16, False)])[0]["count"] == 1
    result = p.predict([tiny], [DensityParams(0.28, 17, False)])[0]
    assert result["count"] == 0 and "lower thr or min_area" in result["message"]


def test_a_region_scorer_in_the_calibration_decides_which_regions_are_served(density_dir, tmp_path):
    # The same bright-region localizer, with a scorer that reads only a region's pixel count:
    # on the 128-px grid regions of more than about 200 pixels score over 0.5.
    weights = [0.0] * len(REGION_FEATURES)
    weights[REGION_FEATURES.index("log_area")] = 4.0
    scorer = RegionScorer((0.0,) * 6, (1.0,) * 6, tuple(weights), -4.0 * np.log(200))
    meta = json.loads((density_dir / "artifact.json").read_text())
    meta["calibration"]["region_scorer"] = scorer.to_dict()
    scored_dir = tmp_path / "scored"
    shutil.copytree(density_dir, scored_dir)
    (scored_dir / "artifact.json").write_text(json.dumps(meta))
    img = np.full((128, 128), 0.1, np.float32)
    img[40:72, 30:70] = 0.9  # 1,280 pixels
    img[100:110, 100:110] = 0.9  # 100 pixels: a bright spot, peak as high as the other
    upload = encode_png(img)
    plain, scored = (
        DensityPredictor.from_artifact(d).predict([upload])[0] for d in (density_dir, scored_dir)
    )
    assert plain["count"] == 2 and scored["count"] == 1
    assert [(b["x1"], b["y1"], b["x2"], b["y2"]) for b in scored["boxes"]] == [(30, 40, 70, 72)]
    assert scored["boxes"][0]["score"] == pytest.approx(1 / (1 + (200 / 1280) ** 4), abs=1e-3)
    assert scored["presence_score"] == pytest.approx(scored["boxes"][0]["score"], abs=1e-4)
    assert scored["is_manipulated"] and scored["verdict"] == "manipulated"
    # only the spot: its region scores under the presence threshold (0.5), so no manipulation
    spot = np.full((128, 128), 0.1, np.float32)
    spot[100:110, 100:110] = 0.9
    alone = DensityPredictor.from_artifact(scored_dir).predict([encode_png(spot)])[0]
    assert alone["count"] == 0 and not alone["is_manipulated"]
    assert alone["presence_score"] < 0.5
    meta["calibration"]["region_scorer"] = {**scorer.to_dict(), "weights": [1.0]}
    (scored_dir / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="region_scorer: region scorer weights must be 6"):
        DensityPredictor.from_artifact(scored_dir)


def test_bad_params_and_artifacts(s8_dir, density_dir):
    for bad in (dict(threshold=float("nan")), dict(threshold=1.2), dict(min_area=-1)):
        with pytest.raises(ValueError):
            DensityParams(**bad)
    with pytest.raises(ArtifactError, match="needs a manipulation_density artifact"):
        DensityPredictor.from_artifact(s8_dir)
    with pytest.raises(ValueError, match="2 items but 1 params"):
        DensityPredictor.from_artifact(density_dir).predict([b"", b""], [None])


def test_warmup_runs_on_the_device_runtime_selects(s8_dir, density_dir):
    # TorchServe passes a bare GPU id: the CPU when CUDA is missing, that GPU otherwise
    p = Synthesis8Predictor.from_artifact(s8_dir, "0")
    assert p.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    p.warmup()
    DensityPredictor.from_artifact(density_dir).warmup()


def test_archive_files_import_without_the_source_tree(s8_dir, tmp_path):
    """What goes into the .mar is enough: import it with the editable install switched off."""
    stage = stage_archive_files(s8_dir, tmp_path / "stage")
    code = textwrap.dedent(
        f"""
        import sys
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, {str(stage)!r})
        from medfakedet.predictors import Synthesis8Predictor, package_dirs
        import medfakedet.requests
        p = Synthesis8Predictor.from_artifact({str(stage)!r})
        p.warmup()
        assert package_dirs() == [{str(stage / "medfakedet")!r}], package_dirs()
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_preview_and_model_hash_on_request(s8_dir, density_dir):
    """``preview`` adds the decoded image as a small PNG (a 16-bit PNG that browsers show badly,
    here a ramp over 0..65535); every result carries the weights' sha256."""
    import hashlib

    ramp = np.tile(np.linspace(0, 65535, 600), (300, 1)).astype(np.uint16)  # left to right
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    data = buf.getvalue()
    clf = Synthesis8Predictor.from_artifact(s8_dir)
    sha = hashlib.sha256((Path(s8_dir) / "model.safetensors").read_bytes()).hexdigest()
    plain, previewed, explained = clf.answer([data, data, data], [False, False, True], [0, 1, 1])
    assert "preview_png" not in plain and plain["model_sha256"] == sha
    assert previewed["model_sha256"] == explained["model_sha256"] == sha
    for r in (previewed, explained):
        thumb = Image.open(io.BytesIO(base64.b64decode(r["preview_png"])))
        assert thumb.size == (256, 128)  # the aspect kept, longest side 256
        row = np.asarray(thumb.convert("L"))[64]
        assert row[0] < 10 and row[-1] > 245 and np.all(np.diff(row.astype(int)) >= 0)
    loc = DensityPredictor.from_artifact(density_dir)
    (r,) = loc.predict([data], [DensityParams(preview=True)])
    assert Image.open(io.BytesIO(base64.b64decode(r["preview_png"]))).size == (256, 128)
    assert r["model_sha256"] != sha and len(r["model_sha256"]) == 64
