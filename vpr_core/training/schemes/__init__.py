"""Training schemes, one file each, registered by name: what data a scheme reads, which batches an
epoch has and the loss of a batch. The trainer owns the loop, checkpoints, logs and validation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from vpr_core.datasets import PlaceDataset
from vpr_core.metrics import rank_database, recall_at_k
from vpr_core.registry import Registry
from vpr_core.training.config import TrainConfig
from vpr_core.training.features import Encoder


class SchemeError(ValueError):
    """The scheme does not fit the model or the data (raised before any compute is spent)."""


@dataclass
class SchemeContext:
    """What a scheme is built with: the run's config, the model and, for validation, the held-out split."""
    cfg: TrainConfig
    model: nn.Module
    val: Optional[PlaceDataset] = None


class Scheme:
    """Base: subclasses list their options as keyword arguments (a typo is an unknown-option error)."""
    needs_gradients = True  # False: `fit` replaces the epoch loop (e.g. whitening)
    needs_local = False  # True: the encoder returns (global, dense local descriptors) (adapters)
    select_metric = "R@1"  # validation metric the best checkpoint maximises

    def __init__(self, ctx: SchemeContext) -> None:
        self.ctx, self.cfg = ctx, ctx.cfg
        self.encoder: Optional[Encoder] = None
        self.select_metric = f"R@{self.cfg.select_by}"

    def image_paths(self) -> List[Path]:
        """Every image the scheme reads (training and validation), for the backbone feature cache."""
        val = self.ctx.val
        return list(val.database) + list(val.queries) if val is not None else []

    def modules(self) -> Dict[str, nn.Module]:
        """Training-only modules trained beside the model and dropped at inference (a classifier)."""
        return {}

    def attach(self, encoder: Encoder) -> None:
        self.encoder = encoder

    def batches(self, epoch: int) -> List[np.ndarray]:
        raise NotImplementedError

    def before_step(self, step: int) -> None:
        """Called before every optimiser step (miners refresh their descriptor cache here)."""

    def loss(self, batch: np.ndarray, step: int) -> Tuple[torch.Tensor, Dict[str, float]]:
        raise NotImplementedError

    def fit(self) -> Dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} trains by gradients, not by fit()")

    def validate(self) -> Dict[str, float]:
        """Recall@K of the validation split's queries against its database (the benchmark's metric)."""
        val = self.ctx.val
        if val is None or self.encoder is None:
            return {}
        db = self.encoder.describe(val.database, desc="validate database")
        q = self.encoder.describe(val.queries, desc="validate queries")
        _, ranked = rank_database(q, db, max(self.cfg.recall_ks))
        return {f"R@{k}": v for k, v in recall_at_k(ranked, val.positives, self.cfg.recall_ks).items()}

    def produced_config(self) -> Dict[str, Any]:
        """Dotted config values the run writes into the produced config (e.g. a decision threshold)."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


SCHEMES: Registry[type] = Registry("training scheme")


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The same permutation of `n` items for a (seed, epoch) on every run: resume needs no sampler state."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def chunk(order: np.ndarray, batch_size: int, steps: int = 0) -> List[np.ndarray]:
    """Batches of `batch_size` (the last full one kept when `steps` asks for more, cycling the order)."""
    if steps:
        reps = -(-steps * batch_size // max(1, len(order)))
        order = np.tile(order, max(1, reps))
        return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size) if len(order[i:i + batch_size]) > 1]


from vpr_core.training.schemes import adapters, classification, pairs, ranking, whitening  # noqa: E402,F401
