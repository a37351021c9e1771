"""`upconv`: SelaVPR's local adaptation (`LocalAdapt` in its network.py). Two up-convolutions turn the
ViT patch-token map into a denser map of `dim`-D local features, L2-normalised per position and matched
directly (mutual nearest neighbours) to re-rank, without geometric verification.

As published (Lu et al., ICLR 2024): `upconv1` = ConvTranspose2d(1024 -> 256, kernel 3, stride 2,
padding 1), ReLU, `upconv2` = ConvTranspose2d(256 -> 128, same geometry), no output padding, so each
layer maps n -> 2n - 1: the 16x16 patch grid of a 224x224 input becomes 31x31, then 61x61 (SelaVPR's
`dense_feature_map_size` 61x61x128). The layer names match the checkpoint (`LocalAdapt.upconv{1,2}` ->
`local_head.upconv{1,2}`, see vpr_core/models/formats/selavpr.py).

Positions: with kernel 3, stride 2, padding 1, output cell o is centred on input cell o / 2 (the centre
tap), so after both layers output cell o sits on patch-grid coordinate o / 4, i.e. at pixel
(o / 4 + 0.5) * patch size. The map spans patch centres, not the image border.
Weight = descriptor norm before normalisation (SelaVPR matches all cells; a cap keeps the strongest).

Its weights are trained with the model (they come from the checkpoint); an untrained head is
initialised from `seed`, so features (and maps built with them) are reproducible across runs.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.models.features import local_features
from vpr_core.models.local import LOCAL_HEADS, LocalOutput

UPSAMPLE = 2  # each up-convolution: n -> 2n - 1 cells, half the spacing


def upconv_xy(h: int, w: int, grid_hw: Tuple[int, int], input_hw: Tuple[int, int], device=None) -> torch.Tensor:
    """Pixel centres (x, y), row-major, of an h x w map made from a grid_hw patch grid by stride-2 up-convolutions
    (kernel 3, padding 1, no output padding): cell o lies on patch coordinate o * (grid - 1) / (n - 1)."""
    def centres(n: int, grid: int, size: int) -> torch.Tensor:
        step = (grid - 1) / (n - 1) if n > 1 else 0.0  # 1/4 for two layers
        return (torch.arange(n, device=device, dtype=torch.float32) * step + 0.5) * (size / grid)
    ys, xs = torch.meshgrid(centres(h, grid_hw[0], input_hw[0]), centres(w, grid_hw[1], input_hw[1]), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


class UpConvHead(nn.Module):
    def __init__(self, in_dim: int, dim: int = 128, hidden: int = 256, seed: int = 0) -> None:
        super().__init__()
        if min(in_dim, dim, hidden) <= 0:
            raise ValueError(f"upconv local head: in_dim, dim and hidden must be > 0, got {in_dim}, {dim}, {hidden}")
        self.in_dim, self.out_dim, self.hidden = int(in_dim), int(dim), int(hidden)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.upconv1 = nn.ConvTranspose2d(in_dim, hidden, kernel_size=3, stride=UPSAMPLE, padding=1)
            self.relu = nn.ReLU()
            self.upconv2 = nn.ConvTranspose2d(hidden, dim, kernel_size=3, stride=UPSAMPLE, padding=1)

    @staticmethod
    def dense_hw(h: int, w: int) -> Tuple[int, int]:
        """Size of the dense map for an h x w patch grid: 16 x 16 -> 61 x 61."""
        return 4 * h - 3, 4 * w - 3

    def dense(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, in_dim, h, w) -> (B, dim, 4h-3, 4w-3), before normalisation (the trainable path)."""
        return self.upconv2(self.relu(self.upconv1(fmap)))

    def forward(self, features: torch.Tensor, backbone: nn.Module, input_hw: Tuple[int, int]) -> LocalOutput:
        fmap = backbone.to_map(features, input_hw)
        if fmap.shape[1] != self.in_dim:
            raise ValueError(f"upconv local head was built for {self.in_dim} channels, the backbone gives {fmap.shape[1]}")
        grid_hw = tuple(fmap.shape[-2:])
        out = self.dense(fmap.to(self.upconv1.weight.dtype)).float()
        b, c, h, w = out.shape
        desc = local_features(out)  # (B, h*w, dim)
        weight = desc.norm(dim=-1)
        xy = upconv_xy(h, w, grid_hw, input_hw, device=desc.device).unsqueeze(0).expand(b, -1, -1)
        return LocalOutput(F.normalize(desc, dim=-1), xy, weight)


@LOCAL_HEADS.register("upconv")
def upconv(in_dim: int, dim: int = 128, hidden: int = 256, seed: int = 0) -> UpConvHead:
    """SelaVPR LocalAdapt: dense `dim`-D local features, (4h-3) x (4w-3) for an h x w patch grid."""
    return UpConvHead(in_dim, dim, hidden, seed)
