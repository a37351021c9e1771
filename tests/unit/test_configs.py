"""Every config in config/ is a valid vpr_core config and a valid ROS 2 parameters file, and builds
its model (random weights here: seed checkpoints are local files this machine does not have).
Models with a local head give local features of the configured size, unit norm, inside the image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from vpr_core.config import flatten, load_config
from vpr_core.models import DescriptorExtractor, build_model
from vpr_core.rerank import build_reranker

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "config").glob("*.yaml"))
EXPECTED_DIM = {"default.yaml": 1280, "vtvpr_deit.yaml": 384, "vtvpr_pit.yaml": 576, "vtvpr_cait.yaml": 384,
                "dinovpr.yaml": 256, "clusvpr.yaml": 64 * 512, "mixvpr.yaml": 4096, "selavpr.yaml": 1024,
                "vitgal.yaml": 384, "default_rerank.yaml": 1280, "spatial_untrained.yaml": 112 * 15 * 20}
# Local heads: (descriptor size, features per image for the 120x160 test images at the config's input size).
EXPECTED_LOCAL = {"selavpr.yaml": (128, 61 * 61), "vitgal.yaml": (128, 400), "default_rerank.yaml": (112, 15 * 20)}
# Cost: the test builds the config's model as written except for these overrides, which keep every width
# (descriptor sizes are checked as configured) and cut depth only. ViT-L/14 with 24 blocks: ~10 s on 2 cores.
FAST = {"selavpr.yaml": {"model.backbone.depth": 2}}


def test_every_config_is_listed():
    assert {p.name for p in CONFIGS} <= set(EXPECTED_DIM), "add new configs to EXPECTED_DIM"
    assert len(CONFIGS) >= 7


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_a_ros_parameters_file_without_empty_sections(path):
    raw = yaml.safe_load(path.read_text())
    assert list(raw) == ["/**"] and list(raw["/**"]) == ["ros__parameters"]
    flat = flatten(raw["/**"]["ros__parameters"])
    assert all(v is not None and v != {} and v != [] for v in flat.values()), "ROS parameters cannot be null/empty"
    load_config(path)  # strict: unknown keys and wrong types raise


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds_and_describes(path, corridor_images):
    cfg = load_config(path, overrides=FAST.get(path.name))
    model = build_model(cfg.model, load_checkpoint=False)
    if hasattr(model.aggregator, "init_from_clusters"):  # NetVLAD refuses random centres: give it data
        rng = np.random.default_rng(0)
        sample = rng.standard_normal((512, model.aggregator.in_dim)).astype(np.float32)
        sample /= np.linalg.norm(sample, axis=1, keepdims=True)
        model.aggregator.init_from_clusters(sample[:model.aggregator.clusters], sample)
    ex = DescriptorExtractor(cfg.model, model)
    out = ex.extract(corridor_images[:2])
    assert out.global_desc.shape == (2, EXPECTED_DIM[path.name])
    assert np.allclose(np.linalg.norm(out.global_desc, axis=1), 1.0, atol=1e-4)
    assert (out.local is not None) == bool(cfg.model.local_head)
    assert bool(cfg.model.local_head) == (path.name in EXPECTED_LOCAL), "add configs with a local head to EXPECTED_LOCAL"
    if out.local is None:
        return
    dim, count = EXPECTED_LOCAL[path.name]
    assert len(out.local) == 2
    for img, feats in zip(corridor_images, out.local):
        h, w = img.shape[:2]
        assert feats.image_hw == (h, w)
        assert feats.desc.shape == (count, dim) and feats.desc.dtype == np.float16
        assert count <= cfg.model.max_local_features
        assert np.allclose(np.linalg.norm(feats.desc.astype(np.float32), axis=1), 1.0, atol=2e-3)
        assert np.isfinite(feats.xy).all()
        assert (feats.xy >= 0).all() and (feats.xy[:, 0] <= w).all() and (feats.xy[:, 1] <= h).all()
        assert len(np.unique(feats.xy, axis=0)) == count  # one feature per position
    reranker = build_reranker(cfg.rerank)  # the config's re-ranker accepts its options and these features
    if reranker is not None:
        assert reranker.verify(out.local[0], out.local[0]).verified  # an image matches itself
