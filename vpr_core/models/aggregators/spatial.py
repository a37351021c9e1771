"""`spatial`: the feature map itself as the descriptor, on a fixed grid, each cell L2-normalised,
flattened. It keeps *where* things are: on tiny seasonal images (Nordland 64x32) the layout survives
snow and foliage where pooled content does not (validation stretch: R@1 0.65 from EfficientNet-Lite0's
stride-16 map, untrained, vs 0.09 with GeM of the same map).

Options: grid_h, grid_w (cells the map is average-pooled to; the output size depends on them),
channels (0 = keep the backbone's; > 0 = a learned 1x1 convolution to that many channels first,
trained by `vpr-core train`), init (of that convolution: random, or identity = it starts as the
untrained descriptor, keeping the first `channels` channels, so training moves away from a generic
start only as far as the data asks), normalize (per-cell L2, true). Output dim = channels * grid_h * grid_w.
State-dict names under `aggregator.`: reduce.weight / reduce.bias when channels > 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.models.aggregators import AGGREGATORS
from vpr_core.models.features import spatial_map


class SpatialGrid(nn.Module):
    def __init__(self, in_dim: int, grid_h: int, grid_w: int, channels: int = 0, normalize: bool = True,
                 init: str = "random", prefix_tokens: int = 0) -> None:
        super().__init__()
        if min(grid_h, grid_w) < 1 or channels < 0:
            raise ValueError(f"spatial: grid_h, grid_w must be >= 1 and channels >= 0, got {grid_h}, {grid_w}, {channels}")
        if init not in ("random", "identity") or (init == "identity" and not 0 < channels <= in_dim):
            raise ValueError(f"spatial: init must be random or identity (identity needs 0 < channels <= {in_dim}), "
                             f"got {init!r} with channels {channels}")
        self.reduce = nn.Conv2d(in_dim, channels, 1) if channels else None
        if init == "identity":
            with torch.no_grad():
                self.reduce.weight.copy_(torch.eye(channels, in_dim)[:, :, None, None])
                self.reduce.bias.zero_()
        self.grid = (int(grid_h), int(grid_w))
        self.normalize = bool(normalize)
        self.prefix_tokens = prefix_tokens
        self.out_dim = (channels or in_dim) * self.grid[0] * self.grid[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = spatial_map(x, self.prefix_tokens, who="spatial aggregator").float()
        if self.normalize:
            x = F.normalize(x, dim=1)
        if self.reduce is not None:
            x = self.reduce(x)
        x = F.adaptive_avg_pool2d(x, self.grid)
        if self.normalize:
            x = F.normalize(x, dim=1)
        return x.flatten(1)


@AGGREGATORS.register("spatial")
def spatial(in_dim: int, grid_h: int, grid_w: int, channels: int = 0, normalize: bool = True, init: str = "random",
            num_prefix_tokens: int = 0) -> SpatialGrid:
    return SpatialGrid(in_dim, grid_h, grid_w, channels=channels, normalize=normalize, init=init,
                       prefix_tokens=num_prefix_tokens)
