"""vpr_core.models.formats: the seeds' checkpoint layouts, loaded through load_weights.

No published weights can be downloaded here, so every test builds a model with random weights, writes
them in the seed's own layout and container (`KeyMap.seed_file`, the inverse of loading), loads that file
into a second, differently initialised model, and checks the descriptors; then our own format
(`save_checkpoint` / "vpr_ros") must reproduce them bit for bit. Models keep the seeds' widths (ViT-S,
XCiT-S12, VGG16) with fewer blocks where depth does not change the key layout, to stay fast on 2 cores.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.config import ModelConfig
from vpr_core.models import VPRModel, build_model
from vpr_core.models.local import LocalOutput
from vpr_core.models.formats import KEYMAPS, Drop, KeyMap, Rename, Split, Template, keymap
from vpr_core.models.weights import CHECKPOINT_FORMATS, CheckpointError, load_weights, save_checkpoint

IMAGES = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(7))


def _model(backbone: Dict[str, Any], aggregator: Optional[Dict[str, Any]] = None,
           local_head: Optional[Dict[str, Any]] = None) -> VPRModel:
    cfg = ModelConfig(name="fmt", backbone=dict(backbone), aggregator=aggregator or {"name": "cls"},
                      local_head=dict(local_head or {}), checkpoint="")
    return build_model(cfg, load_checkpoint=False)


def _scramble(model: nn.Module, seed: int) -> nn.Module:
    """Give every floating tensor (buffers too) new random values, so no two models agree by chance."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                base = 3.0 if value.ndim == 0 else 1.0 if value.ndim == 1 else 0.0  # GeM p, norms and scales, weights
                value.copy_(torch.randn(value.shape, generator=gen) * 0.05 + base)
    return model


@torch.inference_mode()
def _describe(model: VPRModel) -> torch.Tensor:
    return model.eval()(IMAGES)


@torch.inference_mode()
def _describe_local(model: VPRModel) -> LocalOutput:
    return model.eval().forward_all(IMAGES).local


def _check_local(local: LocalOutput, count: int, dim: int) -> None:
    """`count` local features of `dim` channels per image: unit norm, finite weights, inside the input."""
    b, (h, w) = len(IMAGES), IMAGES.shape[-2:]
    assert local.desc.shape == (b, count, dim) and local.xy.shape == (b, count, 2) and local.weight.shape == (b, count)
    torch.testing.assert_close(local.desc.norm(dim=-1), torch.ones(b, count))
    assert torch.isfinite(local.weight).all()
    assert (local.xy >= 0).all() and (local.xy[..., 0] <= w).all() and (local.xy[..., 1] <= h).all()


def _same_state(a: nn.Module, b: nn.Module, prefix: str = "") -> bool:
    sa = {k: v for k, v in a.state_dict().items() if k.startswith(prefix)}
    sb = {k: v for k, v in b.state_dict().items() if k.startswith(prefix)}
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _write(tmp: Path, name: str, obj: Any) -> str:
    path = tmp / name
    torch.save(obj, path)
    return str(path)


def _roundtrip(fmt: str, source: VPRModel, target: VPRModel, tmp: Path, prefix: str = "") -> torch.Tensor:
    """seed file of `source` -> `target`; checks; then vpr_ros save -> load into `source` is bit-identical."""
    km = keymap(fmt)
    assert not _same_state(source, target, prefix or km.covers)
    seed_path = _write(tmp, f"{fmt}.pth", km.seed_file(source.state_dict()))
    assert load_weights(target, seed_path, fmt) == Path(seed_path)
    assert _same_state(source, target, prefix or km.covers)
    desc = _describe(target)
    assert desc.shape == (len(IMAGES), target.dim) and desc.dtype == torch.float32
    assert torch.isfinite(desc).all()
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(len(IMAGES)))
    local = _describe_local(target) if target.local_head is not None else None
    native = tmp / f"{fmt}_native.pth"
    save_checkpoint(target, native)
    _scramble(source, 99)
    load_weights(source, str(native), "vpr_ros")
    assert torch.equal(_describe(source), desc)
    if local is not None:  # local features reproduce bit for bit too
        again = _describe_local(source)
        assert all(torch.equal(getattr(again, f), getattr(local, f)) for f in ("desc", "xy", "weight"))
    return desc


