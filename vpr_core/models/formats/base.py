"""What every checkpoint format shares: the registry of formats, the mapped result and the error type.

A format is a function `(object torch.load gave, model) -> MappedState`, registered by name in
`CHECKPOINT_FORMATS`; `vpr_core.models.weights.load_weights` looks the config's name up there.
Kept apart from the formats and the loader so both import it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping

import torch
from torch import nn

from vpr_core.registry import Registry


class CheckpointError(RuntimeError):
    """The checkpoint file is missing, unreadable, or does not fit the model."""


@dataclass
class MappedState:
    """A checkpoint translated to our key names, and the key prefix of our model it must cover fully."""
    state: Dict[str, torch.Tensor]
    covers: str = ""  # "" = the whole model; "backbone." = only the backbone


FormatLoader = Callable[[Any, nn.Module], MappedState]
CHECKPOINT_FORMATS: Registry[FormatLoader] = Registry("checkpoint format")


def unwrap_state_dict(obj: Any) -> Dict[str, torch.Tensor]:
    """Find the state dict inside common wrappers ({'state_dict': ...}, {'model': ...}) and strip 'module.'."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("checkpoint does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
