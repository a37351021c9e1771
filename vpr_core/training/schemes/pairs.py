"""Pairs (DINOVPR): `path1,path2,label` lists; a loss on each pair's cosine similarity, and the
decision threshold chosen on the validation pairs and written into the produced config."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from vpr_core.training.losses import LOSSES
from vpr_core.training.schemes import SCHEMES, Scheme, SchemeContext, SchemeError, chunk, epoch_order


def best_threshold(cos: np.ndarray, labels: np.ndarray) -> Tuple[float, float, float]:
    """(threshold, accuracy, precision): the cosine cut with the highest accuracy on labelled pairs;
    ties go to the higher cut (fewer false matches: a false loop closure costs more than a missed one)."""
    order = np.argsort(-cos)
    c, y = cos[order], labels[order].astype(bool)
    tp = np.cumsum(y)  # accept the first i+1 pairs
    fp = np.cumsum(~y)
    acc = (tp + (len(y) - y.sum() - fp)) / len(y)
    i = int(np.flatnonzero(acc == acc.max())[0])
    cut = float(c[i] if i + 1 == len(c) else (c[i] + c[i + 1]) / 2)
    return cut, float(acc[i]), float(tp[i] / (i + 1))


@SCHEMES.register("pairs")
class PairsScheme(Scheme):
    select_metric = "pair_acc"

    def __init__(self, ctx: SchemeContext, loss: str = "contrastive", margin: float = 0.5, scale: float = 10.0,
                 shift: float = 0.5) -> None:
        super().__init__(ctx)
        from vpr_core.datasets import load_pairs

        if loss not in ("contrastive", "bce"):
            raise SchemeError(f"pairs: loss must be contrastive or bce, got '{loss}'")
        self.loss_fn = LOSSES.get(loss)
        self.options = {"margin": margin} if loss == "contrastive" else {"scale": scale, "shift": shift}
        d = self.cfg.data
        self.train = load_pairs(d.path)
        if self.train.labels.min() == self.train.labels.max():
            raise SchemeError(f"pairs: {d.path} holds only label {int(self.train.labels[0])} pairs; "
                              f"the loss needs both same-place (1) and different-place (0) pairs")
        self.val = load_pairs(d.val_path) if d.val_path else None
        self.select_metric = "pair_acc" if self.val is not None else ""
        self.threshold: float | None = None

    def image_paths(self) -> List[Path]:
        paths = self.train.left + self.train.right
        if self.val is not None:
            paths += self.val.left + self.val.right
        return list(dict.fromkeys(paths))

    def batches(self, epoch: int) -> List[np.ndarray]:
        return chunk(epoch_order(len(self.train.labels), self.cfg.seed, epoch), self.cfg.batch_size,
                     self.cfg.steps_per_epoch)

    def loss(self, batch: np.ndarray, step: int) -> Tuple[torch.Tensor, Dict[str, float]]:
        t = self.train
        desc = self.encoder([t.left[i] for i in batch] + [t.right[i] for i in batch]).float()
        a, b = desc[:len(batch)], desc[len(batch):]
        labels = torch.from_numpy(t.labels[batch]).to(desc.device)
        return self.loss_fn(a, b, labels, **self.options), {"cos": (a * b).sum(-1).mean().item()}

    def validate(self) -> Dict[str, float]:
        if self.val is None:
            return {}
        v = self.val
        a = self.encoder.describe(v.left, desc="validate pairs")
        b = self.encoder.describe(v.right, desc="validate pairs")
        cos = (a * b).sum(1)
        self.threshold, acc, prec = best_threshold(cos, v.labels)
        return {"pair_acc": acc, "pair_precision": prec, "threshold": self.threshold}

    def produced_config(self) -> Dict[str, Any]:
        return {} if self.threshold is None else {"detector.loop_threshold": round(self.threshold, 4)}
