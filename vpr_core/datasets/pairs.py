"""Labelled image pairs (the DINOVPR training input): a text file of `path1,path2,label` lines, label 1
for the same place and 0 for different places; paths relative to the list's folder or absolute."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np

from vpr_core.datasets.errors import DatasetError

PAIR_LINE = "path1,path2,label (label 0 or 1)"


@dataclass
class PairList:
    """Two parallel lists of image paths and an int64 0/1 label per pair (1 = the same place)."""
    name: str
    root: Path
    left: List[Path]
    right: List[Path]
    labels: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not len(self.left) == len(self.right) == len(self.labels):
            raise DatasetError(f"{self.name}: {len(self.left)} left, {len(self.right)} right images and "
                               f"{len(self.labels)} labels; a pair list needs one of each per pair")

    def __len__(self) -> int:
        return len(self.labels)


def _fields(text: str) -> List[str]:
    """A line's fields: comma-separated, or whitespace-separated when the line holds no comma."""
    parts = next(csv.reader([text])) if "," in text else text.split()
    return [p.strip() for p in parts]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def load_pairs(path: str | Path) -> PairList:
    """Read a pair list; an optional header line, blank lines and '#' comments are skipped. Raises
    DatasetError naming the line for a bad label, a wrong field count or an image that is missing."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"pair list not found: {path} (expected a text file of {PAIR_LINE} lines)")
    root = path.parent
    left: List[Path] = []
    right: List[Path] = []
    labels: List[int] = []
    first = True
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        parts = _fields(text)
        if len(parts) != 3:
            raise DatasetError(f"{path} line {number}: expected {PAIR_LINE}, got {len(parts)} field(s): {text!r}")
        if first and not _is_number(parts[2]):
            first = False  # a header such as `path1,path2,label`
            continue
        first = False
        if parts[2] not in ("0", "1"):
            raise DatasetError(f"{path} line {number}: label must be 0 or 1, got {parts[2]!r}")
        a, b = (Path(p) if Path(p).is_absolute() else root / p for p in parts[:2])
        for image in (a, b):
            if not image.is_file():
                raise DatasetError(f"{path} line {number}: image not found: {image}")
        left.append(a)
        right.append(b)
        labels.append(int(parts[2]))
    if not labels:
        raise DatasetError(f"{path}: no pairs (expected {PAIR_LINE} lines)")
    return PairList(path.stem, root, left, right, np.asarray(labels, dtype=np.int64))
