"""Any timm model as a feature extractor: CNN feature maps (B,C,H,W) or ViT tokens (B,N,C).

`TimmBackbone` is the base of every family in this package. Each backbone object offers (the contract,
`Backbone` in vpr_core/models/features.py, with the helpers every consumer reads the output through):
  num_features        channels of a map / width of a token
  num_prefix_tokens   tokens before the patch tokens (class, distillation, register tokens); 0 for CNNs
  default_mean/std    the normalisation the network was trained with
  stride              input pixels per feature cell (patch size for ViTs)
  grid_hw(input_hw)   the (h, w) of the patch grid / feature map for an input of that size
  to_map(feats, hw)   the backbone output as a spatial map (B,C,h,w)

Weights are never fetched here (`pretrained=False` always); they come from the local checkpoint
named in the config, loaded by `vpr_core.models.weights` (key layouts: vpr_core/models/formats/).

The `timm` family (the default) picks the family wrapper that fits the timm architecture: ViT / DeiT /
CaiT -> `vit`, DINOv2 -> `dinov2`, PiT -> `pit`, XCiT -> `xcit`, VGG -> `vgg`, ResNet -> `resnet`; any other
timm model gets the plain wrapper below.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import timm
import torch
from torch import nn

from vpr_core.models.backbones import BACKBONES
from vpr_core.models.features import spatial_map


def timm_module(name: str) -> str:
    """The timm source module of a model name ('vision_transformer', 'xcit', ...); '' when unknown."""
    try:
        return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]
    except Exception:  # unknown name: the constructor reports it with the timm version
        return ""


class TimmBackbone(nn.Module):
    """Wraps `timm.create_model(name)` without its classifier and pooling."""

    # keyword arguments every timm model of this wrapper is created with (families override)
    create_defaults: Dict[str, Any] = {"num_classes": 0, "global_pool": ""}

    def __init__(self, name: str, out_stage: int = -1, **timm_kwargs: Any) -> None:
        """`out_stage` >= 0: the output is that stage of timm's `feature_info` (e.g. 3 = stride 16 for
        EfficientNet), computed by running the network only that far; -1 = the network's own output."""
        super().__init__()
        if name not in timm.list_models():
            raise ValueError(f"timm has no model '{name}' (timm {timm.__version__})")
        self.name = name
        self.model = timm.create_model(name, pretrained=False, **{**self.create_defaults, **timm_kwargs})
        self.num_features: int = int(self.model.num_features)
        self._stage = int(out_stage)
        self._stage_stride = 0
        if self._stage >= 0:
            info = getattr(self.model, "feature_info", None)
            info = (info if isinstance(info, list) else info.get_dicts()) if info else []
            if not hasattr(self.model, "forward_intermediates") or not info or hasattr(self.model, "patch_embed"):
                raise ValueError(f"{name}: out_stage needs a CNN with timm feature stages; this model has none")
            if self._stage >= len(info):
                raise ValueError(f"{name}: out_stage {out_stage} is out of range; its stages are "
                                 f"{[(i, d['module'], d['reduction']) for i, d in enumerate(info)]}")
            self.num_features = int(info[self._stage]["num_chs"])
            self._stage_stride = int(info[self._stage]["reduction"])
        self.num_prefix_tokens: int = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
        cfg: Dict[str, Any] = dict(self.model.pretrained_cfg or {})
        self.default_mean: Tuple[float, ...] = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.default_std: Tuple[float, ...] = tuple(cfg.get("std", (0.229, 0.224, 0.225)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._stage >= 0:
            return self.model.forward_intermediates(x, indices=[self._stage], intermediates_only=True,
                                                    stop_early=True)[0]
        return self.model.forward_features(x)

    @property
    def stride(self) -> int:
        """Input pixels per feature-map cell (patch size for ViTs)."""
        if self._stage_stride:
            return self._stage_stride
        info = getattr(self.model, "feature_info", None)
        if info:
            last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
            return int(last["reduction"])
        patch = getattr(getattr(self.model, "patch_embed", None), "patch_size", (16, 16))
        return int(patch[0] if isinstance(patch, (tuple, list)) else patch)

    def grid_hw(self, input_hw: Tuple[int, int]) -> Tuple[int, int]:
        """(h, w) of the patch grid for an input of `input_hw` pixels (a strided patch conv floors)."""
        return input_hw[0] // self.stride, input_hw[1] // self.stride

    def to_map(self, feats: torch.Tensor, input_hw: Tuple[int, int]) -> torch.Tensor:
        """Backbone output as a spatial map (B,C,h,w): CNN maps pass through, ViT patch tokens are reshaped
        onto this backbone's grid for `input_hw` (the contract: vpr_core/models/features.py)."""
        hw = (int(input_hw[0]), int(input_hw[1]))
        return spatial_map(feats, self.num_prefix_tokens, self.grid_hw(hw), who=f"{self.name} ({hw[0]}x{hw[1]} input)")


# timm source module -> our family (families register themselves in their own files)
_FAMILY_OF_MODULE = {"vision_transformer": "vit", "deit": "vit", "cait": "vit", "pit": "pit", "xcit": "xcit",
                     "vgg": "vgg", "resnet": "resnet"}


def family_for(name: str) -> str:
    """The family the `timm` family hands `name` to ('' = the plain wrapper)."""
    module = timm_module(name)
    if module == "vision_transformer" and "dinov2" in name:
        return "dinov2"
    return _FAMILY_OF_MODULE.get(module, "")


@BACKBONES.register("timm")
def timm_backbone(name: str, **options: Any) -> TimmBackbone:
    """Any timm model; architectures with their own family (see `family_for`) are built by that family."""
    family = family_for(name)
    if family:
        return BACKBONES.build(family, name=name, **options)
    return TimmBackbone(name, **options)
