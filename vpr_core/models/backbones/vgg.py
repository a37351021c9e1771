"""VGG conv5 features for NetVLAD-style aggregation (ClusVPR: VGG16 + clustering aggregation).

Output: the conv5_3 map (B, 512, H/16, W/16) (224 -> 14x14, 320x240 -> 20x15), stride 16. timm's own
`forward_features` ends with the fifth max-pool (stride 32) and its model carries a 7x7 "pre-logits" conv
MLP (102M parameters); both are removed here, so the backbone's keys are `backbone.model.features.{0..28}.*`
(torchvision / OpenIBL indices).

last_relu: NetVLAD, OpenIBL and ClusVPR cut VGG16 *before* the final ReLU (`features[:-2]`), so their
VLAD layers were trained on signed conv5_3 responses; that is the default (False). True keeps the ReLU
(non-negative conv5_3 features).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vpr_core.models.backbones import BACKBONES
from vpr_core.models.backbones.timm_backbone import TimmBackbone, timm_module


class VGGBackbone(TimmBackbone):
    # a 1-unit pre-logits MLP instead of 4096: it is deleted right away, so never allocate 102M weights for it
    create_defaults = {"num_classes": 0, "global_pool": "", "mlp_ratio": 1 / 4096}

    def __init__(self, name: str, last_relu: bool = False, **timm_kwargs: Any) -> None:
        if timm_module(name) not in ("vgg", ""):
            raise ValueError(f"backbone family 'vgg' takes timm VGG models (vgg11 ... vgg19, _bn), got '{name}'")
        super().__init__(name, **timm_kwargs)
        m = self.model
        layers = list(m.features.children())
        if not isinstance(layers[-1], nn.MaxPool2d) or not isinstance(layers[-2], nn.ReLU):
            raise ValueError(f"{name}: unexpected VGG layout (features end with {layers[-2:]})")
        m.features = nn.Sequential(*layers[:-1] if last_relu else layers[:-2])
        m.pre_logits = nn.Identity()
        m.head = nn.Identity()
        self.last_relu = last_relu
        self.num_features = int([layer for layer in layers if isinstance(layer, nn.Conv2d)][-1].out_channels)

    @property
    def stride(self) -> int:
        return 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


@BACKBONES.register("vgg")
def vgg_backbone(name: str, last_relu: bool = False, **timm_kwargs: Any) -> VGGBackbone:
    return VGGBackbone(name, last_relu=last_relu, **timm_kwargs)
