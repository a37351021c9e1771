"""Distances between places from their positions (frame indices or UTM metres): which database
images lie within a radius of each query, and position bins that name a place for classification."""
from __future__ import annotations

from typing import List

import numpy as np

from vpr_core.datasets.errors import DatasetError

_BLOCK = 1 << 22  # query x candidate distances computed at once (float64: 32 MiB per coordinate)
_QUERY_CHUNK = 256


def as_positions(values: object, rows: int, what: str) -> np.ndarray:
    """`values` as a finite (rows, d) float64 array (a 1-D array is one coordinate per row)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[0] != rows or arr.shape[1] < 1:
        raise DatasetError(f"{what}: expected {rows} rows of coordinates, got an array of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DatasetError(f"{what}: {int((~np.isfinite(arr)).any(axis=1).sum())} row(s) are not finite numbers")
    return arr


def neighbours_within(queries: np.ndarray, database: np.ndarray, radius: float) -> List[np.ndarray]:
    """For each query row, the sorted int64 indices of database rows at Euclidean distance <= radius.
    Exact in float64; both sides are sorted on the first coordinate so each chunk of queries is
    compared only with the database slice that can reach it (fast on routes and city grids)."""
    if not np.isfinite(radius) or radius < 0:
        raise DatasetError(f"radius must be a finite number >= 0, got {radius}")
    queries, database = np.asarray(queries, np.float64), np.asarray(database, np.float64)
    out: List[np.ndarray] = [np.zeros(0, np.int64) for _ in range(len(queries))]
    if not len(queries) or not len(database):
        return out
    db_order = np.argsort(database[:, 0], kind="stable")
    db_x = database[db_order, 0]
    q_order = np.argsort(queries[:, 0], kind="stable")
    r2 = float(radius) ** 2
    for s in range(0, len(q_order), _QUERY_CHUNK):
        qi = q_order[s:s + _QUERY_CHUNK]
        q = queries[qi]
        lo = np.searchsorted(db_x, q[:, 0].min() - radius, side="left")
        hi = np.searchsorted(db_x, q[:, 0].max() + radius, side="right")
        hits: List[List[np.ndarray]] = [[] for _ in qi]
        step = max(1, _BLOCK // len(qi))
        for c in range(lo, hi, step):
            cand = db_order[c:min(hi, c + step)]
            d2 = ((q[:, None, :] - database[None, cand, :]) ** 2).sum(axis=-1)
            rows, cols = np.nonzero(d2 <= r2)  # rows come out ascending
            found, starts = np.unique(rows, return_index=True)
            for row, a, b in zip(found, starts, np.append(starts[1:], rows.size)):
                hits[row].append(cand[cols[a:b]])
        for row, i in enumerate(qi):
            if hits[row]:
                out[i] = np.sort(np.concatenate(hits[row])).astype(np.int64)
    return out


def position_bins(positions: np.ndarray, width: float) -> np.ndarray:
    """A dense int64 label per row: rows whose coordinates fall in the same `width`-wide bin on
    every axis share a label (frame k -> k // width on a route; grid cells on a map)."""
    if not np.isfinite(width) or width <= 0:
        raise DatasetError(f"position bin width must be a finite number > 0, got {width}")
    cells = np.floor(np.asarray(positions, np.float64) / float(width)).astype(np.int64)
    _, labels = np.unique(cells, axis=0, return_inverse=True)
    return labels.reshape(-1).astype(np.int64)
