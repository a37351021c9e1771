"""Image -> network input: resize to the model's size and normalise with the backbone's statistics."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from vpr_core.config import PreprocessConfig
from vpr_core.images import validate_rgb

_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


class Preprocessor:
    """RGB uint8 images (any size) -> float tensor (B,3,H,W), normalised as the weights expect."""

    def __init__(self, cfg: PreprocessConfig, default_mean: Sequence[float], default_std: Sequence[float]) -> None:
        if len(cfg.image_size) != 2 or min(cfg.image_size) < 8:
            raise ValueError(f"model.preprocess.image_size must be [height, width] >= 8, got {cfg.image_size}")
        if cfg.interpolation not in _INTERP:
            raise ValueError(f"model.preprocess.interpolation must be one of {sorted(_INTERP)}")
        self.height, self.width = (int(v) for v in cfg.image_size)
        mean = cfg.mean or list(default_mean)
        std = cfg.std or list(default_std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError("model.preprocess.mean/std need three values each (std > 0)")
        self.mean = np.asarray(mean, np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, np.float32) * 255.0)
        self.interp = _INTERP[cfg.interpolation]

    def one(self, img: np.ndarray) -> np.ndarray:
        img = validate_rgb(img)
        if img.shape[:2] != (self.height, self.width):
            # INTER_AREA only averages when shrinking; use linear for upscaling tiny images.
            interp = self.interp if img.shape[0] >= self.height else cv2.INTER_LINEAR
            img = cv2.resize(img, (self.width, self.height), interpolation=interp)
        return ((img.astype(np.float32) - self.mean) * self.inv_std).transpose(2, 0, 1)

    def __call__(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.one(im) for im in images]))
