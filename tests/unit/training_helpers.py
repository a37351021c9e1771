"""Helpers shared by the trainer tests (imported by test_training*.py, not collected as tests)."""
from __future__ import annotations

import numpy as np
import torch

from vpr_core.training import Trainer


def fixed_batch_loss(trainer: Trainer) -> float:
    """The scheme's mean loss over the batches of epoch 0 (same mining draws each time), without
    dropout or gradient: the training loss on fixed data."""
    trainer.scheme.before_step(0)
    trainer.model.eval()
    with torch.no_grad():
        return float(np.mean([float(trainer.scheme.loss(b, i)[0]) for i, b in enumerate(trainer.scheme.batches(0))]))
