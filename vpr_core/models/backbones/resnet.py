"""ResNet feature maps (MixVPR uses ResNet-50 cropped after its third stage).

out_stage 4 (default): timm's `forward_features`, (B, 2048, H/32, W/32) for resnet50.
out_stage 3: `layer4` removed, (B, 1024, H/16, W/16) for resnet50 (MixVPR: 320x320 -> 1024x20x20).
Keys stay timm's (`backbone.model.conv1`, `layer1` ...); with out_stage 3 there are no `layer4` keys.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from vpr_core.models.backbones import BACKBONES
from vpr_core.models.backbones.timm_backbone import TimmBackbone, timm_module


class ResNetBackbone(TimmBackbone):
    def __init__(self, name: str, out_stage: int = 4, **timm_kwargs: Any) -> None:
        if timm_module(name) not in ("resnet", ""):
            raise ValueError(f"backbone family 'resnet' takes timm ResNet models, got '{name}'")
        if out_stage not in (3, 4):
            raise ValueError(f"out_stage must be 3 or 4, got {out_stage}")
        super().__init__(name, **timm_kwargs)
        info = self.model.feature_info  # [stem, layer1, layer2, layer3, layer4]
        if out_stage == 3:
            self.model.layer4 = nn.Identity()
        self.out_stage = out_stage
        self.num_features = int(info[out_stage]["num_chs"])
        self._stride = int(info[out_stage]["reduction"])

    @property
    def stride(self) -> int:
        return self._stride


@BACKBONES.register("resnet")
def resnet_backbone(name: str, out_stage: int = 4, **timm_kwargs: Any) -> ResNetBackbone:
    return ResNetBackbone(name, out_stage=out_stage, **timm_kwargs)