def _invertible(km: KeyMap, model: nn.Module) -> None:
    state = model.state_dict()
    back = km.to_ours(km.to_seed(state), state)
    covered = {k for k in state if k.startswith(km.covers)}
    assert set(back) == covered
    assert all(torch.equal(back[k], state[k]) for k in covered)


def test_all_formats_are_registered():
    assert set(KEYMAPS) == {"dinov2_pretrain", "selavpr", "vitgal", "xcit", "netvlad_pth_tar", "timm_vit"}
    assert set(KEYMAPS) <= set(CHECKPOINT_FORMATS.names())


# ---- templates and key-map mechanics ---------------------------------------------------------------

def test_templates_match_and_format_both_ways():
    t = Template("transformers.{i+1}.pool.{rest:path}")
    assert t.match("transformers.2.pool.conv.weight") == {"i": "1", "rest": "conv.weight"}
    assert t.match("transformers.0.pool.conv.weight") is None  # index -1 does not exist
    assert t.format({"i": "0", "rest": "fc.bias"}) == "transformers.1.pool.fc.bias"
    assert Template("blocks.{i:int}.{p}").match("blocks.x.weight") is None
    assert Template("blocks.{i:int}.{p}").match("blocks.3.norm1.weight") is None  # {p} is one segment
    with pytest.raises(ValueError, match="twice"):
        Template("{a}.{a}")


def test_keymap_keeps_unknown_keys_and_refuses_collisions_and_bad_splits():
    km = KeyMap("toy", rules=(Split("qkv.{p}", ("q.{p}", "k.{p}", "v.{p}")), Rename("a.{p}", "x.a.{p}")),
                drops=(Drop("head.{p}", "classifier"),), aliases=(("old.{p}", "a.{p}"),))
    state = {"qkv.weight": torch.arange(6.0).reshape(6, 1), "a.w": torch.ones(1), "head.w": torch.ones(1),
             "stray": torch.ones(1)}
    out = km.to_ours(state)
    assert set(out) == {"q.weight", "k.weight", "v.weight", "x.a.w", "stray"}
    assert out["k.weight"].flatten().tolist() == [2.0, 3.0]
    assert km.to_seed({k: v for k, v in out.items() if k != "stray"}).keys() == {"qkv.weight", "a.w"}
    with pytest.raises(CheckpointError, match="'a.w'"):
        km.to_ours({"a.w": torch.ones(1), "old.w": torch.ones(1)})
    with pytest.raises(CheckpointError, match="qkv.weight.*3 equal parts"):
        km.to_ours({"qkv.weight": torch.ones(4, 2)})


# ---- DINOv2 pretrain (DINOVPR, SelaVPR's starting point) -----------------------------------------------

@pytest.fixture(scope="module")
def dino_pair():
    spec = {"name": "vit_small_patch14_dinov2", "family": "dinov2", "depth": 2}
    return _scramble(_model(spec), 1), _model(spec)


def test_dinov2_pretrain_layout(dino_pair):
    source, _ = dino_pair
    seed = keymap("dinov2_pretrain").to_seed(source.state_dict())
    assert {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "norm.weight",
            "blocks.1.ls1.gamma", "blocks.1.attn.qkv.weight", "blocks.1.mlp.fc1.weight",
            "blocks.1.ls2.gamma"} <= set(seed)
    assert seed["pos_embed"].shape == (1, 1 + 37 * 37, 384) and seed["mask_token"].shape == (1, 384)
    assert not any(k.startswith(("backbone.", "model.")) for k in seed)
    _invertible(keymap("dinov2_pretrain"), source)


def test_dinov2_pretrain_loads_and_reproduces(dino_pair, tmp_path):
    source, target = dino_pair
    _roundtrip("dinov2_pretrain", source, target, tmp_path)


def test_dinov2_giant_swiglu_names():
    giant = _model({"name": "vit_giant_patch14_dinov2", "embed_dim": 48, "num_heads": 2, "depth": 1})
    km = keymap("dinov2_pretrain")
    seed = km.to_seed(giant.state_dict())
    assert {"blocks.0.mlp.w12.weight", "blocks.0.mlp.w3.bias"} <= set(seed)
    assert not any(".mlp.fc" in k for k in seed)
    assert seed["blocks.0.mlp.w12.weight"].shape[0] == 2 * seed["blocks.0.mlp.w3.weight"].shape[1]
    _invertible(km, giant)


def test_dinov2_registers_fold_the_class_position_into_the_class_token():
    model = _scramble(_model({"name": "vit_small_patch14_reg4_dinov2", "depth": 1}), 2)
    km = keymap("dinov2_pretrain")
    seed = km.to_seed(model.state_dict())
    assert seed["register_tokens"].shape == (1, 4, 384) and seed["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    seed["pos_embed"][:, 0] = 0.5  # the reference model adds this position to its class token
    ours = km.to_ours(seed, model.state_dict())
    sd = model.state_dict()
    torch.testing.assert_close(ours["backbone.model.cls_token"], sd["backbone.model.cls_token"] + 0.5)
    assert torch.equal(ours["backbone.model.pos_embed"], sd["backbone.model.pos_embed"])
    assert torch.equal(ours["backbone.model.reg_token"], sd["backbone.model.reg_token"])
    _invertible(km, model)


def test_dinov2_chunked_block_layout_is_accepted(dino_pair, tmp_path):
    source, target = dino_pair
    seed = keymap("dinov2_pretrain").to_seed(source.state_dict())
    chunked = {(k.replace("blocks.", "blocks.0.", 1) if k.startswith("blocks.") else k): v for k, v in seed.items()}
    load_weights(target, _write(tmp_path, "chunked.pth", chunked), "dinov2_pretrain")
    assert _same_state(source, target, "backbone.")


def test_renamed_seed_key_is_reported_by_name(dino_pair, tmp_path):
    source, target = dino_pair
    seed = keymap("dinov2_pretrain").to_seed(source.state_dict())
    seed["blocks.1.attn.qkvx.weight"] = seed.pop("blocks.1.attn.qkv.weight")
    seed["extra_token"] = torch.zeros(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights(target, _write(tmp_path, "renamed.pth", seed), "dinov2_pretrain")
    msg = str(info.value)
    assert "1 missing key(s): backbone.model.blocks.1.attn.qkv.weight" in msg
    assert "backbone.model.blocks.1.attn.qkvx.weight" in msg and "extra_token" in msg
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing loaded


def test_wrong_shape_is_reported_by_name(dino_pair, tmp_path):
    source, target = dino_pair
    seed = keymap("dinov2_pretrain").to_seed(source.state_dict())
    seed["pos_embed"] = seed["pos_embed"][:, :257]  # a 224-pixel grid instead of DINOv2's 518
    with pytest.raises(CheckpointError) as info:
        load_weights(target, _write(tmp_path, "shape.pth", seed), "dinov2_pretrain")
    assert "backbone.model.pos_embed: checkpoint (1, 257, 384) vs model (1, 1370, 384)" in str(info.value)


# ---- SelaVPR ---------------------------------------------------------------------------------------

SELA_SPEC = {"name": "vit_small_patch14_dinov2", "family": "dinov2_adapter", "depth": 2}


def _sela(local: bool = True) -> VPRModel:
    """SelaVPR's layout at ViT-S width: adapters, GeM on L2-normalised tokens, and our `upconv` local head
    (SelaVPR's LocalAdapt: up-convolutions in_dim -> 256 -> 128, the published names upconv1 / upconv2)."""
    return _model(SELA_SPEC, {"name": "gem", "normalize": True}, {"name": "upconv"} if local else None)


@pytest.fixture(scope="module")
def sela_pair():
    return _scramble(_sela(), 3), _sela()


def test_selavpr_layout(sela_pair):
    source, _ = sela_pair
    km = keymap("selavpr")
    seed = km.to_seed(source.state_dict())
    assert {"backbone.blocks.1.adapter1.D_fc1.weight", "backbone.blocks.1.adapter2.D_fc2.bias",
            "backbone.blocks.1.attn.qkv.weight", "backbone.mask_token", "aggregation.1.p",
            "LocalAdapt.upconv1.weight", "LocalAdapt.upconv2.bias"} <= set(seed)
    assert {k for k in seed if k.startswith("LocalAdapt.")} == {f"LocalAdapt.upconv{i}.{p}" for i in (1, 2)
                                                              for p in ("weight", "bias")}
    # ConvTranspose2d weights are (in, out, 3, 3): SelaVPR's 1024 -> 256 -> 128, here 384 -> 256 -> 128
    assert seed["LocalAdapt.upconv1.weight"].shape == (384, 256, 3, 3)
    assert seed["LocalAdapt.upconv2.weight"].shape == (256, 128, 3, 3)
    assert seed["aggregation.1.p"].shape == (1,) and source.state_dict()["aggregator.p"].shape == ()
    assert set(km.seed_file(source.state_dict())) == {"model_state_dict", "epoch_num", "best_r5", "not_improved_num"}
    assert all(k.startswith("module.") for k in km.seed_file(source.state_dict())["model_state_dict"])
    _invertible(km, source)


def test_selavpr_loads_and_reproduces(sela_pair, tmp_path):
    source, target = sela_pair
    _roundtrip("selavpr", source, target, tmp_path)


def test_selavpr_local_head_loads_strictly_and_gives_dense_features(sela_pair, tmp_path):
    """A SelaVPR file with LocalAdapt fills our upconv head exactly; 8x8 patches -> 29x29 dense 128-D features."""
    source, target = sela_pair
    _scramble(target, 31)
    path = _write(tmp_path, "sela_local.pth", keymap("selavpr").seed_file(source.state_dict()))
    load_weights(target, path, "selavpr")
    assert _same_state(source, target)  # the whole model, local head included
    local = _describe_local(target)
    _check_local(local, 29 * 29, 128)
    assert local.xy[0, 0].tolist() == [7.0, 7.0] and local.xy[0, -1].tolist() == [105.0, 105.0]  # patch centres
    torch.testing.assert_close(local.xy[0, 1, 0] - local.xy[0, 0, 0], torch.tensor(14 / 4))  # a quarter patch


def test_selavpr_missing_local_head_key_is_named(sela_pair, tmp_path):
    source, target = sela_pair
    obj = keymap("selavpr").seed_file(source.state_dict())
    del obj["model_state_dict"]["module.LocalAdapt.upconv2.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): local_head\.upconv2\.bias"):
        load_weights(target, _write(tmp_path, "no_bias.pth", obj), "selavpr")


def test_selavpr_global_only_model_skips_the_local_head(sela_pair, tmp_path):
    source, target = sela_pair
    path = _write(tmp_path, "sela.pth", keymap("selavpr").seed_file(source.state_dict()))
    global_only = _scramble(_sela(local=False), 4)
    load_weights(global_only, path, "selavpr")
    assert _same_state(source, global_only, "backbone.") and _same_state(source, global_only, "aggregator.")


def test_dinov2_pretrain_into_the_adapter_model_keeps_the_adapters(dino_pair, sela_pair, tmp_path):
    dino, _ = dino_pair
    _, adapted = sela_pair
    adapters = {k: v.clone() for k, v in adapted.state_dict().items() if ".adapter" in k}
    path = _write(tmp_path, "dino.pth", keymap("dinov2_pretrain").seed_file(dino.state_dict()))
    load_weights(adapted, path, "dinov2_pretrain")
    state = adapted.state_dict()
    assert all(torch.equal(state[k], v) for k, v in adapters.items())
    assert all(torch.equal(state[k], v) for k, v in dino.state_dict().items() if k.startswith("backbone."))


# ---- ViTGaL and XCiT -----------------------------------------------------------------------------------

VITGAL_SPEC = {"name": "xcit_small_12_p16_224", "family": "vitgal", "depth": 2}


def _vitgal(attention: bool = True) -> VPRModel:
    """ViTGaL's layout: XCiT-S12 width (2 blocks), our `patch_tokens` head (ViTGaL's reduction autoencoder
    384 -> 128 -> 384 and, with `attention`, its class-token scorer: one 8-head class-attention block + norm)."""
    return _model(VITGAL_SPEC, local_head={"name": "patch_tokens", "dim": 128, "attention": attention})


@pytest.fixture(scope="module")
def vitgal_pair():
    return _scramble(_vitgal(), 5), _vitgal()


def test_vitgal_layout_fuses_qkv_and_names_the_autoencoder(vitgal_pair):
    source, _ = vitgal_pair
    km = keymap("vitgal")
    seed = km.to_seed(source.state_dict())
    sd = source.state_dict()
    assert {"retrieval_back_bone.pos_embeder.token_projection.weight", "retrieval_back_bone.cls_token",
            "retrieval_back_bone.local_atrous.dilated_convs.4.weight", "retrieval_back_bone.blocks.1.gamma3",
            "whitening_layer.weight", "ae_decoder_layer.bias", "cls_token", "norm.weight",
            "cls_attn_blocks.0.attn.qkv.weight"} <= set(seed)
    assert not any(".attn.q." in k for k in seed)
    base = "backbone.model.cls_attn_blocks.0.attn."
    qkv = seed["retrieval_back_bone.cls_attn_blocks.0.attn.qkv.weight"]
    assert torch.equal(qkv, torch.cat([sd[base + p + ".weight"] for p in "qkv"]))
    # the local head: exactly XCiTRetrievalLocalReductionAE's tensors (its classifier `head` aside)
    head = {k for k in seed if not k.startswith("retrieval_back_bone.")}
    block = {f"cls_attn_blocks.0.{n}" for n in ("gamma1", "gamma2", "norm1.weight", "norm1.bias", "attn.qkv.weight",
                                                "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight",
                                                "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
                                                "mlp.fc2.bias")}
    assert head == {"cls_token", "whitening_layer.weight", "whitening_layer.bias", "ae_decoder_layer.weight",
                    "ae_decoder_layer.bias", "norm.weight", "norm.bias"} | block
    assert seed["whitening_layer.weight"].shape == (128, 384) and seed["ae_decoder_layer.weight"].shape == (384, 128)
    assert seed["cls_token"].shape == (1, 1, 384) and seed["cls_attn_blocks.0.attn.qkv.weight"].shape == (3 * 384, 384)
    _invertible(km, source)


def test_vitgal_loads_drops_the_classifiers_and_reproduces(vitgal_pair, tmp_path):
    source, target = vitgal_pair
    km = keymap("vitgal")
    obj = km.seed_file(source.state_dict())
    obj["model"]["head.weight"] = torch.zeros(10, 384)  # training classifiers are dropped
    obj["model"]["retrieval_back_bone.head.weight"] = torch.zeros(10, 384)
    torch.save(obj, tmp_path / "ckpt.pth")
    load_weights(target, str(tmp_path / "ckpt.pth"), "vitgal")
    assert _same_state(source, target)
    _roundtrip("vitgal", _scramble(source, 6), target, tmp_path)


def test_vitgal_local_head_loads_strictly_and_scores_keypoints_like_vitgal(vitgal_pair, tmp_path):
    """A ViTGaL file fills the whole head; descriptors = L2-normalised whitening output, weight = ViTGaL's
    keypoint score, recomputed here from the file's own tensors (fused qkv) the way ViTGaL's code does it."""
    source, target = vitgal_pair
    _scramble(target, 41)
    seed = keymap("vitgal").to_seed(source.state_dict())
    load_weights(target, _write(tmp_path, "vitgal_local.pth", {"model": seed}), "vitgal")
    assert _same_state(source, target)
    local = _describe_local(target)
    _check_local(local, 7 * 7, 128)  # 112 px / 16 -> 7 x 7 patches
    with torch.inference_mode():
        tokens, _ = target.local_head.tokens(target.backbone(IMAGES), target.backbone, IMAGES.shape[-2:])
        reduced = F.linear(tokens, seed["whitening_layer.weight"], seed["whitening_layer.bias"])
        torch.testing.assert_close(local.desc, F.normalize(reduced, dim=-1))
        x = torch.cat([seed["cls_token"].expand(len(IMAGES), -1, -1),
                       F.linear(reduced, seed["ae_decoder_layer.weight"], seed["ae_decoder_layer.bias"])], dim=1)
        b, n, c = x.shape
        x = F.layer_norm(x, (c,), seed["cls_attn_blocks.0.norm1.weight"], seed["cls_attn_blocks.0.norm1.bias"], 1e-6)
        qkv = F.linear(x, seed["cls_attn_blocks.0.attn.qkv.weight"], seed["cls_attn_blocks.0.attn.qkv.bias"])
        q, k, _ = qkv.reshape(b, n, 3, 8, c // 8).permute(2, 0, 3, 1, 4)
        attn = ((q[:, :, :1] * k).sum(-1) * (c // 8) ** -0.5).softmax(-1)[:, :, 1:]  # (B, heads, patches)
        score = (attn / attn.max(dim=-1, keepdim=True).values).mean(dim=1)
    torch.testing.assert_close(local.weight, score)


def test_vitgal_missing_local_head_key_is_named(vitgal_pair, tmp_path):
    source, target = vitgal_pair
    obj = keymap("vitgal").seed_file(source.state_dict())
    del obj["model"]["whitening_layer.bias"], obj["model"]["cls_token"]
    with pytest.raises(CheckpointError, match=r"2 missing key\(s\): local_head\.cls_token, "
                                              r"local_head\.whitening_layer\.bias"):
        load_weights(target, _write(tmp_path, "no_whitening_bias.pth", obj), "vitgal")


def test_vitgal_into_a_head_without_the_scorer(vitgal_pair, tmp_path):
    """`attention: false` keeps the autoencoder only: the file's scorer tensors are skipped, the descriptors
    are those of the full head, the weight is the token norm."""
    source, target = vitgal_pair
    path = _write(tmp_path, "vitgal.pth", keymap("vitgal").seed_file(source.state_dict()))
    plain = _scramble(_vitgal(attention=False), 42)
    assert not any(k.startswith(("local_head.cls", "local_head.norm")) for k in plain.state_dict())
    load_weights(plain, path, "vitgal")
    assert _same_state(source, plain, "backbone.") and _same_state(source, plain, "local_head.whitening_layer.")
    load_weights(target, path, "vitgal")
    full, reduced = _describe_local(target), _describe_local(plain)
    assert torch.equal(reduced.desc, full.desc) and not torch.equal(reduced.weight, full.weight)
    global_only = _scramble(_model(VITGAL_SPEC), 43)
    load_weights(global_only, path, "vitgal")
    assert _same_state(source, global_only, "backbone.")


def test_xcit_official_imagenet_layout(tmp_path):
    spec = {"name": "xcit_nano_12_p16_224", "depth": 2}
    source, target = _scramble(_model(spec), 8), _model(spec)
    seed = keymap("xcit").to_seed(source.state_dict())
    assert {"pos_embeder.token_projection.bias", "cls_attn_blocks.1.attn.qkv.bias"} <= set(seed)
    _invertible(keymap("xcit"), source)
    _roundtrip("xcit", source, target, tmp_path)


# ---- ClusVPR / NetVLAD (OpenIBL .pth.tar) -------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg_pair():
    """VGG16 + our `netvlad` aggregator (8 clusters), the source one initialised and scrambled."""
    def make() -> VPRModel:
        return _model({"name": "vgg16"}, {"name": "netvlad", "clusters": 8})
    source = make()
    gen = torch.Generator().manual_seed(9)
    source.aggregator.init_from_clusters(torch.randn(8, 512, generator=gen), torch.randn(64, 512, generator=gen))
    return _scramble(source, 9), make()


def test_netvlad_layout(vgg_pair):
    source, _ = vgg_pair
    km = keymap("netvlad_pth_tar")
    obj = km.seed_file(source.state_dict())
    assert set(obj) == {"state_dict", "epoch", "best_recall5"}
    keys = set(obj["state_dict"])
    assert {"module.base_model.base.0.weight", "module.base_model.base.28.bias", "module.net_vlad.centroids",
            "module.net_vlad.conv.weight"} == {k for k in keys if k.endswith(("base.0.weight", "base.28.bias",
                                                                                "centroids", "conv.weight"))}
    assert len(keys) == 26 + 2 and not any("initialised" in k for k in keys)  # OpenIBL has no such flag
    _invertible(km, source)


def test_netvlad_loads_and_reproduces(vgg_pair, tmp_path):
    source, target = vgg_pair
    assert not target.aggregator.is_initialised
    desc = _roundtrip("netvlad_pth_tar", source, target, tmp_path)
    assert desc.shape == (2, 8 * 512) and target.aggregator.is_initialised


def test_clusvpr_extra_layers_are_reported_by_name(vgg_pair, tmp_path):
    """ClusVPR's published layer has tensors our netvlad aggregator lacks: named, nothing loaded."""
    source, target = vgg_pair
    obj = keymap("netvlad_pth_tar").seed_file(source.state_dict())
    obj["state_dict"]["module.net_vlad.linear1.weight"] = torch.zeros(1024, 512)
    obj["state_dict"]["module.net_vlad.GeM_pool.p"] = torch.full((1200,), 3.0)
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): aggregator.GeM_pool.p, aggregator.linear1.weight"):
        load_weights(target, _write(tmp_path, "clusvpr.pth.tar", obj), "netvlad_pth_tar")


def test_netvlad_accepts_features_spelling(vgg_pair, tmp_path):
    source, target = vgg_pair
    seed = keymap("netvlad_pth_tar").to_seed(source.state_dict())
    renamed = {k.replace("base_model.base.", "base_model.features."): v for k, v in seed.items()}
    load_weights(target, _write(tmp_path, "features.pth.tar", {"state_dict": renamed}), "netvlad_pth_tar")
    assert _same_state(source, target)


# ---- timm-layout ViTs (VisionTransformerVPR: DeiT, PiT, CaiT) -------------------------------------------

def test_timm_vit_deit_with_heads_and_model_prefix(tmp_path):
    spec = {"name": "deit_small_patch16_224", "depth": 2}
    source, target = _scramble(_model(spec), 10), _model(spec)
    km = keymap("timm_vit")
    seed = km.to_seed(source.state_dict())
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.attn.qkv.weight"} <= set(seed)
    _invertible(km, source)
    prefixed = {f"model.{k}": v for k, v in seed.items()}
    prefixed.update({"model.head.weight": torch.zeros(5, 384), "model.head.bias": torch.zeros(5)})
    load_weights(target, _write(tmp_path, "deit_vpr.pth", prefixed), "timm_vit")
    assert _same_state(source, target, "backbone.")
    _roundtrip("timm_vit", _scramble(source, 11), target, tmp_path)


def test_timm_vit_pit_official_pools_layout(tmp_path):
    source, target = _scramble(_model({"name": "pit_ti_224"}), 12), _model({"name": "pit_ti_224"})
    km = keymap("timm_vit")
    seed = km.to_seed(source.state_dict())
    assert {"pools.0.conv.weight", "pools.1.fc.bias"} <= set(seed) and not any(".pool." in k for k in seed)
    _invertible(km, source)
    _roundtrip("timm_vit", source, target, tmp_path)
    # timm's own PiT files already say transformers.N.pool: they load as they are
    timm_layout = {k[len("backbone.model."):]: v for k, v in source.state_dict().items()}
    load_weights(target, _write(tmp_path, "pit_timm.pth", timm_layout), "timm_vit")
    assert _same_state(source, target, "backbone.")
