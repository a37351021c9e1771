"""The 6x6 covariance published with a loop-closure pose: image noise propagated to first order through
the inliers' residuals, inflated by the outlier share, so weak or ill-conditioned loops weigh less.

Order of ROS geometry_msgs/PoseWithCovariance: (x, y, z, roll, pitch, yaw); rotations are small
angles about the match camera's axes (R' = exp([w]x) R), translation in the match camera frame.

    s = max(reproj_error_px, keypoint_sigma_px)   image noise, pixels (RMS reprojection error of the
                                                  inliers, floored by the keypoints' localisation noise)
    J = d residuals / d pose parameters           (central differences), one row per inlier residual
    r = inlier ratio                              (inliers / putative matches, in (0, 1])

    C = s^2 (J^T J)^-1 / r^2

- Essential matrix (direction only): residual = Sampson distance in pixels of each inlier to
  E = [t]x R; parameters w (3) and the 2 tangent directions B of the unit t. The translation block
  is B C_tt B^T + unknown_scale_sigma^2 t t^T (the length along t is unknown to a back end), with
  the rotation-translation cross terms B C_tw.
- PnP (metric): residual = 2-D reprojection error in the match image; parameters w (3), t (3);
  the translation block also gets (depth_rel_sigma * z_med)^2 / n per axis for the depth noise.

J^T J is a sum over inliers, so C shrinks with more inliers and grows with s and 1/r; for E it grows
as the parallax falls (the residuals stop depending on t) and with the rotation-translation ambiguity
of narrow views, which a per-axis formula (s / (f sqrt(n))) misses by 10-100x on real matches.
"""
from __future__ import annotations

import cv2
import numpy as np

from vpr_core.geometry.camera import CameraModel
from vpr_core.geometry.polish import essential_residuals, jacobian, tangent_basis


def _scaled_inverse(J: np.ndarray, sigma_px: float, inlier_ratio: float) -> np.ndarray:
    if not 0.0 < inlier_ratio <= 1.0 or len(J) == 0:
        raise ValueError(f"covariance needs inliers and an inlier ratio in (0, 1], got {len(J)} and {inlier_ratio}")
    return sigma_px ** 2 * np.linalg.pinv(J.T @ J) / inlier_ratio ** 2


def essential_covariance(R: np.ndarray, t: np.ndarray, nq: np.ndarray, nm: np.ndarray, focal_px: float,
                         sigma_px: float, inlier_ratio: float, unknown_scale_sigma: float = 1e3) -> np.ndarray:
    """6x6 covariance of (unit t, R) from the inliers' normalised coordinates (module docstring)."""
    u = np.asarray(t, np.float64).ravel() / np.linalg.norm(t)
    B = tangent_basis(u)
    C = _scaled_inverse(jacobian(essential_residuals(R, u, nq, nm, focal_px), 5), sigma_px, inlier_ratio)
    cov = np.zeros((6, 6))
    cov[:3, :3] = B @ C[3:, 3:] @ B.T + unknown_scale_sigma ** 2 * np.outer(u, u)
    cov[3:, 3:] = C[:3, :3]
    cov[:3, 3:] = B @ C[3:, :3]
    cov[3:, :3] = cov[:3, 3:].T
    return cov


def pnp_covariance(R: np.ndarray, t: np.ndarray, X: np.ndarray, xy: np.ndarray, cam: CameraModel,
                   sigma_px: float, inlier_ratio: float, depth_rel_sigma: float = 0.01) -> np.ndarray:
    """6x6 covariance of (metric t, R) from the inliers' 3-D points X (query frame) and match pixels xy."""
    t = np.asarray(t, np.float64).ravel()

    def residuals(p: np.ndarray) -> np.ndarray:
        Rp = cv2.Rodrigues(p[:3])[0] @ R
        return (cam.project(X @ Rp.T + (t + p[3:])) - xy).ravel()

    C = _scaled_inverse(jacobian(residuals, 6), sigma_px, inlier_ratio)
    cov = np.zeros((6, 6))
    cov[:3, :3], cov[3:, 3:] = C[3:, 3:], C[:3, :3]
    cov[:3, 3:], cov[3:, :3] = C[3:, :3], C[:3, 3:]
    cov[:3, :3] += np.eye(3) * (depth_rel_sigma * float(np.median(X[:, 2]))) ** 2 / len(X)
    return cov


def rotation_sigma_deg(cov: np.ndarray) -> float:
    """Largest standard deviation of the rotation block, degrees (NaN for a rejected pose's NaN covariance)."""
    if not np.all(np.isfinite(cov)):
        return float("nan")
    return float(np.degrees(np.sqrt(max(np.linalg.eigvalsh(cov[3:, 3:]).max(), 0.0))))


def direction_sigma_deg(cov: np.ndarray, t: np.ndarray) -> float:
    """Largest standard deviation of a unit t across its direction, degrees (E results; NaN as above)."""
    if not np.all(np.isfinite(cov)):
        return float("nan")
    B = tangent_basis(t)
    return float(np.degrees(np.sqrt(max(np.linalg.eigvalsh(B.T @ cov[:3, :3] @ B).max(), 0.0))))
