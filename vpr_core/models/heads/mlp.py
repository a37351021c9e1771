"""DINOVPR's head: a small MLP on the global feature (e.g. DINOv2's CLS token) that learns a compact,
place-discriminative descriptor; the model L2-normalises its output and compares by cosine similarity.

Options: hidden_dims (list of hidden layer sizes, [] = one linear layer), out_dim (descriptor size),
activation (gelu | relu), dropout (between layers, training only).
State-dict names under `head.`: layers.<i>.weight / .bias for the Linear layers.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vpr_core.models.heads import HEADS

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class MLPHead(nn.Module):
    def __init__(self, in_dim: int, hidden_dims: Sequence[int] = (1024,), out_dim: int = 256,
                 activation: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"mlp head: activation must be one of {sorted(_ACTIVATIONS)}, got '{activation}'")
        if not isinstance(hidden_dims, (list, tuple)):
            raise ValueError(f"mlp head: hidden_dims must be a list of sizes, got {hidden_dims!r}")
        sizes = [int(in_dim), *(int(h) for h in hidden_dims), int(out_dim)]
        if min(sizes) < 1:
            raise ValueError(f"mlp head: every layer size must be >= 1, got {sizes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"mlp head: dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            if i:
                layers.append(_ACTIVATIONS[activation]())
                if dropout:
                    layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(a, b))
        self.layers = nn.Sequential(*layers)
        self.out_dim = int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@HEADS.register("mlp")
def mlp(in_dim: int, hidden_dims: Sequence[int] = (1024,), out_dim: int = 256, activation: str = "gelu",
        dropout: float = 0.0) -> MLPHead:
    return MLPHead(in_dim, hidden_dims=hidden_dims, out_dim=out_dim, activation=activation, dropout=dropout)
