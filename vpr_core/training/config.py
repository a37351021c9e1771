"""The training config (`config/train/*.yaml`): which model, which data, which scheme, how long.
Read with the same strict builder as the node's config, so a typo fails before any compute."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import yaml

from vpr_core.config import ConfigError, _build, read_yaml, set_dotted


@dataclass
class DataConfig:
    path: str = ""  # dataset folder (or pair list file for the pairs scheme); relative to the repository root
    train: str = ""  # route segment "start:stop" of the database, or a split name of the geo layout ("train")
    val: str = ""  # validation part, same forms ("" = no validation)
    val_path: str = ""  # validation dataset folder / pair list when it is not `path`
    tolerance: int = 2  # frame-synchronised datasets: a database frame within this many of the true one is correct
    pos_radius: float = 2.0  # positives: within this distance (frames, or metres for geo layouts)
    neg_radius: float = 10.0  # negatives: beyond this distance; in between is neither
    group: float = 5.0  # classification: places are position bins this wide (frames / metres)
    min_per_place: int = 2  # classification: places with fewer images are dropped (counted, logged)
    max_anchors: int = 0  # use at most this many training anchors, spread over the split (0 = all)


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    scheduler: str = "cosine"  # cosine | step | constant
    step_epochs: int = 10  # step scheduler: decay every this many epochs
    gamma: float = 0.5  # step scheduler: decay factor
    warmup_steps: int = 0  # linear warm-up over this many optimiser steps
    grad_clip: float = 0.0  # clip the gradient norm to this (0 = off)


@dataclass
class TrainConfig:
    name: str = "run"  # run name: outputs go to <out_dir>/<name>/
    model: str = "config/default.yaml"  # model config (ROS params file) the training starts from
    model_overrides: Dict[str, Any] = field(default_factory=dict)  # dotted model.* keys changed for training
    init_checkpoint: str = ""  # native (vpr_ros) weights for the trainable parts to start from ("" = as built)
    # NetVLAD/ClusVPR centres from k-means on the training images before training (as `vpr-core cluster`):
    # auto = when the aggregator has centres and no init_checkpoint is given; false = the checkpoint holds them
    cluster_init: str = "auto"
    cluster_images: int = 500  # images the k-means samples local features from (spread over the training set)
    trainable: List[str] = field(default_factory=lambda: ["aggregator", "head"])  # parameter-name prefixes trained
    scheme: Dict[str, Any] = field(default_factory=lambda: {"name": "ranking"})  # name + the scheme's options
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 10
    batch_size: int = 32  # anchors (ranking), images (classification) or pairs (pairs) per step
    steps_per_epoch: int = 0  # 0 = one pass over the anchors
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 autocast on CUDA) | true | false
    compile: bool = False  # torch.compile the trainable model (CUDA)
    cache_features: str = "auto"  # auto (when the backbone is frozen) | true | false: memory-mapped backbone outputs
    out_dir: str = "runs/train"
    cache_dir: str = "runs/cache"
    recall_ks: List[int] = field(default_factory=lambda: [1, 5, 10])
    select_by: int = 1  # the best checkpoint maximises validation Recall@select_by
    progress: bool = True  # tqdm bars

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


_CHOICES = {"optim.optimizer": ("adamw", "sgd"), "optim.scheduler": ("cosine", "step", "constant"),
            "amp": ("auto", "true", "false"), "cluster_init": ("auto", "true", "false"), "cache_features": ("auto", "true", "false")}
_POSITIVE = ("epochs", "batch_size", "optim.lr", "data.tolerance", "select_by", "cluster_images")
_NONNEG = ("steps_per_epoch", "optim.weight_decay", "optim.warmup_steps", "optim.grad_clip", "data.pos_radius",
           "data.neg_radius", "data.max_anchors", "seed")


def _lookup(cfg: TrainConfig, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _check(cfg: TrainConfig) -> TrainConfig:
    for key, allowed in _CHOICES.items():
        if str(_lookup(cfg, key)).lower() not in allowed:
            raise ConfigError(f"training key '{key}' = {_lookup(cfg, key)!r} must be one of {list(allowed)}")
    for key in _POSITIVE:
        if not _lookup(cfg, key) > 0:
            raise ConfigError(f"training key '{key}' = {_lookup(cfg, key)!r} must be > 0")
    for key in _NONNEG:
        if _lookup(cfg, key) < 0:
            raise ConfigError(f"training key '{key}' = {_lookup(cfg, key)!r} must be >= 0")
    if cfg.data.neg_radius < cfg.data.pos_radius:
        raise ConfigError(f"data.neg_radius ({cfg.data.neg_radius}) must be >= data.pos_radius ({cfg.data.pos_radius}): "
                          f"a negative closer than a positive would teach the model the wrong thing")
    if not cfg.data.path:
        raise ConfigError("data.path is empty: name the training dataset folder")
    if "name" not in cfg.scheme:
        raise ConfigError("training key 'scheme' must be a mapping with a 'name'")
    if cfg.select_by not in cfg.recall_ks:
        raise ConfigError(f"select_by ({cfg.select_by}) must be one of recall_ks {cfg.recall_ks}")
    if not cfg.trainable:
        raise ConfigError("trainable is empty: name the parameter prefixes to train (e.g. [aggregator, head])")
    return cfg


def parse_overrides(items: List[str]) -> Dict[str, Any]:
    """`key=value` command-line overrides; values are read as YAML (`epochs=3`, `trainable=[head]`)."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. epochs=3)")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML: {exc}") from None
    return out


def train_config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    data = dict(data or {})
    scheme = data.get("scheme")
    if isinstance(scheme, str):
        data["scheme"] = {"name": scheme}
    cfg = _build(TrainConfig, {k: v for k, v in data.items() if k not in ("scheme", "model_overrides")}, "")
    for key in ("scheme", "model_overrides"):
        if key in data:
            if not isinstance(data[key], Mapping):
                raise ConfigError(f"training key '{key}' must be a mapping, got {data[key]!r}")
            setattr(cfg, key, dict(data[key]))
    return _check(cfg)


def load_train_config(source: Union[str, Path], overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """Read a training YAML and apply dotted overrides (`optim.lr`, `scheme.loss`, `data.train`)."""
    path = Path(source)
    data = read_yaml(path, "training config")
    if not isinstance(data, Mapping):
        raise ConfigError(f"training config {path} must hold a mapping")
    data = dict(data)
    for dotted, value in (overrides or {}).items():
        if dotted.startswith(("scheme.", "model_overrides.")):
            head, _, rest = dotted.partition(".")
            section = data.setdefault(head, {})
            if isinstance(section, str):
                section = data[head] = {"name": section}
            section[rest] = value  # free-form sections: model_overrides keys are themselves dotted
        else:
            set_dotted(data, dotted, value)
    return train_config_from_dict(data)
