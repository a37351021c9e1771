"""PiT (pooling-based vision transformer, VisionTransformerVPR's `pit_s_224` / `pit_b_224` ...).

PiT pools its patch tokens between stages (an 8-pixel overlapping patch conv, then two stride-2 depthwise
poolings) and normalises only the class tokens at the end. timm's `forward_features` therefore returns the
class token(s) alone, (B, 1, C) (distilled: (B, 2, C)), and its model reports no `num_prefix_tokens`.

This wrapper returns the same normalised class tokens and reports `num_prefix_tokens` = their number, so
the `cls` aggregator works. PiT gives **no patch-token map**: `to_map` raises, so map aggregators (GeM,
NetVLAD, MixVPR) and local heads cannot use it.

Any input size works: the learned (C, 27, 27) position grid is resampled (bicubic, antialiased, like timm
does for ViTs) to the patch grid of the input.
"""
from __future__ import annotations

from typing import Any, Tuple

import torch
import torch.nn.functional as F

from vpr_core.models.backbones import BACKBONES
from vpr_core.models.backbones.timm_backbone import TimmBackbone, timm_module


class PiTBackbone(TimmBackbone):
    create_defaults = {"num_classes": 0}  # distilled PiT asserts on global_pool=''

    def __init__(self, name: str, **timm_kwargs: Any) -> None:
        if timm_module(name) not in ("pit", ""):
            raise ValueError(f"backbone family 'pit' takes timm PiT models (pit_*), got '{name}'")
        super().__init__(name, **timm_kwargs)
        self.num_prefix_tokens = int(self.model.num_tokens)

    @property
    def stride(self) -> int:
        """Pixels per cell of the last stage's (internal) map: patch stride 8, then two 2x poolings."""
        return int(self.model.feature_info[-1]["reduction"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        k = m.patch_embed.patch_size
        if x.shape[-2] < k[0] * 4 or x.shape[-1] < k[1] * 4:  # the last stage needs a 2x2 grid at least
            raise ValueError(f"{self.name}: input {tuple(x.shape[-2:])} is too small (min {k[0] * 4} pixels a side)")
        x = m.patch_embed(x)  # (B, C, h, w)
        pos = m.pos_embed
        if tuple(pos.shape[-2:]) != tuple(x.shape[-2:]):
            pos = F.interpolate(pos.float(), size=tuple(x.shape[-2:]), mode="bicubic", align_corners=False,
                                antialias=True).to(pos.dtype)
        x = m.pos_drop(x + pos)
        cls_tokens = m.cls_token.expand(x.shape[0], -1, -1)
        _, cls_tokens = m.transformers((x, cls_tokens))
        return m.norm(cls_tokens)  # (B, num_tokens, C)

    def grid_hw(self, input_hw: Tuple[int, int]) -> Tuple[int, int]:
        raise ValueError(f"{self.name}: PiT returns only its class token(s); it has no patch-token map")

    def to_map(self, feats: torch.Tensor, input_hw: Tuple[int, int]) -> torch.Tensor:
        raise ValueError(f"{self.name}: PiT returns only its class token(s), (B, {self.num_prefix_tokens}, C); "
                         f"it has no patch-token map. Use the 'cls' aggregator and no local head")


@BACKBONES.register("pit")
def pit_backbone(name: str, **timm_kwargs: Any) -> PiTBackbone:
    return PiTBackbone(name, **timm_kwargs)
