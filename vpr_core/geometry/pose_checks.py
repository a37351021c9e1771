"""The measurements behind the pose checks: point spread and coverage, parallax, reprojection error,
Sampson distance, depth look-up. Plain numpy / OpenCV, no decisions (those are in pose.py)."""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np

from vpr_core.geometry.camera import CameraModel


def image_spread(xy: np.ndarray, width: int, height: int) -> Tuple[float, float]:
    """(spread ratio, coverage) of pixel points: sqrt(minor / major eigenvalue) of their scatter (0 = on a
    line, 1 = isotropic), and the area of their convex hull over the image area."""
    pts = np.asarray(xy, np.float64)
    if len(pts) < 3:
        return 0.0, 0.0
    ev = np.linalg.eigvalsh(np.cov(pts.T))
    spread = float(np.sqrt(max(ev[0], 0.0) / ev[1])) if ev[1] > 0 else 0.0
    hull = cv2.convexHull(pts.astype(np.float32))
    return spread, float(cv2.contourArea(hull)) / float(width * height)


def parallax_deg(bearings_q: np.ndarray, bearings_m: np.ndarray, R: np.ndarray) -> float:
    """Median angle (degrees) between match bearings and rotated query bearings: with the best pure
    rotation R, the image motion that only a translation can explain."""
    c = np.sum(bearings_m * (bearings_q @ np.asarray(R).T), axis=1)
    return float(np.degrees(np.median(np.arccos(np.clip(c, -1.0, 1.0)))))


def sampson_px(E: np.ndarray, nq: np.ndarray, nm: np.ndarray, focal: float, signed: bool = False) -> np.ndarray:
    """First-order geometric distance (Sampson) of each match to E, normalised coordinates -> pixels
    (signed: smooth in E, for derivatives)."""
    a, b = np.c_[nq, np.ones(len(nq))], np.c_[nm, np.ones(len(nm))]
    Ea, Etb = a @ E.T, b @ E
    num = np.sum(b * Ea, axis=1)
    den = np.sqrt(Ea[:, 0] ** 2 + Ea[:, 1] ** 2 + Etb[:, 0] ** 2 + Etb[:, 1] ** 2)
    d = num / np.maximum(den, 1e-15) * focal
    return d if signed else np.abs(d)


def reprojection_rms_essential(R: np.ndarray, t: np.ndarray, nq: np.ndarray, nm: np.ndarray,
                               focal_q: float, focal_m: float) -> float:
    """RMS (pixels) of the 2-D reprojection residuals in both images of the inliers triangulated with
    (R, t) (cv2.triangulatePoints, linear); normalised residuals scaled by each camera's focal."""
    P_q, P_m = np.eye(3, 4), np.c_[R, np.asarray(t).reshape(3, 1)]
    Xh = cv2.triangulatePoints(P_q, P_m, nq.T.astype(np.float64), nm.T.astype(np.float64))
    X = (Xh[:3] / np.where(np.abs(Xh[3]) < 1e-12, 1e-12, Xh[3])).T
    Xm = X @ R.T + np.asarray(t).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        rq = (X[:, :2] / X[:, 2:] - nq) * focal_q
        rm = (Xm[:, :2] / Xm[:, 2:] - nm) * focal_m
    r2 = np.concatenate([np.sum(rq ** 2, 1), np.sum(rm ** 2, 1)])
    r2 = r2[np.isfinite(r2)]
    return float(np.sqrt(np.mean(r2))) if len(r2) else float("nan")


def reprojection_rms_pnp(R: np.ndarray, t: np.ndarray, X: np.ndarray, xy: np.ndarray, cam: CameraModel) -> float:
    """RMS (pixels) of the 2-D reprojection residuals of query-frame points X projected into the match image."""
    uv = cam.project(X @ np.asarray(R).T + np.asarray(t).ravel())
    return float(np.sqrt(np.mean(np.sum((uv - xy) ** 2, axis=1))))


def depth_at(depth: np.ndarray, xy: np.ndarray, width: int, height: int, min_m: float, max_m: float) -> np.ndarray:
    """Depth (metres) at each pixel of a width x height image, read from the nearest pixel of `depth`
    (any resolution, same field of view); NaN where invalid (0, NaN, out of [min_m, max_m])."""
    d = np.asarray(depth)
    if d.dtype == np.uint16:
        d = d.astype(np.float64) / 1000.0  # ROS 16UC1 depth: millimetres (REP 118)
    else:
        d = d.astype(np.float64)
    h, w = d.shape
    u = np.clip(np.rint((xy[:, 0] + 0.5) * w / width - 0.5), 0, w - 1).astype(int)
    v = np.clip(np.rint((xy[:, 1] + 0.5) * h / height - 0.5), 0, h - 1).astype(int)
    z = d[v, u]
    ok = np.isfinite(z) & (z >= max(min_m, 1e-9)) & (z <= max_m)
    return np.where(ok, z, np.nan)
