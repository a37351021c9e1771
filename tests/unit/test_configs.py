"""Every config in config/ is a valid vpr_core config and a valid ROS 2 parameters file, and builds
its model (random weights here: seed checkpoints are local files this machine does not have)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from vpr_core.config import flatten, load_config
from vpr_core.models import DescriptorExtractor, build_model

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "config").glob("*.yaml"))
EXPECTED_DIM = {"default.yaml": 1280, "vtvpr_deit.yaml": 384, "vtvpr_pit.yaml": 576, "vtvpr_cait.yaml": 384,
                "dinovpr.yaml": 256, "clusvpr.yaml": 64 * 512, "mixvpr.yaml": 4096, "selavpr.yaml": 1024,
                "vitgal.yaml": 384}


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
    cfg = load_config(path)
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
