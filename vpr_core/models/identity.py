"""What a model's outputs are: a digest of everything that determines them (the config keys that shape the
graph, and the weights as they are in memory), so that an exported file, or a map of descriptors, is only
ever used with the model that made it. Labels (name, device, batch size, runtime, checkpoint paths) are
left out: a renamed config or a moved checkpoint with the same weights is the same model.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Tuple

import torch
from torch import nn

from vpr_core.config import ModelConfig

# config keys that do not change what the model computes (the weights digest covers the checkpoints)
LABEL_KEYS = ("name", "device", "precision", "batch_size", "runtime", "runtime_cache", "max_local_features",
              "checkpoint", "checkpoint_format", "trained_checkpoint")
LOCAL_KEYS = ("local_head",)  # what only the local features depend on


def weights_digest(model: nn.Module, skip: Tuple[str, ...] = ()) -> str:
    """sha256 of the model's parameters and buffers as they are in memory (names, shapes, dtypes, values),
    leaving out those whose names start with a prefix in `skip` (~30 ms for 5 M parameters)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if name.startswith(skip):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_digest(cfg: ModelConfig, model: nn.Module, global_only: bool = False) -> str:
    """sha256 of the graph-shaping config and the weights; `global_only`: of what the global descriptor
    depends on (the local head's config and weights left out)."""
    ignored = LABEL_KEYS + (LOCAL_KEYS if global_only else ())
    data = {k: v for k, v in asdict(cfg).items() if k not in ignored}
    data["_weights"] = weights_digest(model, ("local_head.",) if global_only else ())
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def descriptor_fingerprint(cfg: ModelConfig, model: nn.Module) -> str:
    """"<name>@<16 hex digits>": the model whose global descriptors a map holds (the name is only a label)."""
    return f"{cfg.name}@{model_digest(cfg, model, global_only=True)[:16]}"


def same_descriptors(a: str, b: str) -> bool:
    """Do two fingerprints name the same descriptors (labels aside)?"""
    return a.rpartition("@")[2] == b.rpartition("@")[2]
