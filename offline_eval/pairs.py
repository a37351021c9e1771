"""Pair lists (`path1,path2,label`, DINOVPR's protocol): each image described once by the configured model,
each pair scored by cosine similarity, then ROC AUC and the best single-threshold accuracy."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
from tqdm import tqdm

from vpr_core.config import Config
from vpr_core.datasets import load_pairs
from vpr_core.images import iter_image_batches
from vpr_core.metrics import PairScores, pair_scores


@dataclass
class PairResult:
    name: str
    scores: PairScores
    similarity: np.ndarray  # per pair, in the list's order
    seconds: float


def run_pairs(cfg: Config, pair_file: Path, progress: bool = True) -> PairResult:
    from vpr_core.models import DescriptorExtractor
    pairs = load_pairs(pair_file)
    t0 = time.perf_counter()
    ex = DescriptorExtractor(cfg.model)
    images: List[Path] = sorted(set(pairs.left) | set(pairs.right))
    row: Dict[Path, int] = {p: i for i, p in enumerate(images)}
    bs = max(1, cfg.model.batch_size)
    parts = []
    for batch, errors in tqdm(iter_image_batches(images, bs), total=-(-len(images) // bs), desc="pairs: describe",
                              disable=not progress):
        if errors:  # every pair is scored: an unreadable image is the list's error, not a skipped pair
            raise errors[0]
        parts.append(ex(batch))
    desc = np.concatenate(parts)
    sim = np.einsum("ij,ij->i", desc[[row[p] for p in pairs.left]], desc[[row[p] for p in pairs.right]])
    return PairResult(pairs.name, pair_scores(sim, pairs.labels), sim, time.perf_counter() - t0)


def pair_table(res: PairResult, model: str) -> str:
    s = res.scores
    return (f"{res.name} ({model}): {s.pairs} pairs\n"
            f"ROC AUC {s.auc:.3f}; best accuracy {s.accuracy:.3f} at similarity >= {s.threshold:.3f}; "
            f"{res.seconds:.1f} s")
