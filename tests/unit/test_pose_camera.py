"""vpr_core.geometry.camera and rotation helpers: building, validating, scaling and using a camera model."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vpr_core.geometry import CameraModel, quaternion_xyzw
from vpr_core.geometry.rotation import angle_between_deg, best_rotation, rotation_angle_deg


def test_config_forms_agree_and_camera_info_builds_the_same():
    a = CameraModel.from_config([500, 510, 319.5, 239.5], 640, 480)
    b = CameraModel.from_config([500, 0, 319.5, 0, 510, 239.5, 0, 0, 1], 640, 480)
    c = CameraModel.from_camera_info([500, 0, 319.5, 0, 510, 239.5, 0, 0, 1], 640, 480, [0] * 5, "plumb_bob")
    assert np.array_equal(a.K, b.K) and np.array_equal(a.K, c.K) and len(c.dist) == 0  # zero distortion = none
    assert (a.fx, a.fy, a.focal, a.width, a.height) == (500, 510, 505, 640, 480)


def test_scaled_to_keeps_the_same_rays():
    """A point seen at pixel p in the full image is at (p + 0.5) * s - 0.5 in the resized one."""
    cam = CameraModel.from_config([500, 510, 320.3, 241.7], 640, 480, dist=[0.1, -0.05, 0.001, 0.002, 0.0])
    small = cam.scaled_to(160, 120)
    X = np.array([[0.3, -0.2, 2.0], [-0.5, 0.4, 3.0]])
    assert np.allclose(small.project(X), (cam.project(X) + 0.5) * 0.25 - 0.5)
    assert np.allclose(small.dist, cam.dist) and small.width == 160
    with pytest.raises(ValueError, match="size must be > 0"):
        cam.scaled_to(0, 120)


def test_normalize_inverts_project_with_distortion():
    cam = CameraModel.from_config([400, 400, 320, 240], 640, 480, dist=[-0.2, 0.05, 0.001, -0.001, 0.0])
    X = np.array([[0.3, -0.2, 2.0], [-0.5, 0.4, 3.0], [0.0, 0.0, 1.0]])
    n = cam.normalize(cam.project(X))
    assert np.allclose(n, X[:, :2] / X[:, 2:], atol=1e-6)


def test_from_fov_is_a_centred_pinhole():
    cam = CameraModel.from_fov(90.0, 320, 240)
    assert np.isclose(cam.fx, 160.0) and np.isclose(cam.K[0, 2], 159.5) and np.isclose(cam.K[1, 2], 119.5)


@pytest.mark.parametrize("build,message", [
    (lambda: CameraModel.from_config([500, 500, 320], 640, 480), r"\[fx, fy, cx, cy\]"),
    (lambda: CameraModel.from_config([0, 500, 320, 240], 640, 480), "focal lengths must be > 0"),
    (lambda: CameraModel.from_config([-5, 500, 320, 240], 640, 480), "focal lengths must be > 0"),
    (lambda: CameraModel.from_config([np.nan, 500, 320, 240], 640, 480), "NaN"),
    (lambda: CameraModel.from_config([500, 500, 320, 240], 0, 480), "image size"),
    (lambda: CameraModel.from_config([500, 0, 320, 0, 500, 240, 1, 0, 1], 640, 480), "last row"),
    (lambda: CameraModel.from_config([500, 500, 320, 240], 640, 480, dist=[0.1, 0.2, 0.3]), "coefficients"),
    (lambda: CameraModel.from_camera_info([0] * 9, 640, 480), "not calibrated"),
    (lambda: CameraModel.from_camera_info([1] * 8, 640, 480), "9 values"),
    (lambda: CameraModel.from_camera_info([500, 0, 320, 0, 500, 240, 0, 0, 1], 640, 480, [0.1, 0.01, 0, 0],
                                          "equidistant"), "not supported"),
    (lambda: CameraModel.from_fov(180.0, 640, 480), "field of view"),
])
def test_bad_cameras_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_quaternion_matches_axis_angle():
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.normal(size=3)
        v *= rng.uniform(0, np.pi) / np.linalg.norm(v)  # up to 180 deg: exercises every branch
        a = np.linalg.norm(v)
        q = quaternion_xyzw(cv2.Rodrigues(v)[0])
        ref = np.r_[np.sin(a / 2) * v / a, np.cos(a / 2)]
        assert np.allclose(q, ref, atol=1e-9) or np.allclose(q, -ref, atol=1e-9)
        assert q[3] >= 0
    assert np.allclose(quaternion_xyzw(np.diag([-1.0, -1.0, 1.0])), [0, 0, 1, 0])  # 180 deg about z


def test_angles_and_best_rotation():
    R = cv2.Rodrigues(np.radians([3.0, -4.0, 0.0]))[0]
    assert np.isclose(rotation_angle_deg(R, np.eye(3)), 5.0)
    assert np.isclose(angle_between_deg([1, 0, 0], [0, 2, 0]), 90.0)
    assert np.isnan(angle_between_deg([0, 0, 0], [1, 0, 0]))
    b = np.random.default_rng(0).normal(size=(30, 3))
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    assert rotation_angle_deg(best_rotation(b, b @ R.T), R) < 1e-9
