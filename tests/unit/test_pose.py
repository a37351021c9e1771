"""vpr_core.geometry: the relative pose of a loop closure on synthetic scenes with a known pose.

Exact recovery, noise bounds, every rejection reason, the T_match_query convention, PnP with depth,
the DEGENSAC-F lift and the covariance's monotonicity. Real images: tests/unit/test_pose_real.py.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vpr_core.geometry import (REASONS, CameraModel, PoseConfig, angle_between_deg, estimate_relative_pose,
                               rotation_angle_deg)
from vpr_core.geometry.covariance import direction_sigma_deg, rotation_sigma_deg

CAM = CameraModel.from_fov(60.0, 320, 240)


def rot(deg_xyz) -> np.ndarray:
    return cv2.Rodrigues(np.radians(np.asarray(deg_xyz, np.float64)))[0]


def scene(R, t, n=200, depth=(2.0, 6.0), cam_q=CAM, cam_m=CAM, seed=0, noise_px=0.0, outliers=0.0):
    """Matched pixels of random 3-D points seen by both cameras: X_m = R X_q + t. Returns (xy_q, xy_m, X_q)."""
    rng = np.random.default_rng(seed)
    px = rng.uniform([0, 0], [cam_q.width - 1, cam_q.height - 1], (4 * n, 2))
    X = np.c_[cam_q.normalize(px), np.ones(len(px))] * rng.uniform(*depth, len(px))[:, None]
    Xm = X @ np.asarray(R).T + np.asarray(t)
    pm = cam_m.project(Xm)
    vis = (Xm[:, 2] > 0) & np.all((pm >= 0) & (pm <= [cam_m.width - 1, cam_m.height - 1]), axis=1)
    px, pm, X = px[vis][:n], pm[vis][:n], X[vis][:n]
    assert len(px) == n, "scene: too few points visible in both views"
    if noise_px:
        px = px + rng.normal(0, noise_px, px.shape)
        pm = pm + rng.normal(0, noise_px, pm.shape)
    if outliers:
        bad = rng.random(n) < outliers
        pm[bad] = rng.uniform([0, 0], [cam_m.width - 1, cam_m.height - 1], (int(bad.sum()), 2))
    clip = lambda p, c: np.clip(p, 0, [c.width - 1, c.height - 1])  # noqa: E731
    return clip(px, cam_q), clip(pm, cam_m), X


def depth_image(xy, X, cam=CAM):
    """A depth image (metres) holding each point's depth at its nearest pixel, 0 elsewhere."""
    d = np.zeros((cam.height, cam.width))
    u = np.rint(xy).astype(int)
    d[u[:, 1], u[:, 0]] = X[:, 2]
    return d


MOTIONS = [([2, 5, 1], [0.5, 0.1, 0.2]), ([-4, 1, 3], [-0.3, 0.2, 0.6]), ([1, -8, 0], [0.6, 0.0, -0.1])]


@pytest.mark.parametrize("rv,t", MOTIONS)
def test_exact_matches_recover_the_pose(rv, t):
    R, t = rot(rv), np.array(t)
    xq, xm, _ = scene(R, t)
    r = estimate_relative_pose(xq, xm, CAM, CAM)
    assert r.ok and r.reason == "" and not r.metric
    assert rotation_angle_deg(r.R, R) < 1e-3
    assert angle_between_deg(r.t, t) < 1e-2
    assert np.isclose(np.linalg.norm(r.t), 1.0)
    assert r.num_inliers == r.num_matches == 200 and r.inlier_ratio == 1.0 and r.inlier_mask.all()
    assert r.reproj_error_px < 1e-3 and r.parallax_deg > 1.0
    assert np.allclose(r.quaternion_xyzw, _quat(R), atol=1e-5) and np.isclose(r.as_pose7()[6], _quat(R)[3], atol=1e-5)


def _quat(R):
    """Reference quaternion (x, y, z, w) from OpenCV's axis-angle."""
    v = cv2.Rodrigues(R)[0].ravel()
    a = np.linalg.norm(v)
    return np.r_[np.sin(a / 2) * v / a, np.cos(a / 2)]


def test_convention_is_T_match_query_with_different_cameras():
    """R, t map query-camera points into the match camera (X_m = R X_q + t), each camera with its own K."""
    cam_m = CameraModel.from_config([400.0, 410.0, 330.0, 235.0], 640, 480)
    R, t = rot([3, -6, 2]), np.array([0.4, -0.1, 0.3])
    xq, xm, X = scene(R, t, cam_m=cam_m)
    r = estimate_relative_pose(xq, xm, CAM, cam_m)
    assert r.ok and rotation_angle_deg(r.R, R) < 1e-3 and angle_between_deg(r.t, t) < 1e-2
    assert rotation_angle_deg(r.R, R.T) > 10  # the inverse (T_query_match) is clearly not what comes back
    metric = estimate_relative_pose(xq, xm, CAM, cam_m, depth_query=depth_image(xq, X))
    assert metric.ok and metric.metric
    assert np.allclose(cam_m.project(X @ metric.R.T + metric.t), xm, atol=1e-3)  # query points land on xy_match
    assert np.allclose(metric.t, t, atol=1e-4)


