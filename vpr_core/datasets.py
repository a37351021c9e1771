"""Place-recognition datasets on disk: query images, database images, and which database images
are correct for each query. One reader per ground-truth layout, chosen by what the folder holds."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from vpr_core.registry import Registry

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff"}


class DatasetError(ValueError):
    """A dataset folder is missing files or its ground truth does not match its images."""


@dataclass
class PlaceDataset:
    """Paths of queries and database images; `positives[i]` = database indices correct for query i."""
    name: str
    root: Path
    database: List[Path]
    queries: List[Path]
    positives: List[np.ndarray] = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.positives) != len(self.queries):
            raise DatasetError(f"{self.name}: {len(self.queries)} queries but {len(self.positives)} ground-truth rows")
        for i, pos in enumerate(self.positives):
            if pos.size and (pos.min() < 0 or pos.max() >= len(self.database)):
                raise DatasetError(f"{self.name}: ground truth of query {i} names a database index out of range")

    def subset(self, max_queries: Optional[int] = None, stride: int = 1) -> "PlaceDataset":
        """Every `stride`-th query, at most `max_queries` of them (the database is kept whole)."""
        idx = list(range(0, len(self.queries), max(1, stride)))[:max_queries]
        return PlaceDataset(self.name, self.root, self.database, [self.queries[i] for i in idx],
                            [self.positives[i] for i in idx])


    def head(self, n: int) -> "PlaceDataset":
        """The first `n` database images and the queries whose true matches lie among them (a shorter
        stretch of the same route, for quick comparisons of many models)."""
        return self.segment(0, n)

    def segment(self, start: int, stop: int) -> "PlaceDataset":
        """Database images [start, stop) of the route and the queries whose true matches all lie there,
        positives renumbered: a split by route position (train / validation / test stretches)."""
        start, stop = max(0, int(start)), min(len(self.database), int(stop))
        if stop <= start:
            raise DatasetError(f"route segment [{start}, {stop}) of {self.name} holds no database image")
        keep = [i for i, pos in enumerate(self.positives) if pos.size and pos.min() >= start and pos.max() < stop]
        return PlaceDataset(self.name, self.root, self.database[start:stop], [self.queries[i] for i in keep],
                            [self.positives[i] - start for i in keep])


LAYOUTS: Registry[Callable[[Path, int], Optional[PlaceDataset]]] = Registry("dataset layout")


def _images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _index(paths: List[Path]) -> dict:
    return {p.resolve(): i for i, p in enumerate(paths)}


def _lookup(index: dict, root: Path, rel: str, what: str) -> int:
    try:
        return index[(root / rel).resolve()]
    except KeyError:
        raise DatasetError(f"{root}: ground truth names {what} '{rel}' which is not in the image folders") from None


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
    database = _images(db_dir)
    db_index = _index(database)
    queries, positives = [], []
    for row in rows[1:]:
        if not row:
            continue
        queries.append(root / row[0])
        pos = [_lookup(db_index, root, p, "database image") for p in row[1].split()] if len(row) > 1 else []
        positives.append(np.asarray(sorted(pos), dtype=np.int64))
    return PlaceDataset(root.name, root, database, queries, positives)


@LAYOUTS.register("csv_pairs")
def _csv_pairs(root: Path, tolerance: int) -> Optional[PlaceDataset]:
    """`ground_truth.csv` with `index,<query path>,<database path>` rows of frame-synchronised
    traversals (Nordland); a match within `tolerance` frames of the true one counts as correct."""
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
    database = _images(db_dir)
    db_index = _index(database)
    queries, positives = [], []
    for q, d in pairs:
        j = _lookup(db_index, root, d, "database image")
        queries.append(root / q)
        lo, hi = max(0, j - tolerance), min(len(database) - 1, j + tolerance)
        positives.append(np.arange(lo, hi + 1, dtype=np.int64))
    return PlaceDataset(root.name, root, database, queries, positives)


@LAYOUTS.register("vprbench_npy")
def _vprbench_npy(root: Path, tolerance: int) -> Optional[PlaceDataset]:
    """Original VPR-Bench: `query/`, `ref/`, `ground_truth_new.npy` rows [query index, [db indices]]."""
    gt = root / "ground_truth_new.npy"
    db_dir = root / ("ref" if (root / "ref").is_dir() else "database")
    if not gt.is_file() or not (root / "query").is_dir() or not db_dir.is_dir():
        return None
    table = np.load(gt, allow_pickle=True)  # VPR-Bench stores an object array
    queries_all = _images(root / "query")
    queries = [queries_all[int(r[0])] for r in table]
    positives = [np.asarray(sorted(np.atleast_1d(r[1]).astype(np.int64))) for r in table]
    return PlaceDataset(root.name, root, _images(db_dir), queries, positives)


def load_dataset(root: str | Path, tolerance: int = 2) -> PlaceDataset:
    """Read a dataset folder, trying each known ground-truth layout in turn."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    for name in LAYOUTS.names():
        ds = LAYOUTS.get(name)(root, tolerance)
        if ds is not None:
            if not ds.queries or not ds.database:
                raise DatasetError(f"{root}: no query or database images found ({name} layout)")
            missing = [p for p in ds.queries + ds.database if not p.is_file()]
            if missing:
                raise DatasetError(f"{root}: {len(missing)} image(s) named by the ground truth are missing, "
                                   f"e.g. {[str(p) for p in missing[:3]]}")
            return ds
    raise DatasetError(f"{root}: no known ground truth (expected ground_truth.csv with 'query,positives' or "
                       f"'index,query,database' columns, or VPR-Bench query/ ref/ ground_truth_new.npy)")

