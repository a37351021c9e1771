"""vpr_core.models.aggregators: GeM and CLS pooling."""
from __future__ import annotations

import pytest
import torch

from vpr_core.models.aggregators import AGGREGATORS


def test_gem_p1_is_average_pooling():
    x = torch.rand(2, 5, 4, 6) + 0.1
    gem = AGGREGATORS.build("gem", in_dim=5, p=1.0)
    torch.testing.assert_close(gem(x), x.mean(dim=(2, 3)))


def test_gem_large_p_approaches_max_pooling():
    x = torch.rand(2, 5, 4, 6) + 0.1
    gem = AGGREGATORS.build("gem", in_dim=5, p=60.0)
    out = gem(x)
    assert torch.all(out <= x.amax(dim=(2, 3)) + 1e-5)
    # (1/24) ** (1/60) > 0.94: within 6 % of the max, and far above the mean
    torch.testing.assert_close(out, x.amax(dim=(2, 3)), rtol=0.06, atol=0.0)
    assert torch.all(out > x.mean(dim=(2, 3)))


def test_gem_p3_value():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    gem = AGGREGATORS.build("gem", in_dim=1, p=3.0)
    expected = ((1 + 8 + 27 + 64) / 4) ** (1 / 3)
    assert float(gem(x).detach()) == pytest.approx(expected, rel=1e-5)


def test_gem_on_tokens_skips_prefix_tokens():
    tokens = torch.rand(1, 5, 3) + 0.1
    tokens[:, 0] = 100.0  # a huge CLS token must not leak into the pooled patches
    gem = AGGREGATORS.build("gem", in_dim=3, p=1.0, num_prefix_tokens=1)
    torch.testing.assert_close(gem(tokens), tokens[:, 1:].mean(dim=1))


def test_gem_p_learnable_flag():
    assert AGGREGATORS.build("gem", in_dim=4).p.requires_grad
    assert not AGGREGATORS.build("gem", in_dim=4, learn_p=False).p.requires_grad


def test_cls_token():
    tokens = torch.randn(2, 7, 4)
    agg = AGGREGATORS.build("cls", in_dim=4, num_prefix_tokens=1)
    assert agg.out_dim == 4
    torch.testing.assert_close(agg(tokens), tokens[:, 0])
    with pytest.raises(ValueError, match="tokens"):
        agg(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="class token"):
        AGGREGATORS.build("cls", in_dim=4, num_prefix_tokens=0)


def test_gem_normalize_pools_l2_normalised_locations_like_selavpr():
    """SelaVPR's aggregation: L2Norm over channels at every location, then GeM (maps and tokens alike)."""
    fmap = torch.rand(2, 8, 4, 5) * torch.arange(1.0, 6.0)  # locations of very different norms
    gem = AGGREGATORS.build("gem", in_dim=8, p=3.0, normalize=True)
    expected = AGGREGATORS.build("gem", in_dim=8, p=3.0)(torch.nn.functional.normalize(fmap, dim=1))
    torch.testing.assert_close(gem(fmap), expected)
    tokens = torch.cat([torch.full((2, 1, 8), 50.0), fmap.flatten(2).transpose(1, 2)], dim=1)
    with_cls = AGGREGATORS.build("gem", in_dim=8, num_prefix_tokens=1, p=3.0, normalize=True)
    torch.testing.assert_close(with_cls(tokens), expected)
    assert not torch.allclose(AGGREGATORS.build("gem", in_dim=8, p=3.0)(fmap), expected)
