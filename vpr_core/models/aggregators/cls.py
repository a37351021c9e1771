"""CLS-token descriptor for transformers (VisionTransformerVPR); CNN maps fall back to average pooling."""
from __future__ import annotations

import torch
from torch import nn

from vpr_core.models.aggregators import AGGREGATORS


class ClsToken(nn.Module):
    def __init__(self, in_dim: int, num_prefix_tokens: int) -> None:
        super().__init__()
        if num_prefix_tokens < 1:
            raise ValueError("the 'cls' aggregator needs a backbone with a class token (e.g. a ViT)")
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"'cls' aggregator expects tokens (B,N,C), got shape {tuple(x.shape)}")
        return x[:, 0].float()


@AGGREGATORS.register("cls")
def cls(in_dim: int, num_prefix_tokens: int = 0) -> ClsToken:
    return ClsToken(in_dim, num_prefix_tokens)
