"""Model-zoo comparison (`vpr-benchmark DATASET --zoo config/a.yaml config/b.yaml ...`): per config,
descriptor size, images/s at batch 1 and 16 on this machine, and Recall@1/5/10 (before and after
re-ranking for two-stage models, with the re-ranking time per query for each K asked for)."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from offline_eval.direct import run_direct
from offline_eval.protocol import extract_dataset
from vpr_core.config import Config, load_config
from vpr_core.datasets import PlaceDataset
from vpr_core.images import load_image
from vpr_core.metrics import recall_at_k
from vpr_core.models import DescriptorExtractor, build_model
from vpr_core.models.weights import CheckpointError, resolve_checkpoint_path


def config_label(path) -> str:
    """A config's name in tables: its file stem, or its run folder for a trained run's `model.yaml`."""
    p = Path(path)
    return p.parent.name if p.name == "model.yaml" else p.stem


@dataclass
class ZooRow:
    config: str
    model: str
    weights: str  # "checkpoint" or why it runs on random initialisation
    dim: int
    ips_b1: float
    ips_b16: float
    recall: Dict[int, float] = field(default_factory=dict)  # global descriptor only
    reranked: Dict[int, Dict[int, float]] = field(default_factory=dict)  # K -> recall after re-ranking
    rerank_ms: Dict[int, float] = field(default_factory=dict)  # K -> mean re-ranking time per query
    curve: Dict[int, float] = field(default_factory=dict)  # Recall@N for N = 1..20, global descriptor only


def _extractor(cfg: Config, ds: PlaceDataset) -> tuple[DescriptorExtractor, str]:
    """The configured model with its checkpoint, or random weights when the file is not on this machine
    (clustering aggregators then get k-means centres from the dataset's database, never random ones)."""
    try:
        resolve_checkpoint_path(cfg.model.checkpoint)
        return DescriptorExtractor(cfg.model), "checkpoint"
    except (CheckpointError, ValueError) as exc:
        why = "random init (checkpoint not here)" if "not found" in str(exc) else f"random init ({exc})"
    model = build_model(cfg.model, load_checkpoint=False)
    # eager torch: the k-means centres below change the model after the extractor is built
    ex = DescriptorExtractor(replace(cfg.model, checkpoint="", runtime="torch"), model)
    agg = model.aggregator
    if hasattr(agg, "init_from_clusters"):
        from vpr_core.clustering import sample_local_features, spherical_kmeans

        sample, _, _ = sample_local_features(ex, ds.database[:100], per_image=50, progress=False)
        agg.init_from_clusters(spherical_kmeans(sample, agg.clusters, niter=10), sample)
        why += ", k-means centres"
    return ex, why


def images_per_second(ex: DescriptorExtractor, images: List[np.ndarray], batch: int, min_s: float = 2.0) -> float:
    """Throughput of `extract` (global and local features) at `batch` images per forward pass: one
    warm-up pass, then whole passes over `images` until at least `min_s` seconds have gone by."""
    ex.cfg = replace(ex.cfg, batch_size=batch)
    ex.extract(images[:batch])  # warm-up: allocator, thread pool, lazy init
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < min_s:
        ex.extract(images)
        n += len(images)
    return n / (time.perf_counter() - t0)


def zoo_row(config_path: Path, ds: PlaceDataset, rerank_ks: Sequence[int] = (20, 100),
            progress: bool = True, overrides: Optional[dict] = None) -> ZooRow:
    """One config's row: speed, then the dataset extracted once and evaluated without re-ranking and
    (two-stage models) with re-ranking of the top K for each K."""
    cfg = load_config(config_path, {"model.device": "auto", **(overrides or {})})
    ex, weights = _extractor(cfg, ds)
    images = [load_image(p) for p in ds.database[:16]]
    row = ZooRow(str(config_path), cfg.model.name, weights, ex.dim,
                 images_per_second(ex, images, 1), images_per_second(ex, images, 16))
    ex.cfg = cfg.model
    feats = extract_dataset(ex, ds, progress)
    two_stage = cfg.rerank.method != "none" and ex.has_local
    base = copy.deepcopy(cfg)
    base.rerank.method = "none"
    res = run_direct(base, ds, ex, progress=False, features=feats)
    row.recall = res.recall
    row.curve = recall_at_k(res.ranked, ds.positives, range(1, res.ranked.shape[1] + 1))
    for k in (rerank_ks if two_stage else ()):
        c = copy.deepcopy(cfg)
        c.rerank.top_k = min(k, len(ds.database))
        res = run_direct(c, ds, ex, progress=progress, features=feats)
        row.reranked[k], row.rerank_ms[k] = res.recall, res.rerank_ms
        if progress:  # a long row (ViT-L, K = 100 on CPU) reports each K as soon as it is known
            print(f"{config_label(config_path)}: R@1 {row.recall[1]:.3f} -> {res.recall[1]:.3f} after re-ranking "
                  f"the top {k} ({res.rerank_ms:.1f} ms per query)", flush=True)
    return row
