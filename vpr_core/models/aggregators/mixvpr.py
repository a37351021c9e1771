"""MixVPR feature mixing (Ali-bey, Chaib-draa and Giguere, WACV 2023).

The backbone map (B,C,H,W) is seen as C flattened spatial maps of length H*W. A stack of
feature-mixer blocks, each `x + W2 relu(W1 LayerNorm(x))` acting along the H*W axis (hidden size
H*W*mlp_ratio), lets every spatial position inform every other. A channel projection
(C -> out_channels) and a row projection (H*W -> out_rows) then shrink the result, which is
flattened to out_channels*out_rows values and L2-normalised.

The mixer's weights are sized by H*W, so the map size is part of the model: `in_h`, `in_w` must
match the backbone's output at the configured `model.preprocess.image_size`. The defaults, 20 x 20
(1024 channels), are the paper's setting: a ResNet-50 cut after layer3 (stride 16) at 320x320
input. A full timm ResNet-50 (layer4, stride 32, 2048 channels) at 320x320 gives 10 x 10; at the
default 240x320 input it gives 8 x 10 (and layer3 gives 15 x 20). ViT tokens are accepted when the
patch tokens form a square grid of in_h x in_w.

Paper defaults: out_channels 1024, out_rows 4 (4096-D), mix_depth 4, mlp_ratio 1.

State-dict names under `aggregator.`: mix.<i>.norm.*, mix.<i>.fc1.*, mix.<i>.fc2.*, channel_proj.*,
row_proj.*
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.models.aggregators import AGGREGATORS
from vpr_core.models.features import spatial_map


class FeatureMixer(nn.Module):
    """One residual MLP block over the flattened spatial axis."""

    def __init__(self, positions: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = max(1, int(round(positions * mlp_ratio)))
        self.norm = nn.LayerNorm(positions)
        self.fc1 = nn.Linear(positions, hidden)
        self.fc2 = nn.Linear(hidden, positions)
        for fc in (self.fc1, self.fc2):
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(self.norm(x))))


class MixVPR(nn.Module):
    def __init__(self, in_dim: int, in_h: int = 20, in_w: int = 20, out_channels: int = 1024, out_rows: int = 4,
                 mix_depth: int = 4, mlp_ratio: float = 1.0, prefix_tokens: int = 0) -> None:
        super().__init__()
        for name, value in (("in_h", in_h), ("in_w", in_w), ("out_channels", out_channels),
                            ("out_rows", out_rows)):
            if int(value) < 1:
                raise ValueError(f"mixvpr: {name} must be >= 1, got {value}")
        if mix_depth < 0 or mlp_ratio <= 0:
            raise ValueError(f"mixvpr: mix_depth must be >= 0 and mlp_ratio > 0, got {mix_depth}, {mlp_ratio}")
        self.in_dim, self.in_h, self.in_w = int(in_dim), int(in_h), int(in_w)
        self.prefix_tokens = prefix_tokens
        positions = self.in_h * self.in_w
        self.mix = nn.Sequential(*[FeatureMixer(positions, mlp_ratio) for _ in range(mix_depth)])
        self.channel_proj = nn.Linear(self.in_dim, int(out_channels))
        self.row_proj = nn.Linear(positions, int(out_rows))
        self.out_dim = int(out_channels) * int(out_rows)

    def _to_map(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone output as the (B, C, in_h, in_w) map the mixer was sized for (tokens: a square grid)."""
        fmap = spatial_map(x, self.prefix_tokens, who="mixvpr")
        h, w = fmap.shape[-2:]
        if (h, w) != (self.in_h, self.in_w):
            if x.ndim == 3:
                raise ValueError(f"mixvpr: the backbone gives a {h}x{w} token grid but the aggregator is "
                                 f"configured for in_h x in_w = {self.in_h}x{self.in_w}; set model.aggregator.in_h/"
                                 f"in_w to {h}, or change model.preprocess.image_size")
            raise ValueError(f"mixvpr: the backbone gives a {h}x{w} feature map but the "
                             f"aggregator is configured for in_h x in_w = {self.in_h}x{self.in_w}; set "
                             f"model.aggregator.in_h: {h} and in_w: {w}, or change "
                             f"model.preprocess.image_size so the map is {self.in_h}x{self.in_w}")
        return fmap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._to_map(x)
        if x.shape[1] != self.in_dim:
            raise ValueError(f"mixvpr: expected {self.in_dim} channels, got {x.shape[1]}")
        x = self.mix(x.flatten(2))  # (B, C, H*W)
        x = self.channel_proj(x.transpose(1, 2))  # (B, H*W, out_channels)
        x = self.row_proj(x.transpose(1, 2))  # (B, out_channels, out_rows)
        return F.normalize(x.flatten(1), dim=1)


@AGGREGATORS.register("mixvpr")
def mixvpr(in_dim: int, num_prefix_tokens: int = 0, in_h: int = 20, in_w: int = 20, out_channels: int = 1024,
           out_rows: int = 4, mix_depth: int = 4, mlp_ratio: float = 1.0) -> MixVPR:
    """Options: in_h, in_w (backbone map size, default 20x20 = ResNet-50 layer3 at 320x320), out_channels
    (1024), out_rows (4), mix_depth (4), mlp_ratio (1). Output dim = out_channels * out_rows."""
    return MixVPR(in_dim, in_h=in_h, in_w=in_w, out_channels=out_channels, out_rows=out_rows,
                  mix_depth=mix_depth, mlp_ratio=mlp_ratio, prefix_tokens=num_prefix_tokens)
