"""vpr_core.models.preprocess: resize + normalise RGB uint8 images into a network batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vpr_core.config import PreprocessConfig
from vpr_core.images import ImageError
from vpr_core.models.preprocess import Preprocessor

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pre(**kw) -> Preprocessor:
    cfg = PreprocessConfig(**{"image_size": [24, 32], **kw})
    return Preprocessor(cfg, IMAGENET_MEAN, IMAGENET_STD)


def test_output_shape_dtype_and_range():
    pre = _pre()
    white = np.full((48, 64, 3), 255, np.uint8)
    black = np.zeros((12, 16, 3), np.uint8)  # smaller than the input: upscaled
    x = pre([white, black])
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert tuple(x.shape) == (2, 3, 24, 32)
    torch.testing.assert_close(x[0], torch.ones(3, 24, 32))     # (1 - 0.5) / 0.5
    torch.testing.assert_close(x[1], -torch.ones(3, 24, 32))    # (0 - 0.5) / 0.5


def test_channel_order_is_rgb_planes():
    red = np.zeros((24, 32, 3), np.uint8)
    red[..., 0] = 255
    x = _pre()([red])[0]
    assert torch.all(x[0] == 1) and torch.all(x[1] == -1) and torch.all(x[2] == -1)


def test_image_of_the_input_size_is_not_resampled():
    img = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    x = _pre()([img])[0].numpy()
    np.testing.assert_allclose(x.transpose(1, 2, 0), (img / 255.0 - 0.5) / 0.5, atol=1e-5)


def test_empty_mean_std_fall_back_to_the_backbone_statistics():
    pre = _pre(mean=[], std=[])
    grey = np.full((24, 32, 3), 128, np.uint8)
    x = pre([grey])[0]
    for c in range(3):
        expected = (128 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert float(x[c, 0, 0]) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("kw", [{"image_size": [24]}, {"image_size": [4, 32]}, {"interpolation": "nearest"},
                                {"std": [0.5, 0.0, 0.5]}, {"mean": [0.5, 0.5]}])
def test_invalid_settings_are_value_errors(kw):
    with pytest.raises(ValueError):
        _pre(**kw)


def test_invalid_image_is_an_image_error():
    with pytest.raises(ImageError):
        _pre()([np.zeros((24, 32), np.uint8)])
