"""Training state on disk: everything `--resume` needs to continue bit-exact (weights, optimiser,
scheduler, RNG states, position in the epoch, miner cache), and the inference export + its config."""
from __future__ import annotations

import fnmatch
import random
from pathlib import Path
from typing import Any, Dict, List, Mapping

import numpy as np
import torch
from torch import nn

from vpr_core.config import Config, config_from_dict, set_dotted, write_params_file
from vpr_core.models.weights import CheckpointError, save_atomic


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_state(path: Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"resume: no training checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: RNG states are objects
    except Exception as exc:
        raise CheckpointError(f"resume: cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"resume: {path} is not a vpr-core training checkpoint")
    return state


def is_trained(name: str, patterns: List[str]) -> bool:
    """A tensor or module name is trained when an entry names it, one of its parents (`head`), or
    matches it as a glob (`backbone.*.adapter*`: SelaVPR's adapters inside a frozen backbone)."""
    return any(name == p or name.startswith(p.rstrip(".") + ".") or fnmatch.fnmatchcase(name, p)
               or fnmatch.fnmatchcase(name, p + ".*") for p in patterns)


def covered_keys(model: nn.Module, patterns: List[str]) -> Dict[str, torch.Tensor]:
    """The model's tensors (parameters and buffers) the trainable entries name."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if is_trained(k, patterns)}


def export_model(model: nn.Module, prefixes: List[str], model_cfg: Config, run_dir: Path,
                 produced: Mapping[str, Any], tag: str = "model") -> Path:
    """Write `<tag>.pth` (the trained tensors, native layout) and `<tag>.yaml` (the model's params file
    naming it as model.trained_checkpoint): the node and the benchmark load the result with --config."""
    weights = run_dir / f"{tag}.pth"
    state = covered_keys(model, prefixes)
    covers = [p.rstrip(".") + "." for p in prefixes if not any(c in p for c in "*?[")]  # whole modules
    save_atomic({"state_dict": state, "vpr_ros_covers": covers}, weights)
    data = model_cfg.to_dict()
    data["model"]["trained_checkpoint"] = str(weights.resolve())
    for dotted, value in produced.items():
        set_dotted(data, dotted, value)
    cfg = config_from_dict(data)  # validated, as the node would
    return write_params_file(cfg, run_dir / f"{tag}.yaml")
