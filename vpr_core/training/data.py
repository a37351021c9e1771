"""Training images as one table: paths, where each was taken (route position, metres, or a place
label) and which are anchors (queries) or candidates (database); read through vpr_core.datasets."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from vpr_core.datasets import PlaceDataset, load_dataset, load_place_images, neighbours_within, place_images_from
from vpr_core.training.config import DataConfig
from vpr_core.training.features import TrainingDataError

log = logging.getLogger(__name__)


def _positions(ds: PlaceDataset) -> Tuple[np.ndarray, np.ndarray, str]:
    """(database positions, query positions, unit); datasets without positions are ordered routes:
    database index = position, a query sits at the middle of its true matches."""
    if ds.has_positions:
        return ds.db_positions, ds.query_positions, ds.position_unit or "frame"
    if any(not p.size for p in ds.positives):
        raise TrainingDataError(f"{ds.name}: a query without ground truth and no positions: cannot train on it")
    return (np.arange(len(ds.database), dtype=np.float64)[:, None],
            np.array([[p.mean()] for p in ds.positives], np.float64), "frame")


@dataclass
class ImageTable:
    """Images of a training split; anchors are the images losses start from, candidates the images their
    positives and negatives are drawn from (queries vs. database; every image when labels define places)."""
    name: str
    paths: List[Path]
    positions: np.ndarray  # (N, d): route frame, UTM metres, or a place label (unit "label")
    anchors: np.ndarray  # int64 indices into paths
    candidates: np.ndarray  # int64 indices into paths
    unit: str = "frame"

    def __post_init__(self) -> None:
        if not len(self.anchors) or not len(self.candidates):
            raise TrainingDataError(f"{self.name}: the training split holds no {'anchor' if not len(self.anchors) else 'candidate'} images")

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairwise distances (|a|, |b|) between images; labels are 0 apart when equal, inf otherwise."""
        pa, pb = self.positions[a], self.positions[b]
        if self.unit == "label":
            return np.where(pa[:, None, 0] == pb[None, :, 0], 0.0, np.inf)
        return np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=-1)

    def within(self, radius: float, points: Optional[np.ndarray] = None) -> List[np.ndarray]:
        """Candidates within `radius` of each anchor (or of `points` indices), itself excluded."""
        points = self.anchors if points is None else np.asarray(points)
        if self.unit == "label":  # a place label: the same label is the same place
            near = [self.candidates[self.positions[self.candidates, 0] == self.positions[i, 0]] for i in points]
        else:
            near = [self.candidates[n] for n in
                    neighbours_within(self.positions[points], self.positions[self.candidates], radius)]
        return [np.sort(n[n != i]) for n, i in zip(near, points)]


def split_dataset(path: str, part: str, tolerance: int) -> PlaceDataset:
    """`start:stop` = a route segment of the database (frame-synchronised datasets); a name = the geo
    layout's split folder; "" = the whole dataset."""
    if ":" in part:
        start, _, stop = part.partition(":")
        try:
            a, b = int(start), int(stop)
        except ValueError:
            raise TrainingDataError(f"split '{part}' must be 'start:stop' frame numbers or a split name") from None
        return load_dataset(path, tolerance=tolerance).segment(a, b)
    if part:
        return load_dataset(path, tolerance=tolerance, split=part)
    return load_dataset(path, tolerance=tolerance)


def check_gap(cfg: DataConfig, min_gap: int = 50) -> None:
    """Route segments of train and validation must not overlap and must lie `min_gap` frames apart:
    adjacent frames look alike, so a closer split leaks the validation images into training."""
    parts = [p for p in (cfg.train, cfg.val) if ":" in p]
    if len(parts) < 2 or (cfg.val_path and cfg.val_path != cfg.path):
        return
    (a0, a1), (b0, b1) = ((int(x) for x in p.split(":")) for p in parts)
    gap = max(b0 - a1, a0 - b1)
    if gap < min_gap:
        raise TrainingDataError(f"train {cfg.train} and val {cfg.val} are {gap} frames apart; a split by route position "
                                f"needs a gap of at least {min_gap} frames (neighbouring frames show the same place)")


def table_from_places(ds: PlaceDataset, max_anchors: int = 0) -> ImageTable:
    """Queries are anchors, database images are candidates (NetVLAD-style mining)."""
    dbp, qp, unit = _positions(ds)
    paths = list(ds.database) + list(ds.queries)
    anchors = np.arange(len(ds.database), len(paths), dtype=np.int64)
    if max_anchors and len(anchors) > max_anchors:
        anchors = anchors[np.linspace(0, len(anchors) - 1, max_anchors).round().astype(np.int64)]
    return ImageTable(ds.name, paths, np.concatenate([dbp, qp]), anchors,
                      np.arange(len(ds.database), dtype=np.int64), unit)


def table_from_labels(name: str, paths: List[Path], labels: np.ndarray, min_per_place: int = 2,
                      max_anchors: int = 0) -> ImageTable:
    """Every image is anchor and candidate; a place is a label (GSV-Cities, binned routes)."""
    labels = np.asarray(labels, np.int64)
    ids, counts = np.unique(labels, return_counts=True)
    keep = np.isin(labels, ids[counts >= min_per_place])
    if (~keep).any():
        log.info("%s: dropped %d image(s) of %d place(s) with fewer than %d images", name, int((~keep).sum()),
                 int((counts < min_per_place).sum()), min_per_place)
    paths = [p for p, k in zip(paths, keep) if k]
    labels = labels[keep]
    idx = np.arange(len(paths), dtype=np.int64)
    anchors = idx if not max_anchors or len(idx) <= max_anchors else \
        idx[np.linspace(0, len(idx) - 1, max_anchors).round().astype(np.int64)]
    return ImageTable(name, paths, labels[:, None].astype(np.float64), anchors, idx, "label")


def is_place_images(path: str) -> bool:
    """GSV-Cities-style folders (`Dataframes/<city>.csv` + `Images/<city>/`) label places directly."""
    return (Path(path) / "Dataframes").is_dir()


def training_table(cfg: DataConfig) -> ImageTable:
    """The training split as an ImageTable: labelled places as they are, query/database datasets as
    anchors/candidates of the `train` part."""
    if is_place_images(cfg.path):
        pim = load_place_images(cfg.path, min_images_per_place=cfg.min_per_place)
        return table_from_labels(pim.name, pim.paths, pim.labels, cfg.min_per_place, cfg.max_anchors)
    return table_from_places(split_dataset(cfg.path, cfg.train, cfg.tolerance), cfg.max_anchors)


def labelled_table(cfg: DataConfig) -> ImageTable:
    """The training split with every image labelled by its place (classification)."""
    if is_place_images(cfg.path):
        return training_table(cfg)
    ds = split_dataset(cfg.path, cfg.train, cfg.tolerance)
    if not ds.has_positions:
        raise TrainingDataError(f"{ds.name}: classification groups images into places by position; this layout has none")
    pim = place_images_from(ds, cfg.group)
    return table_from_labels(pim.name, pim.paths, pim.labels, cfg.min_per_place, cfg.max_anchors)
