"""SelaVPR's global adaptation: a frozen DINOv2 with two lightweight bottleneck adapters in every block.

Per block (Lu et al., "Towards Seamless Adaptation of Pre-trained Models for VPR", ICLR 2024):
    a = Attn(LN1(x))
    x = x + LS1(a + Adapter1(a))                       # serial adapter on the attention output
    h = LN2(x)
    x = x + LS2(MLP(h) + s * Adapter2(h))              # parallel adapter beside the MLP, s = mlp_scale
with Adapter(z) = Up(act(Down(z))), Down: dim -> int(dim * adapter_ratio), Up: back to dim, and LS the
block's DINOv2 layer scale (which in SelaVPR's published code wraps the adapter outputs too). The
paper uses ratio 0.5 and s = 0.2; the published code uses ReLU inside the adapters, so `adapter_act`
defaults to "relu" ("gelu" is available).

`Up` is zero-initialised, so a fresh adapter model computes exactly the plain DINOv2 function. The DINOv2
parameters are frozen (requires_grad False); only the adapters train.

Parameters live inside the timm blocks, `backbone.model.blocks.N.adapter1.{fc1,fc2}.*` and `adapter2`, so
a DINOv2 checkpoint keeps its names (see `vpr_core.models.formats`: dinov2_pretrain.py, selavpr.py).
The output and token layout are those of the `dinov2` family.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from timm.models.vision_transformer import Block
from torch import nn

from vpr_core.models.backbones import BACKBONES
from vpr_core.models.backbones.vit import DINOv2Backbone

_ACTS = {"relu": nn.ReLU, "gelu": nn.GELU}


class Adapter(nn.Module):
    """Bottleneck MLP: Linear(dim -> hidden) + activation + Linear(hidden -> dim), output layer zero-initialised."""

    def __init__(self, dim: int, ratio: float, act: str = "relu") -> None:
        super().__init__()
        hidden = int(dim * ratio)
        if hidden < 1:
            raise ValueError(f"adapter_ratio {ratio} leaves no hidden units for width {dim}")
        self.fc1 = nn.Linear(dim, hidden)
        self.act = _ACTS[act]()
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AdaptedBlock(Block):
    """A timm DINOv2 `Block` with SelaVPR's adapters (assigned by `add_adapters`, never constructed directly)."""

    adapter1: Adapter
    adapter2: Adapter
    mlp_scale: float

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        a = self.attn(self.norm1(x)) if attn_mask is None else self.attn(self.norm1(x), attn_mask=attn_mask)
        x = x + self.drop_path1(self.ls1(a + self.adapter1(a)))
        h = self.norm2(x)
        return x + self.drop_path2(self.ls2(self.mlp(h) + self.mlp_scale * self.adapter2(h)))


def add_adapters(block: nn.Module, ratio: float, mlp_scale: float, act: str) -> None:
    """Turn a timm `Block` into an `AdaptedBlock` in place (its own parameters and names are untouched)."""
    if type(block) is not Block:
        raise TypeError(f"adapters fit timm vision_transformer.Block, got {type(block).__name__}")
    dim = block.norm1.normalized_shape[0]
    block.add_module("adapter1", Adapter(dim, ratio, act))
    block.add_module("adapter2", Adapter(dim, ratio, act))
    block.mlp_scale = float(mlp_scale)
    block.__class__ = AdaptedBlock


class DINOv2AdapterBackbone(DINOv2Backbone):
    def __init__(self, name: str, adapter_ratio: float = 0.5, mlp_scale: float = 0.2, adapter_act: str = "relu",
                 freeze_backbone: bool = True, pos_interp: str = "dinov2", **timm_kwargs: Any) -> None:
        if adapter_act not in _ACTS:
            raise ValueError(f"adapter_act must be one of {sorted(_ACTS)}, got '{adapter_act}'")
        if adapter_ratio <= 0:
            raise ValueError(f"adapter_ratio must be > 0, got {adapter_ratio}")
        super().__init__(name, pos_interp=pos_interp, **timm_kwargs)
        if freeze_backbone:
            for p in self.model.parameters():
                p.requires_grad_(False)
        for block in self.model.blocks:
            add_adapters(block, adapter_ratio, mlp_scale, adapter_act)  # new parameters: trainable
        self.adapter_ratio, self.mlp_scale, self.adapter_act = adapter_ratio, mlp_scale, adapter_act

    def adapter_parameters(self):
        """The trainable adapter parameters (for an optimizer)."""
        return [p for n, p in self.model.named_parameters() if ".adapter1." in n or ".adapter2." in n]


@BACKBONES.register("dinov2_adapter")
def dinov2_adapter_backbone(name: str, adapter_ratio: float = 0.5, mlp_scale: float = 0.2,
                            adapter_act: str = "relu", freeze_backbone: bool = True, pos_interp: str = "dinov2",
                            **timm_kwargs: Any) -> DINOv2AdapterBackbone:
    """SelaVPR: frozen timm DINOv2 (`vit_large_patch14_dinov2` in the paper) + per-block adapters."""
    return DINOv2AdapterBackbone(name, adapter_ratio=adapter_ratio, mlp_scale=mlp_scale, adapter_act=adapter_act,
                                 freeze_backbone=freeze_backbone, pos_interp=pos_interp, **timm_kwargs)
