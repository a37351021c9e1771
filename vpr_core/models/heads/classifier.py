"""VisionTransformerVPR's classification training scheme: a classifier over place classes on top of
the descriptor. It is a *training* head: it never changes the descriptor.

As a model head (`head: {name: classifier, num_classes: N}`) its forward is the identity, so
`VPRModel.forward` still returns the (normalised) global descriptor and `model.dim` is the
aggregator's size; the class scores come from `model.head.logits(desc)` (or `logits(desc, labels)`
for a margin loss). For inference the head can be dropped from the config, but then the checkpoint
must not carry `head.*` tensors (strict loading would report them as unexpected).

Options: num_classes (required), cosine (true: scale * cos(desc, class weight), i.e. a normalised
softmax classifier, CosFace-style; false: a plain linear layer with bias), scale (30), margin
(cosine margin subtracted from the true class's logit when labels are given; 0 = none).
State-dict names under `head.`: weight (num_classes, D) and, when cosine is false, bias (num_classes,).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.models.heads import HEADS


class ClassifierHead(nn.Module):
    training_only = True  # exporters/inference tools may drop it; forward is the identity anyway

    def __init__(self, in_dim: int, num_classes: int, cosine: bool = True, scale: float = 30.0,
                 margin: float = 0.0) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"classifier head: num_classes must be >= 2, got {num_classes}")
        if margin and not cosine:
            raise ValueError("classifier head: a margin needs cosine: true")
        if scale <= 0:
            raise ValueError(f"classifier head: scale must be > 0, got {scale}")
        self.cosine, self.scale, self.margin = cosine, float(scale), float(margin)
        self.weight = nn.Parameter(torch.empty(int(num_classes), int(in_dim)))
        nn.init.xavier_uniform_(self.weight)
        self.bias = None if cosine else nn.Parameter(torch.zeros(int(num_classes)))
        self.out_dim = int(in_dim)  # the descriptor passes through unchanged
        self.num_classes = int(num_classes)

    def forward(self, desc: torch.Tensor) -> torch.Tensor:
        return desc

    def logits(self, desc: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Class scores (B, num_classes); with `labels` the true class's cosine is lowered by `margin`."""
        if not self.cosine:
            return F.linear(desc, self.weight, self.bias)
        cos = F.linear(F.normalize(desc, dim=-1), F.normalize(self.weight, dim=-1))
        if labels is not None and self.margin:
            cos = cos - self.margin * F.one_hot(labels, self.num_classes).to(cos.dtype)
        return self.scale * cos


@HEADS.register("classifier")
def classifier(in_dim: int, num_classes: int, cosine: bool = True, scale: float = 30.0,
               margin: float = 0.0) -> ClassifierHead:
    return ClassifierHead(in_dim, num_classes, cosine=cosine, scale=scale, margin=margin)
