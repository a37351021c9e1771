"""Metric-learning losses on unit-norm descriptors, by name: the ranking losses of the seeds
(triplet margin, multi-similarity), the pair loss of DINOVPR, and SelaVPR's local triplet loss."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from vpr_core.models.heads.ranking import triplet_margin_loss
from vpr_core.registry import Registry

LOSSES: Registry[Callable[..., torch.Tensor]] = Registry("training loss")
LOSSES.register("triplet")(triplet_margin_loss)


@LOSSES.register("multi_similarity")
def multi_similarity_loss(desc: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, alpha: float = 1.0,
                          beta: float = 50.0, base: float = 0.0, mine_margin: float = 0.1) -> torch.Tensor:
    """Multi-similarity loss (Wang et al. 2019) with its pair miner, over a batch's similarity matrix.

    desc (B, D) unit norm; pos/neg (B, B) bool masks of positive and negative pairs. A positive pair is
    kept when it is harder than the easiest negative plus the margin, a negative pair when it is harder
    than the hardest positive minus it; anchors left without a mined pair add nothing."""
    sim = desc @ desc.t()
    eye = torch.eye(len(desc), dtype=torch.bool, device=desc.device)
    pos, neg = pos & ~eye, neg & ~eye
    big = torch.finfo(sim.dtype).max
    hardest_pos = torch.where(pos, sim, big).min(1, keepdim=True).values
    hardest_neg = torch.where(neg, sim, -big).max(1, keepdim=True).values
    pos_m = pos & (sim - mine_margin < hardest_neg)
    neg_m = neg & (sim + mine_margin > hardest_pos)
    ok = pos_m.any(1) & neg_m.any(1)
    if not ok.any():
        return sim.sum() * 0.0  # nothing informative in this batch; keeps the graph
    pos_term = torch.log1p((torch.exp(-alpha * (sim - base)) * pos_m).sum(1)) / alpha
    neg_term = torch.log1p((torch.exp(beta * (sim - base)) * neg_m).sum(1)) / beta
    return (pos_term + neg_term)[ok].mean()


@LOSSES.register("contrastive")
def contrastive_pair_loss(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """Pairs (DINOVPR): same place pulls the cosine to 1, different places push it below `margin`."""
    cos = (a * b).sum(-1)
    labels = labels.to(cos.dtype)
    return (labels * (1 - cos).pow(2) + (1 - labels) * F.relu(cos - margin).pow(2)).mean()


@LOSSES.register("bce")
def bce_pair_loss(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, scale: float = 10.0,
                  shift: float = 0.5) -> torch.Tensor:
    """Pairs as a binary decision on the cosine: sigmoid(scale * (cos - shift)) = P(same place)."""
    cos = (a * b).sum(-1)
    return F.binary_cross_entropy_with_logits(scale * (cos - shift), labels.to(cos.dtype))


def mutual_nn_similarity(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cosine over the mutual-nearest-neighbour matches of a and b, number of matches), SelaVPR's
    local similarity: a (..., N, C) and b (..., M, C) unit-norm local descriptors, broadcast over `...`.

    The matches are chosen without gradient (argmax both ways); the gradient flows through the cosines
    of the matched pairs. A similarity matrix always holds a mutual pair (its largest entry), so the
    mean has at least one term (a clamp guards exact ties). Computed in float32 also under autocast:
    bf16 cosines near 1 tie often, and ties change the matches."""
    with torch.autocast(a.device.type, enabled=False):
        sim = a.float() @ b.float().transpose(-1, -2)  # (..., N, M)
    with torch.no_grad():
        s = sim.detach()
        a_to_b = s.argmax(-1)  # (..., N)
        b_to_a = s.argmax(-2)  # (..., M)
        back = torch.gather(b_to_a, -1, a_to_b)
        mutual = back == torch.arange(sim.shape[-2], device=sim.device)
        count = mutual.sum(-1)
    matched = torch.gather(sim, -1, a_to_b.unsqueeze(-1)).squeeze(-1)  # (..., N) cosine to the nearest in b
    return (matched * mutual).sum(-1) / count.clamp(min=1), count


def local_triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                       margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, match counts (B, 1 + M)): mean over (anchor, negative) of max(0, s(a, n) - s(a, p) + margin),
    s = `mutual_nn_similarity`; anchor, positive (B, N, C), negatives (B, M, N, C) dense local descriptors."""
    others = torch.cat([positive.unsqueeze(1), negatives], 1)  # (B, 1 + M, N, C)
    s, count = mutual_nn_similarity(anchor.unsqueeze(1), others)  # (B, 1 + M)
    return F.relu(s[:, 1:] - s[:, :1] + margin).mean(), count
