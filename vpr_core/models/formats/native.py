"""`vpr_ros` (alias `timm`): our own layout, `VPRModel.state_dict()`, as `save_checkpoint` and the trainer write it.
No key map: the keys are already ours, so only the container and a DataParallel `module.` are unwrapped."""
from __future__ import annotations

from typing import Any

from torch import nn

from vpr_core.models.formats.base import CHECKPOINT_FORMATS, MappedState, unwrap_state_dict


@CHECKPOINT_FORMATS.register("vpr_ros", "timm")
def native(obj: Any, model: nn.Module) -> MappedState:
    """Our own layout (`VPRModel.state_dict()`), as written by `save_checkpoint` and the trainer."""
    return MappedState(unwrap_state_dict(obj))
