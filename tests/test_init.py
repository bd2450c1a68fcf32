"""The trainers' ``--init scratch|imagenet|PATH`` (medfakedet.pretrained), offline.

``imagenet`` is read from a temporary TORCH_HOME holding a seeded random torchvision ResNet18
state dict under torchvision's real file name; every network access raises.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from medfakedet.artifacts import load_artifact
from medfakedet.models import build_classifier, build_localizer
from medfakedet.pretrained import (
    InitError,
    imagenet_weights_file,
    init_problem,
    initialize,
    load_state_dict_file,
)

RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download or socket connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME; its checkpoint folder is ``hub/checkpoints``."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def imagenet_file(torch_home: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A seeded random torchvision ResNet18 (1000 classes) saved where torchvision caches it."""
    torch.manual_seed(7)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = torch_home / "hub" / "checkpoints" / RESNET18_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path, state


def test_imagenet_path_honours_torch_home(torch_home: Path) -> None:
    path, url = imagenet_weights_file("resnet18")
    assert path == torch_home / "hub" / "checkpoints" / RESNET18_FILE
    assert url == RESNET18_URL


def test_missing_imagenet_weights_say_how_to_get_them(torch_home: Path) -> None:
    folder = torch_home / "hub" / "checkpoints"
    problem = init_problem("imagenet", "resnet18")
    for needle in (RESNET18_FILE, RESNET18_URL, str(folder), "--init scratch"):
        assert needle in problem
    with pytest.raises(InitError) as err:
        initialize(build_classifier(), "imagenet", "resnet18")
    assert str(err.value) == problem


def test_missing_imagenet_weights_stop_the_trainer_cli(
    torch_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from training.train_synthesis8 import parse_args

    argv = ["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--init", "imagenet"]
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert RESNET18_URL in err and "--init scratch works offline" in err


def test_imagenet_init_loads_the_cached_file_and_replaces_the_head(
    imagenet_file: tuple[Path, dict], capsys: pytest.CaptureFixture
) -> None:
    path, state = imagenet_file
    model = build_classifier()
    record = initialize(model, "imagenet", "resnet18")
    got = model.state_dict()
    same = [k for k in state if not k.startswith("fc.") and torch.equal(got[k], state[k])]
    assert len(same) == len(state) - 2  # every tensor but the 1000-class head
    assert got["fc.weight"].shape == (8, 512)
    assert record["init"] == "imagenet" and record["file"] == str(path)
    assert record["url"] == RESNET18_URL and record["into"] == "model"
    assert record["tensors"] == len(state) - 2
    assert record["adapted"] == ["classification head fc replaced (1000 -> 8 classes)"]
    # A seeded random file is not torchvision's: the hash in its name says so.
    assert "not torchvision's own ImageNet weights" in capsys.readouterr().err


def test_imagenet_encoder_of_smp_localizer_gets_one_input_channel(
    imagenet_file: tuple[Path, dict],
) -> None:
    _, state = imagenet_file
    model = build_localizer("smp_unet:resnet18")
    decoder_before = {k: v.clone() for k, v in model.net.decoder.state_dict().items()}
    record = initialize(model, "imagenet", "smp_unet:resnet18")
    enc = model.net.encoder.state_dict()
    assert torch.allclose(enc["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(enc["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])
    dec = model.net.decoder.state_dict()
    assert all(torch.equal(dec[k], v) for k, v in decoder_before.items())
    assert record["into"] == "encoder"
    assert "first conv conv1.weight adapted from 3 to 1 channels" in record["adapted"]


def test_unet_density_has_no_imagenet_weights(imagenet_file: tuple[Path, dict]) -> None:
    from training.train_localizer import LocalizerConfig

    with pytest.raises(ValueError, match="UNetDensity has no pretrained weights") as err:
        LocalizerConfig(init="imagenet").validate()
    assert "smp_unet:resnet18 --init imagenet" in str(err.value)
    with pytest.raises(InitError, match="no pretrained weights"):
        initialize(build_localizer("unet_density"), "imagenet", "unet_density")
    LocalizerConfig(init="imagenet", arch="smp_unet:resnet18").validate()  # the file is there


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt"])
def test_path_init_loads_a_state_dict_file(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(3)
    source = build_classifier().state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.items()}, path)
    else:  # a training checkpoint wrapping the state dict, saved from DataParallel
        torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}}, path)
    model = build_classifier()
    record = initialize(model, str(path), "resnet18")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())
    assert record["init"] == "file" and record["tensors"] == len(source)
    assert record["adapted"] == [] and len(record["sha256"]) == 64


