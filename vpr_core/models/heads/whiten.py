"""Learned PCA-whitening to a smaller descriptor, fitted without labels by `vpr-core train` (scheme
`whitening`) and stored in the checkpoint, so the map stores the compact descriptor.

Options: out_dim (descriptor size after the projection). The input is L2-normalised, centred with the
training mean and projected by the whitening matrix; the model L2-normalises the result.
State-dict names under `head.`: mean (in_dim,), proj (out_dim, in_dim); both buffers (not trained by SGD).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.models.heads import HEADS


class WhitenHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 256) -> None:
        super().__init__()
        if not 1 <= int(out_dim) <= int(in_dim):
            raise ValueError(f"whiten head: out_dim must be in [1, {in_dim}] (the aggregator's size), got {out_dim}")
        self.register_buffer("mean", torch.zeros(int(in_dim)))
        self.register_buffer("proj", torch.eye(int(out_dim), int(in_dim)))  # unfitted: keeps the first dims
        self.out_dim = int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x.float(), dim=-1) - self.mean, self.proj)

    @torch.no_grad()
    def fit(self, desc: np.ndarray, eps: float = 1e-6) -> float:
        """PCA-whiten from L2-normalised training descriptors (N, in_dim); returns the variance fraction kept."""
        x = np.asarray(desc, np.float32)
        if x.ndim != 2 or x.shape[1] != self.mean.numel():
            raise ValueError(f"whiten head: descriptors must be (N, {self.mean.numel()}), got {x.shape}")
        if x.shape[0] <= self.out_dim:
            raise ValueError(f"whiten head: {x.shape[0]} training descriptors cannot fit {self.out_dim} dimensions; "
                             f"use more images or a smaller out_dim")
        if not np.isfinite(x).all():
            raise ValueError("whiten head: training descriptors contain NaN or inf")
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        mu = x.mean(0, dtype=np.float64).astype(np.float32)
        # economy SVD of the centred data: works for in_dim far above the sample count (spatial maps)
        _, sv, vt = torch.linalg.svd(torch.from_numpy(x - mu), full_matrices=False)
        var = (sv.double() ** 2 / max(1, x.shape[0] - 1)).numpy()
        total = float(var.sum())
        vals, vecs = var[:self.out_dim], vt[:self.out_dim].double().numpy()
        self.mean.copy_(torch.from_numpy(mu))
        self.proj.copy_(torch.from_numpy(vecs / np.sqrt(vals + eps)[:, None]).float())
        return float(vals.clip(min=0).sum() / max(total, 1e-12))


@HEADS.register("whiten")
def whiten(in_dim: int, out_dim: int = 256) -> WhitenHead:
    return WhitenHead(in_dim, out_dim=out_dim)
