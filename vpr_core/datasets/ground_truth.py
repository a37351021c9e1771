"""Readers of folders whose ground truth is a file beside the images: VPR-Bench (`ground_truth.csv`
with query -> positives, or the original `ground_truth_new.npy`) and frame-synchronised traversals
(Nordland: `index,query,database` rows, the same frame index in every season is the same place)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np

from vpr_core.datasets.base import LAYOUTS, PlaceDataset, image_files, lookup, path_index
from vpr_core.datasets.errors import DatasetError


@LAYOUTS.register("csv_positives")
def _csv_positives(root: Path, tolerance: int) -> Optional[PlaceDataset]:
    """`ground_truth.csv` with `query,positives` (space-separated database paths), VPR-Bench converted."""
    gt = root / "ground_truth.csv"
    if not gt.is_file():
        return None
    with gt.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip() for c in rows[0][:2]] != ["query", "positives"]:
        return None
    db_dir = root / ("database" if (root / "database").is_dir() else "ref")
    database = image_files(db_dir)
    db_index = path_index(database)
    queries, positives = [], []
    for row in rows[1:]:
        if not row:
            continue
        queries.append(root / row[0])
        pos = [lookup(db_index, root, p, "database image") for p in row[1].split()] if len(row) > 1 else []
        positives.append(np.asarray(sorted(pos), dtype=np.int64))
    return PlaceDataset(root.name, root, database, queries, positives)


@LAYOUTS.register("csv_pairs")
def _csv_pairs(root: Path, tolerance: int) -> Optional[PlaceDataset]:
    """`ground_truth.csv` with `index,<query path>,<database path>` rows of frame-synchronised
    traversals (Nordland); a match within `tolerance` frames of the true one counts as correct.
    Positions are route frames: a database image's index, and its true database index for a query."""
    gt = root / "ground_truth.csv"
    if not gt.is_file():
        return None
    with gt.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or len(rows[0]) != 3 or rows[0][0].strip() != "index":
        return None
    pairs = [(r[1], r[2]) for r in rows[1:] if r]
    if not pairs:
        raise DatasetError(f"{gt}: no rows after the header")
    db_dir = (root / pairs[0][1]).parent
    database = image_files(db_dir)
    db_index = path_index(database)
    queries, positives, frames = [], [], []
    for q, d in pairs:
        j = lookup(db_index, root, d, "database image")
        queries.append(root / q)
        frames.append(j)
        lo, hi = max(0, j - tolerance), min(len(database) - 1, j + tolerance)
        positives.append(np.arange(lo, hi + 1, dtype=np.int64))
    return PlaceDataset(root.name, root, database, queries, positives,
                        db_positions=np.arange(len(database), dtype=np.float64),
                        query_positions=np.asarray(frames, dtype=np.float64), position_unit="frame")


@LAYOUTS.register("vprbench_npy")
def _vprbench_npy(root: Path, tolerance: int) -> Optional[PlaceDataset]:
    """Original VPR-Bench: `query/`, `ref/`, `ground_truth_new.npy` rows [query index, [db indices]]."""
    gt = root / "ground_truth_new.npy"
    db_dir = root / ("ref" if (root / "ref").is_dir() else "database")
    if not gt.is_file() or not (root / "query").is_dir() or not db_dir.is_dir():
        return None
    table = np.load(gt, allow_pickle=True)  # VPR-Bench stores an object array
    queries_all = image_files(root / "query")
    queries = [queries_all[int(r[0])] for r in table]
    positives = [np.asarray(sorted(np.atleast_1d(r[1]).astype(np.int64))) for r in table]
    return PlaceDataset(root.name, root, image_files(db_dir), queries, positives)
