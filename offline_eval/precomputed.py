"""Descriptors computed elsewhere, scored with the same code: one `.npy` of query rows and one of database
rows, in the dataset's image order (VisionTransformerVPR compares models this way). Rows are L2-normalised
and ranked by inner product (cosine), then Recall@K and the precision-recall summary as for every path."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from offline_eval.protocol import PathResult
from offline_eval.landmarks import landmark_scores
from vpr_core.datasets import PlaceDataset
from vpr_core.metrics import rank_database


def load_descriptors(path: Path, rows: int, what: str) -> np.ndarray:
    """A (rows, D) finite float array from `path` (no pickles), each row L2-normalised; ValueError naming
    what is wrong otherwise."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what} descriptors {path}: not a readable .npy array ({exc})") from None
    if arr.ndim != 2 or arr.shape[0] != rows or arr.shape[1] == 0 or arr.dtype.kind not in "fiu":
        raise ValueError(f"{what} descriptors {path}: shape {arr.shape} ({arr.dtype}), expected ({rows}, D) numbers: "
                         f"one row per {what} image of the dataset, in its order")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} descriptors {path}: NaN or inf in row {int(np.flatnonzero(~np.isfinite(arr).all(1))[0])}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{what} descriptors {path}: row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros")
    return arr / norms


def run_descriptors(ds: PlaceDataset, queries: Path, database: Path, top_k: int = 20) -> PathResult:
    """The path "descriptors <file>": the precomputed rows ranked and scored like the others."""
    t0 = time.perf_counter()
    q = load_descriptors(Path(queries), len(ds.queries), "query")
    db = load_descriptors(Path(database), len(ds.database), "database")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"query descriptors are {q.shape[1]}-D, database descriptors {db.shape[1]}-D")
    scores, ranked = rank_database(q, db, top_k)
    out = PathResult.scored(f"descriptors {Path(queries).stem}", ranked, scores, ds.positives, time.perf_counter() - t0)
    if ds.revisited is not None:  # revisited Oxford/Paris: mAP over the full ranking (queries as given: cropped or not)
        out.landmarks = landmark_scores(q, db, ds.revisited)
    return out
