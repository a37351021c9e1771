"""The validation sets GSV-Cities and MixVPR evaluate on (Pittsburgh, MSLS val, SPED, ...): three .npy files
beside the images, `<name>_dbImages.npy` and `<name>_qImages.npy` (image paths relative to the folder) and
`<name>_gt.npy` (per query, the database indices that are correct: an object array, pickled, read with
vpr_core.datasets.safe_pickle so it cannot run code)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from vpr_core.datasets.base import LAYOUTS, PlaceDataset, database_indices, sole_file
from vpr_core.datasets.errors import DatasetError
from vpr_core.datasets.safe_pickle import read_npy


def _names(path: Path) -> List[str]:
    arr = read_npy(path)
    if arr.ndim != 1 or not all(isinstance(v, (str, np.str_)) for v in arr.tolist()):
        raise DatasetError(f"{path}: expected a 1-D array of image paths")
    return [str(v) for v in arr.tolist()]


def _positives(path: Path, queries: int, database: int) -> List[np.ndarray]:
    gt = read_npy(path)
    rows = list(gt) if gt.dtype.hasobject or gt.ndim == 2 else None
    if rows is None or len(rows) != queries:
        raise DatasetError(f"{path}: expected one row of database indices per query ({queries}), got shape {gt.shape}")
    return [database_indices(row, database, f"{path} row {i}") for i, row in enumerate(rows)]


@LAYOUTS.register("gsv_npy")
def read_gsv_npy(root: Path, tolerance: int = 0) -> Optional[PlaceDataset]:
    """A folder with one `<name>_dbImages.npy` / `_qImages.npy` / `_gt.npy` triple, or None when it has none."""
    gt_file = sole_file(root, "*_gt.npy")
    if gt_file is None:
        return None
    name = gt_file.name[:-len("_gt.npy")]
    db_file, q_file = root / f"{name}_dbImages.npy", root / f"{name}_qImages.npy"
    missing = [p.name for p in (db_file, q_file) if not p.is_file()]
    if missing:
        raise DatasetError(f"{root}: {gt_file.name} needs {', '.join(missing)} beside it")
    database, queries = _names(db_file), _names(q_file)
    return PlaceDataset(name, root, [root / p for p in database], [root / p for p in queries],
                        _positives(gt_file, len(queries), len(database)))