def test_noise_and_outliers_stay_within_measured_bounds():
    """1 px noise, 30 % outliers, points at 2-6 m, |t| = 0.55, RANSAC at 3 px. Measured over seeds 0-19:
    rotation 0.10-1.18 deg, direction 0.4-6.0 deg (seeds 0-4: at most 0.69 / 2.44); inlier ratio
    0.67-0.82, reprojection RMS 0.60-0.78 px."""
    R, t = rot([2, 5, 1]), np.array([0.5, 0.1, 0.2])
    for seed in range(5):
        xq, xm, _ = scene(R, t, seed=seed, noise_px=1.0, outliers=0.3)
        r = estimate_relative_pose(xq, xm, CAM, CAM, PoseConfig(ransac_px=3.0))
        assert r.ok, r.reason
        assert rotation_angle_deg(r.R, R) < 1.5 and angle_between_deg(r.t, t) < 8.0
        assert 0.6 < r.inlier_ratio < 0.85 and 0.4 < r.reproj_error_px < 1.2


def test_pure_rotation_is_low_parallax_and_still_reports_the_rotation():
    R = rot([2, 5, 1])
    xq, xm, _ = scene(R, np.zeros(3), noise_px=0.5)
    r = estimate_relative_pose(xq, xm, CAM, CAM)
    assert not r.ok and r.reason == "low_parallax"
    assert rotation_angle_deg(r.R, R) < 0.2 and r.parallax_deg < 0.25
    assert r.parallax_snr < 4.0


def test_points_on_a_line_are_degenerate():
    rng = np.random.default_rng(0)
    s = rng.uniform(-1, 1, 100)
    X = np.c_[0.5 * s, 0.2 * s, 4 + s]  # a 3-D line: collinear in both images
    R, t = rot([1, 2, 0]), np.array([0.3, 0.0, 0.1])
    r = estimate_relative_pose(CAM.project(X), CAM.project(X @ R.T + t), CAM, CAM)
    assert not r.ok and r.reason == "degenerate_points"


def test_points_in_one_small_patch_are_degenerate():
    R, t = rot([1, 2, 0]), np.array([0.3, 0.0, 0.1])
    xq, xm, _ = scene(R, t, n=3000)
    near = np.linalg.norm(xq - [160, 120], axis=1) < 20  # hull < 1.7 % of the image (min_coverage 3 %)
    r = estimate_relative_pose(xq[near], xm[near], CAM, CAM)
    assert near.sum() >= 20 and r.reason == "degenerate_points"


def test_too_few_matches_and_too_few_inliers():
    R, t = rot([2, 5, 1]), np.array([0.5, 0.1, 0.2])
    xq, xm, _ = scene(R, t)
    assert estimate_relative_pose(xq[:19], xm[:19], CAM, CAM).reason == "too_few_matches"
    rng = np.random.default_rng(1)
    xm_bad = xm[:60].copy()
    xm_bad[15:] = rng.uniform([0, 0], [319, 239], (45, 2))  # 15 true matches, 45 random
    r = estimate_relative_pose(xq[:60], xm_bad, CAM, CAM)
    assert not r.ok and r.reason == "too_few_inliers" and r.num_inliers < 20


def test_planar_scene_with_two_visible_solutions_is_ambiguous():
    """A plane n . X = 1 fits two essential matrices; for this motion both keep the points in front."""
    R, t, n = rot([2, -4, 1]), np.array([-0.2, 0.05, 0.1]), np.array([0.0, 0.26, 1.0]) / np.hypot(0.26, 1.0)
    gx, gy = np.meshgrid(np.arange(20) * 16 + 8.0, np.arange(15) * 16 + 8.0)
    px = np.c_[gx.ravel(), gy.ravel()]
    rays = np.c_[CAM.normalize(px), np.ones(len(px))]
    X = rays / (rays @ n)[:, None]
    pm = CAM.project(X @ R.T + t)
    vis = np.all((pm >= 0) & (pm <= [319, 239]), axis=1)
    r = estimate_relative_pose(px[vis], pm[vis], CAM, CAM)
    assert not r.ok and r.reason == "planar_ambiguous"


