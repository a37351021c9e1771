"""VPRModel: backbone + aggregator composed from a config, giving L2-normalised global descriptors."""
from __future__ import annotations

import logging
from typing import Any, Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.config import ModelConfig
from vpr_core.models.aggregators import AGGREGATORS
from vpr_core.models.backbones import BACKBONES
from vpr_core.models.preprocess import Preprocessor
from vpr_core.models.weights import load_weights

log = logging.getLogger(__name__)


class VPRModel(nn.Module):
    """image batch (B,3,H,W) -> descriptors (B,D), unit L2 norm, float32."""

    def __init__(self, backbone: nn.Module, aggregator: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator
        self.dim: int = int(aggregator.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.aggregator(self.backbone(x)).float(), dim=-1)


def _options(section: Dict[str, Any]) -> tuple[str, Dict[str, Any]]:
    opts = dict(section)
    return opts.pop("name"), opts


def build_model(cfg: ModelConfig, load_checkpoint: bool = True) -> VPRModel:
    """Compose the model named by `cfg`; load `cfg.checkpoint` (required unless load_checkpoint=False)."""
    bb_name, bb_opts = _options(cfg.backbone)
    family = bb_opts.pop("family", "timm")
    backbone = BACKBONES.build(family, name=bb_name, **bb_opts)
    agg_name, agg_opts = _options(cfg.aggregator)
    aggregator = AGGREGATORS.build(agg_name, in_dim=backbone.num_features,
                                   num_prefix_tokens=getattr(backbone, "num_prefix_tokens", 0), **agg_opts)
    model = VPRModel(backbone, aggregator)
    if load_checkpoint:
        if not cfg.checkpoint:
            raise ValueError("model.checkpoint is empty: name a local weights file (weights are never downloaded)")
        path = load_weights(model, cfg.checkpoint, cfg.checkpoint_format)
        log.info("loaded %s weights from %s", cfg.name, path)
    return model.eval()


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"model.device is '{spec}' but no CUDA device is usable here; use 'auto' or 'cpu'")
    return dev


class DescriptorExtractor:
    """Preprocessing + model + device placement: numpy RGB images in, numpy descriptors out."""

    def __init__(self, cfg: ModelConfig, model: VPRModel | None = None) -> None:
        self.cfg = cfg
        self.model = model if model is not None else build_model(cfg)
        bb = self.model.backbone
        self.preprocess = Preprocessor(cfg.preprocess, getattr(bb, "default_mean", (0.5,) * 3),
                                       getattr(bb, "default_std", (0.5,) * 3))
        self.device = resolve_device(cfg.device)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.precision]
        if self.device.type != "cuda":
            self.dtype = torch.float32  # half precision on CPU is slower and less accurate
        self.model.to(self.device, memory_format=torch.channels_last).eval()

    @property
    def dim(self) -> int:
        return self.model.dim

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Descriptors (N,D) float32 for N RGB images, computed in batches of `batch_size`."""
        out = []
        bs = max(1, self.cfg.batch_size)
        for i in range(0, len(images), bs):
            x = self.preprocess(images[i:i + bs]).to(self.device, memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
