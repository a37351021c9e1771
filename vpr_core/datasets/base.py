"""What every dataset reader returns: `PlaceDataset` (queries, database, ground truth, optional
positions), the `LAYOUTS` registry the readers join, and the small file helpers they share."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional

import numpy as np

from vpr_core.datasets.errors import DatasetError
from vpr_core.datasets.positions import as_positions, neighbours_within
from vpr_core.registry import Registry

if TYPE_CHECKING:
    from vpr_core.datasets.place_images import PlaceImages
    from vpr_core.datasets.revisited import RevisitedTruth

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff"}
POSITION_UNITS = ("frame", "m")  # route frame index (counted in database images) | UTM metres


@dataclass
class PlaceDataset:
    """Paths of queries and database images; `positives[i]` = database indices correct for query i.
    Optional positions, (N, d) float64 in `position_unit`, give the trainer distances between places."""
    name: str
    root: Path
    database: List[Path]
    queries: List[Path]
    positives: List[np.ndarray] = field(repr=False)
    db_positions: Optional[np.ndarray] = field(default=None, repr=False)
    query_positions: Optional[np.ndarray] = field(default=None, repr=False)
    position_unit: Optional[str] = None
    revisited: Optional["RevisitedTruth"] = field(default=None, repr=False)  # easy/hard/junk (Oxford/Paris): mAP

    def __post_init__(self) -> None:
        if len(self.positives) != len(self.queries):
            raise DatasetError(f"{self.name}: {len(self.queries)} queries but {len(self.positives)} ground-truth rows")
        for i, pos in enumerate(self.positives):
            if pos.size and (pos.min() < 0 or pos.max() >= len(self.database)):
                raise DatasetError(f"{self.name}: ground truth of query {i} names a database index out of range")
        self._check_positions()

    def _check_positions(self) -> None:
        if self.db_positions is None and self.query_positions is None:
            return
        if self.db_positions is None or self.query_positions is None:
            raise DatasetError(f"{self.name}: positions given for only one of database and queries (give both)")
        if self.position_unit not in POSITION_UNITS:
            raise DatasetError(f"{self.name}: position_unit must be one of {POSITION_UNITS}, "
                               f"got {self.position_unit!r}")
        self.db_positions = as_positions(self.db_positions, len(self.database), f"{self.name} database positions")
        self.query_positions = as_positions(self.query_positions, len(self.queries), f"{self.name} query positions")
        if self.db_positions.shape[1] != self.query_positions.shape[1]:
            raise DatasetError(f"{self.name}: database positions have {self.db_positions.shape[1]} coordinates, "
                               f"query positions {self.query_positions.shape[1]}")

    @property
    def has_positions(self) -> bool:
        return self.db_positions is not None

    def within(self, radius: float) -> List[np.ndarray]:
        """Database indices within `radius` (in `position_unit`) of each query, sorted: the trainer's
        "positives within 10 m" and, by complement, "negatives beyond 25 m"."""
        if self.db_positions is None or self.query_positions is None:
            raise DatasetError(f"{self.name}: no image positions in this dataset (its layout has none), "
                               f"so distances between places are unknown")
        return neighbours_within(self.query_positions, self.db_positions, radius)

    def subset(self, max_queries: Optional[int] = None, stride: int = 1) -> "PlaceDataset":
        """Every `stride`-th query, at most `max_queries` of them (the database is kept whole)."""
        idx = list(range(0, len(self.queries), max(1, stride)))[:max_queries]
        qpos = None if self.query_positions is None else self.query_positions[idx]
        return PlaceDataset(self.name, self.root, self.database, [self.queries[i] for i in idx],
                            [self.positives[i] for i in idx], self.db_positions, qpos, self.position_unit,
                            self.revisited.subset(idx) if self.revisited is not None else None)

    def head(self, n: int) -> "PlaceDataset":
        """The first `n` database images and the queries whose true matches lie among them (a shorter
        stretch of the same route, for quick comparisons of many models)."""
        return self.segment(0, n)

    def segment_of(self, spec: Optional[str]) -> "PlaceDataset":
        """`segment` from a command line's "START:STOP" (None or "" = the whole dataset)."""
        if not spec:
            return self
        start, sep, stop = str(spec).partition(":")
        try:
            return self.segment(int(start), int(stop))
        except ValueError:
            raise DatasetError(f"a route segment is START:STOP in database positions (e.g. 2700:3576), "
                               f"got {spec!r}") from None

    def segment(self, start: int, stop: int) -> "PlaceDataset":
        """Database images [start, stop) of the route and the queries whose true matches all lie there,
        positives renumbered: a split by route position (train / validation / test stretches).
        Frame positions shift by `start` like the positives; metric positions stay as they are."""
        if self.revisited is not None:
            raise DatasetError(f"{self.name} is a set of landmarks (revisitop), not a route: it has no segments")
        start, stop = max(0, int(start)), min(len(self.database), int(stop))
        if stop <= start:
            raise DatasetError(f"route segment [{start}, {stop}) of {self.name} holds no database image")
        keep = [i for i, pos in enumerate(self.positives) if pos.size and pos.min() >= start and pos.max() < stop]
        dbpos = qpos = None
        if self.db_positions is not None and self.query_positions is not None:
            shift = float(start) if self.position_unit == "frame" else 0.0
            dbpos = self.db_positions[start:stop] - shift
            qpos = self.query_positions[keep] - shift
        return PlaceDataset(self.name, self.root, self.database[start:stop], [self.queries[i] for i in keep],
                            [self.positives[i] - start for i in keep], dbpos, qpos, self.position_unit)

    def as_place_images(self, group: float, min_images_per_place: int = 1) -> "PlaceImages":
        """Queries and database images labelled by position bins `group` wide (frame k of every
        traversal in bin k // group): the classification training scheme's places."""
        from vpr_core.datasets.place_images import place_images_from
        return place_images_from(self, group, min_images_per_place)


