"""Adapters (SelaVPR, Lu et al., ICLR 2024): a frozen backbone; only the adapters inside it, the
aggregator and the local head train, on the ranking scheme's triplets plus a loss on local features.

What is implemented, as SelaVPR's published training computes it:
  * data, hard-negative mining (FAISS cache over every training image, refreshed every N steps) and the
    global loss are the ranking scheme's; SelaVPR's global loss is the L2 triplet margin loss (margin 0.1)
    averaged over (anchor, negative) pairs, i.e. `loss: triplet`, `mining: cache` (its default 2 negatives);
  * local similarity s(x, y) of two images: their dense local descriptors (unit norm) are matched by
    mutual nearest neighbours on the cosine matrix (argmax both ways, no gradient); s is the mean cosine
    of the matched pairs (gradient through those cosines);
  * local loss: mean over (anchor, negative) of max(0, s(a, n) - s(a, p) + local_margin); SelaVPR uses
    margin 0 and adds it with weight 1: total = global + local_weight * local.
Differences: SelaVPR falls back to the mean cosine of co-located features when it finds "no" mutual match,
which in its code happens for exactly one match (a tensor squeeze); here every match counts (a similarity
matrix always has at least one). Its validation re-ranks; here validation is the global Recall@K.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Tuple

import numpy as np
import torch

from vpr_core.training.checkpoint import is_trained
from vpr_core.training.losses import local_triplet_loss
from vpr_core.training.schemes import SCHEMES, SchemeContext, SchemeError
from vpr_core.training.schemes.ranking import RankingScheme

_ADAPTER = re.compile(r"(^|\.)adapter[^.]*\.")  # a parameter inside a module named adapter*


def is_adapter(name: str) -> bool:
    """True for a parameter of an adapter module (`backbone.model.blocks.3.adapter1.fc2.weight`)."""
    return bool(_ADAPTER.search(name))


@SCHEMES.register("adapters")
class AdaptersScheme(RankingScheme):
    """Ranking + SelaVPR's local triplet loss; options: local_weight, local_margin and the ranking ones."""
    needs_local = True

    def __init__(self, ctx: SchemeContext, local_weight: float = 1.0, local_margin: float = 0.0,
                 negatives: int = 2, **ranking: Any) -> None:
        self._check_model(ctx)
        super().__init__(ctx, negatives=negatives, **ranking)
        if self.mining != "cache":
            raise SchemeError("adapters: the local loss needs explicit (anchor, positive, negative) triplets: "
                              "use mining: cache")
        if local_weight < 0:
            raise SchemeError(f"adapters: local_weight must be >= 0, got {local_weight}")
        self.local_weight, self.local_margin = float(local_weight), float(local_margin)

    @staticmethod
    def _check_model(ctx: SchemeContext) -> None:
        """Before any compute: a local head to train, and no backbone weight trained except adapters."""
        model, trainable = ctx.model, ctx.cfg.trainable
        if getattr(model, "local_head", None) is None:
            raise SchemeError("adapters: the model has no local head, and SelaVPR's local loss trains one: set "
                              "model.local_head (e.g. {name: upconv, dim: 128} on a DINOv2 backbone), or train "
                              "without local loss with scheme: ranking")
        frozen = [n for n, _ in model.named_parameters()
                  if n.startswith("backbone.") and not is_adapter(n) and is_trained(n, trainable)]
        if frozen:
            entries = [p for p in trainable if any(is_trained(n, [p]) for n in frozen)]
            raise SchemeError(f"adapters: trainable entries {entries} unfreeze {len(frozen)} backbone weight(s) "
                              f"(e.g. {frozen[0]}); the scheme keeps the pre-trained backbone frozen and trains only "
                              f"its adapters: name them with 'backbone.*adapter*', plus aggregator and local_head")

    def loss(self, batch: np.ndarray, step: int) -> Tuple[torch.Tensor, Dict[str, float]]:
        idx = self.images(batch, step)
        glob, local = self.encoder([self.table.paths[i] for i in idx])
        b = len(batch)
        g_loss, info = self.ranking_loss(glob.float(), idx, b)
        local = local.float()
        n, c = local.shape[1:]
        l_loss, matches = local_triplet_loss(local[:b], local[b:2 * b],
                                             local[2 * b:].reshape(b, self.negatives, n, c), self.local_margin)
        info.update(global_loss=g_loss.item(), local_loss=l_loss.item(),
                    mnn_pos=matches[:, 0].float().mean().item(), mnn_neg=matches[:, 1:].float().mean().item())
        return g_loss + self.local_weight * l_loss, info
