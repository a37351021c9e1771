"""Sub-cell positions for matches of grid-cell local features (feature-map heads: one feature per cell).

A cell's keypoint is its centre, so positions are quantised to the cell size (16 px of the network
input for the embedded model) and a motion of less than a cell is invisible to the pose. For each
match (i in the query, j in the match image) the similarity of query descriptor i to the match
image's cells j-1, j, j+1 along x (and along y) is fitted by a parabola; its peak moves j's position
by at most half a cell. Query positions stay the cell centres (the 3-D point is whatever that cell sees).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from vpr_core.local_features import LocalFeatures


def grid_of(xy: np.ndarray) -> Optional[Tuple[float, float, float, float]]:
    """(step_x, step_y, x0, y0) when `xy` lie on a regular grid (cell centres), else None."""
    if len(xy) < 4:
        return None
    xs, ys = np.unique(np.round(xy[:, 0], 3)), np.unique(np.round(xy[:, 1], 3))
    if len(xs) < 2 or len(ys) < 2:
        return None
    sx, sy = float(np.min(np.diff(xs))), float(np.min(np.diff(ys)))
    on_grid = (np.abs((xy[:, 0] - xs[0]) / sx - np.rint((xy[:, 0] - xs[0]) / sx)).max() < 1e-2
               and np.abs((xy[:, 1] - ys[0]) / sy - np.rint((xy[:, 1] - ys[0]) / sy)).max() < 1e-2)
    return (sx, sy, float(xs[0]), float(ys[0])) if on_grid else None


def refine_match_positions(query: LocalFeatures, match: LocalFeatures, ia: np.ndarray,
                           ib: np.ndarray) -> np.ndarray:
    """(len(ia), 2) sub-cell pixel positions in the match image of the matches (ia[k], ib[k]);
    the stored positions unchanged when the match image's features are not on a grid."""
    ia, ib = np.asarray(ia, np.int64), np.asarray(ib, np.int64)
    out = match.xy[ib].astype(np.float64)
    grid = grid_of(match.xy)
    if grid is None or len(ia) == 0:
        return out
    sx, sy, x0, y0 = grid
    col = np.rint((match.xy[:, 0] - x0) / sx).astype(np.int64)
    row = np.rint((match.xy[:, 1] - y0) / sy).astype(np.int64)
    ncol, nrow = int(col.max()) + 3, int(row.max()) + 3
    cell = np.full((nrow, ncol), -1, np.int64)  # (row+1, col+1) -> feature index, -1 = none (padded border)
    cell[row + 1, col + 1] = np.arange(len(col))
    a = query.desc[ia].astype(np.float32)
    b = match.desc.astype(np.float32)
    r, c = row[ib] + 1, col[ib] + 1
    s0 = np.sum(a * b[ib], axis=1)
    for axis, step, (dr, dc) in ((0, sx, (0, 1)), (1, sy, (1, 0))):
        lo, hi = cell[r - dr, c - dc], cell[r + dr, c + dc]
        ok = (lo >= 0) & (hi >= 0)
        s_lo = np.where(ok, np.sum(a * b[np.maximum(lo, 0)], axis=1), 0.0)
        s_hi = np.where(ok, np.sum(a * b[np.maximum(hi, 0)], axis=1), 0.0)
        curv = s_lo - 2.0 * s0 + s_hi
        ok &= curv < 0  # a peak at j: the parabola opens downwards
        off = np.where(ok, 0.5 * (s_lo - s_hi) / np.where(ok, curv, -1.0), 0.0)
        out[:, axis] += np.clip(off, -0.5, 0.5) * step
    return out


def keypoint_sigma_px(features: LocalFeatures) -> float:
    """Localisation noise of grid-cell keypoints: cell / sqrt(12), the standard deviation of a uniform
    error over one cell (pixels of the original image); 0 when the features are not on a grid."""
    grid = grid_of(features.xy)
    return 0.0 if grid is None else float(np.hypot(grid[0], grid[1]) / np.sqrt(2) / np.sqrt(12))