# A reader takes (root, tolerance) and, if it reads a layout with splits, `split` and `radius_m`;
# it returns None when the folder is not in its layout, and raises DatasetError when it is but is broken.
LAYOUTS: Registry[Callable[..., Optional[PlaceDataset]]] = Registry("dataset layout")


def image_files(folder: Path, recursive: bool = False) -> List[Path]:
    """Image files in `folder` (or below it), sorted by path."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def sole_file(root: Path, pattern: str) -> Optional[Path]:
    """The one ground-truth file in `root` matching `pattern`, None when there is none (not this layout);
    several are a DatasetError (which would be meant is unknowable)."""
    found = sorted(root.glob(pattern))
    if len(found) > 1:
        raise DatasetError(f"{root}: several ground truths {[p.name for p in found]}; one set per folder")
    return found[0] if found else None


def database_indices(value: Any, n: int, where: str) -> np.ndarray:
    """A ground truth's list of database indices as sorted unique int64, each checked to be an integer in
    [0, n); DatasetError naming `where` otherwise."""
    try:
        a = np.asarray(value if value is not None else [], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: expected a list of database indices") from None
    if a.size and (not np.all(np.isfinite(a)) or np.any(a != np.round(a)) or a.min() < 0 or a.max() >= n):
        raise DatasetError(f"{where}: database indices must be integers in [0, {n}); found ones outside it or "
                           f"not integers")
    return np.unique(a.astype(np.int64))


def path_index(paths: List[Path]) -> dict:
    return {p.resolve(): i for i, p in enumerate(paths)}


def lookup(index: dict, root: Path, rel: str, what: str) -> int:
    try:
        return index[(root / rel).resolve()]
    except KeyError:
        raise DatasetError(f"{root}: ground truth names {what} '{rel}' which is not in the image folders") from None
