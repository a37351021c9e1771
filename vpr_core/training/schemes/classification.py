"""Classification (VisionTransformerVPR): places as classes, a cosine-margin classifier on the
descriptor (the model zoo's ClassifierHead), trained beside the model and dropped at inference."""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.models.heads.classifier import ClassifierHead
from vpr_core.training.data import labelled_table
from vpr_core.training.schemes import SCHEMES, Scheme, SchemeContext, SchemeError, chunk, epoch_order


@SCHEMES.register("classification")
class ClassificationScheme(Scheme):
    def __init__(self, ctx: SchemeContext, scale: float = 30.0, margin: float = 0.35,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(ctx)
        self.table = labelled_table(self.cfg.data)
        _, self.labels = np.unique(self.table.positions[:, 0], return_inverse=True)
        n = int(self.labels.max()) + 1
        if n < 2:
            raise SchemeError(f"classification: the training split holds {n} place(s); it needs at least 2 "
                              f"(lower data.group or data.min_per_place)")
        if hasattr(ctx.model.head, "logits"):
            raise SchemeError("classification: the model config already has a classifier head; the scheme adds its own")
        self.classifier = ClassifierHead(ctx.model.dim, n, cosine=True, scale=scale, margin=margin)
        self.smoothing = float(label_smoothing)

    def image_paths(self) -> List:
        return self.table.paths + super().image_paths()

    def modules(self) -> Dict[str, nn.Module]:
        return {"classifier": self.classifier}

    def batches(self, epoch: int) -> List[np.ndarray]:
        order = self.table.anchors[epoch_order(len(self.table.anchors), self.cfg.seed, epoch)]
        return chunk(order, self.cfg.batch_size, self.cfg.steps_per_epoch)

    def loss(self, batch: np.ndarray, step: int) -> Tuple[torch.Tensor, Dict[str, float]]:
        desc = self.encoder([self.table.paths[i] for i in batch]).float()
        labels = torch.from_numpy(self.labels[batch]).to(desc.device)
        logits = self.classifier.logits(desc, labels)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.smoothing)
        with torch.no_grad():
            acc = (self.classifier.logits(desc).argmax(1) == labels).float().mean().item()
        return loss, {"acc": acc}
