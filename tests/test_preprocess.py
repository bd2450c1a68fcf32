import numpy as np
import pytest
import torch

from medfakedet.preprocess import (
    CLASSIFIER_PREPROCESS,
    LOCALIZER_PREPROCESS,
    PreprocessConfig,
    eval_transform,
    preprocess_batch,
    train_transform,
)


def test_config_round_trip_and_validation():
    cfg = PreprocessConfig(size=64, channels=1, mean=(0.1,), std=(0.2,))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        PreprocessConfig(channels=3, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        PreprocessConfig(channels=2, mean=(0, 0), std=(1, 1))
    with pytest.raises(ValueError, match="unknown preprocess keys"):
        PreprocessConfig.from_dict({**cfg.to_dict(), "crop": 3})


def test_classifier_transform_gray_to_rgb_and_normalise():
    img = np.zeros((256, 200, 1), np.float32)
    img[:, 100:] = 1.0
    t = eval_transform(img, CLASSIFIER_PREPROCESS)
    assert t.shape == (3, 128, 128)
    # mean = std = 0.5: black -> -1, white -> +1, and all three channels equal
    assert t[0, 64, 0].item() == pytest.approx(-1.0)
    assert t[0, 64, 127].item() == pytest.approx(1.0)
    assert torch.equal(t[0], t[2])


def test_localizer_transform_rgb_to_gray_keeps_unit_range():
    img = np.full((128, 128, 3), [1.0, 0.0, 0.0], np.float32)
    t = eval_transform(img, LOCALIZER_PREPROCESS)
    assert t.shape == (1, 128, 128)
    assert t.mean().item() == pytest.approx(0.299, abs=1e-5)


def test_batch_is_stack_of_single_transforms():
    rng = np.random.default_rng(0)
    imgs = [rng.random((h, w, 1), dtype=np.float32) for h, w in [(128, 128), (300, 180), (64, 90)]]
    batch = preprocess_batch(imgs, CLASSIFIER_PREPROCESS)
    assert batch.shape == (3, 3, 128, 128)
    for i, im in enumerate(imgs):
        assert torch.equal(batch[i], eval_transform(im, CLASSIFIER_PREPROCESS))


def test_train_transform_is_reproducible_and_shares_the_tail():
    rng = np.random.default_rng(1)
    img = rng.random((160, 160, 1), dtype=np.float32)
    tf = train_transform(CLASSIFIER_PREPROCESS)
    a = tf(img, torch.Generator().manual_seed(5))
    b = tf(img, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (3, 128, 128)
    # with no random ops, training and evaluation give the same tensor
    plain = train_transform(CLASSIFIER_PREPROCESS, hflip=False, rotation_deg=0)
    assert torch.equal(plain(img, torch.Generator()), eval_transform(img, CLASSIFIER_PREPROCESS))
