"""Local features of one image: keypoint positions and descriptors, stored compactly (float16,
capped count) for re-ranking the map's candidates."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


@dataclass
class LocalFeatures:
    """`xy` (N,2) float32 pixel coordinates (x, y) in the original image; `desc` (N,C) float16, unit norm."""
    xy: np.ndarray
    desc: np.ndarray
    image_hw: Tuple[int, int]

    def __post_init__(self) -> None:
        if self.xy.ndim != 2 or self.xy.shape[1] != 2 or self.desc.ndim != 2 or len(self.xy) != len(self.desc):
            raise ValueError(f"local features need xy (N,2) and desc (N,C); got {self.xy.shape} and {self.desc.shape}")

    def __len__(self) -> int:
        return len(self.xy)

    @property
    def dim(self) -> int:
        return int(self.desc.shape[1])


def select_local(desc: np.ndarray, xy: np.ndarray, weight: Optional[np.ndarray], limit: int,
                 scale_xy: Tuple[float, float], image_hw: Tuple[int, int]) -> LocalFeatures:
    """Keep the `limit` strongest features (by `weight`, else descriptor norm), L2-normalise, float16."""
    desc = np.asarray(desc, np.float32)
    strength = np.asarray(weight, np.float32) if weight is not None else np.linalg.norm(desc, axis=1)
    keep = np.argsort(-strength, kind="stable")[:limit] if len(desc) > limit else np.arange(len(desc))
    d = desc[keep]
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    pts = np.asarray(xy, np.float32)[keep] * np.asarray(scale_xy, np.float32)
    return LocalFeatures(pts.astype(np.float32), d.astype(np.float16), image_hw)
