"""Any timm model as a feature extractor: CNN feature maps (B,C,H,W) or ViT tokens (B,N,C).

Weights are never fetched here (`pretrained=False` always); they come from the local checkpoint
named in the config, loaded by `vpr_core.models.weights`.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import timm
import torch
from torch import nn

from vpr_core.models.backbones import BACKBONES


class TimmBackbone(nn.Module):
    """Wraps `timm.create_model(name)` without its classifier and pooling."""

    def __init__(self, name: str, **timm_kwargs: Any) -> None:
        super().__init__()
        if name not in timm.list_models():
            raise ValueError(f"timm has no model '{name}' (timm {timm.__version__})")
        self.name = name
        self.model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", **timm_kwargs)
        self.num_features: int = int(self.model.num_features)
        self.num_prefix_tokens: int = int(getattr(self.model, "num_prefix_tokens", 0))
        cfg: Dict[str, Any] = dict(self.model.pretrained_cfg or {})
        self.default_mean: Tuple[float, ...] = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.default_std: Tuple[float, ...] = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    @property
    def stride(self) -> int:
        """Input pixels per feature-map cell (patch size for ViTs)."""
        info = getattr(self.model, "feature_info", None)
        if info:
            last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
            return int(last["reduction"])
        patch = getattr(getattr(self.model, "patch_embed", None), "patch_size", (16, 16))
        return int(patch[0] if isinstance(patch, (tuple, list)) else patch)

    def to_map(self, feats: torch.Tensor, input_hw: Tuple[int, int]) -> torch.Tensor:
        """Backbone output as a spatial map (B,C,h,w): CNN maps pass through, ViT patch tokens are reshaped."""
        if feats.ndim == 4:
            return feats
        tokens = feats[:, self.num_prefix_tokens:]
        h, w = input_hw[0] // self.stride, input_hw[1] // self.stride
        if h * w != tokens.shape[1]:
            raise ValueError(f"{self.name}: {tokens.shape[1]} patch tokens do not form a {h}x{w} grid")
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


@BACKBONES.register("timm")
def timm_backbone(name: str, **timm_kwargs: Any) -> TimmBackbone:
    return TimmBackbone(name, **timm_kwargs)
