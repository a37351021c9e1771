"""Local heads of the seeds: SelaVPR's up-convolutions (`upconv`) and ViTGaL's patch-token autoencoder with
its class-attention keypoint scorer (`patch_tokens`). Geometry, weights and names, on a stand-in backbone
whose output is the patch-token map itself (checkpoint layouts: test_checkpoint_formats.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vpr_core.models.local import LOCAL_HEADS
from vpr_core.models.local.patch_tokens import PatchTokenHead
from vpr_core.models.local.upconv import UpConvHead


class MapBackbone(nn.Module):
    """`to_map` hands the features through: they already are a (B, C, h, w) patch map."""

    def to_map(self, features: torch.Tensor, input_hw) -> torch.Tensor:
        return features


def _map(c: int, h: int, w: int, seed: int = 0, b: int = 2) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


# ---- upconv (SelaVPR LocalAdapt) --------------------------------------------------------------------

def test_upconv_has_selavpr_names_and_geometry():
    head = LOCAL_HEADS.build("upconv", in_dim=1024)
    assert sorted(k for k in head.state_dict()) == ["upconv1.bias", "upconv1.weight", "upconv2.bias", "upconv2.weight"]
    assert head.upconv1.weight.shape == (1024, 256, 3, 3) and head.upconv2.weight.shape == (256, 128, 3, 3)
    for conv in (head.upconv1, head.upconv2):
        assert (conv.kernel_size, conv.stride, conv.padding, conv.output_padding) == ((3, 3), (2, 2), (1, 1), (0, 0))
    assert UpConvHead.dense_hw(16, 16) == (61, 61)  # SelaVPR's dense_feature_map_size at 224x224


def test_upconv_features_at_224():
    head = LOCAL_HEADS.build("upconv", in_dim=32, hidden=16, dim=8)
    out = head(_map(32, 16, 16), MapBackbone(), (224, 224))
    assert out.desc.shape == (2, 61 * 61, 8) and out.xy.shape == (2, 61 * 61, 2) and out.weight.shape == (2, 61 * 61)
    torch.testing.assert_close(out.desc.norm(dim=-1), torch.ones(2, 61 * 61))
    xs = out.xy[0, :61, 0]
    torch.testing.assert_close(xs, 7.0 + 3.5 * torch.arange(61.0))  # patch centres 7 .. 217, a quarter patch apart
    assert torch.equal(out.xy[0, ::61, 1], xs)  # rows the same way


def test_upconv_positions_follow_the_convolution():
    """An impulse in patch (i, j) through centre-tap-only up-convolutions lands on the feature whose
    position is that patch's centre."""
    head = UpConvHead(in_dim=1, dim=1, hidden=1)
    with torch.no_grad():
        for conv in (head.upconv1, head.upconv2):
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
            conv.bias.zero_()
    fmap = torch.zeros(1, 1, 5, 7)
    fmap[0, 0, 3, 2] = 1.0
    out = head(fmap, MapBackbone(), (5 * 14, 7 * 14))
    hot = out.weight[0].argmax()
    assert out.weight[0].count_nonzero() == 1
    assert out.xy[0, hot].tolist() == [(2 + 0.5) * 14, (3 + 0.5) * 14]


