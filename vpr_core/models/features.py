"""The backbone-output contract: what every backbone returns, and the one set of helpers that reads it.

A backbone's `forward(x)` returns one tensor, in one of two layouts:
  map     (B, C, h, w)   CNNs (VGG, ResNet, EfficientNet ...): one C-D feature per cell.
  tokens  (B, P + N, C)  transformers: P prefix tokens first (class, distillation, register tokens;
                         `backbone.num_prefix_tokens`), then N patch tokens row-major over the (h, w)
                         patch grid (`backbone.grid_hw(input_hw)`). PiT gives its class token(s) only (N = 0).
Aggregators, local heads and clustering never slice or reshape that tensor themselves; they call:
  class_token(feats)                         (B, C)        the class token, the first prefix token (maps refused)
  local_features(feats, P)                   (B, N, C)     the flat set: map cells row-major, or patch tokens
  column_map(feats, P)                       (B, C, N, 1)  patch tokens as a one-column map (maps pass through),
                                                           for pooling that ignores the layout (GeM, NetVLAD)
  spatial_map(feats, P, grid_hw, who)        (B, C, h, w)  patch tokens on the (h, w) grid (maps pass through);
                                                           grid_hw None: a square grid, inferred (MixVPR)
  backbone.to_map(feats, input_hw)           (B, C, h, w)  `spatial_map` on the backbone's own grid for that
                                                           input (what local heads call; PiT refuses)
`Backbone` lists the attributes every backbone offers (`TimmBackbone` implements them all).
"""
from __future__ import annotations

import math
from typing import Optional, Protocol, Tuple

import torch


class Backbone(Protocol):
    """What a consumer may ask of a backbone (besides calling it): sizes, token layout and its map."""

    num_features: int  # channels of a map cell / width of a token
    num_prefix_tokens: int  # tokens before the patch tokens; 0 for CNNs
    default_mean: Tuple[float, ...]  # input normalisation the network was trained with
    default_std: Tuple[float, ...]

    @property
    def stride(self) -> int:
        """Input pixels per feature cell (the patch size for ViTs)."""
        ...

    def grid_hw(self, input_hw: Tuple[int, int]) -> Tuple[int, int]:
        """(h, w) of the patch grid / feature map for an input of `input_hw` pixels."""
        ...

    def to_map(self, feats: torch.Tensor, input_hw: Tuple[int, int]) -> torch.Tensor:
        """The output `feats` of an `input_hw` input as a spatial map (B, C, h, w)."""
        ...


def _layout(feats: torch.Tensor, who: str) -> int:
    """ndim of a valid backbone output (4: map, 3: tokens); anything else is refused by name."""
    if feats.ndim not in (3, 4):
        raise ValueError(f"{who}: expected a feature map (B,C,H,W) or tokens (B,N,C), got shape {tuple(feats.shape)}")
    return feats.ndim


def _patches(feats: torch.Tensor, num_prefix_tokens: int, who: str) -> torch.Tensor:
    """The patch tokens (B, N, C) of a token output; an output of prefix tokens only (PiT) is refused."""
    tokens = feats[:, num_prefix_tokens:]
    if tokens.shape[1] == 0:
        raise ValueError(f"{who}: the backbone gives only its {feats.shape[1]} prefix token(s) and no patch tokens "
                         f"(PiT returns its class token alone); use the 'cls' aggregator and no local head")
    return tokens


def class_token(feats: torch.Tensor, who: str = "backbone output") -> torch.Tensor:
    """The class token (B, C): the first token of a token output (CLS-token descriptors, VisionTransformerVPR).
    A map has no class token, so it is refused (a backbone's `num_prefix_tokens` >= 1 says it has one)."""
    if feats.ndim != 3:
        raise ValueError(f"{who} expects tokens (B,N,C) with the class token first, got shape {tuple(feats.shape)}")
    return feats[:, 0]


def local_features(feats: torch.Tensor, num_prefix_tokens: int = 0, who: str = "backbone output") -> torch.Tensor:
    """The flat set of local features (B, N, C): map cells row-major, or the patch tokens after the prefix.
    What clustering samples and local heads describe; the same cells whichever layout the backbone has."""
    if _layout(feats, who) == 4:
        return feats.flatten(2).transpose(1, 2)
    return _patches(feats, num_prefix_tokens, who)


def column_map(feats: torch.Tensor, num_prefix_tokens: int = 0, who: str = "backbone output") -> torch.Tensor:
    """Patch tokens as a one-column map (B, C, N, 1); maps (B, C, h, w) pass through unchanged.
    Pooling that ignores where a feature sits (GeM, NetVLAD) needs no patch grid, so no input size."""
    if _layout(feats, who) == 4:
        return feats
    return _patches(feats, num_prefix_tokens, who).transpose(1, 2).unsqueeze(-1)


def spatial_map(feats: torch.Tensor, num_prefix_tokens: int = 0, grid_hw: Optional[Tuple[int, int]] = None,
                who: str = "backbone output") -> torch.Tensor:
    """Patch tokens on their (h, w) grid as a map (B, C, h, w); maps pass through unchanged.
    `grid_hw` None infers a square grid (for consumers that do not know the input size, e.g. MixVPR)."""
    if _layout(feats, who) == 4:
        return feats
    tokens = _patches(feats, num_prefix_tokens, who)
    n = tokens.shape[1]
    if grid_hw is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{who}: {n} patch tokens do not form a square grid, so the spatial layout cannot be "
                             f"inferred; use a square input image size or a CNN backbone")
        grid_hw = (side, side)
    h, w = int(grid_hw[0]), int(grid_hw[1])
    if h * w != n:
        raise ValueError(f"{who}: {n} patch tokens do not form a {h}x{w} grid")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


__all__ = ["Backbone", "class_token", "column_map", "local_features", "spatial_map"]
