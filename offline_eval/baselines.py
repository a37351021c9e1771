"""Raw-pixel baseline: grayscale 32x24 thumbnails, zero-mean, cosine nearest neighbour.
Any learned descriptor must beat it clearly to be worth its compute."""
from __future__ import annotations

import time
from typing import List

import cv2
import numpy as np

from offline_eval.protocol import PathResult
from vpr_core.datasets import PlaceDataset
from vpr_core.images import load_image
from vpr_core.metrics import rank_database


def raw_pixel_descriptors(paths: List, size=(32, 24)) -> np.ndarray:
    out = []
    for p in paths:
        g = cv2.resize(cv2.cvtColor(load_image(p), cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)
        v = g.astype(np.float32).ravel()
        v -= v.mean()
        out.append(v / (np.linalg.norm(v) + 1e-9))
    return np.stack(out)


def run_raw_pixels(ds: PlaceDataset, top_k: int = 20) -> PathResult:
    """Recall of the baseline, with the seconds it took (reading the images included, like the other paths)."""
    t0 = time.perf_counter()
    scores, ranked = rank_database(raw_pixel_descriptors(ds.queries), raw_pixel_descriptors(ds.database), top_k)
    return PathResult.scored("raw pixels 32x24", ranked, scores, ds.positives, time.perf_counter() - t0)
