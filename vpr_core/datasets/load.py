"""`load_dataset`: read a query/database dataset folder in whichever registered layout it is in."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, Optional

from vpr_core.datasets.base import LAYOUTS, PlaceDataset
from vpr_core.datasets.errors import DatasetError


def _reader_options(reader: Any) -> set:
    return set(inspect.signature(reader).parameters) - {"root", "tolerance"}


def load_dataset(root: str | Path, tolerance: int = 2, split: Optional[str] = None,
                 radius_m: Optional[float] = None) -> PlaceDataset:
    """Read a dataset folder, trying each registered layout in turn. `split` and `radius_m` are for
    layouts with splits (geo-localisation: default test split, 10 m train / 25 m val-test positives)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    given: Dict[str, Any] = {k: v for k, v in (("split", split), ("radius_m", radius_m)) if v is not None}
    for name in LAYOUTS.names():
        reader = LAYOUTS.get(name)
        accepted = _reader_options(reader)
        ds = reader(root, tolerance, **{k: v for k, v in given.items() if k in accepted})
        if ds is None:
            continue
        ignored = sorted(set(given) - accepted)
        if ignored:
            raise DatasetError(f"{root} is a '{name}' dataset, which has no {' or '.join(ignored)} "
                               f"(only layouts with splits, like the geo-localisation one, take them)")
        if not ds.queries or not ds.database:
            raise DatasetError(f"{root}: no query or database images found ({name} layout)")
        missing = [p for p in ds.queries + ds.database if not p.is_file()]
        if missing:
            raise DatasetError(f"{root}: {len(missing)} image(s) named by the ground truth are missing, "
                               f"e.g. {[str(p) for p in missing[:3]]}")
        return ds
    raise DatasetError(f"{root}: no known ground truth (expected ground_truth.csv with 'query,positives' or "
                       f"'index,query,database' columns, VPR-Bench query/ ref/ ground_truth_new.npy, or the "
                       f"geo-localisation images/<split>/database|queries/ with @east@north@...@.jpg names, revisitop "
                       f"gnd_<name>.pkl beside jpg/, or GSV-Cities' <name>_dbImages/_qImages/_gt.npy)")
