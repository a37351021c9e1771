"""Revisited Oxford / Paris (revisitop; ViTGaL's protocol): `gnd_<name>.pkl` beside `jpg/`. The pickle holds
`imlist` (database image names), `qimlist` (query names) and `gnd`, per query the database indices that are
`easy` and `hard` positives and `junk` (ignored when ranked), and the query's box `bbx`.

A pickle can run code when loaded, so this reader loads it with an unpickler that builds only the documented
structure (dicts, lists, strings, numbers, and numpy arrays of numbers) and refuses anything else; then every
field is checked. Do not point it at pickles you would not run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from vpr_core.datasets.base import LAYOUTS, PlaceDataset, database_indices, sole_file
from vpr_core.datasets.errors import DatasetError
from vpr_core.datasets.safe_pickle import read_pickle

PROTOCOLS = ("easy", "medium", "hard")  # revisitop's three settings
@dataclass
class RevisitedTruth:
    """Per query: database indices of easy and hard positives and of junk (left out of the ranking)."""
    easy: List[np.ndarray]
    hard: List[np.ndarray]
    junk: List[np.ndarray]
    boxes: List[Optional[Tuple[float, float, float, float]]]  # the query's region (x0, y0, x1, y1), when given

    def setting(self, protocol: str) -> Tuple[List[np.ndarray], List[np.ndarray]]:
        """(positives, junk) per query under `protocol`: easy = easy positives, hard ones junk; medium = both
        positive; hard = hard positives, easy ones junk."""
        cat = lambda *parts: [np.unique(np.concatenate(p)).astype(np.int64) for p in zip(*parts)]  # noqa: E731
        if protocol == "easy":
            return self.easy, cat(self.junk, self.hard)
        if protocol == "medium":
            return cat(self.easy, self.hard), self.junk
        if protocol == "hard":
            return self.hard, cat(self.junk, self.easy)
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")

    def subset(self, idx: List[int]) -> "RevisitedTruth":
        return RevisitedTruth([self.easy[i] for i in idx], [self.hard[i] for i in idx], [self.junk[i] for i in idx],
                              [self.boxes[i] for i in idx])


def read_ground_truth(path: Path) -> dict:
    """The pickle's dict, built by the restricted unpickler (safe_pickle); DatasetError for anything else."""
    data = read_pickle(path)
    if not isinstance(data, dict) or not {"imlist", "qimlist", "gnd"} <= set(data):
        raise DatasetError(f"{path}: expected a dict with imlist, qimlist and gnd")
    return data


def _box(value: Any, where: str) -> Optional[Tuple[float, float, float, float]]:
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return None
    try:
        b = tuple(float(v) for v in np.asarray(value, np.float64).reshape(-1))
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: bbx must be 4 numbers") from None
    if len(b) != 4 or not all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
        raise DatasetError(f"{where}: bbx must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {list(b)}")
    return b  # type: ignore[return-value]


@LAYOUTS.register("revisited")
def read_revisited(root: Path, tolerance: int = 0) -> Optional[PlaceDataset]:
    """A `gnd_*.pkl` + `jpg/` folder (revisitop), or None when the folder is not one."""
    gnd_file = sole_file(root, "gnd_*.pkl")
    if gnd_file is None:
        return None
    data = read_ground_truth(gnd_file)
    imlist, qimlist, gnd = data["imlist"], data["qimlist"], data["gnd"]
    if not (isinstance(imlist, list) and isinstance(qimlist, list) and isinstance(gnd, list)) or \
            not all(isinstance(s, str) for s in imlist + qimlist) or len(gnd) != len(qimlist):
        raise DatasetError(f"{gnd_file}: imlist and qimlist must be lists of names and gnd one entry per query")
    n = len(imlist)
    easy, hard, junk, boxes = [], [], [], []
    for i, g in enumerate(gnd):
        where = f"{gnd_file} gnd[{i}]"
        if not isinstance(g, dict):
            raise DatasetError(f"{where}: expected a dict with easy, hard and junk")
        easy.append(database_indices(g.get("easy"), n, f"{where}.easy"))
        hard.append(database_indices(g.get("hard"), n, f"{where}.hard"))
        junk.append(database_indices(g.get("junk"), n, f"{where}.junk"))
        boxes.append(_box(g.get("bbx"), f"{where}.bbx"))
    image = lambda name: root / "jpg" / (name if Path(name).suffix else f"{name}.jpg")  # noqa: E731
    truth = RevisitedTruth(easy, hard, junk, boxes)
    positives, _ = truth.setting("medium")
    return PlaceDataset(gnd_file.stem[len("gnd_"):], root, [image(s) for s in imlist], [image(s) for s in qimlist],
                        positives, revisited=truth)
