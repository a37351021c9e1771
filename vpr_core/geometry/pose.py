"""Relative pose of a loop closure from its matched keypoints, with a reason when it cannot be trusted.

Convention: the result is T_match_query, the query camera's pose in the match camera's frame
(vpr_msgs LoopClosure.relative_pose): a point X_q in the query camera frame is X_m = R @ X_q + t in
the match camera frame. Camera frames are OpenCV's: x right, y down, z forward.

- Without depth: essential matrix by 5-point USAC (OpenCV, seeded) on undistorted normalised
  coordinates (each camera's own K), or E = K_m^T F K_q lifted from a DEGENSAC fundamental matrix
  F with x_m^T F x_q = 0; R and t from cv2.recoverPose, then polished on all inliers
  (polish.py: Levenberg-Marquardt on the Sampson distances). t is a unit direction (metric False).
- With an aligned depth image of the query frame: query keypoints back-projected to 3-D, PnP-RANSAC
  (cv2.solvePnPRansac, SQPnP) against the match keypoints, refined by Levenberg-Marquardt: metric t.

Checks, in order, each with its `reason` (REASONS): E path: coarse_keypoints, too_few_matches,
degenerate_points (all matches), no_solution, too_few_inliers, degenerate_points (inliers),
low_parallax, planar_ambiguous, cheirality, uncertain; PnP path: too_few_matches, no_depth,
degenerate_points, no_solution, too_few_inliers, degenerate_points, cheirality, uncertain.
Thresholds live in PoseConfig.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np

from vpr_core.geometry.camera import CameraModel
from vpr_core.geometry.covariance import (direction_sigma_deg, essential_covariance, pnp_covariance,
                                          rotation_sigma_deg)
from vpr_core.geometry.polish import polish_essential, skew
from vpr_core.geometry.pose_checks import (depth_at, image_spread, parallax_deg, reprojection_rms_essential,
                                           reprojection_rms_pnp, sampson_px)
from vpr_core.geometry.rotation import angle_between_deg, best_rotation, quaternion_xyzw, rotation_angle_deg

REASONS = {
    "too_few_matches": "fewer putative matches than pose.min_inliers: the pose cannot reach the inlier floor",
    "no_depth": "depth given, but fewer than pose.min_inliers query keypoints have a valid depth there",
    "degenerate_points": "matches or inliers lie on a line (pose.min_spread_ratio) or cover too little of "
                         "the image (pose.min_coverage): the geometry is not constrained",
    "no_solution": "the solver (5-point USAC or PnP) returned no model",
    "too_few_inliers": "fewer geometric inliers than pose.min_inliers",
    "low_parallax": "the inliers are explained by a pure rotation (parallax < pose.min_parallax_deg, or "
                    "< pose.min_parallax_snr times the epipolar noise): the translation direction is "
                    "unobservable; R is reported (the best pure rotation), t is not",
    "planar_ambiguous": "a homography explains the inliers (pose.planar_inlier_ratio) and it decomposes into "
                        "two visible poses that differ by more than pose.planar_tolerance_deg: a planar scene "
                        "fits two essential matrices, the data cannot tell which is right",
    "cheirality": "too few inliers lie in front of both cameras (pose.min_cheirality_ratio): the "
                  "decomposition is unreliable",
    "coarse_keypoints": "without depth, the keypoints' localisation noise (pose.keypoint_sigma_px / focal) "
                        "exceeds pose.max_keypoint_noise_deg: the 5-point pose is unreliable from such "
                        "keypoints; give depth (PnP) or use finer local features",
    "uncertain": "the propagated covariance exceeds pose.max_rotation_sigma_deg (or, for a direction-only t, "
                 "pose.max_direction_sigma_deg): too weak to help a pose graph",
}
SNR_FLOOR_PX = 0.1  # floor of the epipolar noise in the parallax SNR: only keeps exact synthetic data finite


@dataclass
class PoseConfig:
    """Thresholds of the relative-pose estimate; config section `pose` (each key is a field)."""
    min_inliers: int = 20  # geometric inliers a pose needs (ORB-SLAM3's Sim3 needs 20; VINS-Fusion's PnP 25)
    ransac_px: float = 4.0  # RANSAC inlier threshold, pixels of the original image (>= the keypoint noise)
    confidence: float = 0.999  # RANSAC confidence that an all-inlier sample was drawn
    max_iters: int = 1000  # RANSAC iterations at most
    seed: int = 0  # USAC random state (E, H): the same matches always give the same pose (PnP's RANSAC is fixed)
    polish_iters: int = 5  # Levenberg-Marquardt steps on all E inliers after RANSAC (0 = off; 5 = as good as 10)
    # floor of the image noise in the covariance, px: the keypoints' localisation noise. Grid-cell local
    # features: cell / sqrt(12) (refine.keypoint_sigma_px; 4.6 px for 16-px cells), detectors: ~0.5-1
    keypoint_sigma_px: float = 0.5
    # the 5-point pose needs keypoints this precise (keypoint_sigma_px / focal, degrees): from 16-px cells
    # (0.95 deg at 320x240) it was measured wrong by 5-15 deg even when every check passed (pose benchmark);
    # 8-px cells (0.48 deg) gave ~1.3 deg median. PnP (with depth) has no such limit.
    max_keypoint_noise_deg: float = 0.6
    min_spread_ratio: float = 0.1  # sqrt(minor/major eigenvalue) of the points' scatter; below: points on a line
    min_coverage: float = 0.03  # convex hull of the points / image area, in each image; below: one small patch
    min_parallax_deg: float = 0.25  # median angle no rotation explains; below: t unobservable (E only)
    # that angle in pixels over the inliers' median Sampson distance: ~2.5 for a pure rotation at any noise
    # level (measured), so below this the translation is noise (E only)
    min_parallax_snr: float = 4.0
    # share of the E inliers a homography must also explain for the scene to count as planar; a planar
    # scene fits two essential matrices (the two visible homography decompositions), so check both
    planar_inlier_ratio: float = 0.8
    planar_tolerance_deg: float = 3.0  # the two planar solutions agree (no ambiguity) when R and t differ less
    min_cheirality_ratio: float = 0.9  # inliers that must lie in front of both cameras (E) or the match camera (PnP)
    max_rotation_sigma_deg: float = 3.0  # reject a pose whose rotation sigma (largest axis) exceeds this
    max_direction_sigma_deg: float = 10.0  # reject a direction-only t whose sigma across it exceeds this
    min_depth_m: float = 0.1  # depth readings closer than this are invalid (sensor minimum range)
    max_depth_m: float = 40.0  # depth readings farther than this are invalid (noise grows with range)
    depth_rel_sigma: float = 0.01  # the depth sensor's relative noise (1 % of range), for the metric covariance
    unknown_scale_sigma: float = 1e3  # sigma along t when t is only a direction: "length unknown" to a back end

    def __post_init__(self) -> None:
        if self.min_inliers < 5:
            raise ValueError(f"pose.min_inliers must be >= 5 (the 5-point solver's sample), got {self.min_inliers}")
        if self.ransac_px <= 0 or self.max_iters < 1 or not 0.0 < self.confidence < 1.0:
            raise ValueError(f"pose.ransac_px must be > 0, pose.max_iters >= 1 and pose.confidence in (0, 1); got "
                             f"{self.ransac_px}, {self.max_iters}, {self.confidence}")
        for name in ("min_spread_ratio", "min_coverage", "min_cheirality_ratio", "planar_inlier_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"pose.{name} is a ratio in [0, 1], got {getattr(self, name)}")
        positive = ("keypoint_sigma_px", "max_keypoint_noise_deg", "max_rotation_sigma_deg", "max_direction_sigma_deg")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"pose.{name} must be > 0, got {getattr(self, name)}")
        if self.min_parallax_deg < 0 or self.min_parallax_snr < 0 or not 0.0 <= self.min_depth_m < self.max_depth_m:
            raise ValueError(f"pose.min_parallax_deg and pose.min_parallax_snr must be >= 0 and 0 <= "
                             f"pose.min_depth_m < pose.max_depth_m; got {self.min_parallax_deg}, "
                             f"{self.min_parallax_snr}, {self.min_depth_m}, {self.max_depth_m}")


@dataclass
class PoseResult:
    """T_match_query and how far to trust it. When `ok` is False, `reason` is a key of REASONS and R, t
    hold what was estimated before the rejection (for diagnostics only; never publish them)."""
    ok: bool
    reason: str = ""
    R: np.ndarray = field(default_factory=lambda: np.eye(3))  # rotation, query camera -> match camera
    t: np.ndarray = field(default_factory=lambda: np.zeros(3))  # metres if metric, else a unit direction
    metric: bool = False  # True only with depth (PnP)
    covariance: np.ndarray = field(default_factory=lambda: np.full((6, 6), np.nan))  # ROS order x y z roll pitch yaw
    num_matches: int = 0  # putative matches given
    num_inliers: int = 0  # geometric inliers (after the cheirality check)
    inlier_ratio: float = 0.0  # num_inliers / num_matches
    reproj_error_px: float = float("nan")  # RMS reprojection error of the inliers, pixels (see estimate_relative_pose)
    parallax_deg: float = float("nan")  # median inlier angle no rotation explains (E path; NaN for PnP)
    parallax_snr: float = float("nan")  # that angle in pixels / median Sampson distance of the inliers (E path)
    inlier_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (num_matches,) bool
    time_ms: float = 0.0  # time spent estimating

    @property
    def quaternion_xyzw(self) -> np.ndarray:
        return quaternion_xyzw(self.R)

    def as_pose7(self) -> list:
        """[x, y, z, qx, qy, qz, qw]: the layout of Verification.relative_pose and geometry_msgs/Pose."""
        return [float(v) for v in np.concatenate([self.t, self.quaternion_xyzw])]


def _points(xy: np.ndarray, name: str, cam: CameraModel) -> np.ndarray:
    a = np.asarray(xy, np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must be (N,2) pixel coordinates (x, y), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has NaN or infinite coordinates; drop those keypoints first")
    lo, hi = -1.5, np.array([cam.width, cam.height]) + 0.5  # the image, pixel centres at integers, 1 px slack
    if len(a) and ((a.min(0) < lo).any() or (a.max(0) > hi).any()):
        raise ValueError(f"{name} has keypoints outside the camera's {cam.width}x{cam.height} image (x in "
                         f"[{a[:, 0].min():.1f}, {a[:, 0].max():.1f}], "
                         f"y in [{a[:, 1].min():.1f}, {a[:, 1].max():.1f}]): "
                         f"the camera model does not match the image the features came from; use CameraModel.scaled_to")
    return a


def _validate(xy_q, xy_m, cam_q, cam_m, depth_q, fundamental):
    for name, cam in (("cam_query", cam_q), ("cam_match", cam_m)):
        if not isinstance(cam, CameraModel):
            raise ValueError(f"{name} must be a CameraModel (CameraModel.from_config / from_camera_info), "
                             f"got {type(cam).__name__}")
    a, b = _points(xy_q, "xy_query", cam_q), _points(xy_m, "xy_match", cam_m)
    if len(a) != len(b):
        raise ValueError(f"xy_query and xy_match must be matched row by row; got {len(a)} and {len(b)} points")
    if depth_q is not None:
        d = np.asarray(depth_q)
        if d.ndim != 2 or d.size == 0:
            raise ValueError(f"depth_query must be a 2-D depth image (HxW, metres), got shape {d.shape}")
    if fundamental is not None:
        F = np.asarray(fundamental, np.float64)
        if F.shape != (3, 3) or not np.all(np.isfinite(F)) or not np.any(F):
            raise ValueError("fundamental must be a finite, non-zero 3x3 matrix with x_match^T F x_query = 0")
    return a, b


def estimate_relative_pose(xy_query: np.ndarray, xy_match: np.ndarray, cam_query: CameraModel,
                           cam_match: CameraModel, cfg: Optional[PoseConfig] = None,
                           depth_query: Optional[np.ndarray] = None,
                           fundamental: Optional[np.ndarray] = None) -> PoseResult:
    """T_match_query (query camera pose in the match camera frame) from matched pixels, row i of
    `xy_query` matching row i of `xy_match`; see the module docstring for the two paths.

    `depth_query`: HxW depth of the query image (float metres, or uint16 millimetres as in ROS
    16UC1), aligned with it (another resolution is scaled); 0 / NaN = invalid. `fundamental`: a
    3x3 F with x_match^T F x_query = 0 (the DEGENSAC re-ranker's, query points first), lifted to E
    instead of running the 5-point solver (ignored when a camera has distortion). `reproj_error_px`
    is the RMS over inliers of the 2-D reprojection residual: both images, points triangulated, for
    E; the match image for PnP. The covariance formula is in vpr_core.geometry.covariance.
    Raises ValueError for malformed inputs (shapes, NaN, a camera that does not fit the points).
    """
    cfg = cfg or PoseConfig()
    t0 = time.perf_counter()
    a, b = _validate(xy_query, xy_match, cam_query, cam_match, depth_query, fundamental)
    if depth_query is not None:
        res = _pose_pnp(a, b, cam_query, cam_match, cfg, np.asarray(depth_query))
    else:
        res = _pose_essential(a, b, cam_query, cam_match, cfg, fundamental)
    res.num_matches = len(a)
    res.time_ms = (time.perf_counter() - t0) * 1e3
    return res


def _reject(reason: str, n: int, **kw) -> PoseResult:
    assert reason in REASONS, reason
    kw.setdefault("inlier_mask", np.zeros(n, bool))
    return PoseResult(False, reason, **kw)


def _degenerate(a: np.ndarray, b: np.ndarray, cam_q: CameraModel, cam_m: CameraModel, cfg: PoseConfig) -> bool:
    return any(s < cfg.min_spread_ratio or c < cfg.min_coverage
               for s, c in (image_spread(a, cam_q.width, cam_q.height), image_spread(b, cam_m.width, cam_m.height)))


def _usac(cfg: PoseConfig, threshold: float) -> "cv2.UsacParams":
    p = cv2.UsacParams()
    p.threshold, p.confidence, p.maxIterations = float(threshold), float(cfg.confidence), int(cfg.max_iters)
    p.randomGeneratorState = int(cfg.seed)
    p.loMethod = cv2.LOCAL_OPTIM_INNER_AND_ITER_LO  # OpenCV's USAC_DEFAULT local optimisation
    return p


def _pose_essential(a, b, cam_q, cam_m, cfg, fundamental) -> PoseResult:
    n = len(a)
    f = 0.5 * (cam_q.focal + cam_m.focal)
    if np.degrees(cfg.keypoint_sigma_px / f) > cfg.max_keypoint_noise_deg:
        return _reject("coarse_keypoints", n)
    if n < cfg.min_inliers:
        return _reject("too_few_matches", n)
    if _degenerate(a, b, cam_q, cam_m, cfg):
        return _reject("degenerate_points", n)
    na, nb = cam_q.normalize(a), cam_m.normalize(b)
    eye = np.eye(3)
    if fundamental is not None and not len(cam_q.dist) and not len(cam_m.dist):
        U, _, Vt = np.linalg.svd(cam_m.K.T @ np.asarray(fundamental, np.float64) @ cam_q.K)
        E = U @ np.diag([1.0, 1.0, 0.0]) @ Vt  # nearest essential matrix (two equal singular values)
        mask = sampson_px(E, na, nb, f) <= cfg.ransac_px
    else:
        E, m = cv2.findEssentialMat(na, nb, eye, eye, None, None, _usac(cfg, cfg.ransac_px / f))
        if E is None or E.shape[0] < 3 or not np.all(np.isfinite(E[:3])) or m is None:
            return _reject("no_solution", n)
        E, mask = E[:3], m.ravel() > 0
    if mask.sum() < cfg.min_inliers:
        return _reject("too_few_inliers", n, num_inliers=int(mask.sum()), inlier_ratio=mask.sum() / n, inlier_mask=mask)
    if _degenerate(a[mask], b[mask], cam_q, cam_m, cfg):
        return _reject("degenerate_points", n, num_inliers=int(mask.sum()), inlier_ratio=mask.sum() / n,
                       inlier_mask=mask)
    R_rot = best_rotation(_bearings(na[mask]), _bearings(nb[mask]))
    par = parallax_deg(_bearings(na[mask]), _bearings(nb[mask]), R_rot)
    noise = max(float(np.median(sampson_px(E, na[mask], nb[mask], f))), SNR_FLOOR_PX)
    snr = np.radians(par) * f / noise
    if par < cfg.min_parallax_deg or snr < cfg.min_parallax_snr:
        return _reject("low_parallax", n, R=R_rot, num_inliers=int(mask.sum()), inlier_ratio=mask.sum() / n,
                       parallax_deg=par, parallax_snr=snr, inlier_mask=mask)
    common = dict(num_inliers=int(mask.sum()), inlier_ratio=mask.sum() / n, parallax_deg=par, parallax_snr=snr,
                  inlier_mask=mask)
    planar = _planar_solutions(na[mask], nb[mask], f, cfg)
    if planar is not None:
        if len(planar) == 0:
            return _reject("cheirality", n, **common)
        (R0, t0), others = planar[0], planar[1:]
        if any(rotation_angle_deg(R0, R1) > cfg.planar_tolerance_deg
               or angle_between_deg(t0, t1) > cfg.planar_tolerance_deg for R1, t1 in others):
            return _reject("planar_ambiguous", n, R=R0, t=t0, **common)
        E = skew(t0) @ R0  # the one planar solution: recoverPose below selects it (and counts cheirality)
    good, R, t, m2 = cv2.recoverPose(E, na, nb, eye, mask=mask.astype(np.uint8).reshape(-1, 1).copy())
    t = t.ravel() / max(np.linalg.norm(t), 1e-12)
    final = m2.ravel() > 0
    k = int(final.sum())
    if k < max(cfg.min_inliers, cfg.min_cheirality_ratio * mask.sum()):
        return _reject("cheirality", n, R=R, t=t, num_inliers=k, inlier_ratio=k / n, parallax_deg=par,
                       parallax_snr=snr, inlier_mask=final)
    if cfg.polish_iters:
        R, t = polish_essential(R, t, na[final], nb[final], f, cfg.polish_iters)
    err = reprojection_rms_essential(R, t, na[final], nb[final], cam_q.focal, cam_m.focal)
    cov = essential_covariance(R, t, na[final], nb[final], f, max(err, cfg.keypoint_sigma_px), k / n,
                               cfg.unknown_scale_sigma)
    res = PoseResult(True, "", R, t, False, cov, n, k, k / n, err, par, snr, final)
    if (rotation_sigma_deg(cov) > cfg.max_rotation_sigma_deg
            or direction_sigma_deg(cov, t) > cfg.max_direction_sigma_deg):
        res.ok, res.reason = False, "uncertain"
    return res


def _planar_solutions(na: np.ndarray, nb: np.ndarray, f: float, cfg: PoseConfig):
    """None when no homography explains `planar_inlier_ratio` of the inliers; else the poses (R, unit t)
    of its decompositions that keep the points in front of both cameras (cv2 visibility filter)."""
    H, hm = cv2.findHomography(na, nb, _usac(cfg, cfg.ransac_px / f))
    if H is None or H.size != 9 or hm is None or hm.sum() < cfg.planar_inlier_ratio * len(na):
        return None
    _, Rs, ts, normals = cv2.decomposeHomographyMat(H, np.eye(3))
    inl = hm.ravel() > 0
    keep = cv2.filterHomographyDecompByVisibleRefpoints(Rs, normals, na[inl].reshape(-1, 1, 2).astype(np.float32),
                                                        nb[inl].reshape(-1, 1, 2).astype(np.float32))
    idx = [] if keep is None else np.asarray(keep).ravel().tolist()
    sols = [(np.asarray(Rs[i]), np.asarray(ts[i]).ravel()) for i in idx]
    return [(R, t / max(np.linalg.norm(t), 1e-12)) for R, t in sols if np.linalg.norm(t) > 1e-9]


def _bearings(normalised: np.ndarray) -> np.ndarray:
    v = np.c_[normalised, np.ones(len(normalised))]
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _pose_pnp(a, b, cam_q, cam_m, cfg, depth) -> PoseResult:
    n = len(a)
    if n < cfg.min_inliers:
        return _reject("too_few_matches", n)
    z = depth_at(depth, a, cam_q.width, cam_q.height, cfg.min_depth_m, cfg.max_depth_m)
    valid = np.isfinite(z)
    if valid.sum() < cfg.min_inliers:
        return _reject("no_depth", n)
    idx = np.flatnonzero(valid)
    if _degenerate(a[idx], b[idx], cam_q, cam_m, cfg):
        return _reject("degenerate_points", n)
    X = np.c_[cam_q.normalize(a[idx]), np.ones(len(idx))] * z[idx, None]  # query camera frame, metres
    img = np.ascontiguousarray(b[idx])
    dist = cam_m.dist if len(cam_m.dist) else None
    try:
        # OpenCV's classic RANSAC (fixed internal seed: reproducible) with SQPnP on the inliers: 10x
        # faster than USAC here (4 vs 43 ms for 150 matches) and as accurate once refined below
        ok, rvec, tvec, inl = cv2.solvePnPRansac(X, img, cam_m.K, dist, iterationsCount=cfg.max_iters,
                                                 reprojectionError=cfg.ransac_px, confidence=cfg.confidence,
                                                 flags=cv2.SOLVEPNP_SQPNP)
    except cv2.error:
        ok = False
    if not ok or inl is None:
        return _reject("no_solution", n)
    mask = np.zeros(n, bool)
    mask[idx[np.asarray(inl).ravel()]] = True
    k = int(mask.sum())
    if k < cfg.min_inliers:
        return _reject("too_few_inliers", n, num_inliers=k, inlier_ratio=k / n, inlier_mask=mask)
    if _degenerate(a[mask], b[mask], cam_q, cam_m, cfg):
        return _reject("degenerate_points", n, num_inliers=k, inlier_ratio=k / n, inlier_mask=mask)
    sel = np.isin(idx, np.flatnonzero(mask))
    rvec, tvec = cv2.solvePnPRefineLM(X[sel], img[sel], cam_m.K, dist, rvec, tvec)
    R, t = cv2.Rodrigues(rvec)[0], tvec.ravel()
    in_front = (X[sel] @ R.T + t)[:, 2] > 0
    if in_front.sum() < max(cfg.min_inliers, cfg.min_cheirality_ratio * k):
        return _reject("cheirality", n, R=R, t=t, metric=True, num_inliers=k, inlier_ratio=k / n, inlier_mask=mask)
    err = reprojection_rms_pnp(R, t, X[sel], img[sel], cam_m)
    cov = pnp_covariance(R, t, X[sel], img[sel], cam_m, max(err, cfg.keypoint_sigma_px), k / n, cfg.depth_rel_sigma)
    res = PoseResult(True, "", R, t, True, cov, n, k, k / n, err, float("nan"), float("nan"), mask)
    if rotation_sigma_deg(cov) > cfg.max_rotation_sigma_deg:
        res.ok, res.reason = False, "uncertain"
    return res
