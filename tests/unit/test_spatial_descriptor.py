"""The stride-16 spatial descriptor's parts: a backbone stopped at a timm stage, the `spatial`
aggregator, and PCA-whitening fitted by SVD when descriptors are larger than the sample count."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vpr_core.models.aggregators.spatial import SpatialGrid
from vpr_core.models.backbones.timm_backbone import TimmBackbone
from vpr_core.models.heads.whiten import WhitenHead


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    full = TimmBackbone("tf_efficientnet_lite0").eval()
    staged = TimmBackbone("tf_efficientnet_lite0", out_stage=3).eval()
    staged.load_state_dict(full.state_dict())  # every tensor is kept: the packaged checkpoint still loads
    return full, staged


def test_out_stage_returns_that_stage_of_the_same_network(lite0):
    full, staged = lite0
    x = torch.randn(2, 3, 96, 128)
    seen = {}
    hook = full.model.blocks[4].register_forward_hook(lambda m, i, o: seen.setdefault("s16", o))
    with torch.no_grad():
        full(x)
        out = staged(x)
    hook.remove()
    assert out.shape == (2, 112, 6, 8) and staged.num_features == 112 and staged.stride == 16
    assert torch.allclose(out, seen["s16"])
    assert staged.grid_hw((240, 320)) == (15, 20)


def test_out_stage_errors_name_the_stages():
    with pytest.raises(ValueError, match="out of range; its stages are"):
        TimmBackbone("tf_efficientnet_lite0", out_stage=9)
    with pytest.raises(ValueError, match="needs a CNN"):
        TimmBackbone("vit_tiny_patch16_224", out_stage=1)


def test_spatial_keeps_layout_and_identity_init_starts_untrained():
    x = torch.rand(3, 8, 4, 6)
    plain = SpatialGrid(8, 4, 6)
    ident = SpatialGrid(8, 4, 6, channels=8, init="identity")
    assert plain.out_dim == ident.out_dim == 8 * 24
    assert torch.allclose(plain(x), ident(x), atol=1e-6)
    # moving one cell's content to another cell changes the descriptor (GeM would not notice)
    moved = x.clone()
    moved[:, :, 0, 0], moved[:, :, 3, 5] = x[:, :, 3, 5], x[:, :, 0, 0]
    assert not torch.allclose(plain(x), plain(moved))
    assert SpatialGrid(8, 2, 3, channels=4).out_dim == 4 * 6
    with pytest.raises(ValueError, match="identity needs"):
        SpatialGrid(8, 4, 6, channels=16, init="identity")


def test_whitening_by_svd_fits_more_dimensions_than_samples():
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((20, 500))
    desc = rng.standard_normal((300, 20)) * np.linspace(5, 1, 20) @ basis + 0.01 * rng.standard_normal((300, 500))
    head = WhitenHead(500, out_dim=16)
    kept = head.fit(desc.astype(np.float32))
    assert 0.9 < kept <= 1.0  # 20 strong directions hold nearly all the variance
    x = torch.nn.functional.normalize(torch.from_numpy(desc).float(), dim=-1)
    white = head(x).double().numpy()
    cov = np.cov(white, rowvar=False)
    assert np.allclose(cov, np.eye(16), atol=0.05)
    with pytest.raises(ValueError, match="cannot fit"):
        WhitenHead(500, out_dim=16).fit(desc[:10].astype(np.float32))
