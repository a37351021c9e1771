"""CLS-token descriptor for transformers (VisionTransformerVPR); a backbone without a class token (CNN) is refused."""
from __future__ import annotations

import torch
from torch import nn

from vpr_core.models.aggregators import AGGREGATORS
from vpr_core.models.features import class_token


class ClsToken(nn.Module):
    """The backbone's class token as the global descriptor (no parameters)."""

    def __init__(self, in_dim: int, num_prefix_tokens: int) -> None:
        super().__init__()
        if num_prefix_tokens < 1:
            raise ValueError("the 'cls' aggregator needs a backbone with a class token (e.g. a ViT)")
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_token(x, who="'cls' aggregator").float()


@AGGREGATORS.register("cls")
def cls(in_dim: int, num_prefix_tokens: int = 0) -> ClsToken:
    return ClsToken(in_dim, num_prefix_tokens)
