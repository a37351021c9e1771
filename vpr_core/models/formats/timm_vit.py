"""`timm_vit`: timm-layout ViT / DeiT / CaiT / PiT state dicts (official files, timm files,
VisionTransformerVPR's backbones) -> backbone.model.*, as one key map."""
from __future__ import annotations

from vpr_core.models.formats.keymap import BACKBONE_MODEL as BB
from vpr_core.models.formats.keymap import Drop, KeyMap, Rename, register

# DeiT and CaiT official checkpoints ({'model': ...}) use timm's names; VisionTransformerVPR's own ViT uses
# them too (cls_token, dist_token, pos_embed, patch_embed.proj, blocks.N..., norm, head/head_dist). PiT's
# official files (naver-ai/pit) keep the poolings apart: pools.N.* = timm transformers.(N+1).pool.*.
TIMM_VIT = register(KeyMap(
    name="timm_vit",
    doc="timm-layout ViT / DeiT / CaiT / PiT state dict (bare, {'model': ...} or 'model.'-prefixed) -> "
        "backbone.model.*; classifier heads are dropped. Covers the backbone only.",
    rules=(
        Rename("pools.{i:int}.{rest:path}", BB + "transformers.{i+1}.pool.{rest}"),
        Rename("{rest:path}", BB + "{rest}"),
    ),
    covers="backbone.",
    drops=(Drop("head.{rest:path}", "classifier"), Drop("head_dist.{rest:path}", "distillation classifier")),
    aliases=(("model.{rest:path}", "{rest}"),),
    container=lambda state: {"model": state},
))
