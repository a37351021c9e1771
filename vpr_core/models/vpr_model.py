"""VPRModel: backbone + optional adapters + aggregator + optional head + optional local head, composed
from a config; gives L2-normalised global descriptors and, with a local head, local features."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vpr_core.config import ModelConfig
from vpr_core.images import image_contrast
from vpr_core.local_features import LocalFeatures, select_local
from vpr_core.models.aggregators import AGGREGATORS
from vpr_core.models.backbones import BACKBONES
from vpr_core.models.heads import HEADS
from vpr_core.models.identity import descriptor_fingerprint
from vpr_core.models.local import LOCAL_HEADS, LocalOutput
from vpr_core.models.preprocess import Preprocessor
from vpr_core.models.runtimes import ForwardArrays, build_runtime
from vpr_core.models.weights import load_trained_weights, load_weights

log = logging.getLogger(__name__)


@dataclass
class ModelOutput:
    global_desc: torch.Tensor  # (B, D) unit norm
    local: Optional[LocalOutput] = None


class VPRModel(nn.Module):
    """image batch (B,3,H,W) -> descriptors (B,D), unit L2 norm, float32."""

    def __init__(self, backbone: nn.Module, aggregator: nn.Module, head: Optional[nn.Module] = None,
                 local_head: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator
        self.head = head
        self.local_head = local_head
        self.dim: int = int(head.out_dim if head is not None else aggregator.out_dim)

    def _global(self, feats: torch.Tensor) -> torch.Tensor:
        g = self.aggregator(feats)
        if self.head is not None:
            g = self.head(g)
        return F.normalize(g.float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._global(self.backbone(x))

    def forward_all(self, x: torch.Tensor) -> ModelOutput:
        """Global descriptor and, when the model has a local head, local features from one pass."""
        return self.from_features(self.backbone(x), tuple(x.shape[-2:]))

    def from_features(self, feats: torch.Tensor, input_hw: tuple[int, int]) -> ModelOutput:
        """`forward_all` after the backbone: `feats` is its output for images of size `input_hw`
        (the trainer's cached backbone features)."""
        local = self.local_head(feats, self.backbone, tuple(input_hw)) if self.local_head is not None else None
        return ModelOutput(self._global(feats), local)


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
    head = None
    if cfg.head:
        name, opts = _options(cfg.head)
        head = HEADS.build(name, in_dim=aggregator.out_dim, **opts)
    local_head = None
    if cfg.local_head:
        name, opts = _options(cfg.local_head)
        local_head = LOCAL_HEADS.build(name, in_dim=backbone.num_features, **opts)
    model = VPRModel(backbone, aggregator, head, local_head)
    if load_checkpoint:
        if not cfg.checkpoint:
            raise ValueError("model.checkpoint is empty: name a local weights file (weights are never downloaded)")
        path = load_weights(model, cfg.checkpoint, cfg.checkpoint_format)
        log.info("loaded %s weights from %s", cfg.name, path)
        if cfg.trained_checkpoint:
            path = load_trained_weights(model, cfg.trained_checkpoint)
            log.info("loaded trained weights of %s from %s", cfg.name, path)
    return model.eval()


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"model.device is '{spec}' but no CUDA device is usable here; use 'auto' or 'cpu'")
    return dev


def _arrays(out: ModelOutput) -> ForwardArrays:
    """Eager torch outputs as numpy, the form every runtime returns."""
    lo = out.local
    f32 = lambda t: t.float().cpu().numpy() if t is not None else None  # noqa: E731
    return ForwardArrays(f32(out.global_desc), f32(lo.desc), f32(lo.xy), f32(lo.weight))


@dataclass
class Extracted:
    global_desc: np.ndarray  # (N, D) float32
    local: Optional[List[LocalFeatures]] = None
    contrast: Optional[np.ndarray] = None  # (N,) each image's grey-level contrast (images.image_contrast)
    timings_ms: Dict[str, float] = field(default_factory=dict)  # preprocess, forward: summed over the batches


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
        self.runtime = build_runtime(cfg, self.model)  # None = eager torch (below)
        self._fingerprint: Optional[str] = None

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def fingerprint(self) -> str:
        """Which global descriptors this extractor makes (`identity.descriptor_fingerprint`): a map records
        it, and a map of other descriptors is refused. Computed once, on first use."""
        if self._fingerprint is None:
            self._fingerprint = descriptor_fingerprint(self.cfg, self.model)
        return self._fingerprint

    @property
    def has_local(self) -> bool:
        return self.model.local_head is not None

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Descriptors (N,D) float32 for N RGB images, computed in batches of `batch_size`."""
        return self.extract(images, with_local=False).global_desc

    @torch.inference_mode()
    def extract(self, images: Sequence[np.ndarray], with_local: bool = True) -> Extracted:
        """Global descriptors and (if the model has a local head) capped float16 local features."""
        out, local = [], [] if (with_local and self.has_local) else None
        bs = max(1, self.cfg.batch_size)
        in_h, in_w = self.preprocess.height, self.preprocess.width
        t_pre = t_fwd = 0.0
        for i in range(0, len(images), bs):
            batch = images[i:i + bs]
            t0 = time.perf_counter()
            x = self.preprocess(batch)
            t1 = time.perf_counter()
            t_pre += t1 - t0
            if self.runtime is not None:  # an exported graph: global and, with a local head, local outputs
                arrays = self.runtime(x)
            else:
                x = x.to(self.device, memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    arrays = (ForwardArrays(self.model(x).float().cpu().numpy()) if local is None
                              else _arrays(self.model.forward_all(x)))
            t_fwd += time.perf_counter() - t1  # the local features' selection below is not the forward pass
            out.append(arrays.global_desc)
            if local is None:
                continue
            for j, img in enumerate(batch):
                h, w = img.shape[:2]
                weight = arrays.local_weight[j] if arrays.local_weight is not None else None
                local.append(select_local(arrays.local_desc[j], arrays.local_xy[j], weight,
                                          self.cfg.max_local_features, (w / in_w, h / in_h), (h, w)))
        glob = np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
        return Extracted(glob, local, np.array([image_contrast(im) for im in images], np.float32),
                         {"preprocess": t_pre * 1e3, "forward": t_fwd * 1e3})
