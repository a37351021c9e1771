"""Putative matches between two sets of unit-norm local descriptors: mutual nearest neighbours under
cosine similarity, optionally with a minimum similarity and Lowe's ratio test.

Runs on torch CPU tensors: converting the stored float16 descriptors is ~15x faster there than in
numpy, and one small matmul dominates (about 0.4 ms for 512 x 512 x 128).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


def _as_float(desc) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(desc)) if isinstance(desc, np.ndarray) else desc
    return t.float()


@torch.inference_mode()
def mutual_nn(desc_a, desc_b, min_similarity: float = 0.0,
              ratio: float = 1.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (ia, ib) of pairs that are each other's nearest neighbour, and their cosine similarity.

    `desc_a` (Na,C) and `desc_b` (Nb,C) are unit norm (float16 or float32, numpy or torch). A pair
    is kept when its similarity is >= `min_similarity` and, if `ratio` < 1, when its descriptor
    distance is below `ratio` times the distance from a to its second-nearest neighbour in b.
    """
    if len(desc_a) == 0 or len(desc_b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    a, b = _as_float(desc_a), _as_float(desc_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"cannot match {a.shape[1]}-D local descriptors against {b.shape[1]}-D ones")
    sim = a @ b.T  # (Na, Nb) cosine similarities
    best, nn_ab = sim.max(dim=1)
    nn_ba = sim.max(dim=0).indices  # max with indices: 1.25x faster than argmax here, same first index
    keep = nn_ba[nn_ab] == torch.arange(len(a))
    if min_similarity > -1.0:
        keep &= best >= min_similarity
    if ratio < 1.0 and sim.shape[1] > 1:
        top2 = sim.topk(2, dim=1).values
        # unit vectors: distance = sqrt(2 - 2 cos)
        d1 = (2.0 - 2.0 * top2[:, 0]).clamp_min(0).sqrt()
        d2 = (2.0 - 2.0 * top2[:, 1]).clamp_min(0).sqrt()
        keep &= d1 < ratio * d2
    ia = torch.nonzero(keep).flatten()
    return ia.numpy().astype(np.int64), nn_ab[ia].numpy().astype(np.int64), best[ia].numpy().astype(np.float32)
