"""The 6x6 covariance published with a loop-closure pose: a first-order heuristic that grows as inliers
fall and reprojection error rises, so a pose-graph back end weighs weak loops less.

Order of ROS geometry_msgs/PoseWithCovariance: (x, y, z, roll, pitch, yaw); translation in the match
camera's frame; no cross terms. With

    s   = max(reproj_error_px, min_sigma_px)     image noise, pixels (RMS reprojection error of the inliers)
    f   = focal length, pixels                    (mean of both cameras' fx, fy)
    n   = number of inliers,  r = inlier ratio    (inliers / putative matches, in (0, 1])

rotation (each of roll, pitch, yaw, radians):

    sigma_rot = s / (f * sqrt(n)) / r

translation, metric (PnP with depth; z_med = median inlier depth in metres, depth_rel_sigma = the
depth sensor's relative noise), isotropic:

    sigma_t = z_med * (s / f + depth_rel_sigma) / sqrt(n) / r

translation, direction only (essential matrix; t is a unit vector, scale unknown; p = parallax in
radians, the part of the image motion no rotation explains):

    sigma_dir = sigma_rot / sin(p)                      across t (radians = units of the unit vector)
    cov_t     = sigma_dir^2 (I - t t^T) + unknown_scale_sigma^2 t t^T

so a back end that reads the covariance sees that the length along t is unknown. Every sigma
increases as n falls, as s rises and as r falls; sigma_dir also as the parallax falls.
"""
from __future__ import annotations

import numpy as np


def pose_covariance(reproj_error_px: float, focal_px: float, num_inliers: int, inlier_ratio: float,
                    t: np.ndarray, *, metric: bool, parallax_deg: float = 0.0, median_depth_m: float = 0.0,
                    min_sigma_px: float = 0.5, depth_rel_sigma: float = 0.01,
                    unknown_scale_sigma: float = 1e3) -> np.ndarray:
    """6x6 covariance (x, y, z, roll, pitch, yaw) by the formula in this module's docstring."""
    if num_inliers < 1 or not 0.0 < inlier_ratio <= 1.0 or focal_px <= 0:
        raise ValueError(f"covariance needs num_inliers >= 1, inlier_ratio in (0, 1] and focal > 0; got "
                         f"{num_inliers}, {inlier_ratio}, {focal_px}")
    s = max(float(reproj_error_px), float(min_sigma_px))
    spread = 1.0 / (np.sqrt(num_inliers) * inlier_ratio)
    sigma_rot = s / focal_px * spread
    cov = np.zeros((6, 6))
    cov[3:, 3:] = np.eye(3) * sigma_rot ** 2
    if metric:
        sigma_t = max(float(median_depth_m), 0.0) * (s / focal_px + depth_rel_sigma) * spread
        cov[:3, :3] = np.eye(3) * sigma_t ** 2
    else:
        u = np.asarray(t, np.float64).ravel()
        u = u / max(np.linalg.norm(u), 1e-12)
        sigma_dir = sigma_rot / max(np.sin(np.radians(min(max(parallax_deg, 0.0), 90.0))), 1e-6)
        along = np.outer(u, u)
        cov[:3, :3] = sigma_dir ** 2 * (np.eye(3) - along) + unknown_scale_sigma ** 2 * along
    return cov