def test_pnp_with_depth_gives_metric_translation():
    R, t = rot([2, 5, 1]), np.array([0.5, 0.1, 0.2])
    xq, xm, X = scene(R, t)
    xq = np.rint(xq)  # keypoints at pixel centres, where the depth image holds their exact depth
    X = np.c_[CAM.normalize(xq), np.ones(len(xq))] * X[:, 2:]
    xm = CAM.project(X @ R.T + t)
    ok = np.all((xm >= 0) & (xm <= [319, 239]), axis=1)
    xq, xm, X = xq[ok], xm[ok], X[ok]
    depth = depth_image(xq, X)
    r = estimate_relative_pose(xq, xm, CAM, CAM, depth_query=depth)
    assert r.ok and r.metric and np.allclose(r.t, t, atol=1e-4) and rotation_angle_deg(r.R, R) < 1e-3
    mm = estimate_relative_pose(xq, xm, CAM, CAM, depth_query=np.rint(depth * 1000).astype(np.uint16))
    assert mm.ok and np.allclose(mm.t, t, atol=2e-3)  # ROS 16UC1: millimetres
    half = np.zeros((120, 160))  # another resolution: nearest depth pixel of the same field of view
    half[np.rint((xq[:, 1] + 0.5) / 2 - 0.5).astype(int), np.rint((xq[:, 0] + 0.5) / 2 - 0.5).astype(int)] = X[:, 2]
    assert estimate_relative_pose(xq, xm, CAM, CAM, depth_query=half).ok
    assert estimate_relative_pose(xq, xm, CAM, CAM, depth_query=np.zeros((240, 320))).reason == "no_depth"
    assert estimate_relative_pose(xq, xm, CAM, CAM, depth_query=np.full((240, 320), np.nan)).reason == "no_depth"


def test_pnp_noise_bounds():
    """1 px noise, 20 % outliers: measured 0.09-0.21 deg and 0.5-1.2 cm over seeds 0-4."""
    R, t = rot([-4, 1, 3]), np.array([-0.3, 0.2, 0.6])
    for seed in range(3):
        xq, xm, X = scene(R, t, seed=seed, noise_px=1.0, outliers=0.2)
        X = np.c_[CAM.normalize(np.rint(xq)), np.ones(len(xq))] * X[:, 2:]  # depth read at the noisy keypoint
        r = estimate_relative_pose(np.rint(xq), xm, CAM, CAM, depth_query=depth_image(np.rint(xq), X))
        assert r.ok and rotation_angle_deg(r.R, R) < 0.5 and np.linalg.norm(r.t - t) < 0.03


def test_fundamental_from_degensac_is_lifted_to_the_same_pose():
    pydegensac = pytest.importorskip("pydegensac")
    R, t = rot([2, 5, 1]), np.array([0.5, 0.1, 0.2])
    xq, xm, _ = scene(R, t)
    F, _ = pydegensac.findFundamentalMatrix(xq, xm, 1.0, 0.999, 1000, seed=0)  # the re-ranker's call: query first
    r = estimate_relative_pose(xq, xm, CAM, CAM, fundamental=F)
    assert r.ok and rotation_angle_deg(r.R, R) < 0.05 and angle_between_deg(r.t, t) < 0.5
    wrong = estimate_relative_pose(xq, xm, CAM, CAM, fundamental=F.T)  # match-first F: every match fails it
    assert not wrong.ok and wrong.reason == "too_few_inliers"


def _rot_sigma(res):
    return rotation_sigma_deg(res.covariance)


def test_covariance_grows_as_inliers_fall_noise_rises_and_outliers_grow():
    R, t = rot([2, 5, 1]), np.array([0.5, 0.1, 0.2])
    xq, xm, _ = scene(R, t, n=400, noise_px=1.0)
    by_n = [_rot_sigma(estimate_relative_pose(xq[:k], xm[:k], CAM, CAM)) for k in (400, 200, 100, 50)]
    assert all(a < b for a, b in zip(by_n, by_n[1:])), by_n
    by_noise = []
    for noise in (0.5, 1.0, 2.0, 3.0):
        xq, xm, _ = scene(R, t, noise_px=noise)
        r = estimate_relative_pose(xq, xm, CAM, CAM, PoseConfig(ransac_px=3 * noise))
        by_noise.append(_rot_sigma(r))
    assert all(a < b for a, b in zip(by_noise, by_noise[1:])), by_noise
    by_outliers = []
    for share in (0.0, 0.2, 0.4):
        xq, xm, _ = scene(R, t, noise_px=1.0, outliers=share)
        by_outliers.append(_rot_sigma(estimate_relative_pose(xq, xm, CAM, CAM)))
    assert all(a < b for a, b in zip(by_outliers, by_outliers[1:])), by_outliers


