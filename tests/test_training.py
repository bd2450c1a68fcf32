"""Training for real on the small built set (conftest fixtures), config handling, resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import training.loop
from medfakedet import checkset
from medfakedet.artifacts import load_artifact, read_meta
from medfakedet.metrics import negative_log_likelihood
from medfakedet.preprocess import PreprocessConfig, normalize
from training.calibration import calibrate_localizer
from training.checkpoint import (
    Resumable,
    TrainState,
    load_checkpoint,
    optimizer_from_safetensors,
    optimizer_to_safetensors,
    save_checkpoint,
)
from training.config import CONFIG_DIR, load_yaml_config, parse_set, preset_path
from training.evaluate import open_dataset
from training.inference import predict_localizer, predict_synthesis8
from training.loop import ScheduledLR, refresh_batchnorm, scheduled_lr
from training.task_metrics import compute_localizer_metrics, compute_synthesis8_metrics
from training.train_localizer import (
    LocalizerConfig,
    random_crops,
    total_variation,
)
from training.train_localizer import (
    parse_args as parse_localizer_args,
)
from training.train_localizer import train as train_localizer
from training.train_synthesis8 import Synthesis8Config
from training.train_synthesis8 import parse_args as parse_s8_args
from training.train_synthesis8 import train as train_synthesis8

# ----------------------------------------------------------------------------------------------
# configs


def test_paper_presets_follow_the_paper():
    s8 = load_yaml_config(Synthesis8Config, CONFIG_DIR / "synthesis8.yaml")
    assert (s8.arch, s8.size, s8.lr, s8.batch_size, s8.epochs) == ("resnet18", 128, 1e-4, 32, 15)
    assert s8.split_mode == "paper" and s8.seed == 42 and s8.augment
    loc = load_yaml_config(LocalizerConfig, CONFIG_DIR / "localizer.yaml")
    assert (loc.arch, loc.size, loc.lr, loc.weight_decay) == ("unet_density", 128, 1e-3, 1e-4)
    assert (loc.batch_size, loc.epochs, loc.tv_weight, loc.min_area) == (16, 100, 0.05, 20)
    assert loc.crop_size is None and loc.split_mode == "json"
    # Every dataclass field is spelled out in the paper YAMLs (nothing silently defaulted).
    for cls, name in ((Synthesis8Config, "synthesis8.yaml"), (LocalizerConfig, "localizer.yaml")):
        import yaml

        keys = set(yaml.safe_load((CONFIG_DIR / name).read_text()))
        assert keys == set(cls.__dataclass_fields__), name


@pytest.mark.parametrize("preset", ["paper", "embedded", "quick"])
def test_presets_load(preset):
    load_yaml_config(Synthesis8Config, preset_path(preset, "synthesis8")).validate()
    load_yaml_config(LocalizerConfig, preset_path(preset, "localizer")).validate()


def test_cli_flags_and_set_override_the_yaml():
    args, cfg = parse_s8_args(
        ["--data", "d", "--out", "o", "--epochs", "3", "--batch-size", "16", "--lr", "0.01",
         "--size", "64", "--split-mode", "group", "--max-minutes", "1.5",
         "--set", "augment=false", "--set", "max_train_per_class=7", "--set", "lr=0.02"]
    )  # fmt: skip
    assert (cfg.epochs, cfg.batch_size, cfg.size, cfg.split_mode) == (3, 16, 64, "group")
    assert cfg.max_minutes == 1.5 and cfg.augment is False and cfg.max_train_per_class == 7
    assert cfg.lr == 0.02  # --set is applied last
    assert not args.resume
    _, cfg = parse_localizer_args(
        ["--data", "d", "--out", "o", "--config", "embedded", "--arch", "smp_unet:resnet18",
         "--set", "crop_size=none", "--resume"]
    )  # fmt: skip
    assert cfg.arch == "smp_unet:resnet18" and cfg.crop_size is None
    assert parse_set(["a=1", "b-c = x=y"]) == {"a": "1", "b_c": "x=y"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "epoch=3"], "unknown config key(s) epoch"),
        (["--set", "epochs=three"], "expects int"),
        (["--set", "augment=maybe"], "expects bool"),
        (["--set", "noequals"], "key=value"),
        (["--split-mode", "random"], "split_mode must be 'paper' or 'group'"),
        (["--config", "nope"], "no preset 'nope'"),
    ],
)
def test_bad_config_says_what_is_accepted(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_s8_args(["--data", "d", "--out", "o", *argv])
    assert message in capsys.readouterr().err


def test_localizer_config_checks_sizes():
    with pytest.raises(ValueError, match="multiple of 32"):
        LocalizerConfig(arch="smp_unet:resnet18", crop_size=48).validate()
    with pytest.raises(ValueError, match="exceeds size"):
        LocalizerConfig(crop_size=256).validate()
    assert LocalizerConfig(size=256).scaled_min_area() == 80
    assert LocalizerConfig().scaled_min_area() == 20


# ----------------------------------------------------------------------------------------------
# pieces


def test_random_crops_share_one_window_per_sample():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    a, b = random_crops((x, x * 2), 8, torch.Generator().manual_seed(0))
    assert a.shape == (2, 1, 8, 8) and torch.equal(b, a * 2)
    again, _ = random_crops((x, x), 8, torch.Generator().manual_seed(0))
    assert torch.equal(a, again)


def test_total_variation_by_hand():
    assert total_variation(torch.ones(1, 1, 4, 4)).item() == 0.0
    stripes = torch.tensor([[0.0, 1.0, 0.0, 1.0]]).repeat(4, 1).view(1, 1, 4, 4)
    assert total_variation(stripes).item() == pytest.approx(1.0)  # vertical 0 + horizontal 1


def test_optimizer_state_round_trips_without_pickle():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_safetensors(opt)
    json.dumps(meta)  # the non-tensor part is plain JSON
    opt2 = torch.optim.AdamW(model.parameters(), lr=5.0)
    optimizer_from_safetensors(opt2, tensors, meta)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 1e-3
    for pid in s1["state"]:
        for key, value in s1["state"][pid].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(s2["state"][pid][key]))


def test_batchnorm_refresh_uses_exact_averages():
    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean.fill_(100.0)  # stale statistics are replaced, not blended
    data = [torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([[5.0, 2.0], [7.0, 2.0]])]
    refresh_batchnorm(bn, data, torch.device("cpu"))
    assert bn.running_mean.tolist() == pytest.approx([4.0, 1.0])
    # Unbiased batch variances (2, 0) and (2, 0), averaged.
    assert bn.running_var.tolist() == pytest.approx([2.0, 0.0])
    assert bn.momentum == 0.1 and bn.training


def _tiny_run(schedule: str = "onecycle", total: int = 20):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt, ScheduledLR(opt, schedule, total)


def _train_steps(model, opt, sched, n: int) -> list[float]:
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        model(torch.ones(4, 3)).sum().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return lrs


def test_scheduler_follows_the_schedule_to_the_bit():
    model, opt, sched = _tiny_run(total=20)
    lrs = _train_steps(model, opt, sched, 20)
    assert lrs == [scheduled_lr("onecycle", 1e-2, k, 20) for k in range(20)]
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        ScheduledLR(opt, "cyclic", 10)


def test_resume_restores_the_scheduler_and_gives_the_same_next_lr(tmp_path):
    model, opt, sched = _tiny_run()
    _train_steps(model, opt, sched, 7)
    config = {"task": "t", "arch": "linear", "size": 3}
    save_checkpoint(tmp_path, Resumable(model, opt, sched), TrainState(epoch=1), config, None)
    straight = _train_steps(model, opt, sched, 5)
    # A fresh run: new model, optimizer and scheduler at step 0, then the checkpoint.
    model2, opt2, sched2 = _tiny_run()
    assert opt2.param_groups[0]["lr"] != straight[0]
    state, best = load_checkpoint(tmp_path, Resumable(model2, opt2, sched2), config)
    assert state.epoch == 1 and best is None and sched2.last_epoch == 7
    assert _train_steps(model2, opt2, sched2, 5) == straight
    pairs = zip(model.parameters(), model2.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_resume_refuses_another_arch(tmp_path):
    model, opt, sched = _tiny_run()
    config = {"task": "t", "arch": "linear", "size": 3}
    save_checkpoint(tmp_path, Resumable(model, opt, sched), TrainState(), config, None)
    with pytest.raises(ValueError, match="trained with arch='linear'.*now says 'other'"):
        load_checkpoint(tmp_path, Resumable(model, opt, sched), {**config, "arch": "other"})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty", Resumable(model, opt, sched), config)


# ----------------------------------------------------------------------------------------------
# real training (session fixture: the quick presets on the small built set)


@pytest.mark.slow
def test_synthesis8_learns_on_the_small_set(trained_artifacts, quick_floors):
    art_dir = trained_artifacts["synthesis8"]
    artifact = load_artifact(art_dir)
    assert artifact.task == "synthesis8" and artifact.arch == "resnet18"
    assert artifact.preprocess.size == 128 and artifact.preprocess.channels == 3
    temperature = artifact.calibration["temperature"]
    # The resolved config is saved twice: in the artifact and as config.json.
    config = json.loads((art_dir / "config.json").read_text())
    assert artifact.training["config"] == config and config["task"] == "synthesis8"
    assert artifact.training["epochs_run"] == config["epochs"]
    dataset, _ = open_dataset(artifact, trained_artifacts["data"], "test")
    p = predict_synthesis8(artifact.model, dataset, torch.device("cpu"))
    m = compute_synthesis8_metrics(p["logits"], p["labels"], temperature)
    assert m["n"] == 8 * 15  # 15% of 100 per class
    assert m["macro_f1"] >= quick_floors["synthesis8_macro_f1"], m["confusion_matrix"]
    assert m["real_vs_fake"]["roc_auc"] >= quick_floors["synthesis8_real_vs_fake_auc"]
    assert m["calibration"]["nll_after"] <= m["calibration"]["nll_before"] + 0.05
    # The stored temperature is the validation fit: the val NLL is lowest there.
    val, _ = open_dataset(artifact, trained_artifacts["data"], "val")
    v = predict_synthesis8(artifact.model, val, torch.device("cpu"))
    logits, labels = v["logits"], v["labels"]
    nll = [negative_log_likelihood(logits, labels, temperature * f) for f in (1, 0.9, 1.1)]
    assert nll[0] < nll[1] and nll[0] < nll[2], (temperature, nll)


@pytest.mark.slow
def test_localizer_learns_on_the_small_set(trained_artifacts, quick_floors):
    art_dir = trained_artifacts["manipulation_density"]
    artifact = load_artifact(art_dir)
    cal = artifact.calibration
    assert artifact.task == "manipulation_density" and artifact.arch == "unet_density"
    assert cal["min_area"] == 20
    # The stored thresholds are the validation calibration of the saved weights.
    val, _ = open_dataset(artifact, trained_artifacts["data"], "val")
    val_pred = predict_localizer(artifact.model, val, torch.device("cpu"))
    # ood_threshold is fitted on features, not on the maps
    limit = artifact.training["config"]["max_false_alarm"]
    assert calibrate_localizer(val_pred, 20, max_false_alarm=limit)[0] == {
        k: v for k, v in cal.items() if k != "ood_threshold"
    }
    dataset, _ = open_dataset(artifact, trained_artifacts["data"], "test")
    pred = predict_localizer(artifact.model, dataset, torch.device("cpu"))
    m = compute_localizer_metrics(
        pred, cal["presence_threshold"], cal["box_threshold"], cal["min_area"]
    )
    assert m["n"] == len(dataset) == 120 and 0 < m["n_manipulated"] < m["n"]
    assert m["presence"]["f1"] >= quick_floors["presence_f1"], m["presence"]
    # Presence F1 alone is no proof: flagging every image scores 0.89 at 80% manipulated.
    assert m["presence"]["roc_auc"] >= quick_floors["presence_auc"], m["presence"]
    assert m["presence"]["precision"] >= quick_floors["presence_precision"], m["presence"]
    assert m["boxes"]["iou_0.5"]["f1"] >= quick_floors["box_f1_iou_0.5"], m["boxes"]
    assert (art_dir / "config.json").is_file()


@pytest.mark.slow
def test_checkpoints_are_safetensors_and_json_only(trained_artifacts):
    for task in ("synthesis8", "manipulation_density"):
        ckpt = trained_artifacts[task] / "checkpoint"
        names = sorted(p.name for p in ckpt.iterdir())
        assert names == [
            "best.safetensors",
            "last.safetensors",
            "optimizer.safetensors",
            "state.json",
        ]
        state = json.loads((ckpt / "state.json").read_text())
        assert state["state"]["epoch"] == state["config"]["epochs"]
        # The artifact holds the best epoch's weights.
        best = load_file(str(ckpt / "best.safetensors"))
        final = load_file(str(trained_artifacts[task] / "model.safetensors"))
        # plus the in-distribution statistics, fitted after training (ood.*)
        final = {k: v for k, v in final.items() if not k.startswith("ood.")}
        assert best.keys() == final.keys()
        assert all(torch.equal(best[k], final[k]) for k in best)
        assert read_meta(trained_artifacts[task])["training"]["best_epoch"] >= 1


TINY = {"max_train_per_class": 3, "bn_recalibration_images": 16, "batch_size": 8, "lr": 1e-3}
#: With the one-cycle schedule, resuming must restore the scheduler's step count too.
TINY_ONECYCLE = {**TINY, "lr_schedule": "onecycle"}


@pytest.mark.slow
def test_resume_continues_exactly(built_dataset, tmp_path, monkeypatch):
    # One-cycle schedule: the resumed run must also pick the LR curve up where it stopped.
    cfg = Synthesis8Config(epochs=2, **TINY_ONECYCLE)
    straight = train_synthesis8(cfg, built_dataset, tmp_path / "straight", show_progress=False)

    class SimulatedCrashError(Exception):
        pass

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise SimulatedCrashError  # the process dies right after the first epoch's checkpoint

    real_save = training.loop.save_checkpoint
    resumed_dir = tmp_path / "resumed"
    with monkeypatch.context() as m:
        m.setattr(training.loop, "save_checkpoint", save_then_crash)
        with pytest.raises(SimulatedCrashError):
            train_synthesis8(cfg, built_dataset, resumed_dir, show_progress=False)
    state = json.loads((resumed_dir / "checkpoint" / "state.json").read_text())
    assert state["state"]["epoch"] == 1 and state["scheduler"]["last_epoch"] > 0
    train_synthesis8(cfg, built_dataset, resumed_dir, resume=True, show_progress=False)
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(resumed_dir / "model.safetensors"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    meta_a, meta_b = read_meta(straight), read_meta(resumed_dir)
    hist_a = [h["val_loss"] for h in meta_a["training"]["history"]]
    hist_b = [h["val_loss"] for h in meta_b["training"]["history"]]
    assert np.allclose(hist_a, hist_b, atol=1e-5) and len(hist_b) == 2
    assert meta_a["calibration"]["temperature"] == pytest.approx(
        meta_b["calibration"]["temperature"], rel=1e-4
    )
    # The time it took counts the epoch run before the crash, not only the resumed run's.
    done_b, before = meta_b["training"], state["state"]["elapsed_s"]
    assert done_b["total_seconds"] >= before + done_b["seconds_this_run"] - 0.01
    assert done_b["total_seconds"] >= done_b["train_seconds"]


@pytest.mark.slow
def test_resume_needs_a_checkpoint_and_the_same_arch(built_dataset, tmp_path):
    # The localizer has several archs; a checkpoint of one must not load into another.
    cfg = LocalizerConfig(epochs=1, max_train_images=4, bn_recalibration_images=4, batch_size=4)
    out = tmp_path / "x"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_localizer(cfg, built_dataset, out, resume=True, show_progress=False)
    train_localizer(cfg, built_dataset, out, show_progress=False)
    other = dataclasses.replace(cfg, arch="smp_unet:resnet18", epochs=2)
    with pytest.raises(ValueError, match="trained with arch='unet_density'"):
        train_localizer(other, built_dataset, out, resume=True, show_progress=False)
    assert read_meta(out)["arch"] == "unet_density"  # the artifact is left as it was


@pytest.mark.slow
def test_max_minutes_stops_gracefully(built_dataset, tmp_path):
    cfg = Synthesis8Config(epochs=50, max_minutes=1e-4, **TINY)
    out = train_synthesis8(cfg, built_dataset, tmp_path / "capped", show_progress=False)
    meta = read_meta(out)
    assert meta["training"]["stopped_early"] is True
    assert meta["training"]["epochs_run"] == 1
    assert meta["training"]["history"][0]["partial"] is True
    load_artifact(out)  # a complete, loadable artifact


def test_onecycle_schedule_warms_up_peaks_and_decays():
    lrs = [scheduled_lr("onecycle", 1e-3, step, 100) for step in range(100)]
    assert lrs[0] == pytest.approx(1e-3 / 25)
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 25
    assert lrs[-1] < 2e-5 and all(a >= b for a, b in zip(lrs[25:], lrs[26:], strict=False))
    assert scheduled_lr("constant", 1e-3, 50, 100) == 1e-3
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        scheduled_lr("cyclic", 1e-3, 0, 10)


def test_pipeline_reports_the_recorded_time_of_reused_stages(tmp_path):
    from training.pipeline import recorded_seconds, stage_cell

    (tmp_path / "artifact.json").write_text(json.dumps({"training": {"total_seconds": 222.4}}))
    assert recorded_seconds(tmp_path / "artifact.json", ("training", "total_seconds")) == 222.4
    assert recorded_seconds(tmp_path / "missing.json", ("seconds",)) is None
    assert stage_cell(None, 222.4) == "222.4 (recorded when made, reused here)"
    assert stage_cell(None, None) == "reused" and stage_cell(12.34, None) == "12.3"


def test_the_trainer_stores_a_check_set_of_its_training_images(trained_artifacts):
    """The CPU path's check set (issue #12) is written with the artifact, from the images it
    was trained on, decoded as served, at the model's size: every trained model carries one."""
    from medfakedet.data.inpaint import MedFakeInpaintDataset
    from medfakedet.data.medfake import MedFakeDataset

    for task, reader, count in (
        ("synthesis8", MedFakeDataset, checkset.DEFAULT_COUNT),
        ("manipulation_density", MedFakeInpaintDataset, 128),
    ):
        art = trained_artifacts[task]
        meta = read_meta(art)
        cfg = PreprocessConfig.from_dict(meta["preprocess"])
        config = meta["training"]["config"]
        stored = checkset.load(art, cfg)
        assert stored is not None and 0 < len(stored) <= count
        rows = {}
        for split in ("train", "val", "test"):
            ds = reader(meta["training"]["data"], split, cfg, split_mode=config["split_mode"],
                        seed=config["seed"])  # fmt: skip
            pixels = checkset.build([ds.image_path(i) for i in range(len(ds))], cfg)
            x = normalize(pixels.expand(-1, cfg.channels, -1, -1).float() / 255.0, cfg)
            rows[split] = {row.numpy().tobytes() for row in x}
        found = {row.numpy().tobytes() for row in stored}
        assert found <= rows["train"], task  # training images only
        assert found - rows["val"] - rows["test"], task  # not val or test ones (blank ones aside)
