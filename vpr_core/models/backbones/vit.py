"""Plain vision transformers from timm: ViT / DeiT (VisionTransformerVPR), CaiT, and DINOv2 (DINOVPR, SelaVPR).

Output: tokens (B, P + h*w, C) after the final norm, P = `num_prefix_tokens` leading tokens, then the
patch tokens row-major over the (h, w) = (H // patch, W // patch) grid:
  DeiT / ViT          P=1  [cls]
  DeiT distilled      P=2  [cls, dist]
  CaiT                P=1  [cls] (the class token went through CaiT's class-attention blocks; the patch
                              tokens are the output of the self-attention blocks, both then normed)
  DINOv2              P=1  [cls]
  DINOv2 + registers  P=5  [cls, reg0..reg3]

Any input size that is a multiple of the patch size works (16 for DeiT / CaiT, 14 for DINOv2; other
sizes are refused with the nearest valid ones named): the learned position embeddings are resampled
to the input's grid on the fly, so a checkpoint keeps its native `pos_embed` shape (224/16 = 14x14 for
DeiT and CaiT, 518/14 = 37x37 for DINOv2).
"""
from __future__ import annotations

from typing import Any, Tuple

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.cait import Cait
from timm.models.vision_transformer import VisionTransformer

from vpr_core.models.backbones import BACKBONES
from vpr_core.models.backbones.timm_backbone import TimmBackbone, timm_module


class ViTBackbone(TimmBackbone):
    """timm VisionTransformer (and subclasses such as DeiT distilled) or CaiT, at any input size."""

    create_defaults = {"num_classes": 0}  # distilled DeiT asserts on global_pool=''; forward_features never pools

    def __init__(self, name: str, **timm_kwargs: Any) -> None:
        module = timm_module(name)
        if module not in ("vision_transformer", "deit", "cait", ""):  # "": unknown name, timm says so below
            raise ValueError(f"backbone family 'vit' takes timm ViT / DeiT / CaiT models; '{name}' is a timm "
                             f"'{module}' model (use family 'timm' to pick the right family)")
        if module != "cait":  # timm resamples pos_embed itself for VisionTransformer
            timm_kwargs.setdefault("dynamic_img_size", True)
        super().__init__(name, **timm_kwargs)
        if isinstance(self.model, Cait):
            self.model.patch_embed.strict_img_size = False  # we resample pos_embed in forward
        elif not isinstance(self.model, VisionTransformer):
            raise ValueError(f"'{name}' is not a timm VisionTransformer or Cait ({type(self.model).__name__})")

    def check_input(self, x: torch.Tensor) -> None:
        """Height and width must be positive multiples of the patch size (the DINOv2 reference code asserts
        the same); the message names the nearest valid sizes for model.preprocess.image_size."""
        p = self.stride
        bad = [n for n in x.shape[-2:] if n < p or n % p]
        if bad:
            near = sorted({max(p, n // p * p) for n in bad} | {(n // p + 1) * p for n in bad})
            raise ValueError(f"{self.name}: input {list(x.shape[-2:])} must be a multiple of the {p}-pixel patch "
                             f"in height and width (set model.preprocess.image_size to multiples of {p}, "
                             f"e.g. {near})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if isinstance(self.model, Cait):
            return self._forward_cait(x)
        return self.model.forward_features(x)

    def _forward_cait(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        h, w = self.grid_hw(tuple(x.shape[-2:]))
        x = m.patch_embed(x)  # (B, h*w, C)
        x = x + resample_abs_pos_embed(m.pos_embed, new_size=[h, w], old_size=list(m.patch_embed.grid_size),
                                       num_prefix_tokens=0)
        x = m.blocks(m.pos_drop(x))
        return m.norm(m.forward_cls(x))


def dinov2_resample(pos: torch.Tensor, old_hw: Tuple[int, int], new_hw: Tuple[int, int]) -> torch.Tensor:
    """Resample a (1, gh*gw, C) patch position grid the way the DINOv2 reference code does.

    Bicubic, no antialiasing, with a scale factor of (new + 0.1) / old (the 0.1 offset avoids a floating
    point off-by-one in the output size). SelaVPR and DINOVPR ran DINOv2 this way, so their fine-tuned
    weights expect exactly these embeddings; timm's resampler (antialiased, exact size) differs slightly.
    """
    (gh, gw), (h, w) = old_hw, new_hw
    if (gh, gw) == (h, w):
        return pos
    dim = pos.shape[-1]
    grid = pos.float().reshape(1, gh, gw, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h + 0.1) / gh, (w + 0.1) / gw), mode="bicubic", align_corners=False)
    if tuple(grid.shape[-2:]) != (h, w):
        raise RuntimeError(f"position-embedding resampling gave {tuple(grid.shape[-2:])}, expected {(h, w)}")
    return grid.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos.dtype)


class DINOv2Backbone(ViTBackbone):
    """timm `vit_{small,base,large,giant}_patch14_dinov2` (optionally `_reg4_`), default 518x518 (37x37 grid).

    pos_interp: "dinov2" (default) resamples the position grid like the DINOv2 reference code,
    "timm" like timm (antialiased bicubic). At 518x518 both are the identity.
    """

    def __init__(self, name: str, pos_interp: str = "dinov2", **timm_kwargs: Any) -> None:
        if "dinov2" not in name:
            raise ValueError(f"backbone family 'dinov2' takes timm '*_dinov2' models, got '{name}'")
        if pos_interp not in ("dinov2", "timm"):
            raise ValueError(f"pos_interp must be 'dinov2' or 'timm', got '{pos_interp}'")
        super().__init__(name, **timm_kwargs)
        self.pos_interp = pos_interp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.pos_interp == "timm":
            return self.model.forward_features(x)
        return self.model.norm(self.model.blocks(self.embed(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + position embedding + prefix tokens: the input of the first block."""
        m = self.model
        x = m.patch_embed(x)  # (B, h, w, C): dynamic_img_size makes timm keep the grid
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        n_pos_prefix = 0 if m.no_embed_class else m.num_prefix_tokens
        pos = m.pos_embed
        grid = dinov2_resample(pos[:, n_pos_prefix:], tuple(m.patch_embed.grid_size), (h, w))
        prefix = [t.expand(b, -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
        if m.no_embed_class:  # register models: the position grid covers the patches only
            x = torch.cat(prefix + [x + grid], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + torch.cat([pos[:, :n_pos_prefix], grid], dim=1)
        return m.norm_pre(m.patch_drop(m.pos_drop(x)))


@BACKBONES.register("vit")
def vit_backbone(name: str, **timm_kwargs: Any) -> ViTBackbone:
    """DeiT / ViT / CaiT (VisionTransformerVPR) at any input size."""
    if "dinov2" in name:
        return DINOv2Backbone(name, **timm_kwargs)
    return ViTBackbone(name, **timm_kwargs)


@BACKBONES.register("dinov2")
def dinov2_backbone(name: str, pos_interp: str = "dinov2", **timm_kwargs: Any) -> DINOv2Backbone:
    """DINOv2 ViT-S/B/L/g-14 (DINOVPR); SelaVPR's adapter variant is the `dinov2_adapter` family."""
    return DINOv2Backbone(name, pos_interp=pos_interp, **timm_kwargs)
