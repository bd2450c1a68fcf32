import json

import pytest
import torch

from medfakedet.artifacts import ArtifactError, load_artifact, read_meta, save_artifact
from medfakedet.models import build_classifier, build_localizer
from medfakedet.preprocess import CLASSIFIER_PREPROCESS, LOCALIZER_PREPROCESS


def test_classifier_shape():
    torch.manual_seed(0)
    m = build_classifier().eval()
    assert m(torch.zeros(2, 3, 128, 128)).shape == (2, 8)


@pytest.mark.parametrize("arch", ["unet_density", "smp_unet:resnet18"])
def test_localizer_outputs_density_and_mask(arch):
    torch.manual_seed(0)
    m = build_localizer(arch).eval()
    with torch.no_grad():
        density, mask_logits = m(torch.rand(2, 1, 128, 128))
    assert density.shape == mask_logits.shape == (2, 1, 128, 128)
    assert density.min().item() >= 0.0 and density.max().item() <= 1.0


def test_localizer_errors_say_how_to_fix():
    with pytest.raises(ValueError, match=r"divisible by 4, got \(30, 30\); resize or pad"):
        build_localizer()(torch.zeros(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"divisible by 32, got \(68, 68\); resize or pad"):
        build_localizer("smp_unet:resnet18")(torch.zeros(1, 1, 68, 68))
    with pytest.raises(ValueError, match="unknown localizer arch"):
        build_localizer("yolo")


def test_artifact_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_classifier().eval()
    x = torch.rand(3, 3, 128, 128)
    with torch.no_grad():
        expected = model(x)
    save_artifact(
        tmp_path / "a",
        model,
        task="synthesis8",
        arch="resnet18",
        preprocess=CLASSIFIER_PREPROCESS,
        calibration={"temperature": 1.7},
        metrics={"macro_f1": 0.5},
        training={"epochs": 1},
        version="2.3",
    )
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "artifact.json",
        "model.safetensors",
    ]
    art = load_artifact(tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(art.model(x), expected)
    assert art.calibration == {"temperature": 1.7}
    assert art.preprocess == CLASSIFIER_PREPROCESS
    assert art.version == "2.3" and art.class_names[1] == "brain_fake"
    assert not art.model.training


def test_localizer_artifact_defaults_to_paper_calibration(tmp_path):
    torch.manual_seed(0)
    save_artifact(
        tmp_path,
        build_localizer(),
        task="manipulation_density",
        arch="unet_density",
        preprocess=LOCALIZER_PREPROCESS,
    )
    cal = load_artifact(tmp_path).calibration
    assert cal == {"presence_threshold": 0.28, "box_threshold": 0.28, "min_area": 20}


def test_mismatched_weights_fail_loudly(tmp_path):
    # weights of a 4-class head under an artifact.json that says 8 classes
    save_artifact(
        tmp_path,
        build_classifier(num_classes=4),
        task="synthesis8",
        arch="resnet18",
        preprocess=CLASSIFIER_PREPROCESS,
    )
    with pytest.raises(ArtifactError, match=r"fc\.weight has shape \(4, 512\).*expects \(8, 512\)"):
        load_artifact(tmp_path)


def test_wrong_arch_weights_fail_loudly(tmp_path):
    save_artifact(
        tmp_path,
        build_localizer("unet_density"),
        task="manipulation_density",
        arch="unet_density",
        preprocess=LOCALIZER_PREPROCESS,
    )
    meta = json.loads((tmp_path / "artifact.json").read_text())
    meta["arch"] = "smp_unet:resnet18"
    (tmp_path / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="missing tensors.*unexpected tensors"):
        load_artifact(tmp_path)


def test_bad_metadata_is_reported(tmp_path):
    with pytest.raises(ArtifactError, match="artifact.json not found"):
        read_meta(tmp_path)
    (tmp_path / "artifact.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_meta(tmp_path)
    with pytest.raises(ArtifactError, match="temperature must be > 0"):
        save_artifact(
            tmp_path,
            build_classifier(),
            task="synthesis8",
            arch="resnet18",
            preprocess=CLASSIFIER_PREPROCESS,
            calibration={"temperature": 0.0},
        )
