"""vpr_core.models.aggregators: NetVLAD (ClusVPR) and MixVPR."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from vpr_core.config import load_config
from vpr_core.models import build_model
from vpr_core.models.aggregators import AGGREGATORS
from vpr_core.models.aggregators.netvlad import NOT_INITIALISED


def _netvlad(in_dim=6, clusters=4, seed=0, **kw):
    agg = AGGREGATORS.build("netvlad", in_dim=in_dim, clusters=clusters, **kw)
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(200, in_dim, generator=g)
    centres = torch.nn.functional.normalize(torch.randn(clusters, in_dim, generator=g), dim=1)
    alpha = agg.init_from_clusters(centres, sample)
    return agg, centres, sample, alpha


def _unit(x: torch.Tensor) -> None:
    assert torch.all(torch.isfinite(x))
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(x.shape[0]), atol=1e-5, rtol=0)


def _vlad_reference(x: np.ndarray, weight: np.ndarray, bias, centroids: np.ndarray, attention=None) -> np.ndarray:
    """Straightforward per-position loops: x (C,H,W), weight (K,C), centroids (K,C) -> (K*C,)."""
    c_dim, h, w = x.shape
    k_dim = centroids.shape[0]
    v = np.zeros((k_dim, c_dim))
    for i in range(h):
        for j in range(w):
            f = x[:, i, j] / np.linalg.norm(x[:, i, j])
            logits = weight @ f + (bias if bias is not None else 0.0)
            a = np.exp(logits - logits.max())
            a /= a.sum()
            wt = 1.0 if attention is None else 1.0 / (1.0 + np.exp(-(attention[0] @ f + attention[1])))
            for k in range(k_dim):
                v[k] += a[k] * wt * (f - centroids[k])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v = v.flatten()
    return v / np.linalg.norm(v)


# ---- NetVLAD ----------------------------------------------------------------------------------------

def test_netvlad_fresh_layer_refuses_to_run():
    agg = AGGREGATORS.build("netvlad", in_dim=6, clusters=4)
    assert not agg.is_initialised and not bool(agg.initialised)
    with pytest.raises(RuntimeError, match=re.escape(NOT_INITIALISED)):
        agg(torch.randn(1, 6, 3, 3))
    assert NOT_INITIALISED.startswith("NetVLAD centres are not initialised: run `vpr-core cluster` or load a checkpoint")


def test_netvlad_in_a_built_model_refuses_to_run_until_initialised():
    cfg = load_config(overrides={"model.aggregator": {"name": "netvlad", "clusters": 4}}).model
    model = build_model(cfg, load_checkpoint=False)
    assert model.dim == 4 * 1280
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(RuntimeError, match="not initialised"):
        model(x)
    model.aggregator.init_from_clusters(torch.randn(4, 1280), torch.randn(50, 1280))
    with torch.inference_mode():
        _unit(model(x))


@pytest.mark.parametrize("conv_bias", [False, True])
def test_netvlad_matches_a_numpy_reference(conv_bias):
    agg, centres, _, _ = _netvlad(in_dim=3, clusters=2, conv_bias=conv_bias)
    x = torch.randn(2, 3, 2, 3, generator=torch.Generator().manual_seed(1))
    out = agg(x).detach().numpy()
    weight = agg.conv.weight.detach().numpy()[:, :, 0, 0]
    bias = agg.conv.bias.detach().numpy() if conv_bias else None
    for b in range(2):
        ref = _vlad_reference(x[b].numpy().astype(np.float64), weight, bias, centres.numpy())
        np.testing.assert_allclose(out[b], ref, atol=1e-5)


def test_netvlad_init_sets_the_assignment_from_the_centres():
    agg, centres, sample, alpha = _netvlad(in_dim=6, clusters=4)
    assert alpha > 0 and agg.is_initialised and bool(agg.initialised)
    torch.testing.assert_close(agg.centroids.detach(), centres)
    # cosine form: w_k = alpha * c_k / |c_k|
    torch.testing.assert_close(agg.conv.weight.detach()[:, :, 0, 0], alpha * centres)
    # alpha makes the runner-up centre get 1 % of the best one's weight on average (in log space)
    s = torch.nn.functional.normalize(sample, dim=1)
    top2 = torch.softmax(s @ agg.conv.weight.detach()[:, :, 0, 0].T, dim=1).topk(2, dim=1).values
    assert float(torch.log(top2[:, 0] / top2[:, 1]).mean()) == pytest.approx(math.log(100.0), rel=1e-4)


def test_netvlad_init_rejects_wrong_shapes():
    agg = AGGREGATORS.build("netvlad", in_dim=6, clusters=4)
    with pytest.raises(ValueError, match=r"\(4, 6\)"):
        agg.init_from_clusters(np.zeros((3, 6)), np.ones((10, 6)))
    with pytest.raises(ValueError, match="descriptors_sample"):
        agg.init_from_clusters(np.random.rand(4, 6), np.ones((10, 5)))
    assert not agg.is_initialised


def test_netvlad_shapes_and_unit_norm_on_maps_and_tokens():
    agg, *_ = _netvlad(in_dim=6, clusters=4, num_prefix_tokens=1)
    assert agg.out_dim == 24
    maps = torch.randn(3, 6, 5, 7)
    out = agg(maps)
    assert out.shape == (3, 24)
    _unit(out)
    tokens = torch.randn(3, 1 + 12, 6)
    tokens[:, 0] = 50.0  # a CLS token must not enter the aggregation
    out_t = agg(tokens)
    _unit(out_t)
    torch.testing.assert_close(out_t, agg(tokens[:, 1:].transpose(1, 2).reshape(3, 6, 3, 4)))
    assert torch.all(out[0] @ out[1:].T < 0.999)  # different inputs, different descriptors


def test_netvlad_dim_reduction():
    agg, *_ = _netvlad(in_dim=6, clusters=4, dim_reduction=10)
    assert agg.out_dim == 10 and agg.reduction.weight.shape == (10, 24)
    out = agg(torch.randn(2, 6, 3, 3))
    assert out.shape == (2, 10)
    _unit(out)


def test_netvlad_attention_is_neutral_at_start_and_weights_positions_when_set():
    plain, centres, sample, _ = _netvlad(in_dim=3, clusters=2)
    att = AGGREGATORS.build("netvlad", in_dim=3, clusters=2, attention=True)
    att.init_from_clusters(centres, sample)
    x = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(att(x), plain(x), atol=1e-6, rtol=0)  # zero init: equal weights
    with torch.no_grad():
        att.attention.weight.copy_(torch.tensor([3.0, -2.0, 1.0])[None, :, None, None])
        att.attention.bias.fill_(0.5)
    out = att(x)
    _unit(out)
    assert (out - plain(x)).abs().max() > 1e-3
    ref = _vlad_reference(x[0].numpy().astype(np.float64), att.conv.weight.detach().numpy()[:, :, 0, 0], None,
                          centres.numpy(), attention=(np.array([3.0, -2.0, 1.0]), 0.5))
    np.testing.assert_allclose(out[0].detach().numpy(), ref, atol=1e-5)


def test_netvlad_state_dict_names_and_initialised_flag_round_trip():
    agg, *_ = _netvlad(in_dim=6, clusters=4, attention=True, conv_bias=True, dim_reduction=8)
    assert set(agg.state_dict()) == {"centroids", "conv.weight", "conv.bias", "attention.weight", "attention.bias",
                                     "reduction.weight", "reduction.bias", "initialised"}
    assert agg.state_dict()["conv.weight"].shape == (4, 6, 1, 1)
    assert agg.state_dict()["initialised"].dtype == torch.bool
    fresh = AGGREGATORS.build("netvlad", in_dim=6, clusters=4, attention=True, conv_bias=True, dim_reduction=8)
    fresh.load_state_dict(agg.state_dict())
    assert fresh.is_initialised
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(fresh(x), agg(x))
    # a state saved before initialisation keeps the layer refusing to run
    other = AGGREGATORS.build("netvlad", in_dim=6, clusters=4, attention=True, conv_bias=True, dim_reduction=8)
    fresh.load_state_dict(other.state_dict())
    with pytest.raises(RuntimeError, match="not initialised"):
        fresh(x)


def test_netvlad_plain_layout_has_only_the_published_keys():
    agg = AGGREGATORS.build("netvlad", in_dim=6)
    assert agg.clusters == 64
    assert set(agg.state_dict()) == {"centroids", "conv.weight", "initialised"}


def test_netvlad_invalid_options():
    with pytest.raises(ValueError, match="clusters"):
        AGGREGATORS.build("netvlad", in_dim=6, clusters=0)
    with pytest.raises(ValueError, match="clusters"):  # typo'd option names are rejected by the registry
        AGGREGATORS.build("netvlad", in_dim=6, cluster=8)


# ---- MixVPR -----------------------------------------------------------------------------------------

def _mix(**kw):
    opts = {"in_h": 4, "in_w": 5, "out_channels": 8, "out_rows": 3, "mix_depth": 2, **kw}
    return AGGREGATORS.build("mixvpr", in_dim=6, **opts)


def test_mixvpr_paper_defaults():
    agg = AGGREGATORS.build("mixvpr", in_dim=1024)
    assert (agg.in_h, agg.in_w, agg.out_dim, len(agg.mix)) == (20, 20, 4096, 4)
    assert agg.mix[0].fc1.weight.shape == (400, 400)  # mlp_ratio 1 over 20*20 positions
    out = agg(torch.randn(2, 1024, 20, 20))
    assert out.shape == (2, 4096)
    _unit(out)


def test_mixvpr_shapes_and_unit_norm_on_a_map():
    agg = _mix()
    assert agg.out_dim == 24
    out = agg(torch.randn(3, 6, 4, 5))
    assert out.shape == (3, 24)
    _unit(out)
    assert torch.all(out[0] @ out[1:].T < 0.999)


def test_mixvpr_matches_a_step_by_step_reference():
    agg = _mix(mix_depth=2, mlp_ratio=2.0)
    for blk in agg.mix:  # non-trivial mixers (fc weights start small)
        torch.nn.init.normal_(blk.fc1.weight, std=0.5)
        torch.nn.init.normal_(blk.fc2.weight, std=0.5)
    assert agg.mix[0].fc1.weight.shape == (40, 20)
    x = torch.randn(2, 6, 4, 5)
    with torch.no_grad():
        h = x.reshape(2, 6, 20)  # row-major positions, one row per channel
        for blk in agg.mix:
            z = torch.nn.functional.layer_norm(h, (20,), blk.norm.weight, blk.norm.bias)
            h = h + torch.relu(z @ blk.fc1.weight.T + blk.fc1.bias) @ blk.fc2.weight.T + blk.fc2.bias
        h = torch.einsum("bcp,oc->bpo", h, agg.channel_proj.weight) + agg.channel_proj.bias  # (2, 20, 8)
        h = torch.einsum("bpo,rp->bor", h, agg.row_proj.weight) + agg.row_proj.bias  # (2, 8, 3)
        ref = torch.nn.functional.normalize(h.reshape(2, 24), dim=1)
        torch.testing.assert_close(agg(x), ref, atol=1e-5, rtol=1e-5)
        # the mixer matters: without it the descriptor is different
        for blk in agg.mix:
            blk.fc2.weight.zero_()
            blk.fc2.bias.zero_()
        assert (agg(x) - ref).abs().max() > 1e-3


def test_mixvpr_on_square_token_grid_equals_the_map():
    agg = _mix(in_h=3, in_w=3, num_prefix_tokens=2)
    tokens = torch.randn(2, 2 + 9, 6)
    out = agg(tokens)
    assert out.shape == (2, 24)
    _unit(out)
    grid = tokens[:, 2:].transpose(1, 2).reshape(2, 6, 3, 3)
    torch.testing.assert_close(out, agg(grid))


def test_mixvpr_size_mismatch_is_a_clear_error():
    agg = _mix()
    with pytest.raises(ValueError, match=r"6x5 feature map .* in_h x in_w = 4x5"):
        agg(torch.randn(1, 6, 6, 5))
    with pytest.raises(ValueError, match="do not form a square grid"):
        _mix(in_h=3, in_w=3)(torch.randn(1, 10, 6))
    with pytest.raises(ValueError, match=r"4x4 token grid .* 3x3"):
        _mix(in_h=3, in_w=3)(torch.randn(1, 16, 6))
    with pytest.raises(ValueError, match="channels"):
        agg(torch.randn(1, 7, 4, 5))


def test_mixvpr_in_a_built_model_checks_the_image_size():
    # lite0 has stride 32: 128x160 input -> 4x5 map
    cfg = load_config(overrides={"model.aggregator": {"name": "mixvpr", "in_h": 4, "in_w": 5, "out_channels": 16,
                                                      "out_rows": 2}}).model
    model = build_model(cfg, load_checkpoint=False)
    with torch.inference_mode():
        _unit(model(torch.randn(2, 3, 128, 160)))
        with pytest.raises(ValueError, match="in_h x in_w"):
            model(torch.randn(1, 3, 96, 160))


def test_netvlad_and_mixvpr_on_a_real_vit_backbone():
    """timm ViT tokens (B, 1 + 14*14, 192): both aggregators skip the class token."""
    for agg in ({"name": "netvlad", "clusters": 4}, {"name": "mixvpr", "in_h": 14, "in_w": 14, "out_channels": 8,
                                                     "out_rows": 2}):
        cfg = load_config(overrides={"model.backbone": {"name": "vit_tiny_patch16_224"},
                                     "model.aggregator": agg}).model
        model = build_model(cfg, load_checkpoint=False)
        assert model.aggregator.prefix_tokens == 1
        if agg["name"] == "netvlad":
            model.aggregator.init_from_clusters(torch.randn(4, 192), torch.randn(50, 192))
        with torch.inference_mode():
            out = model(torch.randn(2, 3, 224, 224))
        assert out.shape == (2, model.dim) and model.dim == (4 * 192 if agg["name"] == "netvlad" else 16)
        _unit(out)
