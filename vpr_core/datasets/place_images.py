"""Images labelled by place, the input of the classification / multi-similarity training schemes:
`PlaceImages`, and its making from a positioned PlaceDataset (a place = a bin of route positions)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from vpr_core.datasets.base import PlaceDataset
from vpr_core.datasets.errors import DatasetError
from vpr_core.datasets.positions import position_bins

log = logging.getLogger(__name__)


@dataclass
class PlaceImages:
    """Image paths with one int64 place label each (dense 0..places-1; images of one place share it);
    optional positions (N, d) in `position_unit` ("deg" = lat/lon, "frame", "m")."""
    name: str
    root: Path
    paths: List[Path]
    labels: np.ndarray = field(repr=False)
    positions: Optional[np.ndarray] = field(default=None, repr=False)
    position_unit: Optional[str] = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != len(self.paths):
            raise DatasetError(f"{self.name}: {len(self.paths)} images but {len(self.labels)} labels")
        if self.positions is not None and len(self.positions) != len(self.paths):
            raise DatasetError(f"{self.name}: {len(self.paths)} images but {len(self.positions)} positions")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def places(self) -> int:
        """How many distinct places the images show."""
        return int(np.unique(self.labels).size)


def keep_places(keys: np.ndarray, min_images: int, what: str) -> Tuple[np.ndarray, np.ndarray]:
    """Rows whose place (`keys`, any int array with one row per image) has at least `min_images`
    images, and their dense labels; the places dropped are counted in a log line."""
    if min_images < 1:
        raise DatasetError(f"min_images_per_place must be >= 1, got {min_images}")
    keys = np.asarray(keys, dtype=np.int64).reshape(len(keys), -1)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    big = counts >= min_images
    keep = np.flatnonzero(big[inverse])
    dropped = int((~big).sum())
    if dropped:
        log.info("%s: dropped %d of %d places with fewer than %d images (%d images)", what, dropped,
                 counts.size, min_images, int(counts[~big].sum()))
    new_id = np.cumsum(big) - 1  # dense ids over the places kept, in the order of their keys
    return keep, new_id[inverse[keep]].astype(np.int64)


def place_images_from(ds: PlaceDataset, group: float, min_images_per_place: int = 1) -> PlaceImages:
    """Queries then database images of a positioned dataset, labelled by position bins `group` wide
    (frame-synchronised traversals: frame k of every season -> place k // group)."""
    if ds.query_positions is None or ds.db_positions is None:
        raise DatasetError(f"{ds.name}: images cannot be grouped into places without positions "
                           f"(this dataset's layout gives none)")
    paths = list(ds.queries) + list(ds.database)
    positions = np.concatenate([ds.query_positions, ds.db_positions])
    keep, labels = keep_places(position_bins(positions, group), min_images_per_place, ds.name)
    if not keep.size:
        raise DatasetError(f"{ds.name}: no place has {min_images_per_place} or more images in bins of {group}")
    return PlaceImages(ds.name, ds.root, [paths[i] for i in keep], labels, positions[keep], ds.position_unit)
