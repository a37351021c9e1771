"""The benchmark protocol in one place, for every path (direct, bag replay, zoo, baselines, descriptor files,
closures, fleet): a dataset as a camera stream (`stream_stamps`), the model's features of it
(`extract_dataset`, cached), the config that makes the recognizer plain retrieval (`benchmark_config`),
and what a path returns (`PathResult`: its ranking, scored by one set of metrics).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from vpr_core.config import Config
from vpr_core.datasets import PlaceDataset
from vpr_core.images import iter_image_batches
from vpr_core.metrics import RECALL_KS, MeanAP, PRSummary, pr_curve, recall_at_k, retrieval_pr
from vpr_core.models import DescriptorExtractor
from vpr_core.models.vpr_model import Extracted

FRAME_PERIOD_NS = 100_000_000  # 10 Hz stamps for the replayed streams
QUERY_OFFSET_NS = 10**12  # queries start 1000 s after the database: no time-window exclusion applies


@dataclass
class PathResult:
    """Ranked database indices per query (best first, -1 padded) and the recall they give."""
    path: str
    ranked: np.ndarray
    scores: np.ndarray
    recall: Dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    missing: int = 0  # queries with no answer (dropped frames)
    recall_global: Dict[int, float] = field(default_factory=dict)  # before re-ranking (global descriptor only);
    #                                                                 empty when re-ranking is off
    rerank_ms: float = 0.0  # mean re-ranking time per query (0 when re-ranking is off)
    pr: Optional[PRSummary] = None  # accepting the top-1 by its score (metrics.retrieval_pr): AUC, R@100%P, R@99%P
    landmarks: Optional[Dict[str, MeanAP]] = None  # revisited Oxford/Paris: protocol -> mAP (offline_eval.landmarks)

    @classmethod
    def scored(cls, path: str, ranked: np.ndarray, scores: np.ndarray, positives: Sequence[np.ndarray],
               seconds: float = 0.0, missing: int = 0) -> "PathResult":
        """A result with its Recall@1/5/10/20 (those the ranking is deep enough for) and precision-recall summary."""
        ks = [k for k in RECALL_KS if k <= np.asarray(ranked).shape[1]] or [1]
        return cls(path, ranked, scores, recall_at_k(ranked, positives, ks), seconds, missing,
                   pr=pr_curve(*retrieval_pr(ranked, scores, positives)))


def benchmark_config(cfg: Config, top_k: int = 20) -> Config:
    """A copy of `cfg` in which every database frame becomes a keyframe and nothing is excluded: plain
    retrieval (the caller's config is left as it is)."""
    cfg = copy.deepcopy(cfg)
    cfg.detector.top_k = top_k
    cfg.detector.keyframe_min_interval_s = 0.0
    cfg.detector.keyframe_max_similarity = 1.0
    cfg.detector.exclude_recent_count = 0
    cfg.detector.exclude_recent_change = 0.0
    cfg.detector.exclude_recent_m = 0.0
    cfg.detector.exclude_recent_s = 0.0
    return cfg


def stream_stamps(n: int, offset_ns: int = 0) -> List[int]:
    return [offset_ns + (i + 1) * FRAME_PERIOD_NS for i in range(n)]


@dataclass
class DatasetFeatures:
    """A dataset's descriptors (and local features), extracted once in batches so that several
    detector settings (e.g. re-ranking K) can be evaluated without running the model again."""
    database: Extracted
    queries: Extracted


def extract_dataset(ex: DescriptorExtractor, ds: PlaceDataset, progress: bool = True,
                    cache: Optional[Path] = None, memmap: Optional[Path] = None) -> DatasetFeatures:
    """Run the model over the database and the queries in batches of `model.batch_size`. With `cache`
    (a folder; offline_eval.feature_cache), features extracted before by the same model from the same
    files are read instead. With `memmap` (a folder) the global descriptors are written batch by batch into
    memory-mapped `<database|queries>_global.npy` files there instead of being gathered in memory."""
    from offline_eval.feature_cache import feature_key, load_features, save_features

    def run(paths, what: str) -> Extracted:
        if cache is None:
            return extract(paths, what)
        key = feature_key(ex, paths)
        found = load_features(cache, key, len(paths), ex.has_local)
        if found is None:
            found = extract(paths, what)
            save_features(cache, key, found)
        return found

    def extract(paths, what: str) -> Extracted:
        bs = max(1, ex.cfg.batch_size)
        glob = np.zeros((len(paths), ex.dim), np.float32) if memmap is None else \
            np.lib.format.open_memmap(Path(memmap) / f"{what}_global.npy", "w+", np.float32, (len(paths), ex.dim))
        local: List = []
        contrast = np.zeros(len(paths), np.float32)
        at = 0
        for images, errors in tqdm(iter_image_batches(paths, bs), total=-(-len(paths) // bs),
                                   desc=f"extract {what}", disable=not progress):
            if errors:  # a benchmark scores every image: a skipped one would shift the ground truth
                raise errors[0]
            out = ex.extract(images, with_local=ex.has_local)
            glob[at:at + len(images)] = out.global_desc
            contrast[at:at + len(images)] = out.contrast
            local += out.local if ex.has_local else []
            at += len(images)
        return Extracted(glob, local if ex.has_local else None, contrast)
    return DatasetFeatures(run(ds.database, "database"), run(ds.queries, "queries"))


def contrast_of(ex: Extracted, i: int) -> float:
    """Image i's grey-level contrast (NaN when the features came without it)."""
    return float(ex.contrast[i]) if ex.contrast is not None else float("nan")


def ranked_from_ids(cand_ids: List[List[int]], id_to_db: Dict[int, int], k: int) -> np.ndarray:
    out = np.full((len(cand_ids), k), -1, dtype=np.int64)
    for i, ids in enumerate(cand_ids):
        row = [id_to_db.get(c, -1) for c in ids][:k]
        out[i, :len(row)] = row
    return out
