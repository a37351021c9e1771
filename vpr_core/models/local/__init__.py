"""Local heads: dense local features for re-ranking, one file per method.

A local head is called as `head(features, backbone, input_hw)` with the backbone's raw output, reads it
through `backbone.to_map` and the helpers of vpr_core/models/features.py (the backbone-output contract),
and returns a `LocalOutput` (descriptors, their positions in input pixels, optional weights).

Heads (config `model.local_head.name`), builders called as `builder(in_dim, **options)`:
- `feature_map`: backbone feature-map cells (output, or an earlier stage by `stride`); no training.
- `upconv`: SelaVPR's up-convolution local adaptation (dense (4h-3) x (4w-3) map of 128-D features).
- `patch_tokens`: ViTGaL's patch embeddings reduced by an autoencoder's encoder, weighted by the class
  attention of its scorer (`attention: false`: autoencoder only).
Parameter names follow the seeds' checkpoints (vpr_core/models/formats/, one file per seed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from vpr_core.registry import Registry

LOCAL_HEADS: Registry = Registry("local head")


@dataclass
class LocalOutput:
    desc: torch.Tensor  # (B, N, C)
    xy: torch.Tensor  # (B, N, 2) pixel coordinates (x, y) in the network input
    weight: Optional[torch.Tensor] = None  # (B, N) importance, higher = keep first


def grid_xy(h: int, w: int, input_hw: tuple, device=None) -> torch.Tensor:
    """Centres of an h x w feature grid in input pixel coordinates, row-major, (h*w, 2)."""
    sy, sx = input_hw[0] / h, input_hw[1] / w
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) * sx, (ys.flatten() + 0.5) * sy], dim=1).float()


from vpr_core.models.local import feature_map, patch_tokens, upconv  # noqa: E402,F401  (registers the heads)
