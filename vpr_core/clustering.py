"""Cluster centres for clustering aggregators (NetVLAD / ClusVPR) from real images.

A NetVLAD layer cannot start from random centres. `cluster_model` builds the configured model,
loads only its *backbone* weights, extracts the backbone's local features (the CNN map cells or
ViT patch tokens: what the aggregator sees, not the aggregated descriptor) from a set of images,
samples up to `per_image` of them per image, runs k-means (FAISS; spherical on L2-normalised
features when the layer normalises its input, as NetVLAD does) and initialises the aggregator
with the centres. `vpr-core cluster` writes the result as a native checkpoint (format `vpr_ros`).

Backbone weights come from the config's `model.checkpoint` / `checkpoint_format`, or from
`backbone_checkpoint` / `backbone_format` when given. Whatever the format maps, only the
`backbone.*` tensors are taken (they must cover the backbone completely); aggregator tensors in
the file are ignored, since the point is to make new centres. So the same config can name, for
example, an ImageNet backbone file for clustering, and afterwards the clustered checkpoint.
"""
from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vpr_core.config import ModelConfig
from vpr_core.datasets import IMAGE_SUFFIXES, load_dataset
from vpr_core.images import iter_image_batches
from vpr_core.models.aggregators import AGGREGATORS
from vpr_core.models.features import local_features  # noqa: F401  (also this module's public name)
from vpr_core.models.weights import (CHECKPOINT_FORMATS, MappedState, check_and_load, read_checkpoint,
                                     resolve_checkpoint_path)

log = logging.getLogger(__name__)

GROUND_TRUTH_FILES = ("ground_truth.csv", "ground_truth_new.npy")


@dataclass
class ClusterResult:
    model: torch.nn.Module  # the VPRModel with its aggregator initialised
    model_cfg: ModelConfig  # the model config used (with the --clusters override applied)
    centroids: np.ndarray  # (K, C) float32
    images_used: int
    images_skipped: int  # unreadable images, dropped and counted
    descriptors: int  # local descriptors clustered
    alpha: float  # soft-assignment sharpness chosen by init_from_clusters
    backbone_checkpoint: Path


def collect_images(sources: Sequence[Union[str, Path]], max_images: Optional[int] = None) -> List[Path]:
    """Image files from sources that are image files, dataset folders (their database images) or
    plain folders (every image below them); at most `max_images`, spread evenly over the list."""
    paths: List[Path] = []
    for src in sources:
        src = Path(src)
        if src.is_file():
            if src.suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError(f"{src} is not an image file (known suffixes: {sorted(IMAGE_SUFFIXES)})")
            paths.append(src)
        elif src.is_dir():
            if any((src / name).is_file() for name in GROUND_TRUTH_FILES):
                paths.extend(load_dataset(src).database)  # a VPR dataset: cluster its map side
            else:
                paths.extend(sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))
        else:
            raise ValueError(f"image source not found: {src} (give image files, an image folder or a dataset folder)")
    if not paths:
        raise ValueError(f"no images found in {[str(s) for s in sources]}")
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        if len(paths) > max_images:  # even spread: a sequence is covered end to end, not just its start
            idx = np.unique(np.linspace(0, len(paths) - 1, max_images).round().astype(int))
            paths = [paths[i] for i in idx]
    return paths


