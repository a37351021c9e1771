"""VisionTransformerVPR's ranking training scheme needs no head: the loss acts on the global
descriptors directly (an anchor should be closer to its positive than to any negative by a margin).
This is the loss, not a registered head."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def triplet_margin_loss(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                        margin: float = 0.1) -> torch.Tensor:
    """Mean of max(0, |a - p| - |a - n| + margin) over every (anchor, negative) pair.

    anchor, positive: (B, D); negatives: (B, M, D) or (B, D) for one negative each. Euclidean
    distances; on unit-norm descriptors |a - b|^2 = 2 - 2 cos(a, b).
    """
    if negatives.ndim == 2:
        negatives = negatives.unsqueeze(1)
    if anchor.shape != positive.shape or negatives.ndim != 3 or negatives.shape[0] != anchor.shape[0] \
            or negatives.shape[2] != anchor.shape[1]:
        raise ValueError(f"triplet_margin_loss: shapes anchor {tuple(anchor.shape)}, positive "
                         f"{tuple(positive.shape)}, negatives {tuple(negatives.shape)} do not fit (B,D),(B,D),(B,M,D)")
    d_pos = (anchor - positive).norm(dim=-1, keepdim=True)  # (B,1)
    d_neg = (anchor.unsqueeze(1) - negatives).norm(dim=-1)  # (B,M)
    return F.relu(d_pos - d_neg + margin).mean()
