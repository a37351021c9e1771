"""`efficientnet_lite0_pth`: lukemelas-style EfficientNet-Lite keys (`_conv_stem`, `_blocks.N`) -> timm keys.
Matched by position, not by name (the two layouts list the same tensors in the same order), so no key map."""
from __future__ import annotations

from typing import Any

from torch import nn

from vpr_core.models.formats.base import CHECKPOINT_FORMATS, CheckpointError, MappedState, unwrap_state_dict


@CHECKPOINT_FORMATS.register("efficientnet_lite0_pth")
def efficientnet_lite_by_order(obj: Any, model: nn.Module) -> MappedState:
    """lukemelas-style EfficientNet-Lite keys (`_conv_stem`, `_blocks.N`) -> timm keys, by position.

    The two layouts list the same tensors in the same order; the classifier (`_fc`) is dropped
    because the VPR backbone has none. Shapes are checked pair by pair.
    """
    src = [(k, v) for k, v in unwrap_state_dict(obj).items() if not k.startswith("_fc.")]
    dst = [(k, v) for k, v in model.state_dict().items() if k.startswith("backbone.")]
    if len(src) != len(dst):
        raise CheckpointError(f"efficientnet_lite0_pth: checkpoint has {len(src)} backbone tensors, "
                              f"model has {len(dst)}: not the same architecture")
    bad = [f"{sk}{tuple(sv.shape)} -> {dk}{tuple(dv.shape)}" for (sk, sv), (dk, dv) in zip(src, dst)
           if sv.shape != dv.shape]
    if bad:
        raise CheckpointError(f"efficientnet_lite0_pth: shapes differ at {len(bad)} positions, e.g. {bad[:3]}")
    return MappedState({dk: sv for (_, sv), (dk, _) in zip(src, dst)}, covers="backbone.")
