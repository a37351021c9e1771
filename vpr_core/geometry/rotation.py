"""Small rotation helpers: quaternions for ROS messages and the angular errors the benchmarks report."""
from __future__ import annotations

import numpy as np


def quaternion_xyzw(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a 3x3 rotation matrix, w >= 0 (geometry_msgs order).

    Shepperd's method: branch on the largest diagonal term so no square root of a small number is taken."""
    R = np.asarray(R, np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(1.0 + tr)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(max(1.0 + R[i, i] - R[j, j] - R[k, k], 1e-300))
        q = [0.0, 0.0, 0.0, (R[k, j] - R[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
    q = np.asarray(q, np.float64)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle in degrees of the rotation taking R_b to R_a (the geodesic distance on SO(3))."""
    c = (np.trace(np.asarray(R_a) @ np.asarray(R_b).T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def angle_between_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle in degrees between two 3-vectors (translation-direction error); NaN if either is zero."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return float("nan")
    return float(np.degrees(np.arccos(np.clip(a @ b / (na * nb), -1.0, 1.0))))


def best_rotation(bearings_from: np.ndarray, bearings_to: np.ndarray) -> np.ndarray:
    """The rotation R minimising sum |to_i - R from_i|^2 over unit bearing vectors (Kabsch, by SVD):
    the pure-rotation explanation of a set of matches."""
    H = np.asarray(bearings_to, np.float64).T @ np.asarray(bearings_from, np.float64)
    U, _, Vt = np.linalg.svd(H)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt
