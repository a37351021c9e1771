"""`xcit`: facebookresearch/xcit ImageNet checkpoints (`xcit_small_12_p16_224.pth` ...) -> timm XCiT names.
Also the fused-qkv split of the class-attention blocks that ViTGaL's key map reuses."""
from __future__ import annotations

from vpr_core.models.formats.keymap import BACKBONE_MODEL as BB
from vpr_core.models.formats.keymap import Drop, KeyMap, Rename, Split, register


def qkv_split(seed: str, ours: str) -> Split:
    """The reference class attention has a fused qkv projection; timm's has separate q, k, v."""
    return Split(seed + "cls_attn_blocks.{i:int}.attn.qkv.{p}",
                 tuple(ours + "cls_attn_blocks.{i}.attn." + part + ".{p}" for part in "qkv"))


XCIT = register(KeyMap(
    name="xcit",
    doc="facebookresearch/xcit ImageNet checkpoint ({'model': ...}) -> the timm XCiT backbone (family xcit). "
        "Covers the backbone only; the classifier is dropped.",
    rules=(
        qkv_split("", BB),
        Rename("pos_embeder.{rest:path}", BB + "pos_embed.{rest}"),
        Rename("{rest:path}", BB + "{rest}"),
    ),
    covers="backbone.",
    drops=(Drop("head.{p}", "ImageNet classifier"),),
    container=lambda state: {"model": state},
))