def test_upconv_is_reproducible_from_its_seed():
    a, b, c = (LOCAL_HEADS.build("upconv", in_dim=8, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.upconv1.weight, b.upconv1.weight) and not torch.equal(a.upconv1.weight, c.upconv1.weight)


# ---- patch_tokens (ViTGaL) ----------------------------------------------------------------------------

def test_patch_tokens_has_vitgal_names():
    head = LOCAL_HEADS.build("patch_tokens", in_dim=384)
    names = set(head.state_dict())
    assert {"whitening_layer.weight", "ae_decoder_layer.bias", "cls_token", "norm.weight",
            "cls_attn_blocks.0.attn.q.weight", "cls_attn_blocks.0.attn.k.bias", "cls_attn_blocks.0.attn.v.weight",
            "cls_attn_blocks.0.gamma1", "cls_attn_blocks.0.mlp.fc2.weight"} <= names
    assert head.whitening_layer.weight.shape == (128, 384) and head.cls_attn_blocks[0].attn.num_heads == 8
    plain = LOCAL_HEADS.build("patch_tokens", in_dim=384, attention=False)
    assert set(plain.state_dict()) == {"whitening_layer.weight", "whitening_layer.bias", "ae_decoder_layer.weight",
                                       "ae_decoder_layer.bias"}


def test_patch_tokens_attention_is_the_class_attention_timm_computes():
    """Our scorer's attention, applied to the block's values, gives timm ClassAttn's own class-token output."""
    head = LOCAL_HEADS.build("patch_tokens", in_dim=64, dim=16, num_heads=4, cls_attn_layers=2).eval()
    tokens = torch.randn(2, 30, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        decoded = head.autoencode(tokens)
        attn = head.class_attention(decoded)  # (B, heads, N) over the patches
        assert attn.shape == (2, 4, 30) and (attn > 0).all() and (attn.sum(-1) < 1).all()  # the class token has a share
        x = torch.cat([head.cls_token.expand(2, -1, -1), decoded], dim=1)
        x = head.cls_attn_blocks[0](x)  # the last block's input
        blk = head.cls_attn_blocks[-1]
        xn = blk.norm1(x)
        v = blk.attn.v(xn).reshape(2, 31, 4, 16).transpose(1, 2)  # (B, heads, 1+N, d)
        cls_share = 1 - attn.sum(-1, keepdim=True)
        mixed = torch.cat([cls_share, attn], dim=-1).unsqueeze(2) @ v  # (B, heads, 1, d)
        ours = blk.attn.proj(mixed.transpose(1, 2).reshape(2, 1, 64))
        torch.testing.assert_close(ours, blk.attn(xn), atol=1e-5, rtol=1e-4)
        assert head.class_tokens(decoded).shape == (2, 64)


def test_patch_tokens_weight_is_the_head_averaged_attention():
    head = LOCAL_HEADS.build("patch_tokens", in_dim=64, dim=16, num_heads=4).eval()
    fmap = _map(64, 3, 5)
    with torch.no_grad():
        out = head(fmap, MapBackbone(), (48, 80))
        tokens = fmap.flatten(2).transpose(1, 2)
        attn = head.class_attention(head.autoencode(tokens))
    assert out.desc.shape == (2, 15, 16) and out.xy.shape == (2, 15, 2)
    torch.testing.assert_close(out.desc.norm(dim=-1), torch.ones(2, 15))
    expected = (attn / attn.amax(-1, keepdim=True)).mean(1)
    torch.testing.assert_close(out.weight, expected)
    assert out.weight.max() <= 1.0 and out.xy[0, 0].tolist() == [8.0, 8.0] and out.xy[0, -1].tolist() == [72.0, 40.0]


def test_patch_tokens_without_attention_weighs_by_token_norm():
    head = LOCAL_HEADS.build("patch_tokens", in_dim=64, dim=16, attention=False)
    fmap = _map(64, 3, 5)
    out = head(fmap, MapBackbone(), (48, 80))
    torch.testing.assert_close(out.weight, fmap.flatten(2).norm(dim=1))
    with pytest.raises(RuntimeError, match="attention: false"):
        head.class_attention(torch.zeros(1, 2, 64))


@pytest.mark.parametrize("options", [{"dim": 0}, {"num_heads": 5}, {"cls_attn_layers": 0}])
def test_patch_tokens_refuses_bad_options(options):
    with pytest.raises(ValueError, match="patch_tokens local head"):
        LOCAL_HEADS.build("patch_tokens", in_dim=64, **options)


def test_patch_tokens_checks_the_token_width():
    head: PatchTokenHead = LOCAL_HEADS.build("patch_tokens", in_dim=64, dim=16, num_heads=4)
    with pytest.raises(ValueError, match="built for 64-D tokens"):
        head(_map(32, 2, 2), MapBackbone(), (32, 32))
