"""One trainer for every scheme: builds the model from its config, checks everything before compute,
then runs epochs with checkpoints, bit-exact resume, validation, CSV/TensorBoard logs and Ctrl-C safety."""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import resource
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from vpr_core.config import ConfigError, load_config
from vpr_core.models.vpr_model import DescriptorExtractor, build_model
from vpr_core.models.weights import load_trained_weights, save_atomic
from vpr_core.training.checkpoint import export_model, is_trained, load_state, rng_state, set_rng_state
from vpr_core.training.config import TrainConfig
from vpr_core.training.data import check_gap, split_dataset
from vpr_core.training.distributed import Distributed
from vpr_core.training.features import Encoder, FeatureCache
from vpr_core.training.schemes import SCHEMES, Scheme, SchemeContext, SchemeError

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced: the best validation metrics, where the exported model and its config are."""
    run_dir: Path
    best: Dict[str, float]
    best_epoch: int
    history: List[Dict[str, float]] = field(default_factory=list)
    model_config: Optional[Path] = None
    interrupted: bool = False
    is_main: bool = True  # False on the other ranks of a torchrun job: rank 0 reports


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: Optional[str] = None) -> None:
        self.cfg = cfg
        self.dist = Distributed.from_env(cfg.device)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        overrides = {f"model.{k}": v for k, v in cfg.model_overrides.items()}
        if cfg.device != "auto":
            overrides["model.device"] = cfg.device
        if self.dist.backend == "nccl":  # one GPU per process (a config saying device: cpu stays on CPU)
            overrides["model.device"] = f"cuda:{self.dist.local_rank}"
        if cfg.batch_size < self.dist.world:
            raise ConfigError(f"batch_size {cfg.batch_size} is smaller than the {self.dist.world} processes: every "
                              f"process needs a share of each batch")
        if cfg.batch_size % self.dist.world:
            log.warning("batch_size %d is not a multiple of the %d processes: %d item(s) of each batch are left out "
                        "(equal shares per process)", cfg.batch_size, self.dist.world, cfg.batch_size % self.dist.world)
        self.model_cfg = load_config(cfg.model, overrides)
        self.model = build_model(self.model_cfg.model)
        if cfg.init_checkpoint:
            load_trained_weights(self.model, cfg.init_checkpoint)
        self.trainable = self._select_trainable()
        val = None
        if cfg.data.val:
            check_gap(cfg.data)
            val = split_dataset(cfg.data.val_path or cfg.data.path, cfg.data.val, cfg.data.tolerance)
        name, opts = cfg.scheme["name"], {k: v for k, v in cfg.scheme.items() if k != "name"}
        try:
            self.scheme: Scheme = SCHEMES.build(name, ctx=SchemeContext(cfg, self.model, val), **opts)
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None
        except SchemeError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"scheme '{name}': {exc}") from None
        if self.scheme.needs_gradients and not self.params():
            raise SchemeError(f"trainable {cfg.trainable} holds no parameter to optimise for scheme '{name}'")
        # by parameter, not by entry: a glob such as '*adapter*' trains parts inside the backbone too
        frozen_backbone = not any(p.requires_grad for p in self.model.backbone.parameters())
        use_cache = cfg.cache_features == "true" or (cfg.cache_features == "auto" and frozen_backbone)
        if use_cache and not frozen_backbone:
            raise ConfigError("cache_features: true needs a frozen backbone (no trainable entry may name a "
                              "backbone parameter)")
        # eager torch whatever model.runtime says: an exported copy would not follow the training
        self.extractor = DescriptorExtractor(replace(self.model_cfg.model, runtime="torch"), self.model)
        self.device = self.extractor.device
        for m in self.scheme.modules().values():
            m.to(self.device)
        self.run_dir = cfg.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            self._cluster_init()
        cache = self.dist.rank_zero_first(lambda: FeatureCache.build(  # written once, then read by the others
            self.extractor, list(dict.fromkeys(self.scheme.image_paths())), Path(cfg.cache_dir),
            progress=cfg.progress and self.dist.is_main)) if use_cache else None
        self.encoder = Encoder(self.extractor, cache, local=self.scheme.needs_local)
        self.scheme.attach(self.encoder)
        self.amp = self.device.type == "cuda" and cfg.amp in ("auto", "true")
        if cfg.compile:
            self.encoder.net = torch.compile(self.encoder.net)
        self.dist.broadcast_state([self.model, *self.scheme.modules().values()])
        self.encoder.net = self.dist.wrap(self.encoder.net, self.device)
        self.optimizer = self._optimizer() if self.scheme.needs_gradients else None
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.epoch_losses: List[float] = []
        self.best: Dict[str, float] = {}
        self.best_epoch = -1
        self.history: List[Dict[str, float]] = []
        self.produced: Dict[str, Any] = {}
        if resume:
            self._resume(self.run_dir / "last.pt" if resume == "auto" else Path(resume))

    # ---- setup -----------------------------------------------------------------------------------
    def _select_trainable(self) -> List[str]:
        names = list(self.model.state_dict())
        for pattern in self.cfg.trainable:
            if not any(is_trained(n, [pattern]) for n in names):
                tops = sorted({n.split(".")[0] for n in names})
                raise ConfigError(f"trainable entry '{pattern}' names no tensor of the model (its parts: {tops}); "
                                  f"a model config without that part cannot train it")
        for n, p in self.model.named_parameters():
            p.requires_grad_(is_trained(n, self.cfg.trainable))
        return list(self.cfg.trainable)

    def _cluster_init(self) -> None:
        """Centres of a NetVLAD/ClusVPR aggregator from k-means on training images: never random centres."""
        agg, mode = self.model.aggregator, self.cfg.cluster_init
        needs = hasattr(agg, "init_from_clusters")
        if mode == "true" and not needs:
            raise ConfigError(f"cluster_init: true, but aggregator '{self.model_cfg.model.aggregator['name']}' has no centres")
        if not needs or mode == "false" or (mode == "auto" and self.cfg.init_checkpoint):
            return
        from vpr_core.clustering import sample_local_features, spherical_kmeans

        paths = list(dict.fromkeys(self.scheme.image_paths()))
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, min(len(paths), self.cfg.cluster_images)).astype(int)]
        normalize = bool(getattr(agg, "normalize_input", True))
        sample, _, _ = sample_local_features(self.extractor, paths, per_image=100, seed=self.cfg.seed,
                                             normalize=normalize, progress=self.cfg.progress and self.dist.is_main)
        centres = spherical_kmeans(sample, agg.clusters, seed=self.cfg.seed, spherical=normalize)
        alpha = agg.init_from_clusters(centres, sample)
        log.info("cluster_init: %d centres from %d local features of %d training images (alpha %.1f)",
                 agg.clusters, len(sample), len(paths), alpha)

    def params(self) -> List[torch.nn.Parameter]:
        ps = [p for p in self.model.parameters() if p.requires_grad]
        for m in self.scheme.modules().values():
            ps += list(m.parameters())
        return ps

    def _optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        if o.optimizer == "sgd":
            return torch.optim.SGD(self.params(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        return torch.optim.AdamW(self.params(), lr=o.lr, weight_decay=o.weight_decay)

    def _lr_factor(self, step: int, total: int) -> float:
        o = self.cfg.optim
        warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
        if o.scheduler == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))
        if o.scheduler == "step":
            return warm * o.gamma ** (self.epoch // o.step_epochs)
        return warm

    def _train_mode(self) -> None:
        """Train mode only where something trains: a frozen backbone keeps its BatchNorm statistics."""
        self.model.eval()
        for name, m in self.model.named_modules():
            if name and is_trained(name, self.trainable):
                m.train()
        for m in self.scheme.modules().values():
            m.train()

    # ---- checkpoints -----------------------------------------------------------------------------
    def _state(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "modules": {k: m.state_dict() for k, m in self.scheme.modules().items()},
                "optimizer": self.optimizer.state_dict() if self.optimizer else None, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "epoch_losses": list(self.epoch_losses), "best": self.best, "best_epoch": self.best_epoch,
                "history": self.history, "produced": self.produced, "rng": rng_state(),
                "scheme": self.scheme.state_dict(), "config": self.cfg.to_dict()}

    def _resume(self, path: Path) -> None:
        s = load_state(path)
        if s["config"].get("scheme") != self.cfg.to_dict()["scheme"] or s["config"].get("trainable") != self.cfg.trainable:
            raise ConfigError(f"resume: {path} was trained with scheme {s['config'].get('scheme')} / trainable "
                              f"{s['config'].get('trainable')}, not {self.cfg.scheme} / {self.cfg.trainable}")
        self.model.load_state_dict(s["model"])
        for k, m in self.scheme.modules().items():
            m.load_state_dict(s["modules"][k])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(s["optimizer"])
        self.epoch, self.step_in_epoch, self.global_step = s["epoch"], s["step_in_epoch"], s["global_step"]
        self.best, self.best_epoch, self.history = s["best"], s["best_epoch"], s["history"]
        self.produced = s.get("produced", {})
        self.epoch_losses = list(s.get("epoch_losses", []))
        self.scheme.load_state_dict(s["scheme"])
        set_rng_state(s["rng"])
        log.info("resumed %s at epoch %d step %d", path, self.epoch, self.step_in_epoch)

    def _save(self, name: str) -> None:
        if self.dist.is_main:
            save_atomic(self._state(), self.run_dir / name)

    # ---- the loop --------------------------------------------------------------------------------
    def _log_row(self, row: Dict[str, float]) -> None:
        self.history.append(row)
        if not self.dist.is_main:
            return
        path = self.run_dir / "log.csv"
        keys = list(dict.fromkeys(k for r in self.history for k in r))
        with path.open("w", newline="") as fh:  # rewritten whole: columns may grow (validation metrics)
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, int(row["epoch"]))

    def _validate(self) -> Dict[str, float]:
        return self.scheme.validate() if self.dist.is_main else {}

    def _consider_best(self, metrics: Dict[str, float]) -> None:
        key = self.scheme.select_metric
        if key and key in metrics and (not self.best or metrics[key] > self.best.get(key, -1)):
            self.best, self.best_epoch = dict(metrics), self.epoch
            self.produced = self.scheme.produced_config()
            self._save("best.pt")
            if self.dist.is_main:
                export_model(self.model, self.trainable, self.model_cfg, self.run_dir, self.produced)

    def run(self) -> TrainResult:
        cfg = self.cfg
        self.tb = None
        if self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:  # tensorboard is optional
                pass
        if not self.scheme.needs_gradients:
            t0 = time.perf_counter()
            fit = self.scheme.fit()
            metrics = self._validate()
            self._log_row({"epoch": 1, **fit, **metrics, "time_s": time.perf_counter() - t0,
                           "peak_mb": _peak_memory_mb(self.device)})
            self.epoch = 1
            self.best, self.best_epoch, self.produced = metrics, 1, self.scheme.produced_config()
            self._save("last.pt")
            if self.dist.is_main:
                export_model(self.model, self.trainable, self.model_cfg, self.run_dir, self.produced)
            return self._result()
        if self.epoch == 0 and self.step_in_epoch == 0 and not self.history:
            metrics = self._validate()  # the starting point, measured by the same code
            self._log_row({"epoch": 0, **metrics})
            self._consider_best(metrics)
        total = cfg.epochs * len(self._batches(0))
        interrupted = False
        try:
            while self.epoch < cfg.epochs:
                row = self._epoch(total)
                self.epoch += 1
                self.step_in_epoch = 0
                metrics = self._validate()
                self._log_row({**row, **metrics})
                self._consider_best(metrics)
                self._save("last.pt")
                self.dist.barrier()  # the other ranks wait while rank 0 validates and writes
        except KeyboardInterrupt:
            interrupted = True
            self._save("last.pt")
            log.warning("interrupted: state saved to %s; continue with --resume auto", self.run_dir / "last.pt")
        if self.dist.is_main and self.best_epoch < 0:  # no validation: export the last state
            export_model(self.model, self.trainable, self.model_cfg, self.run_dir, self.scheme.produced_config())
        res = self._result()
        res.interrupted = interrupted
        return res

    def _batches(self, epoch: int) -> List[np.ndarray]:
        """The scheme's batches of an epoch; with several processes only those every process gets a share
        of (a short last batch may not), the same list on every rank."""
        return [b for b in self.scheme.batches(epoch) if len(b) >= self.dist.world]

    def _epoch(self, total: int) -> Dict[str, float]:
        """Train the rest of the current epoch; returns its log row (loss, lr, time, images/s, memory)."""
        cfg = self.cfg
        batches = self._batches(self.epoch)
        self._train_mode()
        t0, seen0 = time.perf_counter(), self.encoder.images_seen
        losses = self.epoch_losses  # kept in the checkpoint: a resumed epoch reports its whole mean
        bar = tqdm(total=len(batches), initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   unit="step", disable=not (cfg.progress and self.dist.is_main))
        while self.step_in_epoch < len(batches):
            batch = self.dist.shard(batches[self.step_in_epoch])
            for g in self.optimizer.param_groups:
                g["lr"] = cfg.optim.lr * self._lr_factor(self.global_step, total)
            self.scheme.before_step(self.global_step)
            self._train_mode()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss, info = self.scheme.loss(batch, self.global_step)
            value = self.dist.mean(loss)  # the whole batch's: every rank sees (and stops on) the same value
            if not math.isfinite(value):
                raise FloatingPointError(f"loss is {value} at epoch {self.epoch + 1} step {self.step_in_epoch}; "
                                         f"lower optim.lr (last good state: {self.run_dir / 'last.pt'})")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the model's gradients over ranks; the scheme's modules are not in it
            self.dist.average_gradients(p for m in self.scheme.modules().values() for p in m.parameters())
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params(), cfg.optim.grad_clip)
            self.optimizer.step()
            losses.append(value)
            self.global_step += 1
            self.step_in_epoch += 1
            dt = time.perf_counter() - t0
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}",
                            img_s=f"{(self.encoder.images_seen - seen0) / max(dt, 1e-9):.0f}",
                            **{k: f"{v:.3f}" for k, v in info.items()})
            bar.update(1)
        bar.close()
        dt = time.perf_counter() - t0
        self.epoch_losses = []
        return {"epoch": self.epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                "lr": self.optimizer.param_groups[0]["lr"], "time_s": dt,
                "images_per_s": (self.encoder.images_seen - seen0) / max(dt, 1e-9),
                "peak_mb": _peak_memory_mb(self.device)}

    def _result(self) -> TrainResult:
        mc = self.run_dir / "model.yaml"
        res = TrainResult(self.run_dir, self.best, self.best_epoch, self.history, mc if mc.is_file() else None,
                          is_main=self.dist.is_main)
        if self.dist.is_main:
            (self.run_dir / "result.json").write_text(json.dumps(
                {"best": self.best, "best_epoch": self.best_epoch, "history": self.history,
                 "model_config": str(res.model_config)}, indent=2, default=float))
        return res


def train(cfg: TrainConfig, resume: Optional[str] = None) -> TrainResult:
    """Build a Trainer (every check before compute) and run it to the configured number of epochs."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    trainer = Trainer(cfg, resume)
    try:
        return trainer.run()
    finally:
        trainer.dist.close()
