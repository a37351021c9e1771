"""Generalised-mean pooling (Radenovic et al.): p=1 is average pooling, p->inf is max pooling.

`normalize: true` L2-normalises every location's feature over the channels before pooling, as SelaVPR's
aggregation does (`L2Norm, GeM, Flatten` over the DINOv2 patch-token map)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.models.aggregators import AGGREGATORS
from vpr_core.models.features import column_map


class GeM(nn.Module):
    """GeM over a CNN map (B,C,H,W) or over patch tokens (B,N,C) after `prefix_tokens` CLS/register tokens."""

    def __init__(self, in_dim: int, p: float = 3.0, eps: float = 1e-6, learn_p: bool = True,
                 prefix_tokens: int = 0, normalize: bool = False) -> None:
        super().__init__()
        self.normalize = bool(normalize)
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learn_p)
        self.eps = eps
        self.prefix_tokens = prefix_tokens
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = column_map(x, self.prefix_tokens, who="gem").float()  # tokens: the patches as a one-column map
        if self.normalize:
            x = F.normalize(x, dim=1)
        x = x.clamp(min=self.eps).pow(self.p)
        return F.adaptive_avg_pool2d(x, 1).pow(1.0 / self.p).flatten(1)


@AGGREGATORS.register("gem")
def gem(in_dim: int, num_prefix_tokens: int = 0, p: float = 3.0, learn_p: bool = True, normalize: bool = False) -> GeM:
    return GeM(in_dim, p=p, learn_p=learn_p, prefix_tokens=num_prefix_tokens, normalize=normalize)
