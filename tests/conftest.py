"""Shared fixtures for the test suites (unit tests of vpr_core and the suites beside them).

The real default model (timm tf_efficientnet_lite0 + packaged weights) is built at most once per
session; real images come from the shared datasets folder next to the repository and are never
copied into it.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """`../shared/datasets` relative to the repository root; skips when it is not there."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets folder not found at {SHARED_DATASETS} "
                    f"(expected corridor/ and nordland_summer_winter_64x32/ there)")
    return SHARED_DATASETS


def _dataset(shared: Path, name: str) -> Path:
    root = shared / name
    if not (root / "ground_truth.csv").is_file():
        pytest.skip(f"dataset '{name}' not found under {shared} (no {root / 'ground_truth.csv'})")
    return root


@pytest.fixture(scope="session")
def corridor_root(shared_datasets: Path) -> Path:
    return _dataset(shared_datasets, "corridor")


@pytest.fixture(scope="session")
def nordland_root(shared_datasets: Path) -> Path:
    return _dataset(shared_datasets, "nordland_summer_winter_64x32")


@pytest.fixture(scope="session")
def corridor_images(corridor_root: Path) -> List[np.ndarray]:
    """Four real corridor query images (RGB uint8, 120x160), read with vpr_core's own loader."""
    from vpr_core.images import load_image
    return [load_image(corridor_root / "query" / f"{i:07d}.jpg") for i in range(4)]


@pytest.fixture
def default_config():
    """A fresh copy of the packaged default config (config/default.yaml)."""
    from vpr_core.config import load_config
    return load_config()


@pytest.fixture(scope="session")
def default_model():
    """The real default model with its packaged weights, built once per session. Do not mutate."""
    from vpr_core.config import load_config
    from vpr_core.models import build_model
    return build_model(load_config().model)


@pytest.fixture(scope="session")
def default_extractor(default_model):
    """DescriptorExtractor around the session's default model (CPU unless a GPU is usable)."""
    from vpr_core.config import load_config
    from vpr_core.models import DescriptorExtractor
    return DescriptorExtractor(load_config().model, default_model)


@pytest.fixture(scope="session")
def corridor_descriptors(default_extractor, corridor_images) -> np.ndarray:
    """Descriptors of `corridor_images` from the default model, computed once."""
    return default_extractor(corridor_images)

