"""vpr_core.models.vpr_model: the composed model and the DescriptorExtractor on real images."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vpr_core.config import load_config
from vpr_core.images import ImageError
from vpr_core.models import DescriptorExtractor, build_model
from vpr_core.models.vpr_model import resolve_device


def test_default_model_gives_unit_norm_finite_float32_descriptors(default_extractor, corridor_descriptors):
    d = corridor_descriptors
    assert default_extractor.dim == 1280
    assert d.shape == (4, 1280) and d.dtype == np.float32
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    assert np.all(d >= 0)  # GeM of post-activation features is non-negative


def test_descriptors_are_deterministic(default_extractor, corridor_images, corridor_descriptors):
    np.testing.assert_array_equal(default_extractor(corridor_images[:2]), corridor_descriptors[:2])


def test_different_images_give_different_descriptors(corridor_descriptors):
    sims = corridor_descriptors @ corridor_descriptors.T
    off_diag = sims[~np.eye(len(sims), dtype=bool)]
    assert np.all(off_diag < 0.9999)


def test_batch_size_does_not_change_descriptors(default_model, corridor_images, corridor_descriptors):
    cfg = dataclasses.replace(load_config().model, batch_size=1)
    one_by_one = DescriptorExtractor(cfg, default_model)(corridor_images[:2])
    np.testing.assert_allclose(one_by_one, corridor_descriptors[:2], atol=1e-5)


def test_mixed_image_sizes_in_one_call(default_extractor, corridor_images, corridor_descriptors):
    import cv2
    big = cv2.resize(corridor_images[0], (640, 480), interpolation=cv2.INTER_LINEAR)
    tiny = np.ascontiguousarray(corridor_images[1][::4, ::4])
    out = default_extractor([big, corridor_images[2], tiny])
    assert out.shape == (3, 1280) and np.all(np.isfinite(out))
    np.testing.assert_allclose(out[1], corridor_descriptors[2], atol=1e-5)
    # an upscaled copy of the same scene stays close to the original
    assert float(out[0] @ corridor_descriptors[0]) > 0.9


def test_no_images_gives_an_empty_array(default_extractor):
    out = default_extractor([])
    assert out.shape == (0, 1280) and out.dtype == np.float32


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32),
                                 np.zeros((10, 10, 4), np.uint8)], ids=["grey", "float", "rgba"])
def test_bad_image_is_an_image_error(default_extractor, bad):
    with pytest.raises(ImageError):
        default_extractor([bad])


def test_fp16_request_falls_back_to_fp32_on_cpu(default_model):
    cfg = dataclasses.replace(load_config().model, precision="fp16", device="cpu")
    ex = DescriptorExtractor(cfg, default_model)
    assert ex.device.type == "cpu" and ex.dtype == torch.float32


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:0")


def test_forward_output_is_normalised_for_any_batch():
    model = build_model(load_config().model, load_checkpoint=False)
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 1280) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_unknown_backbone_and_aggregator_options_are_errors():
    with pytest.raises(ValueError, match="timm has no model 'tf_efficientnet_lite00'"):
        build_model(load_config(overrides={"model.backbone.name": "tf_efficientnet_lite00"}).model,
                    load_checkpoint=False)
    with pytest.raises(KeyError, match="did you mean 'gem'"):
        build_model(load_config(overrides={"model.aggregator": {"name": "gme"}}).model, load_checkpoint=False)
    with pytest.raises(ValueError, match="'pp'"):
        build_model(load_config(overrides={"model.aggregator": {"name": "gem", "pp": 3}}).model,
                    load_checkpoint=False)
    with pytest.raises(ValueError, match="class token"):
        build_model(load_config(overrides={"model.aggregator": {"name": "cls"}}).model, load_checkpoint=False)


def test_gem_exponent_comes_from_the_config():
    model = build_model(load_config(overrides={"model.aggregator.p": 5.0}).model, load_checkpoint=False)
    assert float(model.aggregator.p.detach()) == 5.0