def test_covariance_structure_and_floor():
    R, t = rot([2, 5, 1]), np.array([0.5, 0.1, 0.2])
    xq, xm, _ = scene(R, t)
    r = estimate_relative_pose(xq, xm, CAM, CAM)
    C = r.covariance
    assert C.shape == (6, 6) and np.allclose(C, C.T) and np.all(np.linalg.eigvalsh(C) > 0)
    u = r.t / np.linalg.norm(r.t)
    assert np.isclose(u @ C[:3, :3] @ u, 1e6, rtol=1e-3)  # length along t unknown (unknown_scale_sigma = 1e3)
    # exact matches: the keypoint-noise floor sets the scale, sigma grows in proportion to it
    r4 = estimate_relative_pose(xq, xm, CAM, CAM, PoseConfig(keypoint_sigma_px=2.0))
    assert r4.ok and np.isclose(_rot_sigma(r4) / _rot_sigma(r), 4.0, rtol=1e-6)
    assert direction_sigma_deg(r4.covariance, r4.t) > direction_sigma_deg(C, r.t)


def test_translation_sigma_grows_as_parallax_falls():
    R = rot([2, 5, 1])
    sig = []
    for scale in (1.0, 0.5, 0.35):  # parallax 2.0, 1.1, 0.8 deg (at 0.25: rejected, cheirality)
        xq, xm, _ = scene(R, np.array([0.5, 0.1, 0.2]) * scale, noise_px=0.5)
        r = estimate_relative_pose(xq, xm, CAM, CAM, PoseConfig(max_direction_sigma_deg=90))
        assert r.ok, r.reason
        sig.append(direction_sigma_deg(r.covariance, r.t))
    assert sig[0] < sig[1] < sig[2], sig


def test_uncertain_pose_is_rejected_by_the_sigma_limits():
    R, t = rot([2, 5, 1]), np.array([0.5, 0.1, 0.2])
    xq, xm, X = scene(R, t, noise_px=1.0)
    assert estimate_relative_pose(xq, xm, CAM, CAM, PoseConfig(max_rotation_sigma_deg=1e-3)).reason == "uncertain"
    assert estimate_relative_pose(xq, xm, CAM, CAM, PoseConfig(max_direction_sigma_deg=1e-3)).reason == "uncertain"


def test_coarse_keypoints_refuse_the_essential_path_but_not_pnp():
    """16-px grid cells on a 320x240 frame (sigma 4.6 px = 0.95 deg): E refused, PnP still runs."""
    R, t = rot([2, 5, 1]), np.array([0.5, 0.1, 0.2])
    xq, xm, X = scene(R, t)
    cfg = PoseConfig(keypoint_sigma_px=16 / np.sqrt(12))
    assert estimate_relative_pose(xq, xm, CAM, CAM, cfg).reason == "coarse_keypoints"
    xq = np.rint(xq)
    X = np.c_[CAM.normalize(xq), np.ones(len(xq))] * X[:, 2:]
    xm = CAM.project(X @ R.T + t)
    keep = np.all((xm >= 0) & (xm <= [319, 239]), axis=1)
    assert estimate_relative_pose(xq[keep], xm[keep], CAM, CAM, cfg, depth_query=depth_image(xq[keep], X[keep])).ok


def test_results_are_reproducible():
    R, t = rot([2, 5, 1]), np.array([0.5, 0.1, 0.2])
    xq, xm, _ = scene(R, t, noise_px=1.0, outliers=0.3)
    a, b = (estimate_relative_pose(xq, xm, CAM, CAM) for _ in range(2))
    assert np.array_equal(a.R, b.R) and np.array_equal(a.inlier_mask, b.inlier_mask)


def test_every_reason_is_documented():
    assert set(REASONS) == {"too_few_matches", "no_depth", "degenerate_points", "no_solution", "too_few_inliers",
                            "low_parallax", "planar_ambiguous", "cheirality", "uncertain", "coarse_keypoints"}


@pytest.mark.parametrize("bad,message", [
    (dict(xy_query=np.full((30, 2), np.nan)), "NaN"),
    (dict(xy_query=np.zeros((30, 3))), r"\(N,2\)"),
    (dict(xy_match=np.zeros((29, 2))), "row by row"),
    (dict(xy_match=np.full((30, 2), 1000.0)), "outside the camera"),
    (dict(cam_query=np.eye(3)), "CameraModel"),
    (dict(depth_query=np.zeros(5)), "2-D depth image"),
    (dict(fundamental=np.zeros((3, 3))), "non-zero 3x3"),
])
def test_bad_inputs_raise_clear_errors(bad, message):
    args = dict(xy_query=np.full((30, 2), 10.0), xy_match=np.full((30, 2), 10.0), cam_query=CAM, cam_match=CAM)
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        estimate_relative_pose(**args)


@pytest.mark.parametrize("kwargs", [dict(min_inliers=4), dict(ransac_px=0), dict(confidence=1.0),
                                    dict(min_coverage=1.5), dict(max_depth_m=0.05), dict(keypoint_sigma_px=0)])
def test_bad_pose_config_raises(kwargs):
    with pytest.raises(ValueError, match="pose\\."):
        PoseConfig(**kwargs)