def test_path_init_refuses_tensors_that_do_not_fit(tmp_path: Path) -> None:
    resnet34 = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), resnet34)
    with pytest.raises(InitError) as err:
        initialize(build_classifier(), str(resnet34), "resnet18")
    msg = str(err.value)
    assert "unexpected (layer1.2.conv1.weight" in msg  # resnet34 has 3 blocks in layer1
    assert "and " in msg and " more" in msg  # the long list is counted, not dumped

    state = build_classifier().state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 32, 3, 3)
    del state["layer4.1.bn2.bias"]
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, bad)
    with pytest.raises(InitError) as err:
        initialize(build_classifier(), str(bad), "resnet18")
    msg = str(err.value)
    assert "layer2.0.conv1.weight (128, 32, 3, 3) vs (128, 64, 3, 3)" in msg
    assert "1 missing (layer4.1.bn2.bias)" in msg


def test_path_init_refuses_pickled_objects_and_other_files(tmp_path: Path) -> None:
    pickled = tmp_path / "object.pth"
    torch.save({"weights": torch.zeros(2), "opt": torch.optim.SGD}, pickled)
    with pytest.raises(InitError, match="not a weights-only PyTorch file"):
        load_state_dict_file(pickled)
    assert "state-dict file" in init_problem(str(tmp_path / "weights.onnx"), "resnet18")
    assert "not found" in init_problem(str(tmp_path / "absent.pth"), "resnet18")
    assert init_problem("scratch", "unet_density") is None


@pytest.fixture(scope="module")
def tiny_built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MedFake + MedFakeInpaint with untrained fake generators (seconds to build)."""
    from medfakedet.data.builder import build_datasets

    out = tmp_path_factory.mktemp("tiny_built")
    build_datasets(
        out, per_class=10, inpaint=40, size=64, seed=5, progress=False,
        fake_time_budget_s=0, contact_sheet=False,
    )  # fmt: skip
    return out


def test_training_starts_from_the_imagenet_file_and_records_it(
    imagenet_file: tuple[Path, dict], tiny_built: Path, tmp_path: Path, monkeypatch
) -> None:
    from training.train_synthesis8 import Synthesis8Config, Synthesis8Task, train

    path, state = imagenet_file
    first_step: dict[str, torch.Tensor] = {}
    step = Synthesis8Task.step

    def spy(self, model, batch, precision):
        first_step.setdefault("conv1", model.conv1.weight.detach().cpu().clone())
        return step(self, model, batch, precision)

    monkeypatch.setattr(Synthesis8Task, "step", spy)
    cfg = Synthesis8Config(
        init="imagenet", size=64, epochs=1, batch_size=16, max_train_per_class=2,
        augment=False, bn_recalibration_images=0, num_threads=2,
    )  # fmt: skip
    out = train(cfg, tiny_built, tmp_path / "s8", show_progress=False)
    assert torch.equal(first_step["conv1"], state["conv1.weight"])
    artifact = load_artifact(out)
    assert not torch.equal(artifact.model.conv1.weight, state["conv1.weight"])  # it trained
    init = artifact.training["init"]
    assert init["init"] == "imagenet" and init["file"] == str(path)
    assert artifact.training["config"]["init"] == "imagenet"


def test_localizer_training_records_a_file_init(tiny_built: Path, tmp_path: Path) -> None:
    """A manipulation_density artifact's weights start the next run (epochs=0: kept as is)."""
    from training.train_localizer import LocalizerConfig, train

    torch.manual_seed(11)
    source = build_localizer("unet_density").state_dict()
    path = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in source.items()}, path)
    cfg = LocalizerConfig(init=str(path), size=64, epochs=0, num_threads=2)
    out = train(cfg, tiny_built, tmp_path / "loc", show_progress=False)
    artifact = load_artifact(out)
    weights = artifact.model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in source.items())
    assert artifact.training["init"]["init"] == "file"
    assert artifact.training["init"]["tensors"] == len(source)
