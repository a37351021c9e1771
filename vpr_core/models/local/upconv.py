"""`upconv`: SelaVPR's local adaptation. Two up-convolutions (transposed 3x3 convs, stride 2, each
doubling the resolution, ReLU between) turn the ViT patch-token map into a 4x denser map of
`dim`-D local features, L2-normalised, matched directly (mutual nearest neighbours) to re-rank.

Its weights are trained with the model (they come from the checkpoint); an untrained head is
initialised from `seed`, so features (and maps built with them) are reproducible across runs.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.models.local import LOCAL_HEADS, LocalOutput, grid_xy


class UpConvHead(nn.Module):
    def __init__(self, in_dim: int, dim: int = 128, hidden: int = 256, seed: int = 0) -> None:
        super().__init__()
        if min(in_dim, dim, hidden) <= 0:
            raise ValueError(f"upconv local head: in_dim, dim and hidden must be > 0, got {in_dim}, {dim}, {hidden}")
        self.in_dim, self.out_dim, self.hidden = int(in_dim), int(dim), int(hidden)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.up1 = nn.ConvTranspose2d(in_dim, hidden, kernel_size=3, stride=2, padding=1, output_padding=1)
            self.up2 = nn.ConvTranspose2d(hidden, dim, kernel_size=3, stride=2, padding=1, output_padding=1)

    def dense(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, in_dim, h, w) -> (B, dim, 4h, 4w), before normalisation (trainable path)."""
        return self.up2(F.relu(self.up1(fmap)))

    def forward(self, features: torch.Tensor, backbone: nn.Module, input_hw: Tuple[int, int]) -> LocalOutput:
        fmap = backbone.to_map(features, input_hw)
        if fmap.shape[1] != self.in_dim:
            raise ValueError(f"upconv local head was built for {self.in_dim} channels, the backbone gives {fmap.shape[1]}")
        out = self.dense(fmap.to(self.up1.weight.dtype)).float()
        b, c, h, w = out.shape
        desc = out.flatten(2).transpose(1, 2)  # (B, 4h*4w, dim)
        weight = desc.norm(dim=-1)
        xy = grid_xy(h, w, input_hw, device=desc.device).unsqueeze(0).expand(b, -1, -1)
        return LocalOutput(F.normalize(desc, dim=-1), xy, weight)


@LOCAL_HEADS.register("upconv")
def upconv(in_dim: int, dim: int = 128, hidden: int = 256, seed: int = 0) -> UpConvHead:
    """SelaVPR LocalAdapt: dense `dim`-D local features at 4x the patch-grid resolution."""
    return UpConvHead(in_dim, dim, hidden, seed)
