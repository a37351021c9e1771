"""NetVLAD-style clustering aggregation (Arandjelovic et al. 2016), with ClusVPR's attention weighting.

Each local descriptor x_i (a CNN map cell or a ViT patch token) is softly assigned to K cluster
centres by a 1x1 convolution followed by a softmax over clusters; the descriptor of cluster k is
the assignment-weighted sum of residuals, V_k = sum_i a_k(x_i) w_i (x_i - c_k). Each V_k is
L2-normalised (intra-normalisation), the K x C matrix is flattened and L2-normalised again, and
an optional linear reduction (ClusVPR's 4096-D output) follows.

`attention: true` adds ClusVPR's idea of weighting each local descriptor's contribution by a
learned spatial attention map: w_i = sigmoid(1x1 conv(x_i)). It starts neutral (zero weights:
w_i = 0.5 everywhere, which intra-normalisation cancels), so a freshly clustered model gives the
same descriptors as plain NetVLAD until the attention is trained or loaded.

The layer cannot start from random centres. A fresh module is *uninitialised* and refuses to run;
it becomes initialised through `init_from_clusters` (k-means centres, see `vpr-core cluster`) or by
loading a state dict whose `initialised` buffer is true (our native checkpoints carry it; a mapped
foreign checkpoint must set `aggregator.initialised = torch.tensor(True)`).

State-dict names under the model's `aggregator.` prefix:
    centroids          (K, C)       cluster centres c_k
    conv.weight        (K, C, 1, 1) soft-assignment weights
    conv.bias          (K,)         only with `conv_bias: true`
    attention.weight   (1, C, 1, 1) and attention.bias (1,)   only with `attention: true`
    reduction.weight   (D, K*C)     and reduction.bias (D,)   only with `dim_reduction: D`
    initialised        ()  bool     buffer: true once centres come from data or a checkpoint
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.models.aggregators import AGGREGATORS
from vpr_core.models.features import column_map

ArrayLike = Union[np.ndarray, torch.Tensor]

NOT_INITIALISED = ("NetVLAD centres are not initialised: run `vpr-core cluster` or load a checkpoint "
                   "(a fresh NetVLAD layer cannot work from random centres)")


class NetVLAD(nn.Module):
    """Soft-assignment VLAD over local features; see the module docstring for names and options."""

    def __init__(self, in_dim: int, clusters: int = 64, attention: bool = False,
                 dim_reduction: Optional[int] = None, normalize_input: bool = True, conv_bias: bool = False,
                 prefix_tokens: int = 0) -> None:
        super().__init__()
        if clusters < 1:
            raise ValueError(f"netvlad: clusters must be >= 1, got {clusters}")
        if dim_reduction is not None and dim_reduction < 1:
            raise ValueError(f"netvlad: dim_reduction must be a positive size or null, got {dim_reduction}")
        self.in_dim, self.clusters = int(in_dim), int(clusters)
        self.normalize_input = normalize_input
        self.prefix_tokens = prefix_tokens
        self.centroids = nn.Parameter(torch.zeros(self.clusters, self.in_dim))
        self.conv = nn.Conv2d(self.in_dim, self.clusters, kernel_size=1, bias=conv_bias)
        self.attention: Optional[nn.Conv2d] = None
        if attention:
            self.attention = nn.Conv2d(self.in_dim, 1, kernel_size=1)
            nn.init.zeros_(self.attention.weight)  # neutral until trained: equal weight for every position
            nn.init.zeros_(self.attention.bias)
        self.vlad_dim = self.clusters * self.in_dim
        self.reduction: Optional[nn.Linear] = None
        if dim_reduction is not None:
            self.reduction = nn.Linear(self.vlad_dim, int(dim_reduction))
            # a scaled Gaussian projection roughly preserves cosine similarities (Johnson-Lindenstrauss)
            # until the reduction is trained or loaded
            nn.init.normal_(self.reduction.weight, std=1.0 / math.sqrt(int(dim_reduction)))
            nn.init.zeros_(self.reduction.bias)
        self.out_dim = int(dim_reduction) if dim_reduction is not None else self.vlad_dim
        self.register_buffer("initialised", torch.tensor(False))
        self._ready = False  # python copy of `initialised`: forward needs no device sync to check it

    # ---- initialisation ------------------------------------------------------------------------

    @property
    def is_initialised(self) -> bool:
        return self._ready

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.initialised.detach().cpu())

    def assignment_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Soft-assignment logits (B,K,H,W) of a (normalised, if configured) map x (B,C,H,W)."""
        return self.conv(x)

    @torch.no_grad()
    def init_from_clusters(self, centroids: ArrayLike, descriptors_sample: ArrayLike,
                           runner_up_ratio: float = 0.01) -> float:
        """Set the centres and the soft-assignment from k-means centres and a sample of local descriptors.

        With `conv_bias: false` (ClusVPR/OpenIBL layout) the assignment is a scaled cosine,
        w_k = alpha * c_k / |c_k|; with `conv_bias: true` it is the paper's squared-distance form,
        w_k = 2 alpha c_k, b_k = -alpha |c_k|^2. alpha is chosen so that on the sample, on average
        (in log space), the runner-up centre gets `runner_up_ratio` of the nearest one's weight:
        alpha = -ln(ratio) / mean(best logit - second logit at alpha=1). Returns alpha.
        """
        c = torch.as_tensor(np.asarray(centroids) if not isinstance(centroids, torch.Tensor) else centroids,
                            dtype=torch.float32).cpu()
        s = torch.as_tensor(np.asarray(descriptors_sample) if not isinstance(descriptors_sample, torch.Tensor)
                            else descriptors_sample, dtype=torch.float32).cpu()
        if c.shape != (self.clusters, self.in_dim):
            raise ValueError(f"netvlad: centroids must have shape ({self.clusters}, {self.in_dim}) "
                             f"(clusters, feature dim), got {tuple(c.shape)}")
        if s.ndim != 2 or s.shape[1] != self.in_dim or s.shape[0] < 1:
            raise ValueError(f"netvlad: descriptors_sample must have shape (N, {self.in_dim}), got {tuple(s.shape)}")
        if not (torch.isfinite(c).all() and torch.isfinite(s).all()):
            raise ValueError("netvlad: centroids or descriptor sample contain NaN/inf")
        if not 0.0 < runner_up_ratio < 1.0:
            raise ValueError("netvlad: runner_up_ratio must be in (0, 1)")
        if self.normalize_input:
            s = F.normalize(s, dim=1)
        if self.conv.bias is None:
            w1, b1 = F.normalize(c, dim=1), torch.zeros(self.clusters)
        else:
            w1, b1 = 2.0 * c, -(c * c).sum(dim=1)
        if self.clusters > 1:
            top2 = (s @ w1.T + b1).topk(2, dim=1).values
            gap = float((top2[:, 0] - top2[:, 1]).mean())
        else:
            gap = 1.0  # one cluster: the softmax is 1 whatever alpha is
        if not gap > 1e-12:
            raise ValueError("netvlad: the descriptor sample does not separate the centres (all equally close); "
                             "use more or more varied images")
        alpha = -math.log(runner_up_ratio) / gap
        dev = self.centroids.device
        self.centroids.copy_(c.to(dev))
        self.conv.weight.copy_((alpha * w1)[:, :, None, None].to(dev))
        if self.conv.bias is not None:
            self.conv.bias.copy_((alpha * b1).to(dev))
        self.initialised.fill_(True)
        self._ready = True
        return alpha

    # ---- forward -------------------------------------------------------------------------------

    def vlad(self, x: torch.Tensor) -> torch.Tensor:
        """Intra- and L2-normalised VLAD (B, K*C) before the optional reduction."""
        x = column_map(x, self.prefix_tokens, who="netvlad").float()  # (B,C,P,1) or (B,C,H,W)
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        a = F.softmax(self.assignment_logits(x), dim=1).flatten(2)  # (B,K,P)
        if self.attention is not None:
            a = a * torch.sigmoid(self.attention(x)).flatten(2)  # (B,1,P) weights per local feature
        feats = x.flatten(2)  # (B,C,P)
        v = torch.bmm(a, feats.transpose(1, 2)) - a.sum(dim=2, keepdim=True) * self.centroids.float()[None]
        v = F.normalize(v, dim=2)  # intra-normalisation
        return F.normalize(v.flatten(1), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            raise RuntimeError(NOT_INITIALISED)
        with torch.autocast(device_type=x.device.type, enabled=False):  # residual sums stay in fp32
            v = self.vlad(x)
            if self.reduction is not None:
                v = F.normalize(self.reduction(v), dim=1)
        return v


@AGGREGATORS.register("netvlad")
def netvlad(in_dim: int, num_prefix_tokens: int = 0, clusters: int = 64, attention: bool = False,
            dim_reduction: Optional[int] = None, normalize_input: bool = True, conv_bias: bool = False) -> NetVLAD:
    """Options: clusters K (64), attention (false), dim_reduction (null = K*C output; ClusVPR uses 4096),
    normalize_input (L2 per local descriptor first, true), conv_bias (false = ClusVPR/OpenIBL layout)."""
    return NetVLAD(in_dim, clusters=clusters, attention=attention, dim_reduction=dim_reduction,
                   normalize_input=normalize_input, conv_bias=conv_bias, prefix_tokens=num_prefix_tokens)
