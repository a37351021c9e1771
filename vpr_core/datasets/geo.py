"""Geo-localisation layout (pitts30k, MSLS, ... as the deep-visual-geo-localization benchmark formats
them): `images/{train,val,test}/{database,queries}/` with the UTM position in each file name,
`@<utm_east>@<utm_north>@<zone>@...@.jpg`. The ground truth is a radius around each query."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from vpr_core.datasets.base import LAYOUTS, PlaceDataset, image_files
from vpr_core.datasets.errors import DatasetError

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = "test"
# Positives: database images this close to the query (metres). The benchmark trains with 10 m and
# evaluates with 25 m.
DEFAULT_RADIUS_M = {"train": 10.0, "val": 25.0, "test": 25.0}
NAME_FORMAT = "@<utm_east>@<utm_north>@<zone>@...@.jpg"


def utm_from_name(path: Path) -> Tuple[float, float]:
    """UTM (east, north) in metres from fields 1 and 2 of an '@'-separated file name."""
    fields = path.name.split("@")
    try:
        east, north = float(fields[1]), float(fields[2])
    except (IndexError, ValueError):
        east = north = float("nan")
    if not (np.isfinite(east) and np.isfinite(north)):
        raise DatasetError(f"{path}: cannot read the UTM position from the file name "
                           f"(expected {NAME_FORMAT}, east and north in metres)")
    return east, north


def _split_folder(root: Path, split: Optional[str]) -> Tuple[Optional[Path], str]:
    """The folder holding database/ and queries/ for `split`, and the split's name; (None, '') when
    `root` is not in this layout at all."""
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown split '{split}': expected one of {', '.join(SPLITS)}")
    if (root / "database").is_dir() and (root / "queries").is_dir():  # root is images/<split> itself
        if split is not None and root.name in SPLITS and root.name != split:
            raise DatasetError(f"{root} is the '{root.name}' split but split '{split}' was asked for; "
                               f"give the dataset folder above images/ to choose a split")
        return root, split or (root.name if root.name in SPLITS else DEFAULT_SPLIT)
    images = root / "images"
    present = [s for s in SPLITS if (images / s).is_dir()] if images.is_dir() else []
    if not present:
        return None, ""
    split = split or DEFAULT_SPLIT
    folder = images / split
    if not folder.is_dir():
        raise DatasetError(f"{root}: no '{split}' split (expected the folder {folder}); "
                           f"splits present: {', '.join(present)}")
    for sub in ("database", "queries"):
        if not (folder / sub).is_dir():
            raise DatasetError(f"{folder}: expected the subfolders database/ and queries/, {sub}/ is missing")
    return folder, split


def _positioned(folder: Path) -> Tuple[List[Path], np.ndarray]:
    paths = image_files(folder, recursive=True)
    pos = np.array([utm_from_name(p) for p in paths], dtype=np.float64).reshape(-1, 2)
    return paths, pos


@LAYOUTS.register("geo_utm")
def _geo_utm(root: Path, tolerance: int, split: Optional[str] = None,
             radius_m: Optional[float] = None) -> Optional[PlaceDataset]:
    """One split of a geo-localisation dataset (default test); positives = database images within
    `radius_m` of the query (default 10 m for train, 25 m for val and test). `tolerance` is unused."""
    folder, split = _split_folder(root, split)
    if folder is None:
        return None
    radius = DEFAULT_RADIUS_M[split] if radius_m is None else float(radius_m)
    if not np.isfinite(radius) or radius < 0:
        raise DatasetError(f"radius_m must be a number >= 0, got {radius_m}")
    database, db_pos = _positioned(folder / "database")
    queries, q_pos = _positioned(folder / "queries")
    if not queries:
        raise DatasetError(f"{folder / 'queries'}: the '{split}' split has no query images "
                           f"(expected files named {NAME_FORMAT})")
    if not database:
        raise DatasetError(f"{folder / 'database'}: the '{split}' split has no database images "
                           f"(expected files named {NAME_FORMAT})")
    ds = PlaceDataset(f"{_dataset_name(root, folder)}/{split}", root, database, queries,
                      [np.zeros(0, np.int64)] * len(queries), db_pos, q_pos, "m")
    ds.positives = ds.within(radius)
    return ds


def _dataset_name(root: Path, folder: Path) -> str:
    if folder == root and root.parent.name == "images":  # root = <dataset>/images/<split>
        return root.parent.parent.name
    return root.name