def spherical_kmeans(x: np.ndarray, k: int, niter: int = 25, seed: int = 0, spherical: bool = True,
                     nredo: int = 1) -> np.ndarray:
    """k-means centres (k, C) of x (N, C) with FAISS; spherical = unit-norm centres, cosine assignment;
    nredo > 1 keeps the best of that many random starts."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < k:
        raise ValueError(f"k-means needs at least {k} descriptors for {k} clusters, got {x.shape[0]}: "
                         f"use more images or a larger per-image sample")
    if x.shape[0] < 39 * k:
        log.warning("only %d descriptors for %d clusters (FAISS suggests >= %d); centres may be poor",
                    x.shape[0], k, 39 * k)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=seed, spherical=spherical, verbose=False,
                      gpu=False)
    km.train(x)
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, x.shape[1])


def load_backbone_weights(model: torch.nn.Module, spec: str, fmt: str) -> Path:
    """Load only the `backbone.*` tensors that checkpoint format `fmt` maps from `spec` (strict over the backbone)."""
    path = resolve_checkpoint_path(spec)
    mapped = CHECKPOINT_FORMATS.get(fmt)(read_checkpoint(path), model)
    state = {k: v for k, v in mapped.state.items() if k.startswith("backbone.")}
    ignored = sorted(k for k in mapped.state if not k.startswith("backbone."))
    if ignored:
        log.info("cluster: ignoring %d non-backbone tensors of %s (e.g. %s)", len(ignored), path, ignored[:3])
    check_and_load(model, MappedState(state, covers="backbone."), str(path))
    return path


def _with_clusters(cfg: ModelConfig, clusters: Optional[int]) -> ModelConfig:
    name = cfg.aggregator.get("name", "")
    builder = AGGREGATORS.get(name)
    if "clusters" not in inspect.signature(builder).parameters:
        raise ValueError(f"the configured aggregator '{name}' has no cluster centres to initialise; "
                         f"`vpr-core cluster` is for clustering aggregators (e.g. model.aggregator.name: netvlad)")
    if clusters is None:
        return cfg
    if clusters < 1:
        raise ValueError(f"clusters must be >= 1, got {clusters}")
    return replace(cfg, aggregator={**copy.deepcopy(cfg.aggregator), "clusters": int(clusters)})


def sample_local_features(extractor, paths: Iterable[Path], per_image: int, seed: int = 0,
                          normalize: bool = True, progress: bool = True) -> Tuple[np.ndarray, int, int]:
    """Up to `per_image` random local descriptors per image (L2-normalised if `normalize`).

    Returns (descriptors (N, C) float32, images used, images skipped as unreadable)."""
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    model = extractor.model
    prefix = int(getattr(model.backbone, "num_prefix_tokens", 0))
    rng = np.random.default_rng(seed)
    paths = list(paths)
    chunks: List[np.ndarray] = []
    used = skipped = 0
    bs = max(1, extractor.cfg.batch_size)
    with tqdm(total=len(paths), desc="cluster: local features", unit="img", disable=not progress) as bar:
        for images, errors in iter_image_batches(paths, bs):
            for exc in errors:
                skipped += 1
                log.warning("cluster: skipped %s", exc)
            if images:
                x = extractor.preprocess(images).to(extractor.device, memory_format=torch.channels_last)
                with torch.inference_mode():
                    loc = local_features(model.backbone(x), prefix).float()
                    if normalize:
                        loc = F.normalize(loc, dim=-1)
                loc = loc.cpu().numpy()
                for per in loc:
                    take = rng.choice(per.shape[0], size=min(per_image, per.shape[0]), replace=False)
                    chunks.append(per[np.sort(take)])
                used += len(images)
            bar.update(len(images) + len(errors))
    if not chunks:
        raise ValueError(f"none of the {len(paths)} images could be read")
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32), used, skipped


def cluster_model(cfg: ModelConfig, sources: Sequence[Union[str, Path]], clusters: Optional[int] = None,
                  per_image: int = 100, max_images: Optional[int] = 500, niter: int = 25, seed: int = 0,
                  backbone_checkpoint: Optional[str] = None, backbone_format: Optional[str] = None,
                  progress: bool = True) -> ClusterResult:
    """Build the configured model, load its backbone, cluster local features and initialise the aggregator."""
    from vpr_core.models import DescriptorExtractor, build_model

    cfg = _with_clusters(cfg, clusters)
    paths = collect_images(sources, max_images)  # fail on a bad source before building anything
    model = build_model(cfg, load_checkpoint=False)
    agg = model.aggregator
    if not hasattr(agg, "init_from_clusters"):
        raise ValueError(f"aggregator '{cfg.aggregator['name']}' cannot be initialised from clusters")
    spec = backbone_checkpoint or cfg.checkpoint
    if not spec:
        raise ValueError("no backbone weights: set model.checkpoint or pass a backbone checkpoint "
                         "(clustering random features gives useless centres)")
    ckpt = load_backbone_weights(model, spec, backbone_format or cfg.checkpoint_format)
    if model.head is not None or model.local_head is not None:
        log.warning("cluster: the model's head/local head keeps its random initialisation in the saved checkpoint")
    extractor = DescriptorExtractor(replace(cfg, precision="fp32", runtime="torch"), model)  # backbone features
    normalize = bool(getattr(agg, "normalize_input", True))
    sample, used, skipped = sample_local_features(extractor, paths, per_image, seed=seed, normalize=normalize,
                                                  progress=progress)
    if sample.shape[1] != agg.in_dim:
        raise ValueError(f"backbone gives {sample.shape[1]}-D local features but the aggregator expects {agg.in_dim}")
    k = agg.clusters
    log.info("cluster: k-means with %d centres on %d x %d descriptors", k, *sample.shape)
    centroids = spherical_kmeans(sample, k, niter=niter, seed=seed, spherical=normalize)
    alpha = agg.init_from_clusters(centroids, sample)
    return ClusterResult(model.eval(), cfg, centroids, used, skipped, int(sample.shape[0]), alpha, ckpt)
