"""vpr_core.models.backbones: every seed's backbone family through build_model (random init, no checkpoint),
at the seeds' own and at non-default input sizes.

Each model is built once per module. Where only the mechanism matters (adapters, the ViTGaL variant,
CaiT) a 2-block model of the same width stands in for the full depth, to keep the file fast on 2 cores.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import pytest
import torch
from timm.models.vision_transformer import Block

from vpr_core.config import ModelConfig
from vpr_core.models import VPRModel, build_model
from vpr_core.models.backbones import BACKBONES
from vpr_core.models.backbones.dinov2_adapter import AdaptedBlock
from vpr_core.models.backbones.timm_backbone import family_for
from vpr_core.models.backbones.vit import dinov2_resample


def _model(backbone: Dict[str, Any], aggregator: Optional[Dict[str, Any]] = None) -> VPRModel:
    cfg = ModelConfig(name="zoo", backbone=dict(backbone), aggregator=aggregator or {"name": "gem"}, checkpoint="")
    return build_model(cfg, load_checkpoint=False)


def _images(hw: Tuple[int, int], n: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, *hw, generator=torch.Generator().manual_seed(hw[0] * 1000 + hw[1]))


@torch.inference_mode()
def _run(model: VPRModel, hw: Tuple[int, int], n: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """(backbone output, global descriptor) for n random images of size hw."""
    x = _images(hw, n)
    return model.backbone(x), model(x)


def _check_desc(desc: torch.Tensor, dim: int, n: int = 1) -> None:
    assert desc.shape == (n, dim) and desc.dtype == torch.float32
    assert torch.isfinite(desc).all()
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(n))


# ---- the default family picks the right wrapper ----------------------------------------------------

@pytest.mark.parametrize("name, family", [
    ("deit_small_patch16_224", "vit"), ("deit_base_patch16_224", "vit"), ("deit_small_distilled_patch16_224", "vit"),
    ("cait_s24_224", "vit"), ("pit_s_224", "pit"), ("pit_b_224", "pit"),
    ("vit_small_patch14_dinov2", "dinov2"), ("vit_giant_patch14_dinov2", "dinov2"),
    ("vit_small_patch14_reg4_dinov2", "dinov2"), ("xcit_small_12_p16_224", "xcit"),
    ("xcit_small_24_p16_224", "xcit"), ("vgg16", "vgg"), ("resnet50", "resnet"), ("tf_efficientnet_lite0", ""),
])
def test_timm_family_routes_each_architecture_to_its_family(name, family):
    assert family_for(name) == family


@pytest.mark.parametrize("family, name", [("pit", "deit_small_patch16_224"), ("vgg", "resnet50"),
                                          ("dinov2", "deit_small_patch16_224"), ("xcit", "vgg16"),
                                          ("vit", "pit_s_224"), ("resnet", "vgg16")])
def test_a_family_refuses_another_architecture(family, name):
    with pytest.raises(ValueError, match=name):
        BACKBONES.build(family, name=name)


# ---- VisionTransformerVPR: DeiT, PiT, CaiT ---------------------------------------------------------------

@pytest.fixture(scope="module")
def deit():
    return _model({"name": "deit_small_patch16_224"}, {"name": "cls"})


def test_deit_tokens_and_cls_descriptor_at_224_and_other_sizes(deit):
    bb = deit.backbone
    assert (bb.num_features, bb.num_prefix_tokens, bb.stride) == (384, 1, 16)
    assert bb.default_mean == (0.485, 0.456, 0.406)
    for hw, grid in (((224, 224), (14, 14)), ((160, 256), (10, 16))):
        tokens, desc = _run(deit, hw, n=2)
        assert tokens.shape == (2, 1 + grid[0] * grid[1], 384)
        assert bb.to_map(tokens, hw).shape == (2, 384, *grid)
        _check_desc(desc, 384, n=2)
        torch.testing.assert_close(desc, torch.nn.functional.normalize(tokens[:, 0], dim=-1))


def test_deit_at_its_native_size_is_timm_forward_features(deit):
    x = _images((224, 224))
    with torch.inference_mode():
        torch.testing.assert_close(deit.backbone(x), deit.backbone.model.forward_features(x), rtol=0, atol=0)


def test_vit_input_must_be_a_multiple_of_the_patch(deit):
    with pytest.raises(ValueError, match=r"multiple of the 16-pixel patch.*e\.g\. \[320, 336\]"):
        _run(deit, (224, 322))


def test_pit_gives_class_tokens_only_and_works_with_cls():
    model = _model({"name": "pit_s_224"}, {"name": "cls"})
    bb = model.backbone
    assert (bb.num_features, bb.num_prefix_tokens) == (576, 1)
    x = _images((224, 224))
    with torch.inference_mode():  # native size: exactly timm's forward_features
        torch.testing.assert_close(bb(x), bb.model.forward_features(x), rtol=0, atol=0)
    for hw in ((224, 224), (192, 256)):  # other sizes: the position grid is resampled
        tokens, desc = _run(model, hw)
        assert tokens.shape == (1, 1, 576)
        _check_desc(desc, 576)
    with pytest.raises(ValueError, match="no patch-token map"):
        bb.to_map(tokens, (192, 256))


def test_cait_resamples_its_position_grid():
    model = _model({"name": "cait_s24_224", "depth": 2}, {"name": "cls"})
    bb = model.backbone
    x = _images((224, 224))
    with torch.inference_mode():
        torch.testing.assert_close(bb(x), bb.model.forward_features(x), rtol=0, atol=0)
    tokens, desc = _run(model, (160, 256))
    assert tokens.shape == (1, 1 + 10 * 16, 384) and bb.num_prefix_tokens == 1
    assert bb.to_map(tokens, (160, 256)).shape == (1, 384, 10, 16)
    _check_desc(desc, 384)


# ---- DINOv2 (DINOVPR) ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dinov2():
    return _model({"name": "vit_small_patch14_dinov2", "family": "dinov2"}, {"name": "cls"})


@pytest.mark.parametrize("hw, grid", [((224, 224), (16, 16)), ((322, 322), (23, 23)), ((238, 322), (17, 23))])
def test_dinov2_runs_below_its_518_default(dinov2, hw, grid):
    bb = dinov2.backbone
    assert (bb.num_features, bb.num_prefix_tokens, bb.stride) == (384, 1, 14)
    tokens, desc = _run(dinov2, hw)
    assert tokens.shape == (1, 1 + grid[0] * grid[1], 384)
    assert bb.to_map(tokens, hw).shape == (1, 384, *grid)
    _check_desc(desc, 384)


def test_dinov2_position_resampling(dinov2):
    bb = dinov2.backbone
    pos = bb.model.pos_embed[:, 1:]
    assert bb.model.patch_embed.grid_size == (37, 37)
    assert dinov2_resample(pos, (37, 37), (37, 37)) is pos  # native grid: untouched
    assert dinov2_resample(pos, (37, 37), (16, 23)).shape == (1, 16 * 23, 384)
    # the reference (bicubic, no antialias) and timm's (antialiased) resampling differ below 518
    x = _images((224, 224))
    with torch.inference_mode():
        ours = bb(x)
        bb.pos_interp = "timm"
        try:
            theirs = bb(x)
        finally:
            bb.pos_interp = "dinov2"
    assert ours.shape == theirs.shape and not torch.equal(ours, theirs)


def test_dinov2_with_registers_has_five_prefix_tokens():
    model = _model({"name": "vit_small_patch14_reg4_dinov2", "depth": 2})
    bb = model.backbone
    assert bb.num_prefix_tokens == 5 and bb.model.no_embed_class
    tokens, desc = _run(model, (224, 224))
    assert tokens.shape == (1, 5 + 16 * 16, 384)
    assert bb.to_map(tokens, (224, 224)).shape == (1, 384, 16, 16)
    _check_desc(desc, 384)


# ---- SelaVPR: DINOv2 + adapters --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapter_pair():
    """(plain DINOv2, the adapter model holding the same DINOv2 weights), 2 blocks of ViT-S."""
    plain = _model({"name": "vit_small_patch14_dinov2", "family": "dinov2", "depth": 2})
    adapted = _model({"name": "vit_small_patch14_dinov2", "family": "dinov2_adapter", "depth": 2})
    missing, unexpected = adapted.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".adapter" in k for k in missing)
    return plain, adapted


def test_fresh_adapters_leave_dinov2_exactly_unchanged(adapter_pair):
    plain, adapted = adapter_pair
    x = _images((112, 140), n=2)
    with torch.inference_mode():
        assert torch.equal(adapted.backbone(x), plain.backbone(x))
        assert torch.equal(adapted(x), plain(x))


def test_adapters_train_and_dinov2_is_frozen(adapter_pair):
    _, adapted = adapter_pair
    bb = adapted.backbone
    blocks = list(bb.model.blocks)
    assert all(type(b) is AdaptedBlock and isinstance(b, Block) for b in blocks)
    trainable = {n for n, p in bb.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in bb.model.named_parameters() if ".adapter" in n}
    assert trainable and len(bb.adapter_parameters()) == len(trainable)
    a1 = blocks[0].adapter1
    assert (a1.fc1.in_features, a1.fc1.out_features, a1.fc2.out_features) == (384, 192, 384)  # ratio 0.5
    assert isinstance(a1.act, torch.nn.ReLU) and blocks[0].mlp_scale == 0.2
    assert torch.count_nonzero(a1.fc2.weight) == 0 and torch.count_nonzero(blocks[0].adapter2.fc2.weight) == 0


def test_adapter_block_follows_the_selavpr_equations(adapter_pair):
    """x' = x + LS1(a + A1(a)), a = Attn(LN1 x);  out = x' + LS2(MLP(LN2 x') + 0.2 * A2(LN2 x'))."""
    _, adapted = adapter_pair
    block = adapted.backbone.model.blocks[0]
    gen = torch.Generator().manual_seed(0)
    saved = {k: v.clone() for k, v in block.state_dict().items()}
    try:
        with torch.no_grad():
            for p in list(block.adapter1.parameters()) + list(block.adapter2.parameters()):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            for ls in (block.ls1, block.ls2):
                ls.gamma.copy_(torch.rand(ls.gamma.shape, generator=gen) + 0.5)
            x = torch.randn(2, 9, 384, generator=gen)
            a = block.attn(block.norm1(x))
            mid = x + block.ls1(a + block.adapter1.fc2(torch.relu(block.adapter1.fc1(a))))
            h = block.norm2(mid)
            ad2 = block.adapter2.fc2(torch.relu(block.adapter2.fc1(h)))
            expected = mid + block.ls2(block.mlp(h) + 0.2 * ad2)
            torch.testing.assert_close(block(x), expected)
    finally:
        block.load_state_dict(saved)


def test_adapter_options():
    bb = BACKBONES.build("dinov2_adapter", name="vit_small_patch14_dinov2", depth=1, adapter_ratio=0.25,
                         mlp_scale=0.5, adapter_act="gelu", freeze_backbone=False)
    block = bb.model.blocks[0]
    assert block.adapter2.fc1.out_features == 96 and block.mlp_scale == 0.5
    assert isinstance(block.adapter1.act, torch.nn.GELU)
    assert all(p.requires_grad for p in bb.parameters())
    with pytest.raises(ValueError, match="adapter_act"):
        BACKBONES.build("dinov2_adapter", name="vit_small_patch14_dinov2", depth=1, adapter_act="tanh")


# ---- ViTGaL: XCiT --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def xcit():
    return _model({"name": "xcit_small_12_p16_224"}, {"name": "cls"})


def test_xcit_tokens_are_timm_forward_features(xcit):
    bb = xcit.backbone
    assert (bb.num_features, bb.num_prefix_tokens, bb.stride) == (384, 1, 16)
    assert len(bb.model.cls_attn_blocks) == 2 and not bb.multi_atrous
    x = _images((224, 224))
    with torch.inference_mode():
        out = bb.forward_tokens(x)
        torch.testing.assert_close(out.tokens, bb.model.forward_features(x), rtol=0, atol=0)
    assert out.tokens.shape == (1, 197, 384) and out.pre_cls_patches.shape == (1, 196, 384)
    assert out.grid == (14, 14)


@pytest.mark.parametrize("hw, grid", [((224, 224), (14, 14)), ((240, 320), (15, 20)), ((200, 312), (13, 20))])
def test_xcit_any_size_grid_rounds_up(xcit, hw, grid):
    """Four stride-2 convs with padding: a side of n pixels gives ceil(n / 16) cells."""
    tokens, desc = _run(xcit, hw)
    assert xcit.backbone.grid_hw(hw) == grid
    assert tokens.shape == (1, 1 + grid[0] * grid[1], 384)
    assert xcit.backbone.to_map(tokens, hw).shape == (1, 384, *grid)
    _check_desc(desc, 384)


def test_vitgal_variant_structure_and_forward():
    model = _model({"name": "xcit_small_12_p16_224", "family": "vitgal", "depth": 2}, {"name": "cls"})
    bb = model.backbone
    m = bb.model
    assert len(m.cls_attn_blocks) == 1 and bb.multi_atrous and bb.repeat_last_cls_block
    assert [c.dilation[0] for c in m.local_atrous.dilated_convs] == [1, 3, 6, 9, 12]
    assert m.local_atrous.gap_branch[1].out_channels == 384 - 5 * 64
    x = _images((160, 224))
    with torch.inference_mode():
        out = bb.forward_tokens(x)
        h, w = out.grid
        assert (h, w) == (10, 14) and out.tokens.shape == (1, 1 + h * w, 384)
        # the published ViTGaL forward: blocks -> multi-atrous -> [cls] + patches -> CA block twice -> norm
        y, _ = m.patch_embed(x)
        y = y + m.pos_embed(1, h, w).reshape(1, -1, y.shape[1]).transpose(1, 2)
        for blk in m.blocks:
            y = blk(y, h, w)
        y = m.local_atrous(y, h, w)
        torch.testing.assert_close(bb.patch_tokens(x), y)
        y = torch.cat([m.cls_token.expand(1, -1, -1), y], dim=1)
        y = m.norm(m.cls_attn_blocks[0](m.cls_attn_blocks[0](y)))
        torch.testing.assert_close(out.tokens, y)
        _check_desc(model(x), 384)


# ---- ClusVPR: VGG16; MixVPR: ResNet-50 ----------------------------------------------------------------

def test_vgg16_conv5_map_without_the_last_pool():
    model = _model({"name": "vgg16"})
    bb = model.backbone
    assert (bb.num_features, bb.stride, bb.num_prefix_tokens) == (512, 16, 0)
    keys = [k for k in bb.state_dict()]
    assert keys[-2:] == ["model.features.28.weight", "model.features.28.bias"] and len(keys) == 26
    fmap, desc = _run(model, (224, 224))
    assert fmap.shape == (1, 512, 14, 14) and (fmap < 0).any()  # conv5_3 before its ReLU (NetVLAD's cut)
    _check_desc(desc, 512)
    fmap, _ = _run(model, (120, 160))
    assert fmap.shape == (1, 512, 7, 10) and bb.to_map(fmap, (120, 160)) is fmap
    relu = BACKBONES.build("vgg", name="vgg16", last_relu=True).eval()
    with torch.inference_mode():
        assert relu(_images((64, 64))).min() >= 0
    assert len(relu.model.features) == 30


@pytest.mark.parametrize("out_stage, chans, stride", [(3, 1024, 16), (4, 2048, 32)])
def test_resnet50_stages(out_stage, chans, stride):
    model = _model({"name": "resnet50", "family": "resnet", "out_stage": out_stage})
    bb = model.backbone
    assert (bb.num_features, bb.stride) == (chans, stride)
    assert any(k.startswith("model.layer4.") for k in bb.state_dict()) == (out_stage == 4)
    fmap, desc = _run(model, (320, 320))
    assert fmap.shape == (1, chans, 320 // stride, 320 // stride)
    _check_desc(desc, chans)
